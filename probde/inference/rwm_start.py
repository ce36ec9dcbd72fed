"""Where `probde.RandomWalkMetropolis(start=...)` starts: draws of an earlier fit, mapped to
the unconstrained space, and their covariance for the first proposal."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import random
from numpyro.distributions.transforms import biject_to


def start_points(supports, posterior, key, num_chains: int):
    """`(starts, cov, n)`: one random draw per chain of `posterior` (names to draws
    `(chain, draw, ...)`, constrained) for the sites of `supports` (names to their
    supports), unconstrained, as numpyro's `init_params` take them (leading chain dimension
    when `num_chains > 1`); the covariance `(d, d)` of the `n` finite draws, flattened in
    `ravel_pytree`'s order (sorted names)."""
    names = sorted(supports)
    missing = [n for n in names if n not in posterior]
    if missing:
        raise ValueError(
            f"start must hold posterior draws of every parameter of this model; missing "
            f"{missing} (it has {sorted(posterior)})")
    flat, shapes = [], {}
    for name in names:
        x = jnp.asarray(posterior[name])
        x = jnp.reshape(x, (-1,) + tuple(x.shape[2:]))  # (chain * draw, ...)
        u = biject_to(supports[name]).inv(x)
        shapes[name] = tuple(u.shape[1:])
        flat.append(jnp.reshape(u, (u.shape[0], -1)))
    flat = np.asarray(jnp.concatenate(flat, axis=1), dtype=float)
    flat = flat[np.all(np.isfinite(flat), axis=1)]
    if flat.shape[0] < 2:
        raise ValueError("start has fewer than 2 finite posterior draws")
    cov = np.atleast_2d(np.cov(flat.T))
    rows = flat[np.asarray(random.choice(key, flat.shape[0], (num_chains,)))]
    dtype = jnp.result_type(float)
    starts, at = {}, 0
    for name in names:
        size = int(np.prod(shapes[name], dtype=int))
        starts[name] = jnp.asarray(
            rows[:, at:at + size].reshape((num_chains,) + shapes[name]), dtype)
        at += size
    if num_chains == 1:
        starts = {k: v[0] for k, v in starts.items()}
    return starts, cov, float(flat.shape[0])


def _start_draws(start):
    """The posterior draws of `RandomWalkMetropolis(start=...)`: a mapping from names to
    arrays `(chain, draw, ...)`, from a result, a DataTree or a mapping."""
    idata = getattr(start, "idata", start)
    try:
        posterior = idata["posterior"]
    except (KeyError, TypeError, IndexError):
        posterior = None
    if posterior is not None and hasattr(posterior, "data_vars"):
        return {name: np.asarray(posterior[name].values) for name in posterior.data_vars}
    if isinstance(start, dict) and all(hasattr(v, "shape") or isinstance(v, (list, float))
                                       for v in start.values()):
        return {k: np.asarray(v) for k, v in start.items()}
    raise TypeError(
        "start must be a probde.InferenceResult, an ArviZ DataTree with a posterior group, or "
        f"a dict of posterior draws (chain, draw, ...); got {type(start).__name__}")
