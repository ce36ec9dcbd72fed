"""Where the samplers and optimisers start: numpyro init strategies, uniform in
(-radius, radius) in the unconstrained space, with sites a model marks (a deep GP's weights)
started near zero or at their prior median; and the best of several such draws per chain
(`best_uniform_starts`, `NUTS(init_candidates=...)`)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from numpyro import handlers
from numpyro.infer import init_to_median, init_to_uniform
from numpyro.infer.util import initialize_model

from .._optim import SMALL_INIT, SMALL_INIT_RADIUS  # noqa: F401 (re-exported)

# Sample sites marked `infer={SMALL_INIT: True}` (a deep GP's weights) start in
# (-SMALL_INIT_RADIUS, SMALL_INIT_RADIUS) instead of (-init_radius, init_radius): weights
# drawn in (-2, 2) make a wild random function whose misfit drives the discrepancy's
# variance to zero before the weights can adapt, and at zero variance their gradient
# vanishes (SVI then ends with the discrepancy switched off).


# The start of numpyro's error when no feasible initial point was found (initialize_model);
# NUTS turns it into one that says what to check.
NO_START = "Cannot find valid initial parameters"


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


def best_uniform_starts(model_fn, key, num_chains: int, num_candidates: int, model_kwargs,
                        radius: float):
    """Starting points for `num_chains` MCMC chains, each the best (highest log density) of
    `num_candidates` feasible draws of `init_strategy(radius, model_fn)`: unconstrained, as
    numpyro's `MCMC.run(init_params=...)` takes them (leading chain dimension when
    `num_chains > 1`), on the host (numpyro's `pmap` refuses arrays laid out over devices).

    Why: a single uniform draw can land so deep in the prior's tail (lynx-hare: a log
    density of -64,000 where the posterior sits at -137) that the first adaptation window
    shrinks the step size to 1e-8 and the chain spends warmup and sampling in
    maximum-depth trees without arriving. numpyro has no option for this; Stan neither.
    The candidates are found together by numpyro's `initialize_model` (batched keys, each
    redrawn until its log density is finite, up to 100 times, as numpyro does for one) in
    one compiled program, which the persistent compilation cache keeps: no optimisation,
    and a second process does not compile it again. A chain whose candidates all stayed
    infeasible raises numpyro's error (`NO_START`).
    """
    keys = jax.random.split(key, num_chains * num_candidates)
    strategy = init_strategy(radius, model_fn, model_kwargs)

    # The log density only, not its gradient: tracing the gradient of a solve costs more
    # than the search itself (0.7 s of a fresh process's 1.2 s on lynx-hare). NUTS
    # evaluates the gradient at the chosen start, and a start where it is not finite
    # ends in rejected proposals, which the screening warmup sees.
    @jax.jit
    def search(keys):
        info = initialize_model(keys, model_fn, init_strategy=strategy,
                                model_kwargs=model_kwargs, validate_grad=False)[0]
        return info.z, info.potential_energy

    z, energy = search(keys)
    energy = np.asarray(energy, dtype=float).reshape(num_chains, num_candidates)
    energy = np.where(np.isfinite(energy), energy, np.inf)
    if not np.isfinite(energy).any(axis=1).all():
        raise RuntimeError(f"{NO_START} for every one of {num_candidates} candidates of "
                           "some chain")
    best = np.argmin(energy, axis=1)
    rows = np.arange(num_chains)

    def pick(x):
        x = np.asarray(x)
        x = x.reshape((num_chains, num_candidates) + x.shape[1:])[rows, best]
        return x[0] if num_chains == 1 else x

    return jax.tree.map(pick, z)
