"""Stochastic FitzHugh–Nagumo neuron: a latent SDE observed through one noisy state.

The FitzHugh (1961) – Nagumo (1962) model reduces the Hodgkin–Huxley neuron to a fast
voltage-like variable v and a slow recovery variable w. With both perturbed by
independent Wiener processes it is the Itô SDE

    dv = (v - v^3/3 - w + I) dt + s_v dW1
    dw = eps (v + a - b w) dt    + s_w dW2

with a = 0.7, b = 0.8, eps = 0.08, a known input current I = 0.5 (the oscillatory regime:
spikes about every 35 time units), s_v = 0.3, s_w = 0.1, and x(0) ~ N([-1, 1], 0.1^2 I).

Data: only v is observed, with Normal noise of sd 0.1, at 60 irregular times in [0, 60]:
observation k is at k - 0.8 U(0, 1) (k = 1..60; seed 1961, the year of FitzHugh's paper),
so gaps are between 0.2 and 1.8 time units, and 3 of the 60 values are missing (NaN,
chosen with the same generator). The window holds about one and a half cycles of the
oscillation. The latent path is a sample path of the model itself, simulated with
`probde.simulate` (Euler–Maruyama, at most 0.002 time units per step) on the union of the
observation times and a plotting grid of step 0.25, so the true w is known everywhere for
the figures.

Why gaps of about one time unit: the Gaussian filters approximate the distribution of the
state between observations by a Gaussian. Across a spike that distribution is skewed, and
the longer the gap the worse the approximation: at the true parameters, the EKF's
log-likelihood is within about 1 of the particle filter's with these data, but it was
off by about 15 with 50 observations 2 apart and by about 120 with 60 uniformly random
times over [0, 200] (gaps up to 14), measured on data simulated the same way while
designing this case study. The particle filter has no such bias.

Inferred: a, b, eps, s_v, s_w and the noise sd sigma; I and the initial distribution are
known. `build_model(likelihood)` gives the SDE model with `probde.EKF()`, `probde.UKF()` or
a `probde.ParticleFilter(...)`; `build_ode_model()` the same drift without process noise.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import probde

TRUE = {"a": 0.7, "b": 0.8, "eps": 0.08, "s_v": 0.3, "s_w": 0.1, "sigma": 0.1}
I_EXT = 0.5  # the input current: known
M0, P0_SD = (-1.0, 1.0), 0.1  # x(0) ~ N(M0, P0_SD^2 I) at t = 0
T_END, NUM_OBS, NUM_MISSING = 60.0, 60, 3
JITTER = 0.8  # observation k is at k - JITTER * U(0, 1): irregular, gaps below 1.8
DATA_SEED = 1961
GRID_STEP = 0.25  # where the true path is recorded for the figures
MAX_DT = 0.002  # Euler–Maruyama step of the data simulation (at most)


# --8<-- [start:sde]
def drift(t, x, theta):
    v, w = x[0], x[1]
    return jnp.stack([
        v - v**3 / 3.0 - w + I_EXT,
        theta["eps"] * (v + theta["a"] - theta["b"] * w),
    ])


def diffusion(t, x, theta):
    # diagonal noise: one independent Wiener process per state
    return jnp.stack([theta["s_v"], theta["s_w"]])


fhn = probde.SDE(drift, diffusion, state_names=("v", "w"))
# --8<-- [end:sde]


# The sparse variant: 40 times drawn uniformly over [0, 200] (about six spike periods),
# sorted; gaps up to about 20 time units, over half a period (seed 1962, Nagumo's paper).
SPARSE_T_END, SPARSE_NUM_OBS, SPARSE_SEED = 200.0, 40, 1962


@functools.cache
def simulate_truth(sparse: bool = False):
    """The true latent path and the data (cached).

    Returns `(grid, path, times, values)`: the path `(G, 2)` at the sorted union `grid` of
    the observation times and a 0.25 grid on [0, 60], the observation times `(60,)`, and
    the observed v `(60,)` with NaN at the missing values. `sparse=True`: the sparse
    variant (40 uniformly random times over [0, 200], none missing).
    """
    if sparse:
        rng = np.random.default_rng(SPARSE_SEED)
        end = SPARSE_T_END
        times = np.sort(rng.uniform(0.0, end, SPARSE_NUM_OBS))
        missing = np.array([], dtype=int)
        noise = rng.normal(0.0, TRUE["sigma"], SPARSE_NUM_OBS)
    else:
        rng = np.random.default_rng(DATA_SEED)
        end = T_END
        spacing = T_END / NUM_OBS
        times = spacing * (np.arange(1, NUM_OBS + 1) - JITTER * rng.uniform(0.0, 1.0, NUM_OBS))
        missing = rng.choice(NUM_OBS, NUM_MISSING, replace=False)
        noise = rng.normal(0.0, TRUE["sigma"], NUM_OBS)
    x0 = np.asarray(M0) + P0_SD * rng.normal(size=2)
    grid = np.union1d(times, np.arange(GRID_STEP, end + GRID_STEP / 2, GRID_STEP))
    # at most MAX_DT per step: the longest gap between consecutive record times decides
    gaps = np.diff(np.concatenate([[0.0], grid]))
    num_steps = int(np.ceil(gaps.max() / MAX_DT))
    theta = {k: jnp.asarray(v) for k, v in TRUE.items() if k != "sigma"}
    traj = probde.simulate(fhn, jnp.asarray(x0), theta, jnp.asarray(grid),
                           jax.random.PRNGKey(DATA_SEED), t0=0.0, num_steps=num_steps)
    assert bool(traj.ok)
    path = np.asarray(traj.ys)
    values = path[np.searchsorted(grid, times), 0] + noise
    values[missing] = np.nan
    return grid, path, times, values


def load_data(sparse: bool = False) -> probde.TimeSeries:
    """The 60 noisy observations of v (3 missing); `sparse=True`: the 40 of the sparse
    variant."""
    _, _, times, values = simulate_truth(sparse)
    return probde.TimeSeries(times, values, observables=("v",))


# --8<-- [start:priors]
PRIORS = {
    "a": dist.Normal(0.5, 0.5),
    "b": dist.LogNormal(0.0, 0.5),
    "eps": dist.LogNormal(jnp.log(0.1), 0.75),
}
NOISE_PRIORS = {
    "s_v": dist.Gamma(2.0, 5.0),
    "s_w": dist.Gamma(2.0, 5.0),
}
SIGMA_PRIOR = dist.Gamma(2.0, 10.0)
INITIAL = dist.Normal(jnp.array(M0), P0_SD)  # x(0), known
# --8<-- [end:priors]


# --8<-- [start:model]
def build_model(likelihood=None) -> probde.Model:
    """The SDE model; `likelihood`: `probde.EKF()` (default), `probde.UKF()` or a
    `probde.ParticleFilter(...)`."""
    return probde.Model(
        dynamics=fhn,
        params={**PRIORS, **NOISE_PRIORS},
        initial_state=INITIAL,
        observation=probde.noise.Normal(sigma=SIGMA_PRIOR),
        observe=("v",),
        likelihood=probde.EKF() if likelihood is None else likelihood,
        solver=probde.Solver(rtol=1e-6, atol=1e-6),
        t0=0.0,
    )
# --8<-- [end:model]


# --8<-- [start:ode]
def build_ode_model() -> probde.Model:
    """The same drift without process noise: a deterministic limit cycle."""
    return probde.Model(
        dynamics=probde.ODE(drift, state_names=("v", "w")),
        params=dict(PRIORS),
        initial_state=INITIAL,  # inferred: the posterior variable `initial_state`
        observation=probde.noise.Normal(sigma=SIGMA_PRIOR),
        observe=("v",),
        solver=probde.Solver(rtol=1e-6, atol=1e-6),
        t0=0.0,
    )
# --8<-- [end:ode]


def parameter_summary(posterior, truth, wall):
    """Per parameter of `truth` that `posterior` holds: posterior mean, sd, 90% interval,
    the truth and whether the interval covers it, R-hat, bulk ESS and bulk ESS per second
    of `wall` (for run.py and the benchmarks)."""
    import arviz as az

    out = {}
    for par, true in truth.items():
        if par not in posterior:
            continue
        x = posterior[par]
        q = np.quantile(x.values, [0.05, 0.95])
        ess = float(az.ess(x, method="bulk"))
        out[par] = {"mean": float(x.mean()), "sd": float(x.std()), "q5": float(q[0]),
                    "q95": float(q[1]), "truth": true, "covered": bool(q[0] <= true <= q[1]),
                    "r_hat": float(az.rhat(x)), "ess_bulk": ess, "ess_per_s": ess / wall}
    return out


def format_summary(summary) -> str:
    """`parameter_summary`'s result, a line per parameter."""
    return "\n".join(
        f"  {par:6s} mean {row['mean']:.3g} sd {row['sd']:.2g} 90% [{row['q5']:.3g}, "
        f"{row['q95']:.3g}] truth {row['truth']} r_hat {row['r_hat']:.3f} "
        f"ess {row['ess_bulk']:.0f} ({row['ess_per_s']:.3f}/s)" for par, row in summary.items())


def timed_fit(model, data, method, seed):
    """`probde.infer` as users call it (compilation included): `(result, wall seconds,
    whether it warned that the chains failed a convergence check)`."""
    import time
    import warnings

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", probde.ConvergenceWarning)
        result = probde.infer(model, data, method, seed=seed, num_prior_samples=0)
    return result, time.perf_counter() - start, any(
        issubclass(w.category, probde.ConvergenceWarning) for w in caught)


def print_run(out) -> None:
    """One benchmark run's record: its fields but the parameters as JSON, then a line per
    parameter (`format_summary`)."""
    import json

    print(json.dumps({k: v for k, v in out.items() if k != "params"}), flush=True)
    print(format_summary(out["params"]), flush=True)
