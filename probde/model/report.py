"""Reporting a rejected proposal to the host from inside the compiled program.

numpyro's samplers keep no record of the points they reject inside a trajectory, and a
failed solve must never stop the run, so the model reports each rejection to the host. The
callback sits in the `True` branch of a `lax.cond`, so on sequential and parallel chains it
only runs when a proposal is rejected. (With vectorized chains `cond` becomes `select` and
the callback runs on every evaluation with the batch of flags.)

It is a `jax.pure_callback` whose (zero) result is added to the log density, not a
`jax.debug.callback`: a side-effecting callback anywhere in the program, even in a branch
never taken, cost about 150 us per log-density evaluation on CPU (measured with jax
0.10.2), several times the cost of the ODE solve itself. The host-side counter lives in
the inference layer (`probde.inference.failures.FailureCounter`), which passes it in.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def report(on_failure, rejected) -> jax.Array:
    """Call `on_failure(rejected)` on the host when `rejected` is true; return a zero to
    add to the log density (which keeps the callback in the program)."""
    flag = jax.lax.stop_gradient(rejected)
    dtype = jnp.result_type(float)

    def host(flag):
        on_failure(flag)
        return np.zeros(np.shape(flag), dtype)

    def call():
        return jax.pure_callback(host, jax.ShapeDtypeStruct(jnp.shape(flag), dtype), flag,
                                 vmap_method="expand_dims")

    zero = jax.lax.cond(flag, call, lambda: jnp.zeros(jnp.shape(flag), dtype))
    return jax.lax.stop_gradient(zero)
