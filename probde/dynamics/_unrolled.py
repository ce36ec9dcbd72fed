"""An explicit Runge–Kutta step with its stages unrolled, for solves with wide states.

diffrax computes the stages of a Runge–Kutta step inside a `while_loop` over stages (so
that implicit and explicit tableaus share one code path). On CPU, XLA unrolls that loop
only when the state is tiny (up to about four numbers here); for wider states, such as the
states plus sensitivities of `probde.ForwardSensitivity`, each stage then runs as a dozen
separate kernels with about a microsecond of dispatch each, and a 14-number Tsit5 solve
costs five to eight times a 2-number one although the arithmetic barely grows. diffrax has
no option to unroll the stage loop, so this wrapper does it: the same Butcher tableau, the
same error estimate and the same dense interpolation (the wrapped solver's), written as
straight-line code that XLA fuses into a few kernels per step.
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp


def supports(solver) -> bool:
    """Whether `solver` is an explicit Runge–Kutta method with a single Butcher tableau
    (Tsit5, Dopri5, Dopri8, Bosh3, Heun, ...), which `Unrolled` can wrap."""
    return (
        isinstance(solver, diffrax.AbstractERK)
        and isinstance(getattr(solver, "tableau", None), diffrax.ButcherTableau)
        and getattr(solver, "interpolation_cls", None) is not None
    )


def _combine(coeffs, ks, dtype):
    # sum_j coeffs[j] * ks[j] over the nonzero coefficients, as elementwise arithmetic that
    # XLA fuses (a dot against the stacked stages would be a separate kernel per stage).
    out = None
    for c, k in zip(coeffs, ks):
        c = float(c)
        if c == 0.0:
            continue
        term = jnp.asarray(c, dtype) * k
        out = term if out is None else out + term
    return jnp.zeros_like(ks[0]) if out is None else out


class Unrolled(diffrax.AbstractAdaptiveSolver):
    """`solver` (an explicit diffrax Runge–Kutta method) with its stages unrolled.

    For a single array state and an `ODETerm`. Takes the same steps as `solver` up to
    floating-point rounding, with the same error estimate and dense output.
    """

    solver: diffrax.AbstractERK

    def __check_init__(self):
        if not supports(self.solver):
            raise TypeError(f"Unrolled wraps an explicit Runge-Kutta solver; got {self.solver!r}")

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):  # pyright: ignore
        return self.solver.interpolation_cls

    def order(self, terms):
        return self.solver.order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def init(self, terms, t0, t1, y0, args):
        # The first stage of the first step, evaluated once here; afterwards the last
        # stage of each step is the first of the next (FSAL), when the tableau allows.
        return terms.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        tableau = self.solver.tableau
        dt = t1 - t0
        dtype = y0.dtype
        f0 = solver_state
        if not tableau.fsal:
            f0 = terms.vf(t0, y0, args)
        elif made_jump is not False:
            f0 = jax.lax.cond(made_jump, lambda: terms.vf(t0, y0, args), lambda: f0)
        ks = [f0 * dt]
        f_i = f0
        y_i = y0
        for c_i, a_i in zip(tableau.c, tableau.a_lower):
            y_i = y0 + _combine(a_i, ks, dtype)
            t_i = t1 if float(c_i) == 1.0 else t0 + jnp.asarray(float(c_i), dtype) * dt
            f_i = terms.vf(t_i, y_i, args)
            ks.append(f_i * dt)
        y1 = y_i if tableau.ssal else y0 + _combine(tableau.b_sol, ks, dtype)
        y_error = _combine(tableau.b_error, ks, dtype)
        dense_info = dict(y0=y0, y1=y1, k=jnp.stack(ks))
        # With FSAL the last stage is f(t1, y1): the next step's first stage.
        new_state = f_i if tableau.fsal else f0
        return y1, y_error, dense_info, new_state, diffrax.RESULTS.successful


__all__ = ["Unrolled", "supports"]
