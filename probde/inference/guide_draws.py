"""Draws from a fitted guide as posterior draws: the model's latent sites from the guide,
its deterministic sites and log density from one run of the model per draw, shaped like
one chain of MCMC draws."""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax, random

from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer import Predictive
from numpyro.infer.autoguide import AutoLaplaceApproximation
from numpyro.infer.util import log_density, potential_energy


def site_kinds(model_fn, model_kwargs):
    """Names of the model's latent sample sites and deterministic sites (an abstract trace:
    no solve is run)."""
    found = {}

    def probe():
        with handlers.block(), handlers.seed(rng_seed=0):
            tr = handlers.trace(model_fn).get_trace(**model_kwargs)
        found["latent"] = [
            k for k, s in tr.items() if s["type"] == "sample" and not s["is_observed"]
        ]
        found["deterministic"] = [k for k, s in tr.items() if s["type"] == "deterministic"]
        return jnp.zeros(())

    jax.eval_shape(probe)
    return found["latent"], found["deterministic"]


def unconstrained_shapes(model_fn, model_kwargs):
    """`{name: shape}` of the model's latent sites in the unconstrained space, in the
    model's order (an abstract trace: no solve is run)."""
    found = {}

    def probe():
        with handlers.block(), handlers.seed(rng_seed=0):
            tr = handlers.trace(model_fn).get_trace(**model_kwargs)
        found["shapes"] = {
            k: tuple(jnp.shape(biject_to(s["fn"].support).inv(s["value"])))
            for k, s in tr.items() if s["type"] == "sample" and not s["is_observed"]
        }
        return jnp.zeros(())

    jax.eval_shape(probe)
    return found["shapes"]


def flat_potential(model_fn, model_kwargs, shapes):
    """numpyro's potential energy (the negative log density in the unconstrained space,
    Jacobians included) as a function of one flat vector: the latent sites `{name: shape}`
    (unconstrained shapes, in the model's order, the order of numpyro's autoguides)
    concatenated. The model runs seeded (its sample sites are all given, so the seed only
    matters to a model that draws outside them)."""
    names = list(shapes)
    sizes = [math.prod(s) for s in shapes.values()]
    seeded = handlers.seed(model_fn, rng_seed=0)

    def unravel(flat):
        parts = jnp.split(flat, np.cumsum(sizes)[:-1])
        return {k: jnp.reshape(p, shapes[k]) for k, p in zip(names, parts, strict=True)}

    def energy(flat):
        return potential_energy(seeded, (), model_kwargs, unravel(flat))

    return energy


def flat_labels(shapes) -> tuple:
    """One label per coordinate of the flattened sites `{name: shape}`: `"mu"`,
    `"beta[0]"`, `"w[1,2]"`."""
    return tuple(
        name if not shape else f"{name}[{','.join(map(str, idx))}]"
        for name, shape in shapes.items() for idx in np.ndindex(*shape)
    )


def guide_draws(guide, params, key, num_draws, latent, model_kwargs):
    """`num_draws` draws of the model's latent sites (constrained) from the fitted guide,
    without running the model. A guide's own sample sites carry the model's names; the
    Laplace guide's sites sit at its `loc` parameter (its MAP), so the draws of its normal
    approximation in the unconstrained space are put there one at a time."""
    if isinstance(guide, AutoLaplaceApproximation):
        loc_name = f"{guide.prefix}_loc"
        def sample(key):
            posterior = guide.get_posterior(params)  # the Hessian, once
            return jax.vmap(posterior.sample)(random.split(key, num_draws))

        latent_draws = jax.jit(sample)(key)

        def at(z):
            tr = handlers.trace(handlers.substitute(guide, data={**params, loc_name: z}))
            tr = tr.get_trace(**model_kwargs)
            return {k: tr[k]["value"] for k in latent}

        drawn = jax.jit(jax.vmap(at))(latent_draws)
        if num_draws > 1 and not np.any(np.ptp(np.asarray(latent_draws), axis=0) > 0):
            # stacklevel 8: from `draws` under `Laplace.run`, the caller of `probde.infer`
            warnings.warn(
                "Laplace: the Hessian of the negative log density at the mode is not "
                "positive definite (the mode is a saddle or the posterior is flat in some "
                "direction), so every draw is the mode; use probde.SVI or probde.NUTS, or "
                "tighten the priors",
                stacklevel=8,
            )
        return drawn
    drawn = Predictive(guide, params=params, num_samples=num_draws, return_sites=latent)(
        key, **model_kwargs
    )
    return {k: drawn[k] for k in latent}


def draws(model_fn, guide, params, num_draws, key, model_kwargs):
    """`(samples, stats)` for `num_draws` draws of the fitted guide: the latent and
    deterministic sites, and `lp` (the model's log density in the unconstrained space,
    as NUTS reports it), `diverging` (False) and `n_steps` (1), all with a leading chain
    dimension of 1."""
    latent, deterministic = site_kinds(model_fn, model_kwargs)
    key_guide, key_model = random.split(key)
    drawn = guide_draws(guide, params, key_guide, num_draws, latent, model_kwargs)
    seeded = handlers.seed(model_fn, rng_seed=key_model)

    def one(sample):
        # One run of the model per draw gives both the deterministic sites and the log
        # density: the log joint at the constrained values plus log|det J| of the map
        # from the unconstrained space (numpyro's potential_energy, negated).
        log_joint, tr = log_density(seeded, (), model_kwargs, sample)
        for name in latent:
            site = tr[name]
            t = biject_to(site["fn"].support)
            x = site["value"]
            log_joint = log_joint + jnp.sum(t.log_abs_det_jacobian(t.inv(x), x))
        return log_joint, {k: tr[k]["value"] for k in deterministic}

    lp, det = jax.jit(lambda d: lax.map(one, d, batch_size=min(num_draws, 64)))(drawn)
    samples = {**drawn, **det}
    samples = {k: np.asarray(v)[None] for k, v in samples.items()}
    stats = {
        "lp": np.asarray(lp)[None],
        "diverging": np.zeros((1, num_draws), dtype=bool),
        "n_steps": np.ones((1, num_draws), dtype=np.int32),
    }
    return samples, stats
