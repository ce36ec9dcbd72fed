"""The posterior mode and the Laplace approximation there as starting points for MCMC
(`NUTS(init="map")`).

Kept apart from the method classes: `probde.NUTS` uses it, and it uses the same fitting
code as `probde.Laplace` (whose defaults, `LAPLACE_NUM_STEPS` and
`LAPLACE_LEARNING_RATE`, live here), so neither methods module imports the other.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import random

from numpyro import handlers
from numpyro.infer.util import log_density, unconstrain_fn

from .._optim import default_optimizer
from ._options import check_init_radius
from .guide_draws import guide_draws, site_kinds
from .guide_fit import fit
from .guides import laplace_guide
from .loss_trace import check_fit

# `probde.Laplace`'s defaults, which the mode search of `NUTS(init="map")` uses too.
LAPLACE_NUM_STEPS = 2000
LAPLACE_LEARNING_RATE = 1e-2


def laplace_starts(model_fn, key, num_chains, model_kwargs, init_radius, progress_bar):
    """Starting points for MCMC chains from the Laplace approximation (`NUTS(init="map")`):
    the MAP found by `probde.Laplace` (default settings), then one draw per chain from
    the normal approximation there, in the unconstrained space (the form numpyro's
    `MCMC.run(init_params=...)` takes), with a leading chain dimension when
    `num_chains > 1`. Draws whose log density is not finite are replaced by the MAP."""
    check_init_radius(init_radius)
    guide = laplace_guide(model_fn, init_radius)
    key_fit, key_draw = random.split(key)
    params, losses, skipped, _ = fit(
        model_fn, guide, default_optimizer(LAPLACE_LEARNING_RATE, LAPLACE_NUM_STEPS), 1,
        LAPLACE_NUM_STEPS, key_fit, progress_bar, model_kwargs,
    )
    check_fit("NUTS(init='map')", losses, skipped, LAPLACE_NUM_STEPS)
    latent, _ = site_kinds(model_fn, model_kwargs)
    drawn = guide_draws(guide, params, key_draw, num_chains + 1, latent, model_kwargs)
    mode = guide.median(params)
    seeded = handlers.seed(model_fn, rng_seed=0)

    def unconstrained(sample):
        return unconstrain_fn(seeded, (), model_kwargs, sample)

    def finite(sample):
        return jnp.isfinite(log_density(seeded, (), model_kwargs, sample)[0])

    ok = np.asarray(jax.vmap(finite)({k: v[:num_chains] for k, v in drawn.items()}))
    starts = jax.vmap(unconstrained)({k: v[:num_chains] for k, v in drawn.items()})
    at_mode = unconstrained({k: mode[k] for k in latent})
    starts = {
        k: jnp.where(jnp.reshape(ok, (-1,) + (1,) * (v.ndim - 1)), v, at_mode[k][None])
        for k, v in starts.items()
    }
    if num_chains == 1:
        starts = {k: v[0] for k, v in starts.items()}
    return starts
