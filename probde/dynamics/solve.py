"""`probde.solve`: one ODE solve, failures returned as values."""

from __future__ import annotations

import weakref

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool, Float, Int

from . import _unrolled
from . import doses as _doses
from . import events as _events
from ._checks import check_vector_field
from ._diffeqsolve import diffeqsolve
from .ode import ODE
from .solver import ForwardSensitivity, Solver


class Trajectory(eqx.Module):
    """The result of `probde.solve`.

    **Fields:**

    - `ts`: the save times, shape `(T,)`.
    - `ys`: the states at `ts`, shape `(T, S)`. Where the solve failed they are not
      meaningful (diffrax fills them with `inf`); check `ok`.
    - `ok`: scalar bool, `True` when the solver reached the last time successfully and every
      saved state is finite.
    - `num_steps`, `num_accepted_steps`, `num_rejected_steps`: step statistics of the solve.
    """

    ts: Float[Array, " T"]
    ys: Float[Array, "T S"]
    ok: Bool[Array, ""]
    num_steps: Int[Array, ""]
    num_accepted_steps: Int[Array, ""]
    num_rejected_steps: Int[Array, ""]

    @property
    def stats(self) -> dict:
        """The step statistics as a dict."""
        return {
            "num_steps": self.num_steps,
            "num_accepted_steps": self.num_accepted_steps,
            "num_rejected_steps": self.num_rejected_steps,
        }


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_inputs(dynamics, y0, times, t0, solver):
    if not isinstance(dynamics, ODE):
        raise TypeError(
            f"dynamics must be a probde.ODE; got {dynamics!r} of type {type(dynamics).__name__}"
        )
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a probde.Solver; got {solver!r} of type {type(solver).__name__}")
    if jnp.ndim(y0) != 1 or jnp.shape(y0)[0] != dynamics.num_states:
        raise ValueError(
            f"y0 must have shape ({dynamics.num_states},), one value per state "
            f"{dynamics.state_names}; got shape {jnp.shape(y0)}"
        )
    if jnp.ndim(times) != 1 or jnp.shape(times)[0] == 0:
        raise ValueError(f"times must be a non-empty 1-D array; got shape {jnp.shape(times)}")
    if _is_concrete(times):
        t = np.asarray(times)
        if not np.all(np.isfinite(t)):
            raise ValueError(f"times must be finite; got {t}")
        bad = np.nonzero(np.diff(t) <= 0)[0]
        if bad.size:
            i = int(bad[0]) + 1
            raise ValueError(
                f"times must be strictly increasing; got {t[i]} after {t[i - 1]} at index {i}"
            )
        if t0 is not None and _is_concrete(t0) and float(t0) > float(t[0]):
            raise ValueError(f"t0 must not be after the first time {t[0]}; got t0={float(t0)}")


def _run_diffeqsolve(vector_field, stepper, controller, adjoint, solver, t0, times, y0, args):
    """One diffrax solve saved at `times`, failures as values: `(ys, (ok, num_steps,
    num_accepted_steps, num_rejected_steps))`."""
    sol = diffeqsolve(
        diffrax.ODETerm(vector_field),
        stepper,
        t0,
        times[-1],
        solver.dt0,
        y0,
        args=args,
        saveat=diffrax.SaveAt(ts=times),
        stepsize_controller=controller,
        adjoint=adjoint,
        max_steps=solver.max_steps,
        throw=False,
    )
    ok = (sol.result == diffrax.RESULTS.successful) & jnp.all(jnp.isfinite(sol.ys))
    stats = (sol.stats["num_steps"], sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"])
    return sol.ys, (ok, *stats)


def _diffrax_solve(dynamics: ODE, solver: Solver, adjoint, t0, times, y0, theta):
    return _run_diffeqsolve(lambda t, y, args: dynamics.vector_field(t, y, args), solver.solver,
                            solver.controller(), adjoint, solver, t0, times, y0, theta)


def _states_rms(n):
    def norm(scaled_error):
        # Root mean square of the states' scaled errors only (diffrax's default norm over
        # the states alone).
        return jnp.sqrt(jnp.mean(jnp.square(scaled_error[:n])))

    return norm


def _augmented_solve(dynamics, solver, options, t0, times, y0, theta):
    """States and their sensitivities to (y0, theta) from one solve of the augmented
    system  dy/dt = f(t, y, theta),  dS/dt = J_y f S + [0 | J_theta f],  S(t0) = [I | 0].

    The step size is controlled on the states only (`error_control="states"`, default) or
    on states and sensitivities (`"all"`). With states-only control the steps are those
    of the plain solve, and because an explicit Runge-Kutta method commutes with
    linearisation, the sensitivities are then exactly the derivative of the discrete
    solution for those steps: what reverse mode through the solver computes, less the
    (solver-tolerance sized) derivative of the step sizes themselves.
    """
    n = y0.shape[0]
    flat_theta, unravel_theta = ravel_pytree(theta)
    p = flat_theta.shape[0]
    m = n + p
    dtype = y0.dtype
    if p == 0:  # no parameters: ravel_pytree's empty vector is float32 whatever y0 is
        flat_theta = jnp.zeros((0,), dtype)
    # Tangent directions of theta for the m columns: zero for the y0 columns.
    theta_dirs = jnp.concatenate([jnp.zeros((p, n), dtype), jnp.eye(p, dtype=dtype)], axis=1)

    def vector_field(t, s, args):
        y, sens = s[:n], s[n:].reshape(n, m)

        def f(y_, th_):
            return dynamics.vector_field(t, y_, unravel_theta(th_))

        dy, f_lin = jax.linearize(f, y, args)
        dsens = jax.vmap(f_lin, in_axes=(1, 1), out_axes=1)(sens, theta_dirs)
        return jnp.concatenate([dy, dsens.reshape(-1)])

    s0 = jnp.concatenate([y0, jnp.eye(n, m, dtype=dtype).reshape(-1)])
    controller = solver.controller()
    if options.error_control == "states" and isinstance(controller, diffrax.PIDController):
        controller = eqx.tree_at(lambda c: c.norm, controller, _states_rms(n))
    base = solver.solver
    stepper = _unrolled.Unrolled(base) if _unrolled.supports(base) else base
    # Differentiated only in forward mode (second derivatives, e.g. a Laplace
    # approximation's Hessian); as fast as the default adjoint when not differentiated.
    out, aux = _run_diffeqsolve(vector_field, stepper, controller, diffrax.ForwardMode(), solver,
                                t0, times, s0, flat_theta)
    return out[:, :n], out[:, n:].reshape(-1, n, m), aux


def _forward_sensitivity_solve(dynamics, solver, options, t0, times, y0, theta):
    # diffrax offers forward mode only through its ForwardMode adjoint, one solve per
    # tangent, and reverse mode by sweeping back through the steps. Here a custom JVP
    # solves states and sensitivities together (one solve of the augmented system) and
    # returns the tangent as a contraction with the sensitivities. That tangent is linear
    # in the input tangent, so JAX transposes it for reverse mode (NUTS's grad): the
    # backward pass is one contraction, with no sweep through the solver's steps. Forward
    # mode (jvp, jacfwd, Hessians for the Laplace approximation) works too. Without
    # differentiation only the plain solve runs.
    x, unravel = ravel_pytree((y0, theta))

    @jax.custom_jvp
    def f(x, t0, times):
        y0_, theta_ = unravel(x)
        return _diffrax_solve(dynamics, solver, diffrax.RecursiveCheckpointAdjoint(), t0, times,
                              y0_, theta_)

    @f.defjvp
    def f_jvp(primals, tangents):
        x, t0, times = primals
        y0_, theta_ = unravel(x)
        ys, sens, aux = _augmented_solve(dynamics, solver, options, t0, times, y0_, theta_)
        # A failed solve has meaningless sensitivities; its contribution is masked
        # downstream, so give it zero ones rather than letting 0 * inf poison the gradient.
        sens = jnp.where(aux[0], sens, 0.0)
        ys_dot = jnp.einsum("tnm,m->tn", sens, tangents[0])
        aux_dot = jax.tree.map(
            lambda a: np.zeros(jnp.shape(a), jax.dtypes.float0), aux)
        return (ys, aux), (ys_dot, aux_dot)

    return f(x, t0, times)


@eqx.filter_jit
def _solve_compiled(dynamics, solver, adjoint, t0, times, y0, theta):
    # Called eagerly (e.g. a loop of simulator runs), the solve would otherwise be traced and
    # compiled again at every call, because the diffrax term closes over a new function each
    # time; under an outer jit this is inlined.
    if isinstance(adjoint, ForwardSensitivity):
        return _forward_sensitivity_solve(dynamics, solver, adjoint, t0, times, y0, theta)
    return _diffrax_solve(dynamics, solver, adjoint, t0, times, y0, theta)


def solve(
    dynamics: ODE,
    y0,
    theta: dict,
    times,
    *,
    solver: Solver | None = None,
    t0=None,
    doses=None,
) -> Trajectory:
    r"""Solve the dynamics from `t0` and return the states at `times`.

    Pure and safe under `jax.jit`, `jax.vmap` and `jax.grad`: a failed solve (too many
    steps, step size collapsed, non-finite states) is **returned** with `ok=False`, never
    raised.

    **Main arguments:**

    - `dynamics`: a `probde.ODE`.
    - `y0`: the state at `t0`, shape `(S,)`.
    - `theta`: dict of parameters passed to the vector field.
    - `times`: strictly increasing save times, shape `(T,)`; `times[0] >= t0`.

    **Other arguments:**

    - `solver`: a `probde.Solver` (default `probde.Solver()`: Tsit5, rtol = atol = 1e-6).
    - `t0`: the time of `y0`; defaults to `times[0]`.
    - `doses`: a list of `probde.Dose` (bolus jumps of a state, or constant-rate
      infusions). The solve restarts at each dose time, so the adaptive solver never steps
      across a discontinuity, and gradients stay exact across them. A time equal to a
      bolus's time sees the state before the dose. The ODE's own `events` (`probde.Event`)
      restart the solve in the same way.

    **Returns:** a `probde.Trajectory` (with doses, the step statistics are summed over the
    segments between doses).

    **Raises:** `ValueError` or `TypeError` for bad inputs, and for a `vector_field` that
    returns a Python list or tuple, calls NumPy on a traced value (`np.exp` instead of
    `jnp.exp`) or returns the wrong shape (see `probde.dynamics.check_vector_field`). The
    vector field is checked by an abstract evaluation (`jax.eval_shape`: tracing only, no
    arithmetic), so the same errors come eagerly and under `jax.jit`/`jax.vmap` (at trace
    time); a passed check is remembered, so that a loop of eager solves traces it once.

    **Example:**

    ```python
    >>> import jax.numpy as jnp, probde
    >>> decay = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    >>> traj = probde.solve(decay, jnp.array([1.0]), {"k": 0.5}, jnp.array([0.0, 1.0, 2.0]))
    >>> bool(traj.ok), round(float(traj.ys[2, 0]), 4)   # exp(-1) = 0.3679
    (True, 0.3679)
    >>> bolus = [probde.Dose(time=1.0, amount=1.0, state="x")]   # x jumps by 1 at t = 1
    >>> traj = probde.solve(decay, jnp.array([1.0]), {"k": 0.5}, jnp.array([1.0, 2.0]),
    ...                     t0=0.0, doses=bolus)
    >>> [round(float(v), 4) for v in traj.ys[:, 0]]   # before the dose; exp(-1) + exp(-0.5)
    [0.6065, 0.9744]

    ```
    """
    solver = Solver() if solver is None else solver
    _check_inputs(dynamics, y0, times, t0, solver)
    times = jnp.asarray(times)
    y0 = jnp.asarray(y0, dtype=jnp.result_type(float))
    times = times.astype(jnp.result_type(float))
    t0 = times[0] if t0 is None else jnp.asarray(t0, dtype=times.dtype)
    theta = jax.tree.map(jnp.asarray, theta)  # numbers as arrays: one compile for all values
    check_vector_field(dynamics.vector_field, "vector_field", t0, y0, theta,
                       (dynamics.num_states,), states=dynamics.state_names)
    if doses or dynamics.events:
        start = float(t0) if _is_concrete(t0) else None
        doses = _doses.check_doses(doses, dynamics.state_names, start)
        arrays = _doses.event_arrays(doses, dynamics.state_names)
        infusions = bool(np.any(arrays[2]))
        event_times, jumps, rates = (jnp.asarray(a, times.dtype) for a in arrays)
        return solve_with_events(dynamics, y0, theta, times, t0, event_times, jumps,
                                 rates if infusions else None, solver=solver)
    num_inputs = int(ravel_pytree((y0, theta))[0].shape[0])
    adjoint = solver.resolve_adjoint(num_inputs)
    ys, aux = _solve_compiled(dynamics, solver, adjoint, t0, times, y0, theta)
    # The flag and statistics are not differentiable; say so, so that downstream reductions
    # (jnp.all over experiments) are never asked for a derivative.
    ok, num_steps, num_accepted, num_rejected = jax.lax.stop_gradient(aux)
    return Trajectory(times, ys, ok, num_steps, num_accepted, num_rejected)


_WITH_RATE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _rate_dynamics(dynamics: ODE) -> ODE:
    """`dynamics` plus an infusion rate in theta; one object per ODE, so that repeated
    solves hit the compilation cache."""
    if dynamics not in _WITH_RATE:
        _WITH_RATE[dynamics] = ODE(_doses.with_rate(dynamics.vector_field),
                                   dynamics.state_names)
    return _WITH_RATE[dynamics]


def solve_with_events(dynamics: ODE, y0, theta, times, t0, event_times, jumps, rates=None,
                      *, solver: Solver) -> Trajectory:
    """A solve restarted at events (arrays, as `probde.dynamics.doses.pad_events` gives for
    one experiment): `event_times (K,)` (+inf for none), `jumps (K, S)`, and infusion rate
    changes `rates (K, S)` or None; and the ODE's own events (`probde.Event`), merged with
    them. Safe under jit/vmap/grad; see `solve(doses=...)`."""
    dyn = dynamics if rates is None else _rate_dynamics(dynamics)
    user_theta = theta
    theta = dict(theta)
    if rates is not None:
        theta[_doses.RATE] = jnp.zeros(y0.shape, y0.dtype)
    num_inputs = int(ravel_pytree((y0, theta))[0].shape[0])
    adjoint = solver.resolve_adjoint(num_inputs)

    def solve_one(y, s, e, ts, rate):
        th = theta if rates is None else dict(theta, **{_doses.RATE: rate})
        ys, aux = _solve_compiled(dyn, solver, adjoint, s, ts, y, th)
        ok, *stats = jax.lax.stop_gradient(aux)
        return ys, ok, tuple(stats)

    which = after = None
    if dynamics.events:
        event_times, jumps, rates, which = _events.merge(dynamics.events, user_theta, t0,
                                                         event_times, jumps, rates)
        after = _events.resetter(dynamics.events, user_theta)
    ys, ok, stats = _doses.solve_segments(solve_one, y0, t0, times, event_times, jumps, rates,
                                          which=which, after=after)
    return Trajectory(times, ys, ok, *stats)
