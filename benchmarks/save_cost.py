"""What saving at the observation times costs the forward-sensitivity solve (lynx-hare).

    taskset -c 0 python benchmarks/save_cost.py [--out benchmarks/results_save_cost.json]

probde's gradient solves the augmented system (2 states and their sensitivities to 8
inputs: 18 numbers) once, saved at the 21 observation times. This script times one jitted
solve of that system, and of the plain 2-state system, at the reference point of
`benchmarks/lynx_hare.py` (Tsit5, rtol = atol = 1e-6, the step size controlled on the
states; the augmented system with diffrax's `ForwardMode` adjoint, as probde solves it,
the plain one with diffrax's default), with different ways of saving:

- `SaveAt(ts=times)`: what probde does (diffrax interpolates inside the steps);
- `SaveAt(ts=...)` at only the first and last time: the cost of the machinery, not of the
  number of saves;
- `SaveAt(t1=True)`: the end only (the floor for the same steps);
- `SaveAt(steps=True)`: every step, into a `max_steps`-row buffer;
- segments: one solve per interval between observation times inside a `lax.scan`, each
  saving its end and resuming the previous segment's solver and controller state (steps
  then end exactly on the observation times, so there are more of them);
- diffrax's own Tsit5 instead of probde's unrolled stages, with `ts` and `t1`;
- a solver wrapper that keeps the save buffer in its own state (diffrax keeps the solver
  state of accepted steps only) and fills it from the step's dense output, solved with
  `SaveAt(t1=True, solver_state=True)`: saving in the steps that contain an observation
  only (exact: the same values as `ts`), and two ablations, one interpolation per step
  without the loop, and the loop writing the step's end without interpolating.

Each figure: the median (and min, max) over 7 blocks of about 0.3 s of back-to-back calls,
one call's time. Run it pinned to one core: unpinned, XLA's thread hand-offs on a small
machine make single calls erratic.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import probde  # noqa: E402
from probde.dynamics import _unrolled  # noqa: E402
from probde.dynamics.solve import _states_rms  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
N, P = 2, 6  # states; parameters (the 4 rates and 2 the field does not read: 8 inputs)
M = N + P
THETA = jnp.array([0.55, 0.028, 0.80, 0.024, 0.0, 0.0])
Y0 = jnp.array([33.9, 5.9])


def lotka_volterra(t, y, th):
    u, v = y
    return jnp.stack([(th[0] - th[1] * v) * u, (-th[2] + th[3] * u) * v])


_DIRS = jnp.concatenate([jnp.zeros((P, N)), jnp.eye(P)], axis=1)


def augmented(t, s, th):
    """dy/dt = f, dS/dt = J_y f S + [0 | J_theta f] (as probde's `_augmented_solve`)."""
    y, sens = s[:N], s[N:].reshape(N, M)
    dy, lin = jax.linearize(lambda y_, th_: lotka_volterra(t, y_, th_), y, th)
    ds = jax.vmap(lin, in_axes=(1, 1), out_axes=1)(sens, _DIRS)
    return jnp.concatenate([dy, ds.reshape(-1)])


S0 = jnp.concatenate([Y0, jnp.eye(N, M).reshape(-1)])


def _setup(unrolled):
    stepper = _unrolled.Unrolled(diffrax.Tsit5()) if unrolled else diffrax.Tsit5()
    ctrl = eqx.tree_at(lambda c: c.norm, diffrax.PIDController(rtol=1e-6, atol=1e-6),
                       _states_rms(N))
    return stepper, ctrl


def one_solve(field, y0, times, saveat, unrolled=True):
    """The augmented system with diffrax's `ForwardMode` adjoint, as probde solves it (its
    loops are plain `lax.while_loop`s); the plain system with the default adjoint."""
    stepper, ctrl = _setup(unrolled)
    adjoint = diffrax.ForwardMode() if field is augmented else diffrax.RecursiveCheckpointAdjoint()

    @jax.jit
    def run(th):
        sol = diffrax.diffeqsolve(diffrax.ODETerm(field), stepper, times[0], times[-1], None,
                                  y0, args=th, saveat=saveat, stepsize_controller=ctrl,
                                  max_steps=4096, throw=False, adjoint=adjoint)
        return sol.ys, sol.stats["num_steps"]

    return run


class SavingSolver(_unrolled.Unrolled):
    """probde's unrolled `solver`, saving its dense output at `ts` into its own state
    (`mode` "save"), or one of two ablations ("interpolate": one interpolation a step, no
    loop; "loop": the loop over the save times in the step, writing the step's end)."""

    ts: jax.Array = None
    mode: str = eqx.field(static=True, default="save")

    def init(self, terms, t0, t1, y0, args):
        first = self.ts[0] <= t0
        buf = jnp.zeros((self.ts.shape[0],) + y0.shape, y0.dtype)
        return (super().init(terms, t0, t1, y0, args),
                jnp.where(first, buf.at[0].set(y0), buf), jnp.where(first, 1, 0))

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        inner, buf, idx = solver_state
        y1, err, dense, inner, result = super().step(terms, t0, t1, y0, args, inner, made_jump)
        interp = self.solver.interpolation_cls(t0=t0, t1=t1, **dense)
        n = self.ts.shape[0]

        def cond(c):
            return (c[0] < n) & (self.ts[jnp.minimum(c[0], n - 1)] <= t1)

        if self.mode == "interpolate":
            buf = buf.at[0].add(interp.evaluate(0.5 * (t0 + t1)))
        else:
            value = (lambda i: interp.evaluate(self.ts[i])) if self.mode == "save" else (
                lambda i: y1)
            idx, buf = jax.lax.while_loop(
                cond, lambda c: (c[0] + 1, c[1].at[c[0]].set(value(c[0]))), (idx, buf))
        return y1, err, dense, (inner, buf, idx), result


def wrapped(field, y0, times, mode):
    _, ctrl = _setup(True)
    solver = SavingSolver(diffrax.Tsit5(), times, mode)

    @jax.jit
    def run(th):
        sol = diffrax.diffeqsolve(diffrax.ODETerm(field), solver, times[0], times[-1], None,
                                  y0, args=th, saveat=diffrax.SaveAt(t1=True, solver_state=True),
                                  stepsize_controller=ctrl, max_steps=4096, throw=False,
                                  adjoint=diffrax.ForwardMode())
        return sol.solver_state[1], sol.stats["num_steps"]

    return run


def segments(field, y0, times):
    """One solve per observation interval, each resuming the last one's solver state."""
    stepper, ctrl = _setup(True)
    term = diffrax.ODETerm(field)
    save = diffrax.SaveAt(t1=True, solver_state=True, controller_state=True)
    adjoint = diffrax.ForwardMode() if field is augmented else diffrax.RecursiveCheckpointAdjoint()

    @jax.jit
    def run(th):
        def solve(y, ta, tb, state=None):
            extra = {} if state is None else {"solver_state": state[0],
                                              "controller_state": state[1]}
            return diffrax.diffeqsolve(term, stepper, ta, tb, None, y, args=th, saveat=save,
                                       stepsize_controller=ctrl, max_steps=4096, throw=False,
                                       adjoint=adjoint, **extra)

        first = solve(y0, times[0], times[1])

        def step(carry, tt):
            y, ss, cs, steps = carry
            sol = solve(y, tt[0], tt[1], (ss, cs))
            return ((sol.ys[-1], sol.solver_state, sol.controller_state,
                     steps + sol.stats["num_steps"]), sol.ys[-1])

        carry0 = (first.ys[-1], first.solver_state, first.controller_state,
                  first.stats["num_steps"])
        carry, ys = jax.lax.scan(step, carry0, (times[1:-1], times[2:]))
        return jnp.concatenate([y0[None], first.ys, ys]), carry[3]

    return run


def timed(fn) -> dict:
    out = jax.block_until_ready(fn(THETA))
    blocks = []
    for _ in range(7):
        k, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.3:
            jax.block_until_ready(fn(THETA))
            k += 1
        blocks.append((time.perf_counter() - t0) / k * 1e6)
    return {"us_min": min(blocks), "us_median": statistics.median(blocks),
            "us_max": max(blocks), "steps": int(out[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results_save_cost.json")
    args = parser.parse_args()
    times = jnp.asarray(probde.datasets.lynx_hare().times)
    ts, t1 = diffrax.SaveAt(ts=times), diffrax.SaveAt(t1=True)
    ends = diffrax.SaveAt(ts=times[jnp.array([0, times.shape[0] - 1])])
    cases = {
        "plain, ts (21 saves)": one_solve(lotka_volterra, Y0, times, ts),
        "plain, t1": one_solve(lotka_volterra, Y0, times, t1),
        "plain, segments": segments(lotka_volterra, Y0, times),
        "augmented, ts (21 saves)": one_solve(augmented, S0, times, ts),
        "augmented, ts at the first and last time only": one_solve(augmented, S0, times, ends),
        "augmented, t1": one_solve(augmented, S0, times, t1),
        "augmented, steps=True": one_solve(augmented, S0, times, diffrax.SaveAt(steps=True)),
        "augmented, segments": segments(augmented, S0, times),
        "augmented, diffrax Tsit5, ts": one_solve(augmented, S0, times, ts, unrolled=False),
        "augmented, diffrax Tsit5, t1": one_solve(augmented, S0, times, t1, unrolled=False),
        "augmented, wrapper saving in its state": wrapped(augmented, S0, times, "save"),
        "augmented, wrapper, one interpolation a step": wrapped(augmented, S0, times,
                                                                "interpolate"),
        "augmented, wrapper, loop without interpolation": wrapped(augmented, S0, times, "loop"),
    }
    ref = cases["augmented, ts (21 saves)"](THETA)[0]
    seg = cases["augmented, segments"](THETA)[0]
    saved = cases["augmented, wrapper saving in its state"](THETA)[0]
    results = {"max_abs_diff_segments_vs_ts": float(jnp.max(jnp.abs(seg - ref))),
               "max_abs_diff_wrapper_vs_ts": float(jnp.max(jnp.abs(saved - ref))),
               "max_abs_value": float(jnp.max(jnp.abs(ref))), "cases": {}}
    for name, fn in cases.items():
        r = timed(fn)
        results["cases"][name] = r
        print(f"{name:48s} {r['us_min']:7.1f} / {r['us_median']:7.1f} / {r['us_max']:7.1f} us"
              f"   steps {r['steps']}", flush=True)
    print("wrapper vs ts, largest absolute difference:", results["max_abs_diff_wrapper_vs_ts"])
    print("segments vs ts, largest absolute difference:",
          results["max_abs_diff_segments_vs_ts"], "of values up to", results["max_abs_value"])
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
