"""Stochastic differential equations: `probde.SDE`, sample paths, and the likelihood interface.

The filters that turn an SDE into a likelihood live in `probde.inference` (a higher layer);
this module defines what they must provide (`AbstractLikelihood`) so that `probde.Model`
can call them without importing upward.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._checks import check_vector_field
from ._diffeqsolve import diffeqsolve
from .ode import ODE
from .solve import Trajectory


@dataclasses.dataclass(frozen=True, eq=False)
class SDE:
    r"""An Itô stochastic differential equation
    $dX = f(t, X, \theta)\,dt + L(t, X, \theta)\,dW$, with $W$ a standard Wiener process.

    **Main arguments:**

    - `drift`: `f(t, x, theta) -> (S,)`, written with `jax.numpy`.
    - `diffusion`: `L(t, x, theta)`: either shape `(S,)` (diagonal noise: one independent
      Wiener process per state, `L = diag(...)`) or a matrix `(S, W)` (general noise:
      `W` Wiener processes, possibly correlated across states). The process-noise
      covariance per unit time is `L L'`.
    - `state_names`: one name per state.

    **Other arguments:**

    - `linear`: whether the drift is affine in `x`, `f = A(theta) x + b(theta)`, and the
      diffusion depends on neither `x` nor `t`. The Gaussian filters then use the exact
      discretisation (matrix exponential, Van Loan 1978) instead of solving the moment
      equations. `None` (the default): the Gaussian filters find out from the traced
      drift and diffusion (`probde.dynamics.affine`; exact, conservative: an SDE it cannot
      read is treated as nonlinear). `True` declares it (checked on a prior draw; the
      particle filter then also moves particles by the exact transition); `False` always
      solves the moment equations.

    **Example:**

    ```python
    >>> import jax.numpy as jnp, probde
    >>> ou = probde.SDE(lambda t, x, th: -th["k"] * x,
    ...                 lambda t, x, th: jnp.array([th["s"]]), state_names=("x",),
    ...                 linear=True)
    >>> ou.num_states
    1

    ```
    """

    drift: Callable
    diffusion: Callable
    state_names: tuple[str, ...]
    linear: bool | None = None

    def __post_init__(self):
        for name, symbol in (("drift", "f"), ("diffusion", "L")):
            fn = getattr(self, name)
            if not callable(fn):
                raise TypeError(
                    f"{name} must be a callable {symbol}(t, x, theta); got {fn!r} of type "
                    f"{type(fn).__name__}"
                )
        # Reuse ODE's checks of the state names.
        names = ODE(self.drift, self.state_names).state_names
        object.__setattr__(self, "state_names", names)
        if not (self.linear is None or isinstance(self.linear, bool)):
            raise TypeError(f"linear must be None, True or False; got {self.linear!r}")

    @property
    def num_states(self) -> int:
        """The number of states, `len(state_names)`."""
        return len(self.state_names)

    @property
    def vector_field(self):
        """The drift, so that an SDE can be traced like an ODE (`f(t, x, theta)`)."""
        return self.drift

    def noise_matrix(self, t, x, theta):
        """`L(t, x, theta)` as an `(S, W)` matrix (a diagonal diffusion becomes `diag(L)`)."""
        L = jnp.asarray(self.diffusion(t, x, theta))
        return jnp.diag(L) if L.ndim == 1 else L

    def check(self, x, theta, t=0.0):
        """Check drift and diffusion at state `x` (and time `t`), and a declared linearity.

        Raises `TypeError` for a drift or diffusion that returns a Python list or tuple or
        calls NumPy on a traced value, `ValueError` for a wrong shape or a false `linear=True`
        (see `probde.dynamics.check_vector_field`); a `KeyError` for a parameter missing from
        `theta` propagates unchanged. The shape checks are abstract (`jax.eval_shape`) and
        work on traced values; the linearity check needs concrete ones.
        """
        self._check_shapes(x, theta, t)
        if self.linear is True:
            self._check_linear(x, theta)

    def is_linear(self, theta, like) -> bool:
        """`linear`, or where it is `None`, whether the traced drift and diffusion are
        linear (`probde.dynamics.affine.is_affine`) for parameters shaped like `theta` and
        a state like `like`."""
        if self.linear is None:
            from .affine import is_affine

            return is_affine(self, theta, like)
        return self.linear

    def _check_shapes(self, x, theta, t=0.0):
        """The output types and shapes of drift and diffusion at `(t, x)` (works on traced
        values)."""
        S = self.num_states
        x = jnp.asarray(x)
        t = jnp.asarray(t, dtype=jnp.result_type(x.dtype, float))
        check_vector_field(self.drift, "drift", t, x, theta, (S,), states=self.state_names)
        L = check_vector_field(self.diffusion, "diffusion", t, x, theta, None)
        if not (L.shape == (S,) or (len(L.shape) == 2 and L.shape[0] == S and L.shape[1] >= 1)):
            raise ValueError(
                f"diffusion must return shape ({S},) (diagonal noise) or ({S}, W) (a matrix "
                f"with one row per state and one column per Wiener process); got shape {L.shape}"
            )

    def _check_linear(self, x, theta):
        """A declared linear SDE: drift affine in x, diffusion free of x and t."""
        x = jnp.asarray(x, dtype=jnp.result_type(float))
        other = x + 1.0 + jnp.arange(x.shape[0], dtype=x.dtype)
        jac = jax.jacfwd(self.drift, argnums=1)
        A1, A2 = jac(0.0, x, theta), jac(0.37, other, theta)
        L1, L2 = self.noise_matrix(0.0, x, theta), self.noise_matrix(0.37, other, theta)
        tol = 1e-6 * (1.0 + jnp.max(jnp.abs(A1)))
        if not bool(jnp.all(jnp.abs(A1 - A2) <= tol)):
            raise ValueError(
                "linear=True declares a drift A x + b with A constant, but the drift's "
                "Jacobian changes with x or t; pass linear=False"
            )
        # The offset b = f(t, x) - A x must not depend on t either (the exact
        # discretisation holds b fixed over each interval).
        f1, f2 = self.drift(0.0, x, theta), self.drift(0.37, other, theta)
        b1, b2 = f1 - A1 @ x, f2 - A1 @ other
        scale = 1.0 + jnp.max(jnp.abs(jnp.stack([f1, f2, A1 @ x, A1 @ other])))
        if not bool(jnp.all(jnp.abs(b1 - b2) <= 1e-6 * scale)):
            raise ValueError(
                "linear=True declares a drift A x + b with A and b constant, but the drift's "
                "offset b = f(t, x) - A x changes with t (a time-dependent forcing); pass "
                "linear=False"
            )
        if not bool(jnp.all(jnp.abs(L1 - L2) <= 1e-6 * (1.0 + jnp.max(jnp.abs(L1))))):
            raise ValueError(
                "linear=True needs a diffusion that depends on neither x nor t; pass "
                "linear=False"
            )

    def __hash__(self):
        return hash((id(self.drift), id(self.diffusion), self.state_names, self.linear))

    def __eq__(self, other):
        return (
            isinstance(other, SDE)
            and other.drift is self.drift
            and other.diffusion is self.diffusion
            and other.state_names == self.state_names
            and other.linear == self.linear
        )


def _sde_step_counted(sde: SDE, theta, x, t_start, t_end, key, num_steps: int, solver=None):
    """`sde_step`, also returning the number of steps diffrax took (0 when
    `t_end == t_start`)."""
    solver = diffrax.Euler() if solver is None else solver
    W = sde.noise_matrix(t_start, x, theta).shape[1]
    brownian = diffrax.UnsafeBrownianPath(shape=(W,), key=key)
    terms = diffrax.MultiTerm(
        diffrax.ODETerm(lambda t, y, args: sde.drift(t, y, args)),
        diffrax.ControlTerm(lambda t, y, args: sde.noise_matrix(t, y, args), brownian),
    )
    sol = diffeqsolve(
        terms,
        solver,
        t_start,
        t_end,
        (t_end - t_start) / num_steps,
        x,
        args=theta,
        stepsize_controller=diffrax.ConstantStepSize(),
        saveat=diffrax.SaveAt(t1=True),
        max_steps=num_steps + 2,
        # UnsafeBrownianPath (fast, fixed steps) supports forward-mode differentiation only;
        # sample paths are simulated, not differentiated.
        adjoint=diffrax.ForwardMode(),
        throw=False,
    )
    x_end = sol.ys[-1]
    ok = (sol.result == diffrax.RESULTS.successful) & jnp.all(jnp.isfinite(x_end))
    return x_end, ok, sol.stats["num_steps"]


def sde_step(sde: SDE, theta, x, t_start, t_end, key, num_steps: int, solver=None):
    """Advance one sample path from `t_start` to `t_end` in `num_steps` equal steps.

    The step uses diffrax's SDE machinery (Euler-Maruyama by default; any diffrax SDE
    solver that works with a fixed step). Returns `(x_end, ok)`. `t_end == t_start`
    returns `x`.
    """
    x_end, ok, _ = _sde_step_counted(sde, theta, x, t_start, t_end, key, num_steps, solver)
    return x_end, ok


def _simulate(sde, x0, theta, times, key, t0, num_steps, solver):
    """Validate, then run one path: `(times, xs (T, S), ok, steps taken)`."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a probde.SDE; got {sde!r} of type {type(sde).__name__}")
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer; got {num_steps!r}")
    times = jnp.asarray(times, dtype=jnp.result_type(float))
    x0 = jnp.asarray(x0, dtype=times.dtype)
    if x0.shape != (sde.num_states,):
        raise ValueError(
            f"x0 must have shape ({sde.num_states},), one value per state {sde.state_names}; "
            f"got shape {x0.shape}"
        )
    start = times[0] if t0 is None else jnp.asarray(t0, times.dtype)
    sde._check_shapes(x0, theta, start)
    starts = jnp.concatenate([start[None], times[:-1]])
    keys = jax.random.split(key, times.shape[0])

    def step(carry, inp):
        x, ok, taken = carry
        ta, tb, k = inp
        x_new, ok_step, n = _sde_step_counted(sde, theta, x, ta, tb, k, num_steps, solver)
        return (x_new, ok & ok_step, taken + n.astype(taken.dtype)), x_new

    # Step counts in JAX's default integer type, as diffrax's statistics in `probde.solve`.
    init = (x0, jnp.array(True), jnp.zeros((), dtype=int))
    (_, ok, taken), xs = jax.lax.scan(step, init, (starts, times, keys))
    return times, xs, ok, taken


def simulate_paths(sde: SDE, x0, theta, times, key, *, t0=None, num_steps: int = 20,
                   solver=None):
    """`probde.simulate` as a tuple `(xs, ok)`: states `(T, S)` and whether every step
    succeeded. For internal callers (the model's prior predictive) that need no
    `Trajectory`; arguments as for `probde.simulate`."""
    _, xs, ok, _ = _simulate(sde, x0, theta, times, key, t0, num_steps, solver)
    return xs, ok


def simulate(sde: SDE, x0, theta, times, key, *, t0=None, num_steps: int = 20,
             solver=None) -> Trajectory:
    """A sample path of `sde` from `x0` at `t0`, recorded at `times`.

    **Main arguments:**

    - `sde`: a `probde.SDE`; `x0`: `(S,)`; `theta`: dict of parameters.
    - `times`: `(T,)` non-decreasing record times, not before `t0`.
    - `key`: a JAX random key.

    **Other arguments:**

    - `t0`: start time (default `times[0]`).
    - `num_steps`: fixed steps between consecutive record times (Euler-Maruyama by
      default: weak order 1, so the step must be small against the drift's time scale).
    - `solver`: a diffrax SDE solver for fixed steps, e.g. `diffrax.Heun()` (Stratonovich)
      or `diffrax.Euler()` (Itô, default).

    **Returns:** a `probde.Trajectory`, as from `probde.solve`: `ts` the record times
    `(T,)`, `ys` the states `(T, S)`, `ok` whether every step succeeded and every state is
    finite, `num_steps` (= `num_accepted_steps`) the fixed steps taken, `num_steps` per
    record interval of positive length (none from `t0` to `times[0]` when they are equal),
    and `num_rejected_steps` 0. Under `jax.vmap` over keys, each field gains a leading
    path axis.

    **Raises:** `ValueError`/`TypeError` for bad inputs, and for a drift or diffusion that
    returns a Python list, calls NumPy on a traced value or returns the wrong shape (an
    abstract check, as in `probde.solve`).

    **Example:**

    ```python
    >>> import jax, jax.numpy as jnp, probde
    >>> ou = probde.SDE(lambda t, x, th: -x, lambda t, x, th: jnp.array([0.5]),
    ...                 state_names=("x",))
    >>> path = probde.simulate(ou, jnp.array([1.0]), {}, jnp.linspace(0.0, 1.0, 5),
    ...                        jax.random.PRNGKey(0), num_steps=10)
    >>> path.ys.shape, bool(path.ok), int(path.num_steps)   # 4 intervals of 10 steps
    ((5, 1), True, 40)

    ```
    """
    ts, xs, ok, taken = _simulate(sde, x0, theta, times, key, t0, num_steps, solver)
    return Trajectory(ts, xs, ok, taken, taken, jnp.zeros_like(taken))


class _Increment(diffrax.AbstractPath):
    """A Brownian path known only by its increment `dW` over one step `[t0, t1]`: the
    control of one fixed step of a diffrax SDE solver driven by given increments (diffrax's
    Brownian paths draw their own)."""

    dW: Array
    t0: Array
    t1: Array

    def evaluate(self, t0, t1=None, left=True):
        if t1 is None:
            raise ValueError("this path gives increments over its one step only")
        return self.dW


def path_from_increments(sde: SDE, theta, x0, step_starts, steps, increments, solver=None):
    """A sample path driven by given Brownian increments: `x0` advanced through the
    consecutive steps `[step_starts[j], step_starts[j] + steps[j]]`, the step `j` with the
    Wiener increment `increments[j]` `(W,)` (variance `steps[j]` each), by one fixed step
    of a diffrax SDE solver (Euler-Maruyama by default).

    Returns `(xs (J, S), ok)`: the state after each step, and whether every step succeeded
    and every state is finite. A step of length 0 with a zero increment leaves the state
    unchanged. Differentiable in `theta`, `x0` and `increments` (the latent-path likelihood
    samples them by NUTS).
    """
    solver = diffrax.Euler() if solver is None else solver
    drift = diffrax.ODETerm(lambda t, y, args: sde.drift(t, y, args))

    def step(carry, inp):
        x, ok = carry
        ta, h, dW = inp
        tb = ta + h
        terms = diffrax.MultiTerm(drift, diffrax.ControlTerm(
            lambda t, y, args: sde.noise_matrix(t, y, args), _Increment(dW, ta, tb)))
        state = solver.init(terms, ta, tb, x, theta)
        x_new, _, _, _, result = solver.step(terms, ta, tb, x, theta, state, False)
        ok = ok & (result == diffrax.RESULTS.successful) & jnp.all(jnp.isfinite(x_new))
        return (x_new, ok), x_new

    (_, ok), xs = jax.lax.scan(step, (x0, jnp.array(True)), (step_starts, steps, increments))
    return xs, ok


# ------------------------------------------------------------------ likelihood interface
class FilterInputs(eqx.Module):
    """What a filter needs besides the SDE and theta (one experiment).

    - `times` `(T,)`, `t0` (time of the initial state), `values` `(T, O)` (on the noise
      model's link scale for Gaussian filters; anything where `mask` is False), `mask`
      `(T, O)`.
    - `observe(x) -> (O,)`: noise-free prediction of the observables (on the link scale for
      Gaussian filters).
    - `noise_var` `(O,)`: Gaussian observation-noise variances (Gaussian filters).
    - `log_density(prediction (O,), value (O,)) -> (O,)`: pointwise observation log
      densities (particle filter; any noise model).
    """

    times: Float[Array, " T"]
    t0: Float[Array, ""]
    values: Float[Array, "T O"]
    mask: Bool[Array, "T O"]
    observe: Callable = eqx.field(static=True)
    noise_var: Array | None = None
    log_density: Callable | None = eqx.field(static=True, default=None)


class FilterOutput(eqx.Module):
    """A filter's result for one experiment.

    - `log_lik`: `log p(y | theta)` (the particle filter: the log of an unbiased estimate).
    - `ok`: every moment solve / path step succeeded and the result is finite.
    - `num_steps`: solver steps taken.
    - `filtered_mean` `(T, S)`, `filtered_cov` `(T, S, S)`: moments of `x(t_k) | y_{1:k}`.
    - `smoothed_mean`, `smoothed_cov`: moments of `x(t_k) | y_{1:T}` (when requested and
      available), else `None`.
    - `pointwise` `(T, O)`: per-observation log-likelihood terms for LOO (leave-one-out
      predictive densities where the filter provides them), else `None`.
    """

    log_lik: Float[Array, ""]
    ok: Bool[Array, ""]
    num_steps: Int[Array, ""]
    filtered_mean: Float[Array, "T S"]
    filtered_cov: Float[Array, "T S S"]
    smoothed_mean: Float[Array, "T S"] | None = None
    smoothed_cov: Float[Array, "T S S"] | None = None
    pointwise: Float[Array, "T O"] | None = None


class AbstractLikelihood(abc.ABC):
    """Extension point: a filter that gives `log p(y | theta)` of a discretely observed SDE.

    `gaussian = True` marks filters that need a Gaussian initial state and Gaussian
    observation noise on the noise model's link scale (EKF, UKF); the particle filter
    accepts any noise model and any initial-state distribution. `latent_path = True` marks
    a likelihood that does not integrate the path out: the model program samples it
    (`probde.LatentPath`), and `run` is not called.
    """

    gaussian: bool = True
    needs_key: bool = False
    latent_path: bool = False

    @abc.abstractmethod
    def run(self, sde: SDE, theta, initial, inputs: FilterInputs, solver, key, *,
            smooth: bool = False) -> FilterOutput:
        """Filter one experiment. `initial` is `(mean (S,), cov (S, S))` for Gaussian
        filters and a numpyro distribution of `x(t0)` otherwise; `solver` is the model's
        `probde.Solver`; `key` a random key (filters that need one), or `(key, normals)`
        when the filter asked for standard normals (`noise_spec`) and a sampler gave them."""

    def noise_spec(self, sde: SDE, num_times: int, num_noise: int, dtype):
        """The standard normals one run on `num_times` observation times would take from a
        sampler instead of its key (correlated pseudo-marginal MCMC), as a pytree of
        `jax.ShapeDtypeStruct`; None (the default) when the filter draws from its key only.
        `num_noise` is the SDE's number of Wiener processes."""
        return None
