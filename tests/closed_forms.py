"""Closed-form references shared by test files (not a test file itself).

The one-compartment model with first-order absorption has a closed form, and doses add up
(the model is linear in the amounts): `central_closed_form`. `theophylline_reference` samples
the theophylline case study's hierarchical posterior with that closed form in place of the
ODE (a hand-written numpyro model, no solver), the exact reference its NUTS posterior is
checked against.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.infer.reparam import LocScaleReparam


def central_closed_form(t, ka, ke, doses):
    """Central amount after bolus doses into the gut (superposition of single doses)."""
    total = 0.0
    for time, amount in doses:
        tau = jnp.maximum(t - time, 0.0)
        total = total + amount * ka / (ka - ke) * (jnp.exp(-ke * tau) - jnp.exp(-ka * tau))
    return total


def _theophylline(subject, times, dose, conc=None, num_subjects=12):
    """case_studies/theophylline/model.py with the closed-form solution: no ODE."""
    lke = numpyro.sample("lKe", dist.Normal(-2.5, 1.0))
    mu_ka = numpyro.sample("mu_lKa", dist.Normal(0.5, 1.0))
    mu_cl = numpyro.sample("mu_lCl", dist.Normal(-3.0, 1.0))
    tau_ka = numpyro.sample("tau_lKa", dist.HalfNormal(1.0))
    tau_cl = numpyro.sample("tau_lCl", dist.HalfNormal(1.0))
    reparam = {"lKa": LocScaleReparam(0), "lCl": LocScaleReparam(0)}
    with handlers.reparam(config=reparam), numpyro.plate("subjects", num_subjects):
        lka = numpyro.sample("lKa", dist.Normal(mu_ka, tau_ka))
        lcl = numpyro.sample("lCl", dist.Normal(mu_cl, tau_cl))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    ka, ke = jnp.exp(lka[subject]), jnp.exp(lke)
    amount = central_closed_form(times, ka, ke, [(0.0, dose)])
    with numpyro.plate("obs", times.shape[0]):
        numpyro.sample("conc", dist.Normal(amount * ke / jnp.exp(lcl[subject]), sigma), obs=conc)


THEOPHYLLINE_NAMES = ("lKe", "mu_lKa", "mu_lCl", "tau_lKa", "tau_lCl", "sigma", "lKa", "lCl")


def theophylline_reference(data, num_warmup=500, num_samples=1000, num_chains=2, seed=1):
    """Posterior draws of the closed-form theophylline model on `data` (the 12 subjects'
    `probde.TimeSeries`), `{name: array (chain, draw, ...)}` for THEOPHYLLINE_NAMES."""
    subject = np.concatenate([np.full(len(ts.times), e) for e, ts in enumerate(data)])
    times = np.concatenate([ts.times for ts in data])
    dose = np.concatenate([np.full(len(ts.times), ts.inputs["dose_mg_per_kg"]) for ts in data])
    conc = np.concatenate([ts.values[:, 0] for ts in data])
    mcmc = numpyro.infer.MCMC(numpyro.infer.NUTS(_theophylline), num_warmup=num_warmup,
                              num_samples=num_samples, num_chains=num_chains,
                              chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed), jnp.asarray(subject), jnp.asarray(times),
             jnp.asarray(dose), jnp.asarray(conc))
    draws = mcmc.get_samples(group_by_chain=True)
    return {name: np.asarray(draws[name]) for name in THEOPHYLLINE_NAMES}
