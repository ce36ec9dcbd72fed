"""NUTS chains on a latent path (`probde.LatentPath`) compared by their parameters' density.

NUTS's stuck-chain screen (`restart.far_below`) compares the chains' joint log densities.
With a latent path that density has thousands of dimensions, and its spread within one
mode (about the square root of half the dimension, 45 nats for the 4,000 increments of
the sparse FitzHugh-Nagumo benchmark) hides a chain in a minor mode: there one chain in
four settled where the observation noise explains the data (sigma 0.55 against 0.1),
117 nats below the others in joint density, under the screen's 5-sd threshold
(`benchmarks/RESULTS.md`). What tells the modes apart is the density of the parameters
alone, the path integrated out; that chain's was 30 nats below the others'.

A particle filter estimates it: `score` runs the model with its likelihood replaced by a
`ParticleFilter` on the latent path's own grid (the same Euler-Maruyama steps, so that it
estimates the marginal of the very density NUTS samples), at each chain's parameters,
and returns the median of a few independent estimates of the log density (prior and
Jacobian included, as NUTS's potential). No library offers a marginal-density screen
for chains; numpyro's `MCMC` cannot move chains at all.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.infer.util import potential_energy

from ..model import sites
from ..model.latent import path_grid
from .particle import ParticleFilter
from .particle_checks import _with_likelihood

NUM_ESTIMATES = 8  # particle-filter estimates per chain; their median is the score


def scorer(model, prepared, num_particles: int):
    """`score(z, key) -> (chains,)` for a latent-path model on `prepared` data: each
    chain's (leading axis of `z`, NUTS's unconstrained positions) log density of the
    parameters with the path integrated out, the median of `NUM_ESTIMATES` particle-filter
    estimates with `num_particles` particles."""
    _, _, index = path_grid(model, prepared)
    counts = np.diff(np.concatenate([[0], np.asarray(index)]))
    pf = ParticleFilter(num_particles=num_particles, num_steps=max(int(counts.max()), 1),
                        solver=model.likelihood.solver)
    fn = _with_likelihood(model, pf).numpyro_model(prepared)

    def one(z, key):
        params = {k: v for k, v in z.items() if k not in sites.PATH_SITES}

        def estimate(k):
            return -potential_energy(handlers.seed(fn, k), (), {"observed": True}, params)

        return jnp.median(jax.vmap(estimate)(jax.random.split(key, NUM_ESTIMATES)))

    chains = jax.jit(jax.vmap(one))

    def score(z, key):
        z = jax.tree.map(np.asarray, z)  # parallel chains' states lie on several devices
        num_chains = np.shape(jax.tree.leaves(z)[0])[0]
        return np.asarray(chains(z, jax.random.split(key, num_chains)))

    return score
