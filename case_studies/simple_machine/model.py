"""The "simple machine" of Brynjarsdottir & O'Hagan (2014), as probde models.

Reality: zeta(x) = 0.65 x / (1 + x / 20) (work done by a machine with efficiency lost to
friction). Simulator: eta(x, theta) = theta x (no friction), written as the ODE
dy/dx = theta, y(0) = 0. Data: 11 equally spaced x in [0.2, 4] with N(0, 0.01^2) noise.
The physical parameter is theta = 0.65, the slope of zeta at x = 0.
"""

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import probde  # before gpjax, which starts JAX (probde sets an XLA option first)
import gpjax as gpx  # noqa: I001

THETA_TRUE = 0.65
NOISE_SD = 0.01
VARIANTS = ("none", "gp", "constrained", "emulated")


def reality(x):
    return THETA_TRUE * x / (1 + x / 20)


def load_data(seed: int = 2014) -> probde.TimeSeries:
    x = np.linspace(0.2, 4.0, 11)
    y = reality(x) + np.random.default_rng(seed).normal(0.0, NOISE_SD, x.size)
    return probde.TimeSeries(x, y, observables=("work",))


def simulator() -> probde.ODE:
    return probde.ODE(lambda x, y, theta: jnp.broadcast_to(theta["theta"], (1,)),
                      state_names=("work",))


def fit_emulator(num_runs: int = 12, seed: int = 0) -> probde.GPEmulator:
    """Treat the ODE as an expensive simulator: run it at a Latin-hypercube design of theta
    and emulate eta(x, theta) with a GP on (x, theta)."""
    grid = np.linspace(0.0, 4.0, 9)
    ode = simulator()  # one ODE for all runs: its solve is compiled once

    def run(theta):  # one "expensive" simulator run
        traj = probde.solve(ode, jnp.array([0.0]), theta,
                            jnp.asarray(grid[1:]), t0=0.0)
        return np.concatenate([[0.0], np.asarray(traj.ys[:, 0])])[:, None]

    design = probde.latin_hypercube({"theta": (0.0, 1.5)}, num_runs, seed=seed)
    return probde.GPEmulator.fit(run, grid, design, observables=("work",), seed=seed,
                                 progress_bar=False)


def build_model(variant: str = "constrained") -> probde.Model:
    """`none`: no discrepancy; `gp`: RBF GP discrepancy; `constrained`: the same GP with
    delta(0) = 0 and delta'(0) = 0 (the simulator is right at x = 0, to first order);
    `emulated`: `constrained` with a GP emulator in place of the simulator (the full
    Kennedy-O'Hagan model: emulator + discrepancy + noise, modular fit)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}")
    discrepancy = None
    if variant != "none":
        constraints = ()
        if variant in ("constrained", "emulated"):
            constraints = (probde.Constraint(0.0), probde.Constraint(0.0, derivative=1))
        discrepancy = probde.GPDiscrepancy(
            gpx.kernels.RBF(),
            lengthscale=dist.Gamma(4.0, 2.0),  # a smooth discrepancy, on the scale of x
            variance=dist.HalfNormal(0.5),
            constraints=constraints,
        )
    if variant == "emulated":
        return probde.Model(
            dynamics=fit_emulator(),
            params={"theta": dist.Uniform(0.0, 1.5)},
            initial_state=None,
            observation=probde.noise.Normal(sigma=NOISE_SD),
            discrepancy=discrepancy,
        )
    return probde.Model(
        dynamics=simulator(),
        params={"theta": dist.Uniform(0.0, 1.5)},
        initial_state=jnp.array([0.0]),
        observation=probde.noise.Normal(sigma=NOISE_SD),
        discrepancy=discrepancy,
        t0=0.0,
    )
