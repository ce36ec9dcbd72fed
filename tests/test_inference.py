"""NUTS through `probde.infer`: exact posteriors, failures, reproducibility, DataTree layout."""

import warnings

import arviz as az
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import xarray as xr
from conftest import Z_MAX, decay_at_failure_edge
from scipy import stats
from scipy.special import logsumexp

import probde

# ----------------------------------------------------------- linear-Gaussian problem
# dx/dt = a with x(0) = x0: x(t) = x0 + a t is linear in (x0, a). With Gaussian priors and
# known Gaussian noise the posterior is Gaussian with closed-form mean and covariance.
T_OBS = np.array([0.5, 1.0, 1.5, 2.0, 3.0])
SIGMA = 0.3
PRIOR_MEAN = np.array([1.0, 0.5])  # (x0, a)
PRIOR_SD = np.array([1.0, 1.0])
Y_OBS = np.array([1.9, 2.1, 3.05, 3.4, 4.6])


def exact_posterior():
    X = np.stack([np.ones_like(T_OBS), T_OBS], axis=1)
    precision = np.diag(1 / PRIOR_SD**2) + X.T @ X / SIGMA**2
    cov = np.linalg.inv(precision)
    mean = cov @ (PRIOR_MEAN / PRIOR_SD**2 + X.T @ Y_OBS / SIGMA**2)
    return mean, np.sqrt(np.diag(cov))


def linear_model(solver=None):
    ode = probde.ODE(lambda t, y, th: jnp.broadcast_to(th["a"], y.shape), state_names=("x",))
    return probde.Model(
        ode,
        params={"a": dist.Normal(PRIOR_MEAN[1], PRIOR_SD[1])},
        initial_state=dist.Normal(PRIOR_MEAN[0], PRIOR_SD[0]).expand([1]),
        observation=probde.noise.Normal(sigma=SIGMA),
        t0=0.0,
        solver=solver,
    )


LINEAR_DATA = probde.TimeSeries(T_OBS, Y_OBS, observables=("x",))


@pytest.fixture(scope="module")
def linear_result():
    method = probde.NUTS(num_chains=4, num_warmup=500, num_samples=1000)
    return probde.infer(linear_model(), LINEAR_DATA, method, seed=1, num_prior_samples=200)


def test_nuts_reproduces_exact_gaussian_posterior(linear_result):
    mean, sd = exact_posterior()
    post = linear_result.idata["posterior"]
    draws = {"x0": post["initial_state"].sel(state="x"), "a": post["a"]}
    for i, name in enumerate(("x0", "a")):
        x = draws[name]
        mcse_mean = float(az.mcse(x, method="mean"))
        mcse_sd = float(az.mcse(x, method="sd"))
        assert abs(float(x.mean()) - mean[i]) / mcse_mean < Z_MAX, name
        assert abs(float(x.std()) - sd[i]) / mcse_sd < Z_MAX, name


@pytest.mark.filterwarnings("ignore::probde.ConvergenceWarning")  # a short run on purpose
def test_laplace_and_map_starts_with_an_implicit_solver():
    # An implicit solver is differentiated by the reverse adjoint, which has no forward
    # mode, so the Hessian of the MAP starts and of Laplace is taken by central
    # differences of the gradient (probde.inference.hessian). For this quadratic log
    # density they are exact to rounding: Laplace with Kvaerno5 must give the draws of
    # Laplace with the default solver (exact Hessian by autodiff) to 1e-9 relative, and
    # NUTS started at the MAP the exact posterior means.
    import diffrax

    def laplace(solver):
        result = probde.infer(linear_model(solver), LINEAR_DATA,
                              probde.Laplace(num_draws=500), seed=0, num_prior_samples=0)
        post = result.idata["posterior"]
        return np.stack([post["initial_state"].values.ravel(), post["a"].values.ravel()])

    stiff = probde.Solver(diffrax.Kvaerno5())
    np.testing.assert_allclose(laplace(stiff), laplace(None), rtol=1e-9)
    # two chains on the tests' four CPU devices: parallel by default, which the reverse
    # adjoint cannot do (diffrax #765), so they run one after the other, with a warning
    with pytest.warns(UserWarning, match="running the chains sequentially"):
        nuts = probde.infer(linear_model(stiff), LINEAR_DATA,
                            probde.NUTS(num_chains=2, num_warmup=200, num_samples=300,
                                        init="map"), seed=0, num_prior_samples=0)
    mean, _ = exact_posterior()
    post = nuts.idata["posterior"]
    for i, x in enumerate((post["initial_state"].sel(state="x"), post["a"])):
        assert abs(float(x.mean()) - mean[i]) / float(az.mcse(x, method="mean")) < Z_MAX


def test_datatree_groups_dims_and_coords(linear_result):
    idata = linear_result.idata
    for group in ("posterior", "sample_stats", "log_likelihood", "posterior_predictive",
                  "observed_data", "prior", "prior_predictive"):
        assert group in idata.children, group
    assert idata["posterior"]["initial_state"].dims == ("chain", "draw", "state")
    assert idata["posterior"]["a"].shape == (4, 1000)
    assert idata["log_likelihood"]["y"].dims == ("chain", "draw", "time", "observable")
    assert idata["posterior_predictive"]["y"].dims == ("chain", "draw", "time", "observable")
    assert idata["posterior_predictive"]["trajectory"].dims == ("chain", "draw", "time", "state")
    assert idata["observed_data"]["y"].dims == ("time", "observable")
    np.testing.assert_array_equal(idata["observed_data"]["time"].values, T_OBS)
    assert list(idata["observed_data"]["observable"].values) == ["x"]
    stats = idata["sample_stats"]
    for name in ("diverging", "lp", "n_steps", "tree_depth", "acceptance_rate", "step_size",
                 "solver_steps"):
        assert name in stats, name
    assert stats.attrs["solver_failures"] == 0
    assert idata["prior"]["a"].shape == (1, 200)


def test_pointwise_log_likelihood_matches_noise_density(linear_result):
    idata = linear_result.idata
    mu = idata["posterior_predictive"]["mu"].isel(chain=0, draw=0, observable=0).values
    ll = idata["log_likelihood"]["y"].isel(chain=0, draw=0, observable=0).values
    np.testing.assert_allclose(ll, stats.norm.logpdf(Y_OBS, mu, SIGMA), rtol=1e-10)
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd)


def test_summary_and_plot_fit(linear_result, tmp_path):
    summary = linear_result.summary()
    assert set(summary.index) == {"a", "initial_state[x]"}
    fig = linear_result.plot_fit(tmp_path / "fit.png")
    assert (tmp_path / "fit.png").stat().st_size > 0
    assert len(fig.axes) == 1


def test_netcdf_round_trip_is_lossless(linear_result, tmp_path):
    path = tmp_path / "idata.nc"
    linear_result.to_netcdf(path)
    loaded = probde.load(path)
    for group in linear_result.idata.children:
        xr.testing.assert_identical(
            loaded.idata[group].to_dataset(), linear_result.idata[group].to_dataset()
        )
    assert loaded.parameter_names == linear_result.parameter_names
    assert loaded.solver_failures == linear_result.solver_failures


@pytest.mark.filterwarnings("ignore::probde.ConvergenceWarning")  # a short run on purpose
def test_same_seed_same_draws():
    method = probde.NUTS(num_chains=2, num_warmup=50, num_samples=50)
    a = probde.infer(linear_model(), LINEAR_DATA, method, seed=7, num_prior_samples=10)
    b = probde.infer(linear_model(), LINEAR_DATA, method, seed=7, num_prior_samples=10)
    np.testing.assert_array_equal(a.idata["posterior"]["a"].values, b.idata["posterior"]["a"].values)
    np.testing.assert_array_equal(a.idata["prior"]["a"].values, b.idata["prior"]["a"].values)
    np.testing.assert_array_equal(a.idata["posterior_predictive"]["y"].values,
                                  b.idata["posterior_predictive"]["y"].values)
    # chains are seeded differently from one another
    assert not np.array_equal(a.idata["posterior"]["a"].values[0], a.idata["posterior"]["a"].values[1])


# ---------------------------------------------------------------- solver failures
def test_run_with_many_max_steps_failures_finishes_and_counts_them():
    model, data = decay_at_failure_edge()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = probde.infer(model, data, probde.NUTS(num_chains=2, num_warmup=200,
                                                       num_samples=200), seed=0,
                              num_prior_samples=100)
    assert result.solver_failures > 0
    messages = [str(w.message) for w in caught]
    assert any("raise Solver(max_steps=...) (now 24)" in m for m in messages), messages
    k = result.idata["posterior"]["k"].values
    assert np.all(np.isfinite(k))
    # Failed prior draws are kept as NaN predictions, not dropped and not placeholders.
    prior_y = result.idata["prior_predictive"]["y"].values
    failed = ~np.asarray(result.idata["prior"]["k"].values < 3.0)
    assert failed.any()  # the prior puts about half its draws past the edge
    assert np.isnan(prior_y[failed]).all()
    assert np.isfinite(result.idata["posterior_predictive"]["y"].values).all()


# ------------------------------------------------------ experiments, missing values
def _grid_posterior_mean(log_k, log_post):
    """Posterior mean of k from its log density on a uniform grid of log k (the log
    density of log k, Jacobian included)."""
    w = np.exp(log_post - log_post.max())
    return float(np.sum(np.exp(log_k) * w) / np.sum(w))


def two_flasks_posterior_mean_of_k():
    """Decay dx/dt = -k x in two flasks, each from its own uncertain x(t0) (t0 the flask's
    first time), Normal noise 0.1, LogNormal(0, 1) priors: the posterior mean of k by
    quadrature, a grid in log k and, per flask, a grid in log x(t0) integrated out."""
    log_k = np.linspace(-3.0, 3.0, 1401)
    log_y0 = np.linspace(-4.0, 4.0, 1601)
    k, y0 = np.exp(log_k)[:, None, None], np.exp(log_y0)[None, :, None]
    log_post = stats.norm.logpdf(log_k)
    for t, y in ((np.array([0.0, 1.0, 3.0]), np.array([2.0, 0.75, 0.1])),  # flask_a observed
                 (np.array([0.5, 1.5]), np.array([1.0, 0.37]))):  # flask_b
        ll = stats.norm.logpdf(y, y0 * np.exp(-k * (t - t[0])), 0.1).sum(-1)
        log_post = log_post + logsumexp(ll + stats.norm.logpdf(log_y0), axis=1)
    return _grid_posterior_mean(log_k, log_post)


def test_several_experiments_with_missing_values():
    ode = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    model = probde.Model(
        ode, {"k": dist.LogNormal(0.0, 1.0)},
        initial_state=dist.LogNormal(0.0, 1.0).expand([1]),
        observation=probde.noise.Normal(sigma=0.1),
    )
    e1 = probde.TimeSeries([0.0, 1.0, 2.0, 3.0], [2.0, 0.75, np.nan, 0.1], observables=("x",),
                           name="flask_a")
    e2 = probde.TimeSeries([0.5, 1.5], [1.0, 0.37], observables=("x",), name="flask_b")
    result = probde.infer(model, [e1, e2], probde.NUTS(num_chains=2, num_warmup=200,
                                                       num_samples=200), seed=3,
                          num_prior_samples=20)
    idata = result.idata
    assert idata["posterior"]["initial_state"].dims == ("chain", "draw", "experiment", "state")
    assert list(idata["posterior"]["experiment"].values) == ["flask_a", "flask_b"]
    ll = idata["log_likelihood"]["y"]
    assert ll.dims == ("chain", "draw", "obs_id") and ll.sizes["obs_id"] == 5
    assert sorted(ll["obs_experiment"].values.tolist()) == ["flask_a"] * 3 + ["flask_b"] * 2
    pred = idata["posterior_predictive"]["y"].sel(experiment="flask_b")
    assert np.isnan(pred.sel(time=0.0)).all()  # before flask_b's initial time
    # solved at its own times only: nothing at flask_a's times (predict(times) for those)
    assert np.isnan(pred.sel(time=3.0)).all()
    assert np.isfinite(pred.sel(time=1.5)).all()
    # the missing value of flask_a is predicted, not dropped
    assert np.isfinite(idata["posterior_predictive"]["y"].sel(experiment="flask_a", time=2.0)).all()
    assert np.isfinite(az.loo(idata).elpd)
    # k against its exact posterior mean (quadrature), within Monte Carlo error
    k = idata["posterior"]["k"]
    exact = two_flasks_posterior_mean_of_k()
    z = abs(float(k.mean()) - exact) / float(az.mcse(k, method="mean"))
    assert z < Z_MAX, (float(k.mean()), exact, z)


# --------------------------------------------------------- raw numpyro function
@pytest.mark.filterwarnings("ignore::probde.ConvergenceWarning")  # a short run on purpose
def test_user_written_numpyro_model_runs_through_infer():
    ode = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    times = jnp.array([0.5, 1.0, 2.0])

    def model(data):
        k = numpyro.sample("k", dist.LogNormal(0.0, 1.0))
        traj = probde.solve(ode, jnp.array([1.0]), {"k": k}, times, t0=0.0)
        numpyro.factor("solve_failed", jnp.where(traj.ok, 0.0, -jnp.inf))
        numpyro.sample("obs", dist.Normal(traj.ys[:, 0], 0.05), obs=data)

    data = jnp.array([0.6, 0.37, 0.14])
    result = probde.infer(model, data, probde.NUTS(num_chains=1, num_warmup=200, num_samples=200),
                          num_prior_samples=10)
    # k against its exact posterior mean (quadrature on a grid of log k), within MCSE
    log_k = np.linspace(-3.0, 3.0, 6001)
    log_post = stats.norm.logpdf(log_k) + stats.norm.logpdf(
        np.asarray(data), np.exp(-np.exp(log_k)[:, None] * np.asarray(times)), 0.05).sum(-1)
    exact = _grid_posterior_mean(log_k, log_post)
    k = result.idata["posterior"]["k"]
    z = abs(float(k.mean()) - exact) / float(az.mcse(k, method="mean"))
    assert z < Z_MAX, (float(k.mean()), exact, z)
    assert "obs" in result.idata["log_likelihood"]


@pytest.mark.parametrize("num_chains, init_candidates", [(1, 8), (2, 1)])
def test_no_feasible_starting_point_is_a_clear_error(num_chains, init_candidates):
    # Every solve needs more than 2 steps: no starting point is feasible, neither for the
    # best-of-8 search nor for numpyro's own start inside the sampler (init_candidates=1).
    ode = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    model = probde.Model(ode, {"k": dist.LogNormal(0.0, 1.0)}, initial_state=jnp.array([1.0]),
                         observation=probde.noise.Normal(sigma=0.1),
                         solver=probde.Solver(max_steps=2), t0=0.0)
    data = probde.TimeSeries([1.0, 2.0, 3.0], [0.4, 0.1, 0.05], observables=("x",))
    with pytest.raises(RuntimeError, match="NUTS found no feasible starting point.*max_steps"):
        probde.infer(model, data, probde.NUTS(num_chains=num_chains, num_warmup=5,
                                              num_samples=5, init_candidates=init_candidates),
                     num_prior_samples=0)
