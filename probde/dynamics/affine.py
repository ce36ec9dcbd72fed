"""Is an SDE linear? Read off its program, not guessed from values.

The Gaussian filters discretise a linear SDE (`dX = (A X + b) dt + L dW` with `A`, `b`, `L`
free of `x` and `t`) exactly, and much faster than they solve the moment equations. A user
should not have to know to declare it: `probde.SDE(linear=None)` (the default) asks
`is_affine`, which traces `A = df/dx`, `b = f(t, 0)` and `L` with JAX and follows the data
flow of the traced program from the inputs `t` and `x` to those outputs. If none of them
can be reached, the SDE is linear for every parameter value, exactly (no tolerance, no
sample points). The analysis is conservative: a primitive whose insides it does not follow
(a loop, a branch, a callback) counts as depending on all its inputs, so it can miss a
linear SDE (the filter then solves the moment equations, as before) but never calls a
nonlinear one linear. JAX has no such query, hence this module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

# Primitives whose inner program is followed (inputs map one to one onto its inputs).
_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr",
          "custom_jvp_call": "call_jaxpr", "remat": "jaxpr", "checkpoint": "jaxpr"}


def is_affine(sde, theta, like) -> bool:
    """True when `sde`'s drift is affine in `x` with matrix and offset free of `t`, and
    its diffusion is free of `x` and `t`, for the parameters' structure `theta` (their
    values are not used) and a state like `like` `(S,)`."""
    x = jnp.zeros(jnp.shape(like), jnp.result_type(like, float))
    t = jnp.zeros((), x.dtype)

    def parts(t, x, theta):
        A = jax.jacfwd(sde.drift, argnums=1)(t, x, theta)
        b = sde.drift(t, jnp.zeros_like(x), theta)
        return A, b, sde.noise_matrix(t, x, theta)

    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)),
                          theta)
    try:
        closed = jax.make_jaxpr(parts)(t, x, shapes)
    except Exception:  # noqa: BLE001 (not traceable this way: not known to be linear)
        return False
    n_theta = len(jax.tree.leaves(theta))
    return not any(_reaches(closed.jaxpr, [True, True] + [False] * n_theta))


def _reaches(jaxpr, marked) -> list[bool]:
    """For each output of `jaxpr`, whether it depends on a `marked` input."""
    dep = {v: m for v, m in zip(jaxpr.invars, marked)}

    def of(v):
        return not isinstance(v, jcore.Literal) and dep.get(v, False)

    for eqn in jaxpr.eqns:
        ins = [of(v) for v in eqn.invars]
        name = eqn.primitive.name
        inner = eqn.params.get(_CALLS.get(name, ""), None)
        if inner is not None and any(ins):
            inner = inner.jaxpr if hasattr(inner, "jaxpr") else inner
            outs = _reaches(inner, ins) if len(inner.invars) == len(ins) else [True] * len(
                eqn.outvars)
        else:
            outs = [any(ins)] * len(eqn.outvars)
        for v, d in zip(eqn.outvars, outs):
            dep[v] = d
    return [of(v) for v in jaxpr.outvars]


def is_affine_map(fn, like) -> bool:
    """True when `fn(x)` is affine in `x` for states like `like`: its Jacobian, traced, does
    not depend on `x` (values `fn` closes over are constants of the trace). Conservative, as
    `is_affine`."""
    x = jnp.zeros(jnp.shape(like), jnp.result_type(like, float))
    try:
        closed = jax.make_jaxpr(jax.jacfwd(fn))(x)
    except Exception:  # noqa: BLE001 (not traceable this way: not known to be affine)
        return False
    return not any(_reaches(closed.jaxpr, [True]))
