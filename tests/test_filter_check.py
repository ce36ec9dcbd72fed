"""`probde.check_filter`: a Gaussian filter judged against a particle filter.

The estimator is checked on synthetic log-likelihoods with a known error spread, the rule
on two SDEs where the answer is known: a linear SDE (the EKF is exact) and a double well
observed every 4 time units (the state switches wells between observations, which no
Gaussian approximation of the transition follows).
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import probde
from conftest import Z_MAX
from probde.checks.filter_adequacy import _judge

OU = probde.SDE(lambda t, x, th: -th["k"] * x, lambda t, x, th: jnp.array([0.5]),
                state_names=("x",), linear=True)
WELL = probde.SDE(lambda t, x, th: th["theta"] * (x - x**3),
                  lambda t, x, th: jnp.array([th["s"]]), state_names=("x",))


def ou_model(likelihood=None):
    return probde.Model(OU, {"k": dist.LogNormal(0.0, 0.5)}, dist.Normal(jnp.array([1.0]), 0.1),
                        probde.noise.Normal(sigma=0.2),
                        likelihood=probde.EKF() if likelihood is None else likelihood)


OU_DATA = probde.TimeSeries([0.5, 1.0, 2.0, 3.5, 4.0, 6.0], [0.7, 0.5, 0.1, 0.2, -0.3, 0.1],
                            observables=("x",))


def test_error_spread_and_mean_shift_are_estimated_without_the_particle_noise():
    # Draws theta ~ N(0, 1); the filter's error is c * theta (its sd over the draws is c),
    # the particle filter adds noise of sd 1 to each of R estimates. The exact posterior
    # is the Gaussian tilted by exp(c theta): its mean is c.
    rng = np.random.default_rng(0)
    n, r, c = 4000, 4, 0.2
    theta = rng.normal(size=n)
    gauss = rng.normal(size=n) * 3.0  # any values: only the difference matters
    pf = gauss[:, None] + c * theta[:, None] + rng.normal(size=(n, r))
    check = _judge(gauss, pf, {"theta": theta}, 0.25, "EKF", 0, warn=False)
    # standard error of the estimated variance: the sample variance of the Gaussian
    # delta_bar (variance c^2 + 1/r) and the mean over draws of the noise variance / r
    var_total = c**2 + 1 / r
    se_var = np.sqrt(var_total**2 * 2 / (n - 1) + 2 / (r - 1) / n / r**2)
    assert abs(check.error_sd**2 - c**2) < Z_MAX * se_var
    lo, hi = check.error_sd_interval
    assert lo < check.error_sd < hi
    # the weighted mean's shift, against its self-normalised importance-sampling standard
    # error (delta method) from the same weights
    delta = pf.mean(axis=1) - gauss
    w = np.exp(delta - delta.max())
    w /= w.sum()
    se_shift = np.sqrt(np.sum(w**2 * (theta - w @ theta) ** 2)) / theta.std(ddof=1)
    assert abs(check.shifts["theta"] - c) < Z_MAX * se_shift


def test_a_linear_sde_passes():
    draws = {"k": np.linspace(0.5, 2.0, 30)}
    check = probde.check_filter(model=ou_model(), data=OU_DATA, draws=draws, num_particles=500)
    assert check.verdict == "adequate" and check.adequate
    assert check.error_sd_interval[1] <= check.tolerance
    assert check.log_lik_particle.shape == (30, 4) and check.log_lik_gaussian.shape == (30,)
    # the particle filter is exact for a declared linear SDE: the mean error is its noise
    assert abs(check.mean_error) < Z_MAX * check.particle_sd
    assert "ADEQUATE" in str(check)


def well_problem(gap):
    truth = {"theta": 1.0, "s": 0.7}
    times = gap * np.arange(1, 21)
    path = probde.simulate(WELL, jnp.array([1.0]), {k: jnp.asarray(v) for k, v in truth.items()},
                           jnp.asarray(times), jax.random.PRNGKey(3), t0=0.0, num_steps=2000)
    values = np.asarray(path.ys)[:, 0] + 0.1 * np.random.default_rng(0).normal(size=times.size)
    model = probde.Model(WELL, {"theta": dist.LogNormal(0.0, 0.5),
                                "s": dist.LogNormal(jnp.log(0.7), 0.3)},
                         dist.Normal(jnp.array([1.0]), 0.1), probde.noise.Normal(sigma=0.1),
                         likelihood=probde.EKF())
    rng = np.random.default_rng(1)
    draws = {"theta": np.exp(rng.normal(0.0, 0.2, 40)), "s": 0.7 * np.exp(rng.normal(0, 0.15, 40))}
    return model, probde.TimeSeries(times, values, observables=("x",)), draws


def test_a_double_well_observed_sparsely_fails_with_a_warning():
    model, data, draws = well_problem(gap=4.0)
    assert np.ptp(np.sign(data.values)) > 0  # the path switched wells between observations
    pf = probde.ParticleFilter(num_particles=300, num_steps=40)
    with pytest.warns(probde.FilterWarning, match="ParticleFilter"):
        check = probde.check_filter(model=model, data=data, draws=draws, particle_filter=pf)
    assert check.verdict == "inadequate" and not check.adequate
    assert check.error_sd_interval[0] > check.tolerance
    assert check.pareto_k > 0.7


@pytest.mark.filterwarnings("ignore::probde.ConvergenceWarning")  # a short run is enough here
def test_the_check_runs_on_a_fit():
    model = ou_model()
    result = probde.infer(model, OU_DATA, probde.NUTS(num_chains=1, num_warmup=100,
                                                      num_samples=100), seed=1)
    check = probde.check_filter(result, num_draws=25, num_particles=300)
    assert check.log_lik_gaussian.shape == (25,)
    assert check.verdict == "adequate"


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_seeds=1), "num_seeds must be an integer of at least 2"),
    (dict(num_draws=1.5), "num_draws must be an integer"),
    (dict(tolerance=0.0), "tolerance must be a positive number"),
    (dict(particle_filter=probde.EKF()), "particle_filter must be a probde.ParticleFilter"),
])
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        probde.check_filter(model=ou_model(), data=OU_DATA, draws={"k": np.ones(3)}, **kwargs)


def test_bad_models_and_draws_are_refused():
    with pytest.raises(ValueError, match="likelihood is probde.EKF"):
        probde.check_filter(model=ou_model(probde.ParticleFilter(100)), data=OU_DATA,
                            draws={"k": np.ones(3)})
    with pytest.raises(ValueError, match="exactly the keys"):
        probde.check_filter(model=ou_model(), data=OU_DATA, draws={"rate": np.ones(3)})
    with pytest.raises(ValueError, match="leading draws axis"):
        probde.check_filter(model=ou_model(), data=OU_DATA, draws={"k": np.float64(1.0)})
    with pytest.raises(ValueError, match="needs a result, or model, data and draws"):
        probde.check_filter(model=ou_model(), data=OU_DATA)
    with pytest.raises(ValueError, match="either result, or model"):
        probde.check_filter(object(), model=ou_model())
