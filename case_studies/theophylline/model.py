"""Theophylline after one oral dose: a one-compartment model with first-order absorption,
12 subjects with their own absorption rate and clearance drawn from a population."""

import jax.numpy as jnp
import numpyro.distributions as dist

import probde


def one_compartment(t, y, theta):
    """Gut amount A_g and central amount A_c (per kg): dA_g/dt = -ka A_g,
    dA_c/dt = ka A_g - ke A_c, with ka = exp(lKa) (per subject), ke = exp(lKe)."""
    ka, ke = jnp.exp(theta["lKa"]), jnp.exp(theta["lKe"])
    gut, central = y
    return jnp.stack([-ka * gut, ka * gut - ke * central])


def concentration(y, theta):
    """Serum concentration A_c / V with volume V = Cl / ke (per kg)."""
    return y[1:] * jnp.exp(theta["lKe"] - theta["lCl"])


def build_model() -> probde.Model:
    """Priors of the model statement: a shared elimination rate, per-subject absorption rate
    and clearance from log-normal populations (non-centred), Normal noise."""
    return probde.Model(
        dynamics=probde.ODE(one_compartment, state_names=("gut", "central")),
        params={
            "lKe": dist.Normal(-2.5, 1.0),
            "mu_lKa": dist.Normal(0.5, 1.0),
            "mu_lCl": dist.Normal(-3.0, 1.0),
            "tau_lKa": dist.HalfNormal(1.0),
            "tau_lCl": dist.HalfNormal(1.0),
            "lKa": probde.PerExperiment(lambda th: dist.Normal(th["mu_lKa"], th["tau_lKa"])),
            "lCl": probde.PerExperiment(lambda th: dist.Normal(th["mu_lCl"], th["tau_lCl"])),
        },
        # the whole dose is in the gut at time 0
        initial_state=lambda th: jnp.stack([th["dose_mg_per_kg"], 0.0 * th["dose_mg_per_kg"]]),
        observation=probde.noise.Normal(sigma=dist.HalfNormal(2.0)),
        observe=concentration,
        inputs=("dose_mg_per_kg",),
        t0=0.0,
    )
