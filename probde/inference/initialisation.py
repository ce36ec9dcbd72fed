"""Where the samplers and optimisers start: numpyro init strategies, uniform in
(-radius, radius) in the unconstrained space, with sites a model marks (a deep GP's weights)
started near zero or at their prior median."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from numpyro import handlers
from numpyro.infer import init_to_median, init_to_uniform

from .._optim import SMALL_INIT, SMALL_INIT_RADIUS  # noqa: F401 (re-exported)

# Sample sites marked `infer={SMALL_INIT: True}` (a deep GP's weights) start in
# (-SMALL_INIT_RADIUS, SMALL_INIT_RADIUS) instead of (-init_radius, init_radius): weights
# drawn in (-2, 2) make a wild random function whose misfit drives the discrepancy's
# variance to zero before the weights can adapt, and at zero variance their gradient
# vanishes (SVI then ends with the discrepancy switched off).


def init_strategy(radius: float, model_fn=None, model_kwargs=None):
    """numpyro init strategy: uniform in (-radius, radius) in the unconstrained space;
    for a model with sites marked `infer={SMALL_INIT: ...}` (a deep GP's weights and
    hyperparameters) those start in (-0.1, 0.1) or at their prior median. A model with no
    marked site (or that cannot be traced without its arguments) gets numpyro's own
    `init_to_uniform`, unchanged. Returns a `functools.partial`, as numpyro expects."""
    if model_fn is None or not _has_marked_sites(model_fn, model_kwargs or {}):
        return init_to_uniform(radius=radius)
    return functools.partial(_init_uniform_or_small, radius=radius)


def _has_marked_sites(model_fn, model_kwargs) -> bool:
    found = {}

    def probe():
        with handlers.block(), handlers.seed(rng_seed=0):
            tr = handlers.trace(model_fn).get_trace(**model_kwargs)
        found["marked"] = any(
            (site.get("infer") or {}).get(SMALL_INIT)
            for site in tr.values() if site["type"] == "sample"
        )
        return jnp.zeros(())

    try:
        jax.eval_shape(probe)
    except Exception:  # noqa: BLE001 - a model function that needs its data: no marks
        return False
    return bool(found.get("marked", False))


def _init_uniform_or_small(site=None, radius=2.0):
    if site is None:
        return functools.partial(_init_uniform_or_small, radius=radius)
    mark = (site.get("infer") or {}).get(SMALL_INIT, False)
    if mark == "median":
        return init_to_median(site)
    return init_to_uniform(site, radius=SMALL_INIT_RADIUS if mark else radius)
