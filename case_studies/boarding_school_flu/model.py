"""SIR model of the 1978 boarding-school influenza outbreak (Grinsztajn et al. 2021)."""

import jax.numpy as jnp
import numpyro.distributions as dist

import probde

N = 763.0


def sir(t, y, theta):
    """dS = -beta S I / N, dI = beta S I / N - gamma I, dR = gamma I."""
    s, i, r = y
    infection = theta["beta"] * s * i / N
    recovery = theta["gamma"] * i
    return jnp.stack([-infection, infection - recovery, recovery])


def build_model() -> probde.Model:
    """Pupils in bed observed as the infected compartment, negative binomial noise."""
    return probde.Model(
        dynamics=probde.ODE(sir, state_names=("S", "I", "R")),
        params={
            "beta": dist.TruncatedNormal(2.0, 1.0, low=0.0),
            "gamma": dist.TruncatedNormal(0.4, 0.5, low=0.0),
        },
        initial_state=jnp.array([N - 1.0, 1.0, 0.0]),
        observation=probde.noise.NegativeBinomial(phi_inv=dist.Exponential(5.0)),
        observe=lambda y, theta: y[1:2],
        solver=probde.Solver(rtol=1e-6, atol=1e-6),
        t0=0.0,
        derived={
            "R0": lambda theta: theta["beta"] / theta["gamma"],
            "recovery_time": lambda theta: 1.0 / theta["gamma"],
        },
    )
