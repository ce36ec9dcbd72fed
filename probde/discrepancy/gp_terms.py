"""The two terms of a GP discrepancy: integrated out (marginal) or latent (non-centred).

`GPDiscrepancy.term` (and so `MarkovGPDiscrepancy` and the emulator's `NoDiscrepancy`)
picks one by the noise model: Gaussian noise on the link scale lets the GP be integrated
out exactly (`MarginalGP`, dense or Kalman algebra); any other noise needs the GP's values
as latent variables, drawn non-centred (standard normal `z`, scaled by the Cholesky factor
of the prior covariance).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from .base import DiscrepancyInputs, DiscrepancyTerm
from .marginal import MarginalGP


def sample_hyperparameters(disc, names, num: int) -> dict:
    """The discrepancy's inferred hyperparameters (numpyro sites), each broadcast to
    `(num,)`: one value per observable with a discrepancy."""
    out = {}
    for arg, prior in disc.priors.items():
        shape = tuple(prior.batch_shape) + tuple(prior.event_shape)
        if shape not in ((), (num,)):
            raise ValueError(
                f"the prior of discrepancy hyperparameter {arg!r} must have shape () "
                f"(shared) or ({num},) (one per observable with a discrepancy); got {shape}"
            )
        out[arg] = jnp.broadcast_to(numpyro.sample(names[arg], prior), (num,))
    return out


def marginal_term(disc, inp: DiscrepancyInputs) -> DiscrepancyTerm:
    """The GP integrated out: the data's joint distribution, or (posterior predictive) a
    draw of delta given the data and the other latent values."""
    index = inp.index
    hyper = sample_hyperparameters(disc, inp.names, index.size)
    O = inp.loc.shape[-1]
    noise_var = jnp.broadcast_to(jnp.reshape(inp.hyper["sigma"], (-1,)) ** 2, (O,))
    if inp.observed or not inp.conditional:
        gp = MarginalGP(disc, inp.times, inp.loc, noise_var, hyper, index, inp.mask,
                        log=inp.observation.log_link, extra=inp.extra)
        return DiscrepancyTerm(joint=gp)
    times = inp.times
    query = jnp.zeros((0,), times.dtype) if inp.new_times is None else inp.new_times
    residuals = jnp.where(inp.mask, inp.observation.link(inp.values) - inp.loc, 0.0)
    E = inp.loc.shape[0]
    keys = jax.random.split(inp.key(), (E, index.size))

    def draw(k, h, r_eo, var, m_eo, ex):
        return disc.posterior_sample(k, h, times, r_eo, var, m_eo, query, ex)

    extra = None if inp.extra is None else inp.extra[index]
    per_experiment = jax.vmap(draw, in_axes=(0, None, 0, None, 0, None))
    d_data, d_new = jax.vmap(
        per_experiment, in_axes=(1, 0, 2, 0, 2, None if extra is None else 0), out_axes=2
    )(keys, hyper, residuals[..., index], noise_var[index], inp.mask[..., index], extra)
    # (E, T, O_d), (E, M, O_d)
    return DiscrepancyTerm(delta=d_data, delta_new=None if inp.new_times is None else d_new)


def latent_term(disc, inp: DiscrepancyInputs) -> DiscrepancyTerm:
    """The GP's values at the data times as latent variables (non-centred)."""
    index = inp.index
    hyper = sample_hyperparameters(disc, inp.names, index.size)
    times = inp.times
    E, T = inp.loc.shape[0], times.shape[0]
    # One experiment: no experiment axis in the posterior (as for initial_state).
    shape = ([] if E == 1 else [E]) + [index.size, T]
    z = numpyro.sample(inp.names["z"],
                       dist.Normal(0.0, 1.0).expand(shape).to_event(len(shape)))
    z = jnp.reshape(z, (E, index.size, T))
    per_observable = jax.vmap(lambda zz, h: disc.latent(zz, h, times), in_axes=(0, 0))
    d_data = jax.vmap(per_observable, in_axes=(0, None))(z, hyper)  # (E, O_d, T)
    d_new = None
    if inp.conditional and inp.new_times is not None:
        keys = jax.random.split(inp.key(), (E, index.size))
        new_times = inp.new_times

        def conditional(k, h, dd):
            return disc.conditional_on_latent(k, h, times, dd, new_times)

        d_new = jax.vmap(jax.vmap(conditional, in_axes=(0, 0, 0)),
                         in_axes=(0, None, 0))(keys, hyper, d_data)  # (E, O_d, M)
        d_new = jnp.moveaxis(d_new, 1, 2)
    return DiscrepancyTerm(delta=jnp.moveaxis(d_data, 1, 2), delta_new=d_new)
