"""`probde.LatentPath`: an SDE's path between observations sampled with its parameters.

The filters integrate the latent path out: the EKF and UKF approximately (their Gaussian
approximation fails when observations are sparse against nonlinear dynamics), the particle
filter exactly but with a random estimate that NUTS cannot use. This likelihood keeps the
path: on a grid of substeps between observations the path is a deterministic function of
its initial state and its standardised Brownian increments (non-centred), which are latent
variables with a standard normal prior. The joint density of parameters, increments and data
is then the exact density of the discretised SDE, smooth in everything, so NUTS (or SVI)
samples parameters and path together.

The model program builds the grid, samples the increments and runs the path
(`probde.model.latent`); this object holds the user's choices. Neither numpyro nor diffrax
ships a latent-path SDE likelihood: diffrax's fixed-step solvers take the step (driven by
given increments, `probde.dynamics.sde.path_from_increments`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..dynamics.sde import AbstractLikelihood

MAX_GRID_STEPS = 1_000_000


@dataclasses.dataclass(frozen=True)
class LatentPath(AbstractLikelihood):
    r"""The SDE's path on a grid between observations, sampled with the parameters.

    With `likelihood=probde.LatentPath(...)` the state path is a latent variable: on a grid
    with `num_substeps` steps in every interval between consecutive observation times (or
    steps no longer than `step`), the path is

    $$x_{j+1} = \Phi(x_j, t_j, h_j, \sqrt{h_j}\, z_j), \qquad z_j \sim N(0, I),$$

    one step of `solver` (Euler-Maruyama by default) driven by the Wiener increment
    $\sqrt{h_j} z_j$. The standardised increments $z_j$ (and a Gaussian initial state's
    standardised value) are sampled by NUTS jointly with the parameters (non-centred
    parametrisation); the log density is exact for the discretised SDE, and differs from
    the SDE's by the scheme's discretisation error, which shrinks as the grid refines (order
    1 in the step for Euler-Maruyama). Unlike the EKF/UKF it stays right however sparse and
    nonlinear the data; unlike the particle filter it is differentiable, so NUTS and SVI can
    use it.

    **Arguments** (give at most one of `num_substeps` and `step`):

    - `num_substeps`: steps in every interval between consecutive observation times
      (and from the initial time to the first). Default 10 when `step` is not given.
    - `step`: the longest step: the interval `k` takes `ceil(gap_k / step)` equal steps
      (its longest gap over the experiments). Use it for irregular observation times.
    - `solver`: a diffrax solver taking fixed steps driven by Brownian increments:
      `diffrax.Euler()` (default; Itô, Euler-Maruyama) or `diffrax.Heun()` (converges to
      the Stratonovich solution: use it only with additive noise, a diffusion that does
      not depend on the state, where Itô and Stratonovich agree).

    **Where the results go:** the posterior holds the parameters only; the increments
    are in the DataTree group `latent_path` (`increments`, `initial`; with `step_end`, the
    grid's times). The path at the observation times, one per draw, is in the group
    `smoothed_states` (`mean`, with zero `cov`), where the Gaussian filters put their
    smoothed moments, and in the posterior predictive (`trajectory`). The pointwise
    log-likelihood is that of each value given the path.

    - `screen_particles`: particles of the filter that screens NUTS's chains (below);
      `None`: no screen.

    **Chains in minor modes, and the screen.** A chain can settle in a mode where the
    observation noise explains the data and the path ignores it (`benchmarks/RESULTS.md`:
    FitzHugh-Nagumo, often on sparse data, sometimes on dense). The joint density of
    parameters and path hardly shows it: its spread within a mode grows with the path's
    dimension. So with `probde.NUTS(restart_stuck=True)` (the default) and at least 2
    chains, NUTS compares the chains by the density of their parameters alone, the path
    integrated out by a particle filter (`screen_particles` particles, on this grid, the
    median of 8 estimates): at the ends of the adaptation windows in the first half of
    the warmup (iterations 75, 100, 150, 250 and 450 of 1000), a chain more than 10 nats
    below the best takes another chain's position and adaptation; after sampling, a chain
    whose last point is that far below makes NUTS run once more
    (`idata.sample_stats.attrs` records both). On the sparse FitzHugh-Nagumo data the
    chain that explained the data by noise was 30 nats below the others, and with the
    screen no chain stayed there in two runs; but in one of them two chains stayed in a
    region of the other parameters 5-7 nats lower, which the screen does not judge (R-hat
    2.1): read `result.diagnose()`. Each screen costs 8 filter runs of `screen_particles`
    particles per chain.

    **Starting the chains:** `probde.NUTS(init="median")` starts them on the drift's own
    path (increments 0) with the parameters at their prior medians, instead of scales
    drawn from e^-2 to e^2 times their unit. Not `init="map"`: the joint mode of
    parameters and path lies where the observation noise vanishes (NUTS warns).

    **Cost:** the sampler's dimension grows by `W` (Wiener processes) per grid step and
    experiment; a gradient costs one pass over the grid. With `probde.SVI` pick a guide
    whose size grows linearly with the dimension (`guide="normal"` or `"low_rank"`): the
    default full-rank guide holds a matrix of the dimension squared. The log-likelihood given only the
    parameters, `probde.log_likelihood`, needs the path integrated out: use a filter.
    Predictions at new times are not available (the path is known on its grid only).

    **Example:**

    ```python
    >>> import jax.numpy as jnp, numpyro.distributions as dist, probde
    >>> ou = probde.SDE(lambda t, x, th: -th["k"] * x, lambda t, x, th: jnp.array([0.3]),
    ...                 state_names=("x",))
    >>> model = probde.Model(ou, {"k": dist.LogNormal(0.0, 0.5)}, jnp.array([1.0]),
    ...                      probde.noise.Normal(sigma=0.1),
    ...                      likelihood=probde.LatentPath(num_substeps=5))
    >>> data = probde.TimeSeries([0.0, 1.0, 2.0], [1.0, 0.4, 0.2], observables=("x",))
    >>> result = probde.infer(model, data, probde.NUTS(num_chains=1, num_warmup=500,
    ...                       num_samples=1000), seed=0, num_prior_samples=0)
    >>> dict(result.idata["latent_path"]["increments"].sizes)  # 2 intervals of 5 steps
    {'chain': 1, 'draw': 1000, 'path_step': 10, 'noise': 1}

    ```
    """

    num_substeps: int | None = None
    step: float | None = None
    solver: object = None
    screen_particles: int | None = 500

    gaussian = False
    needs_key = False
    latent_path = True

    def __post_init__(self):
        n, h = self.num_substeps, self.step
        if n is not None and h is not None:
            raise ValueError(
                f"give num_substeps or step, not both; got num_substeps={n!r}, step={h!r}")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ValueError(f"num_substeps must be a positive integer; got {n!r}")
        if h is not None and (isinstance(h, bool) or not isinstance(h, (int, float))
                              or not 0 < h < np.inf):
            raise ValueError(f"step must be a positive number; got {h!r}")
        p = self.screen_particles
        if p is not None and (not isinstance(p, int) or isinstance(p, bool) or p < 2):
            raise ValueError(f"screen_particles must be an integer of at least 2, or None "
                             f"(no screen); got {p!r}")
        if n is None and h is None:
            object.__setattr__(self, "num_substeps", 10)

    def grid(self, times, starts):
        """The grid for data at `times` `(T,)` of experiments starting at `starts` `(E,)`.

        Returns `(step_starts (E, J), steps (E, J), index (T,))`: where each step starts and
        its length, and for each observation time the number of steps taken by then (the
        state after step `index[k] - 1`, or the initial state where it is 0). Observation
        times before an experiment's start count from its start (steps of length 0). A
        zero-length interval shared by every experiment takes no step.
        """
        times = np.asarray(times, dtype=float)
        starts = np.asarray(starts, dtype=float)
        ends = np.maximum(times[None, :], starts[:, None])  # (E, T)
        begins = np.concatenate([starts[:, None], ends[:, :-1]], axis=1)
        gaps = ends - begins
        longest = gaps.max(axis=0) if gaps.size else np.zeros(times.shape)
        if self.step is not None:
            counts = np.ceil(longest / self.step - 1e-9).astype(int)
        else:
            counts = np.full(times.shape, self.num_substeps, dtype=int)
        counts = np.where(longest > 0, np.maximum(counts, 1), 0)
        total = int(counts.sum())
        if total > MAX_GRID_STEPS:
            raise ValueError(
                f"the latent path's grid would have {total} steps per experiment (more than "
                f"{MAX_GRID_STEPS}); raise step or lower num_substeps")
        interval = np.repeat(np.arange(times.size), counts)  # (J,)
        within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        width = gaps[:, interval] / counts[interval][None, :]
        step_starts = begins[:, interval] + within[None, :] * width
        return step_starts, width, np.cumsum(counts)

    def run(self, sde, theta, initial, inputs, solver, key, *, smooth=False):
        raise TypeError(
            "LatentPath is not a filter: the model program samples the path (call "
            "probde.infer on a Model with likelihood=probde.LatentPath(...))")
