"""Logistic growth fitted to a theta-logistic population, with and without a GP discrepancy.

Reality (the "truth" that generates the synthetic data) is the theta-logistic (Richards)
model of Gilpin & Ayala (1973),

    dN/dt = r N (1 - (N / K)^theta),   N(0) = N0,   r = 0.5 / day, K = 100, N0 = 5, theta = 3,

in which density regulation sets in late: the population grows almost exponentially until
it is close to K and then stops abruptly. The simulator is the plain logistic model
dN/dt = r N (1 - N / K), the theta = 1 member of the family, with r, K and N0 unknown. The
logistic curve is symmetric about N = K / 2 and cannot turn as sharply as the truth. Its
best fit starts too low (N0 about 2 instead of 5) and grows faster (r about 0.8 instead of
0.5) to catch up, runs ahead of the truth in the middle of the growth phase, lags behind
it at the shoulder, where the truth turns sharply, and overshoots the plateau. The
structural error, up to about 4, is at most twice the noise sd: a discrepancy that is easy
to miss by eye, yet it makes the no-discrepancy posterior of r exclude the true value by a
wide margin. (theta = 3 rather than 2.5 makes the error at the shoulder clearly larger
than the noise; it was chosen from least-squares fits over many noise draws, not from this
data set.)

Data: N at t = 0.5, 1.0, ..., 12.5 days (25 times), Normal noise with sd 2 (2% of K),
generated once with a fixed seed (1959, the year of Richards' growth function). The series
is split three ways:

- *training* (13 points): what the models are fitted to;
- *interpolation* (7 points): every third time before day 10, held out;
- *extrapolation* (5 points): the last 20% of the time range, t > 10 (the plateau).

The noise sd is treated as known from replicate measurements, up to about 20%
(`sigma ~ LogNormal(log 2, 0.2)`), as it is for a calibrated instrument; this is what lets
the discrepancy be told apart from the noise (Kennedy & O'Hagan 2001). The variant
`none_wide_noise` shows what happens without that knowledge: the noise sd is then inflated
to absorb the model error.
"""

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from scipy.integrate import solve_ivp

import probde  # before gpjax, which starts JAX (probde sets an XLA option first)
import gpjax as gpx  # noqa: I001

R_TRUE, K_TRUE, N0_TRUE, THETA_TRUE = 0.5, 100.0, 5.0, 3.0
NOISE_SD = 2.0
DATA_SEED = 1959
TIMES = 0.5 * np.arange(1, 26)  # days 0.5 .. 12.5
EXTRAPOLATION_START = 10.0  # the last 20% of [0, 12.5] is held out


def variants() -> tuple[str, ...]:
    """`none`, `none_wide_noise`, `gp`, and `markov_gp` where this probde has
    `probde.MarkovGPDiscrepancy`."""
    extra = ("markov_gp",) if hasattr(probde, "MarkovGPDiscrepancy") else ()
    return ("none", "none_wide_noise", "gp") + extra


def reality(t):
    """The theta-logistic truth N(t) (solved to 1e-10 tolerance)."""
    t = np.atleast_1d(np.asarray(t, dtype=float))
    sol = solve_ivp(
        lambda _, n: R_TRUE * n * (1.0 - (n / K_TRUE) ** THETA_TRUE),
        (0.0, float(t.max())), [N0_TRUE], t_eval=t, rtol=1e-10, atol=1e-10,
    )
    return sol.y[0]


def split():
    """Boolean masks over `TIMES`: (train, interpolation, extrapolation)."""
    extrapolation = TIMES > EXTRAPOLATION_START
    interpolation = ~extrapolation & (np.arange(TIMES.size) % 3 == 1)
    train = ~extrapolation & ~interpolation
    return train, interpolation, extrapolation


def load_data():
    """All 25 noisy observations: (times, values)."""
    rng = np.random.default_rng(DATA_SEED)
    return TIMES, reality(TIMES) + rng.normal(0.0, NOISE_SD, TIMES.size)


def training_data() -> probde.TimeSeries:
    times, values = load_data()
    train, _, _ = split()
    return probde.TimeSeries(times[train], values[train], observables=("N",))


def logistic(t, n, theta):
    """The simulator: dN/dt = r N (1 - N / K)."""
    return theta["r"] * n * (1.0 - n / theta["K"])


def build_model(variant: str = "gp") -> probde.Model:
    """`none`: logistic only; `none_wide_noise`: the same with a vague noise prior; `gp`:
    logistic + Matern-5/2 GP discrepancy (dense algebra); `markov_gp`: the same GP in
    state-space form (`probde.MarkovGPDiscrepancy`, where available)."""
    if variant not in variants():
        raise ValueError(f"variant must be one of {variants()}; got {variant!r}")
    discrepancy = None
    if variant in ("gp", "markov_gp"):
        cls = probde.GPDiscrepancy if variant == "gp" else probde.MarkovGPDiscrepancy
        discrepancy = cls(
            gpx.kernels.Matern52(),
            # a smooth error on the time scale of the growth phase (days); little prior
            # mass below the 0.5-day sampling interval
            lengthscale=dist.InverseGamma(4.0, 6.0),
            # in N^2: an error of a few % of K. Zero-avoiding: with HalfNormal(20) the
            # posterior has a funnel near variance 0 (the none model, where r is sharply
            # determined) and NUTS diverged there
            variance=dist.Gamma(2.0, 0.1),
        )
    if variant == "none_wide_noise":
        sigma = dist.HalfNormal(10.0)
    else:
        sigma = dist.LogNormal(jnp.log(NOISE_SD), 0.2)  # known from replicates, to ~20%
    return probde.Model(
        dynamics=probde.ODE(logistic, state_names=("N",)),
        params={
            "r": dist.LogNormal(jnp.log(0.4), 0.75),
            "K": dist.LogNormal(jnp.log(80.0), 0.5),
            "N0": dist.LogNormal(jnp.log(5.0), 0.75).expand([1]),
        },
        initial_state=lambda theta: theta["N0"],
        observation=probde.noise.Normal(sigma=sigma),
        discrepancy=discrepancy,
        solver=probde.Solver(rtol=1e-7, atol=1e-7),
        t0=0.0,
    )
