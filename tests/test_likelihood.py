"""`probde.log_likelihood` against closed forms, finite differences and masking."""

import gpjax as gpx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from scipy import stats

import probde
from conftest import RTOL

TIGHT = probde.Solver(rtol=1e-11, atol=1e-12, max_steps=100_000)
TIMES = np.array([0.0, 0.5, 1.0, 2.0, 3.5])
VALUES = np.array([2.1, 1.2, 0.8, 0.25, 0.04])


def decay(t, y, theta):
    return -theta["k"] * y


ODE1 = probde.ODE(decay, state_names=("x",))


def make_model(observation, **kw):
    return probde.Model(ODE1, {"k": dist.LogNormal(0.0, 1.0)}, initial_state=jnp.array([2.0]),
                        observation=observation, solver=TIGHT, **kw)


@pytest.mark.parametrize(
    ("noise", "scipy_logpdf"),
    [
        (probde.noise.Normal(sigma=0.1), lambda y, mu: stats.norm.logpdf(y, mu, 0.1)),
        (probde.noise.LogNormal(sigma=0.2),
         lambda y, mu: stats.lognorm.logpdf(y, 0.2, scale=mu)),
        (probde.noise.StudentT(sigma=0.1, nu=3.0),
         lambda y, mu: stats.t.logpdf(y, 3.0, loc=mu, scale=0.1)),
    ],
)
def test_continuous_noise_matches_scipy(noise, scipy_logpdf):
    data = probde.TimeSeries(TIMES, VALUES, observables=("x",))
    k = 1.1
    ll = probde.log_likelihood(make_model(noise), data, {"k": k})
    expected = scipy_logpdf(VALUES, 2.0 * np.exp(-k * TIMES)).sum()
    np.testing.assert_allclose(ll, expected, rtol=1e-8)


@pytest.mark.parametrize(
    ("noise", "params", "scipy_logpmf"),
    [
        (probde.noise.Poisson(), {}, lambda y, mu: stats.poisson.logpmf(y, mu)),
        (probde.noise.NegativeBinomial(phi_inv=dist.Exponential(5.0)), {"phi_inv": 0.25},
         lambda y, mu: stats.nbinom.logpmf(y, 4.0, 4.0 / (4.0 + mu))),
    ],
)
def test_count_noise_matches_scipy(noise, params, scipy_logpmf):
    counts = np.array([200.0, 120.0, 70.0, 30.0, 4.0])
    m = probde.Model(ODE1, {"k": dist.LogNormal(0.0, 1.0)}, initial_state=jnp.array([200.0]),
                     observation=noise, solver=TIGHT)
    data = probde.TimeSeries(TIMES, counts, observables=("x",))
    ll = probde.log_likelihood(m, data, {"k": 0.9, **params})
    expected = scipy_logpmf(counts, 200.0 * np.exp(-0.9 * TIMES)).sum()
    np.testing.assert_allclose(ll, expected, rtol=1e-8)


def test_missing_values_are_masked_not_dropped():
    values = VALUES.copy()
    values[2] = np.nan
    with_nan = probde.TimeSeries(TIMES, values, observables=("x",))
    without = probde.TimeSeries(np.delete(TIMES, 2), np.delete(VALUES, 2), observables=("x",))
    m = make_model(probde.noise.Normal(sigma=0.1))
    a = probde.log_likelihood(m, with_nan, {"k": 1.1})
    b = probde.log_likelihood(m, without, {"k": 1.1})
    np.testing.assert_allclose(a, b, rtol=RTOL[np.dtype("float64")])


def test_several_experiments_add_up():
    m = probde.Model(ODE1, {"k": dist.LogNormal(0.0, 1.0)},
                     initial_state=dist.LogNormal(0.0, 1.0).expand([1]),
                     observation=probde.noise.Normal(sigma=0.1), solver=TIGHT)
    e1 = probde.TimeSeries(TIMES, VALUES, observables=("x",), name="a")
    e2 = probde.TimeSeries(TIMES[:3] + 0.25, VALUES[:3] * 0.5, observables=("x",), name="b")
    y0 = jnp.array([[2.0], [1.0]])
    both = probde.log_likelihood(m, [e1, e2], {"k": 1.1, "initial_state": y0})
    one = probde.log_likelihood(m, e1, {"k": 1.1, "initial_state": y0[0]})
    two = probde.log_likelihood(m, e2, {"k": 1.1, "initial_state": y0[1]})
    np.testing.assert_allclose(both, one + two, rtol=1e-10)


def test_failed_solve_gives_minus_infinity():
    m = probde.Model(ODE1, {"k": dist.LogNormal(0.0, 1.0)}, initial_state=jnp.array([2.0]),
                     observation=probde.noise.Normal(sigma=0.1),
                     solver=probde.Solver(max_steps=2))
    data = probde.TimeSeries(TIMES, VALUES, observables=("x",))
    assert float(probde.log_likelihood(m, data, {"k": 50.0})) == -np.inf


def test_nonpositive_mean_under_lognormal_is_rejected_not_clipped():
    # Exponential growth from a negative initial state: the solve succeeds but the
    # LogNormal mean is negative, an impossible state.
    m = probde.Model(ODE1, {"k": dist.Normal(0.0, 1.0)},
                     initial_state=lambda th: jnp.stack([th["k"]]),
                     observation=probde.noise.LogNormal(sigma=0.1), solver=TIGHT)
    data = probde.TimeSeries(TIMES, VALUES, observables=("x",))
    assert float(probde.log_likelihood(m, data, {"k": -0.5})) == -np.inf
    assert np.isfinite(float(probde.log_likelihood(m, data, {"k": 0.5})))


def test_log_likelihood_is_jittable_and_gradient_matches_finite_differences():
    data = probde.TimeSeries(TIMES, VALUES, observables=("x",))
    m = probde.Model(ODE1, {"k": dist.LogNormal(0.0, 1.0)},
                     initial_state=dist.LogNormal(0.0, 1.0).expand([1]),
                     observation=probde.noise.LogNormal(sigma=dist.HalfNormal(1.0)), solver=TIGHT)
    f = jax.jit(lambda p: probde.log_likelihood(m, data, p))
    p = {"k": 1.1, "initial_state": jnp.array([2.05]), "sigma": 0.3}
    grad = jax.grad(f)(p)
    for name in ("k", "sigma"):
        h = 1e-6
        up, dn = dict(p, **{name: p[name] + h}), dict(p, **{name: p[name] - h})
        fd = (float(f(up)) - float(f(dn))) / (2 * h)
        np.testing.assert_allclose(grad[name], fd, rtol=1e-6)
    up = dict(p, initial_state=p["initial_state"] + 1e-6)
    dn = dict(p, initial_state=p["initial_state"] - 1e-6)
    np.testing.assert_allclose(grad["initial_state"][0], (float(f(up)) - float(f(dn))) / 2e-6,
                               rtol=1e-6)


def test_observe_function_and_derived():
    def two_state(t, y, theta):
        return jnp.stack([-theta["k"] * y[0], theta["k"] * y[0]])

    ode = probde.ODE(two_state, state_names=("a", "b"))
    m = probde.Model(ode, {"k": dist.LogNormal(0.0, 1.0)}, initial_state=jnp.array([2.0, 0.0]),
                     observation=probde.noise.Normal(sigma=0.1),
                     observe=lambda y, theta: jnp.stack([y[0] + y[1]]), solver=TIGHT,
                     derived={"half_life": lambda th: jnp.log(2.0) / th["k"]})
    data = probde.TimeSeries(TIMES, np.full(5, 2.0), observables=("total",))
    # a + b is conserved: every observation sits exactly at the mean.
    expected = stats.norm.logpdf(0.0, 0.0, 0.1) * 5
    np.testing.assert_allclose(probde.log_likelihood(m, data, {"k": 0.7}), expected, rtol=1e-8)


# (a few early warmup proposals reach rates whose solve fails: counted, warned, irrelevant here)
@pytest.mark.filterwarnings("ignore:.*proposals were rejected because the solve")
@pytest.mark.filterwarnings("ignore::probde.ConvergenceWarning")  # a short run on purpose
def test_derived_draws_are_the_function_of_each_draw():
    """A derived quantity is recorded with every draw, prior and posterior: its function of
    that draw's parameters, to the last bit or two."""
    m = probde.Model(ODE1, {"k": dist.LogNormal(0.0, 0.5)}, initial_state=jnp.array([2.0]),
                     observation=probde.noise.Normal(sigma=0.1),
                     derived={"half_life": lambda th: jnp.log(2.0) / th["k"]})
    data = probde.TimeSeries(TIMES, VALUES, observables=("x",))
    result = probde.infer(m, data, probde.NUTS(num_chains=1, num_warmup=50, num_samples=50),
                          seed=0, num_prior_samples=10)
    for group in ("posterior", "prior"):
        k = result.idata[group]["k"]
        half_life = result.idata[group]["half_life"]
        assert half_life.dims == k.dims
        # Equal up to float64 rounding: the sampler computes both k and log(2) / k from the
        # same unconstrained value in one compiled program, where XLA may fuse log(2) / exp(u)
        # differently from numpy's division here (a last-bit difference in about a third
        # of the draws).
        np.testing.assert_array_max_ulp(half_life.values, np.log(2.0) / k.values, maxulp=2)
    assert "half_life" in result.summary().index


def test_noise_scale_as_a_function_of_the_state_matches_scipy():
    """The combined additive and proportional error: sigma = a + b * x(t)."""
    model = probde.Model(ODE1, {"k": dist.LogNormal(0.0, 1.0), "b": dist.HalfNormal(1.0)},
                         initial_state=jnp.array([2.0]),
                         observation=probde.noise.Normal(
                             sigma=lambda y, th: 0.05 + th["b"] * y[0]),
                         solver=TIGHT)
    data = probde.TimeSeries(TIMES, VALUES, observables=("x",))
    ll = probde.log_likelihood(model, data, {"k": 1.1, "b": 0.2})
    mu = 2.0 * np.exp(-1.1 * TIMES)
    expected = stats.norm.logpdf(VALUES, mu, 0.05 + 0.2 * mu).sum()
    np.testing.assert_allclose(ll, expected, rtol=1e-8)
    # the predictive at new times is drawn with the scale at those times
    result = probde.infer(model, data, probde.Laplace(num_draws=200), seed=0)
    y_new = result.predict(np.array([10.0]))["y"].values.ravel()
    assert np.std(y_new) < 0.2  # 0.05 + b * (about 0) at t = 10, not the data-time scale


def test_noise_scale_function_is_refused_where_it_cannot_apply():
    sigma = lambda y, th: 0.1 + 0 * y[0]  # noqa: E731
    sde = probde.SDE(lambda t, y, th: -th["k"] * y, lambda t, y, th: jnp.eye(1) * 0.1,
                     state_names=("x",))
    with pytest.raises(ValueError, match="needs ODE dynamics"):
        probde.Model(sde, {"k": dist.LogNormal(0.0, 1.0)}, initial_state=jnp.array([2.0]),
                     observation=probde.noise.Normal(sigma=sigma), likelihood=probde.EKF())
    with pytest.raises(ValueError, match="cannot be combined with a discrepancy"):
        make_model(probde.noise.Normal(sigma=sigma), discrepancy=probde.GPDiscrepancy(
            gpx.kernels.RBF(lengthscale=1.0, variance=1.0)))
    with pytest.raises(ValueError, match=r"must return a number or a 1-D array"):
        make_model(probde.noise.Normal(sigma=lambda y, th: jnp.ones((2, 2))))
    with pytest.raises(TypeError, match="or a function"):
        probde.noise.Normal(sigma="0.1")


def test_log_likelihood_with_a_gp_discrepancy_runs_under_jit():
    # The program's set-up evaluates the discrepancy's link values from the data while it
    # is built, which under jit used to be staged and then refused by numpy.
    model = make_model(probde.noise.Normal(sigma=0.1),
                       discrepancy=probde.GPDiscrepancy(gpx.kernels.RBF(), lengthscale=1.0,
                                                        variance=0.1))
    data = probde.TimeSeries(TIMES, VALUES, observables=("x",))
    params = {"k": 0.9}
    eager = probde.log_likelihood(model, data, params)
    jitted = jax.jit(lambda p: probde.log_likelihood(model, data, p))(params)
    np.testing.assert_allclose(jitted, eager, rtol=RTOL[np.dtype("float64")])
