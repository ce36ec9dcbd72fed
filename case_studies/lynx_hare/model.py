"""The Lotka-Volterra model of Carpenter's Stan case study, as a probde.Model."""

import jax.numpy as jnp
import numpyro.distributions as dist

import probde


def lotka_volterra(t, z, theta):
    """du/dt = (alpha - beta v) u (hares), dv/dt = (-gamma + delta u) v (lynx)."""
    u, v = z
    du = (theta["alpha"] - theta["beta"] * v) * u
    dv = (-theta["gamma"] + theta["delta"] * u) * v
    return jnp.stack([du, dv])


def build_model() -> probde.Model:
    """Priors as in the Stan case study; the 1900 pelts observe the initial state."""
    return probde.Model(
        dynamics=probde.ODE(lotka_volterra, state_names=("hare", "lynx")),
        params={
            "alpha": dist.TruncatedNormal(1.0, 0.5, low=0.0),
            "beta": dist.TruncatedNormal(0.05, 0.05, low=0.0),
            "gamma": dist.TruncatedNormal(1.0, 0.5, low=0.0),
            "delta": dist.TruncatedNormal(0.05, 0.05, low=0.0),
            "z_init": dist.LogNormal(jnp.log(10.0), 1.0).expand([2]),
        },
        initial_state=lambda theta: theta["z_init"],
        observation=probde.noise.LogNormal(sigma=dist.LogNormal(-1.0, 1.0).expand([2])),
        observe=("hare", "lynx"),
        solver=probde.Solver(rtol=1e-6, atol=1e-6, max_steps=4096),
        t0=1900.0,
    )
