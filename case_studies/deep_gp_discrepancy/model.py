"""Lotka-Volterra fitted to a Rosenzweig-MacArthur predator-prey cycle: a plain GP and a
deep-GP discrepancy.

Reality (the "truth" that generates the synthetic data) is the Rosenzweig-MacArthur model
(Rosenzweig & MacArthur 1963): logistic prey growth and a saturating (Holling type II)
functional response of the predator,

    du/dt = r u (1 - u / K) - a u v / (1 + a h u),
    dv/dt = e a u v / (1 + a h u) - m v,

with r = 2, K = 9, a = 2, h = 0.25, e = 0.5, m = 1.2 (time in arbitrary units, densities
in units of 10 animals per unit area). K is above the Hopf threshold (8), so the
populations cycle on a stable limit cycle of period about 10.5: prey 1.1-6.2, predators
0.8-2.4. The series starts on the cycle.

The simulator is the plain Lotka-Volterra model,

    du/dt = (alpha - beta v) u,   dv/dt = (-gamma + delta u) v

(written with the equilibrium densities u_eq = gamma / delta and v_eq = alpha / beta),
which has neither the prey's self-limitation nor the predator's saturation: a linear
functional response, neutral cycles whose shape is fixed by their amplitude. Its best fit
follows the cycle's period but not its shape: the log-scale error is about 0.15 rms (at
most 0.3) for a noise sd of 0.1. At low prey density the two models agree to first order,
so alpha and gamma have true counterparts, the prey's growth rate r = 2 and the predator's
death rate m = 1.2; the best Lotka-Volterra fit puts them at about 1.1 and 0.5.

Data: prey u and predators v at t = 0, 1, ..., 39 (40 times, about 3.7 cycles),
LogNormal noise with sd 0.1 on the log scale, generated once with a fixed seed (1963, the
year of Rosenzweig & MacArthur's paper). The series is split three ways:

- *training* (24 times): what the models are fitted to;
- *interpolation* (8 times): every fourth time up to t = 31 (t = 2, 6, ..., 30), held out;
- *extrapolation* (8 times): the last 20% of the times, t = 32 .. 39 (most of a cycle).

The first observation is at t0 = 0, so the initial state `z_init` is observed, as in the
lynx-hare study.

As in the logistic study the noise sd is known from replicates to about 20%
(`sigma ~ LogNormal(log 0.1, 0.2)`, one sd for both species).
"""

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from scipy.integrate import solve_ivp

import probde  # before gpjax, which starts JAX (probde sets an XLA option first)
import gpjax as gpx  # noqa: I001

# --8<-- [start:truth]
R_TRUE, K_TRUE, A_TRUE, H_TRUE, E_TRUE, M_TRUE = 2.0, 9.0, 2.0, 0.25, 0.5, 1.2
NOISE_SD = 0.1  # on the log scale
DATA_SEED = 1963
TIMES = np.arange(0.0, 40.0)  # t = 0 .. 39
EXTRAPOLATION_START = 31.5  # the last 20% of the times is held out
# the comparable parameters: Lotka-Volterra's name -> the truth's value
COMPARABLE = {"alpha": R_TRUE, "gamma": M_TRUE}
# --8<-- [end:truth]


def variants() -> tuple[str, ...]:
    """`none`, `gp` (additive in time), `deep_gp` (a deep GP of time and the simulator's
    output) and `deep_gp_time` (a deep GP of time only)."""
    return ("none", "gp", "deep_gp", "deep_gp_time")


def rosenzweig_macarthur(t, z):
    u, v = z
    f = A_TRUE * u / (1.0 + A_TRUE * H_TRUE * u)  # Holling type II
    return [R_TRUE * u * (1.0 - u / K_TRUE) - f * v, E_TRUE * f * v - M_TRUE * v]


def initial_state():
    """A point on the limit cycle: the state after 150 time units from (1, 0.5)."""
    sol = solve_ivp(rosenzweig_macarthur, (0.0, 150.0), [1.0, 0.5], rtol=1e-10, atol=1e-10)
    return sol.y[:, -1]


def reality(t):
    """The true (prey, predator) at times `t`, shape (T, 2) (solved to 1e-10 tolerance)."""
    t = np.atleast_1d(np.asarray(t, dtype=float))
    sol = solve_ivp(rosenzweig_macarthur, (0.0, float(t.max())), initial_state(), t_eval=t,
                    rtol=1e-10, atol=1e-10)
    return sol.y.T


def split():
    """Boolean masks over `TIMES`: (train, interpolation, extrapolation)."""
    extrapolation = TIMES > EXTRAPOLATION_START
    interpolation = ~extrapolation & (np.arange(TIMES.size) % 4 == 2)
    train = ~extrapolation & ~interpolation
    return train, interpolation, extrapolation


def load_data():
    """All 40 noisy observations: (times, values (40, 2))."""
    rng = np.random.default_rng(DATA_SEED)
    truth = reality(TIMES)
    return TIMES, truth * np.exp(rng.normal(0.0, NOISE_SD, truth.shape))


def training_data() -> probde.TimeSeries:
    times, values = load_data()
    train, _, _ = split()
    return probde.TimeSeries(times[train], values[train], observables=("prey", "predator"))


# --8<-- [start:priors]
# LogNormal priors as (median, sd of the log), centred on what a glance at the data gives:
# a period of about 10 (alpha gamma ~ (2 pi / 10)^2), mean densities of about 3 and 1.5,
# and a first count of about 2 of each (the initial state, observed at t0 = 0).
PRIORS = {"alpha": (1.0, 0.75), "gamma": (0.4, 0.75), "u_eq": (3.0, 0.5),
          "v_eq": (1.5, 0.5), "z_init": (2.0, 0.5)}


def natural(theta):
    """The parameters from their standardised logs: p = median exp(sd z), z ~ Normal(0, 1)
    (the same LogNormal priors, but the optimiser and the samplers start near z = 0, the
    prior median; started anywhere else, SVI slides to the flat solution at equilibrium)."""
    return {k: m * jnp.exp(s * theta[f"{k}_z"]) for k, (m, s) in PRIORS.items()}


def lotka_volterra(t, z, theta):
    """The simulator: du/dt = alpha u (1 - v / v_eq), dv/dt = gamma v (u / u_eq - 1).

    The usual (alpha - beta v) u, (-gamma + delta u) v with beta = alpha / v_eq and
    delta = gamma / u_eq: the equilibrium densities are less correlated with the rates
    than beta and delta."""
    p = natural(theta)
    u, v = z
    du = p["alpha"] * u * (1.0 - v / p["v_eq"])
    dv = p["gamma"] * v * (u / p["u_eq"] - 1.0)
    return jnp.stack([du, dv])
# --8<-- [end:priors]


# --8<-- [start:discrepancy]
def discrepancy(variant: str):
    """The discrepancy of each variant (on the log scale of LogNormal noise)."""
    # an error of about 0.1-0.3 on the log scale: variance ~ 0.01-0.1, away from zero
    variance = dist.Gamma(2.0, 40.0)
    if variant == "gp":
        # additive in time (Kennedy & O'Hagan), one GP per species; the lengthscale in time
        # units: mean 3, a third of a cycle, little mass below the sampling interval of 1
        return probde.GPDiscrepancy(gpx.kernels.RBF(), lengthscale=dist.InverseGamma(4.0, 9.0),
                                    variance=variance)
    if variant in ("deep_gp", "deep_gp_time"):
        # two random-feature GP layers; inputs standardised (time to [0, 1] over the
        # training span, the simulator's log prey and log predators by the data's mean and
        # sd), so the lengthscale is in those units: median 0.3, as the default
        return probde.DeepGPDiscrepancy(
            layers=2, num_features=100, lengthscale=dist.LogNormal(jnp.log(0.3), 0.75),
            variance=variance,
            inputs="time+output" if variant == "deep_gp" else "time", seed=0,
        )
    return None
# --8<-- [end:discrepancy]


def build_model(variant: str = "deep_gp") -> probde.Model:
    """Lotka-Volterra with LogNormal noise, and the discrepancy of `variant`."""
    if variant not in variants():
        raise ValueError(f"variant must be one of {variants()}; got {variant!r}")
    return probde.Model(
        dynamics=probde.ODE(lotka_volterra, state_names=("prey", "predator")),
        params={f"{k}_z": dist.Normal(0.0, 1.0).expand([2] if k == "z_init" else [])
                for k in PRIORS},
        initial_state=lambda theta: natural(theta)["z_init"],
        derived={k: (lambda theta, k=k: natural(theta)[k]) for k in PRIORS},
        observation=probde.noise.LogNormal(sigma=dist.LogNormal(jnp.log(NOISE_SD), 0.2)),
        discrepancy=discrepancy(variant),
        solver=probde.Solver(rtol=1e-6, atol=1e-6, max_steps=4096),
        t0=0.0,
    )
