"""Leave-future-out cross-validation (`probde.checks.leave_future_out`).

The test problem is linear-Gaussian, so every forecast density is known in closed form:
x' = b with x(0) = 0, so x(t) = b t; b ~ Normal(0, TAU); y_t ~ Normal(b t, SIGMA) with SIGMA
known. Given the observed y_{1:i} the posterior of b is Normal(m_i, v_i), and the next
values are jointly Normal(m_i t_f, SIGMA^2 I + v_i t_f t_f^T). One value is missing (NaN):
it must be left out of the conditioning.

Refits are `probde.infer` runs (a compile each), so the fast tests share three runs: the
fit on all data, exact LFO and PSIS-LFO 2 steps ahead (three refits in all).
"""

import dataclasses
import warnings

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
import xarray as xr
from conftest import Z_MAX
from scipy.stats import lognorm, multivariate_normal

import probde
from probde.checks import leave_future_out as lfo_module
from probde.checks._lfo_density import Truncations, psis, weighted_predictive
from probde.checks.leave_future_out import MIN_ESS, lfo
from probde.inference.convergence import ConvergenceWarning

SIGMA, TAU = 0.3, 1.0
MIN_OBS = 3
# Two chains (R-hat needs several), long enough that the refits pass the convergence
# checks; sampling this model is cheap next to compiling it.
NUTS = probde.NUTS(num_chains=2, num_warmup=400, num_samples=1500)


def _model():
    ode = probde.ODE(lambda t, x, th: th["b"] * jnp.ones_like(x), state_names=("x",))
    return probde.Model(ode, {"b": dist.Normal(0.0, TAU)}, jnp.array([0.0]),
                        probde.noise.Normal(sigma=SIGMA), t0=0.0)


def _series(n, missing=(1,)):
    t = np.arange(1.0, n + 1.0)
    y = 0.5 * t + SIGMA * np.random.default_rng(1).normal(size=n)
    y[list(missing)] = np.nan
    return probde.TimeSeries(t, y, observables=("x",))


def exact_elpd(data, i, horizon, future=None):
    """log p(y_future | y_{1:i}) of the test problem, missing values left out; the future
    is the next `horizon` values, or the indices `future`."""
    t, y = data.times, data.values[:, 0]
    seen = ~np.isnan(y)
    future = np.arange(i, i + horizon) if future is None else np.asarray(future)
    past, fut = seen & (np.arange(len(t)) < i), future[seen[future]]
    precision = 1 / TAU**2 + np.sum(t[past] ** 2) / SIGMA**2
    mean = np.sum(t[past] * y[past]) / SIGMA**2 / precision
    tf = t[fut]
    cov = SIGMA**2 * np.eye(tf.size) + np.outer(tf, tf) / precision
    return multivariate_normal(mean * tf, cov).logpdf(y[fut])


@pytest.fixture(scope="module")
def fit():
    """A result of the model on 6 times. lfo reads only its model and data (it refits), so
    the fit on all data is left out here, to spare the fast tests one compiled sampler."""
    data = _series(6)
    return probde.InferenceResult(xr.DataTree(), model=_model(), data=data), data


@pytest.fixture(scope="module")
def exact2(fit):
    """Exact LFO 2 steps ahead from origin 4: one refit."""
    return lfo(fit[0], min_observations=4, horizon=2, method="exact", refit_method=NUTS)


@pytest.fixture(scope="module")
def approx2(fit):
    """PSIS-LFO 2 steps ahead; its refit also warns (a stand-in ConvergenceWarning and a
    plain UserWarning), to check how lfo gathers the refits' warnings."""
    real_infer = lfo_module.infer

    def warning_infer(*args, **kwargs):
        warnings.warn("the chains disagree\n- R-hat: 1 parameter(s) above 1.01: b (1.02).",
                      ConvergenceWarning, stacklevel=2)
        warnings.warn("12 proposals were rejected", UserWarning, stacklevel=2)
        return real_infer(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.setattr(lfo_module, "infer", warning_infer)
        cv = lfo(fit[0], min_observations=MIN_OBS, horizon=2, refit_method=NUTS)
    return cv, caught


def _z(cv, data):
    """z-scores of the pointwise and summed elpd against the closed form (origins without
    an observed future value left out). Each forecast must rest on enough effective draws
    for its Monte Carlo standard error to hold."""
    pw = cv.pointwise.dropna(subset=["elpd"])
    assert np.all(pw["ess"] >= MIN_ESS), pw
    truth = np.array([exact_elpd(data, i, cv.horizon) for i in pw.index])
    return (pw["elpd"].to_numpy() - truth) / pw["mcse"].to_numpy(), (
        (cv.elpd - truth.sum()) / cv.mcse)


def test_exact_lfo_matches_closed_form(fit, exact2):
    """Exact LFO of the joint 2-step-ahead density against the closed form, within Monte
    Carlo error; one refit per origin."""
    z_points, z_total = _z(exact2, fit[1])
    assert np.all(np.abs(z_points) < Z_MAX), z_points
    assert abs(z_total) < Z_MAX
    assert exact2.refits == (4,) and exact2.num_refits == 1
    assert exact2.pointwise["refit"].tolist() == [True]
    assert exact2.pointwise["time"].tolist() == [4.0]
    assert np.isnan(exact2.pointwise["pareto_k"]).all()
    # the Monte Carlo error of a 3000-draw estimate is a few hundredths of a nat here
    assert 0.0 < exact2.mcse < 0.2
    assert np.isnan(exact2.se)  # one origin: no spread to estimate


def test_joint_density_is_not_sum_of_one_step_forecasts(fit):
    """The 2-step block density differs from the product of its 1-step marginals by much
    more than the Monte Carlo error: the closed form used above tests the joint density."""
    data = fit[1]
    joint = exact_elpd(data, 3, 2)
    marginal = exact_elpd(data, 3, 1) + exact_elpd(data, 3, 1, future=[4])
    assert abs(joint - marginal) > 0.05


def test_psis_lfo_matches_closed_form_and_exact_lfo(fit, exact2, approx2):
    """PSIS-LFO refits only at the first origin (3) and reweights its draws at origin 4;
    it agrees with the closed form at both, and at origin 4 with exact LFO's refit there,
    within Monte Carlo error."""
    cv, _ = approx2
    z_points, z_total = _z(cv, fit[1])
    assert np.all(np.abs(z_points) < Z_MAX), z_points
    assert abs(z_total) < Z_MAX
    assert cv.refits == (3,) and cv.num_refits == 1
    assert cv.pointwise["refit"].tolist() == [True, False]
    k = cv.pointwise["pareto_k"].to_numpy()
    assert np.isnan(k[0]) and k[1] < cv.k_threshold
    reweighted, exact = cv.pointwise.loc[4], exact2.pointwise.loc[4]
    assert abs(reweighted["elpd"] - exact["elpd"]) < Z_MAX * np.hypot(reweighted["mcse"],
                                                                     exact["mcse"])
    assert np.isfinite(cv.se) and cv.se > 0


def test_refit_warnings_are_gathered(approx2):
    cv, caught = approx2
    convergence = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    other = [w for w in caught if not issubclass(w.category, ConvergenceWarning)]
    assert len(convergence) == 1
    assert "1 of 1 LFO refits failed their convergence checks (i = 3 (3): R-hat)" in str(
        convergence[0].message)
    assert [str(w.message) for w in other] == ["LFO refits at i = 3: 12 proposals were rejected"]
    assert convergence[0].filename == __file__  # reported at the caller's line


def test_refits_are_kept_with_the_result(fit, approx2, monkeypatch):
    """Another horizon on the same result reuses the refit at origin 3 (no probde.infer
    run), with its warnings; another result object starts afresh."""

    def no_refit(*args, **kwargs):
        raise AssertionError("refit reached")

    monkeypatch.setattr(lfo_module, "infer", no_refit)
    with pytest.warns(ConvergenceWarning, match=r"i = 3 \(3\): R-hat"), pytest.warns(
            UserWarning, match="LFO refits at i = 3: 12 proposals were rejected"):
        one_step = lfo(fit[0], min_observations=MIN_OBS, refit_method=NUTS)
    assert one_step.refits == (3,) and one_step.pointwise.index.tolist() == [3, 4, 5]
    z_points, z_total = _z(one_step, fit[1])
    assert np.all(np.abs(z_points) < Z_MAX) and abs(z_total) < Z_MAX
    other = probde.InferenceResult(fit[0].idata, model=fit[0].model, data=fit[1])
    with pytest.raises(AssertionError, match="refit reached"):
        lfo(other, min_observations=MIN_OBS, refit_method=NUTS)


def test_summary_and_plot(approx2, tmp_path):
    cv, _ = approx2
    text = str(cv)
    assert "PSIS-LFO, 2-step-ahead" in text and "refits: 1 (at i = 3)" in text
    assert f"elpd_lfo {cv.elpd:.2f}" in text
    fig = cv.plot(tmp_path / "lfo.png")
    assert (tmp_path / "lfo.png").exists() and len(fig.axes) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        cv.elpd = 0.0


def test_scores_from_pointwise_terms_equal_truncated_likelihoods():
    """The two ways to log p(y_{1:k} | theta) agree: cumulative pointwise terms of the
    program on all data, and the likelihood of the k-th truncation. LogNormal noise around
    x(t) = 1 + b t: the draw b = -0.3 predicts a non-positive mean after t = 3.3, which the
    program on all data rejects; it is scored on the truncations themselves, which reject
    it too (LogNormal noise needs a positive mean at every time, observed or not)."""
    ode = probde.ODE(lambda t, x, th: th["b"] * jnp.ones_like(x), state_names=("x",))
    model = probde.Model(ode, {"b": dist.Normal(0.0, TAU)}, jnp.array([1.0]),
                         probde.noise.LogNormal(sigma=SIGMA), t0=0.0)
    t = np.arange(1.0, 7.0)
    data = probde.TimeSeries(t, 1.0 + 0.5 * t, observables=("x",))
    truncations = Truncations(model, [data], True, model.prepare(data), seed=0)
    assert truncations.factorised
    draws = {"b": np.array([0.5, 0.4, -0.3])}
    scores = truncations.scores(draws)
    for k in (3, 4):
        np.testing.assert_allclose(scores(k), truncations.masked(k, draws), rtol=1e-12)
    mean = 1.0 + draws["b"][:2, None] * t[None, :3]
    by_hand = np.sum(lognorm.logpdf(data.values[:3, 0], SIGMA, scale=mean), axis=1)
    np.testing.assert_allclose(scores(3)[:2], by_hand, rtol=1e-10)
    assert scores(3)[2] == scores(4)[2] == -np.inf


def test_psis_weights_follow_the_ratios():
    """ArviZ's psislw takes a log-likelihood and weights by its negative: check the sign
    convention lfo relies on, and the uniform cases."""
    rng = np.random.default_rng(0)
    log_ratio = rng.normal(size=1000) * 0.3
    log_ratio[7] = 3.0  # by far the largest ratio: the largest weight
    log_w, k = psis(log_ratio, (2, 500))
    assert np.argmax(log_w) == 7 and np.isclose(np.exp(log_w).sum(), 1.0)
    assert np.isfinite(k)
    log_w, k = psis(np.zeros(1000), (2, 500))
    assert np.allclose(log_w, -np.log(1000)) and np.isnan(k)
    assert psis(np.full(1000, -np.inf), (2, 500))[1] == np.inf


def test_weighted_predictive_uniform_is_log_mean_exp():
    """Uniform weights: log of the mean density; the delta-method standard error
    sd(p) / (mean(p) sqrt(ESS)) and Kong's effective draws S / (1 + cv(p)^2) times the
    relative ESS, ESS from ArviZ."""
    rng = np.random.default_rng(1)
    log_p = rng.normal(size=400)
    elpd, mcse, ess = weighted_predictive(np.full(400, -np.log(400)), log_p, (1, 400))
    p = np.exp(log_p)
    assert np.isclose(elpd, np.log(p.mean()), rtol=1e-12)
    arviz_ess = float(xr.DataArray(p[None], dims=["chain", "draw"]).azstats.ess(
        sample_dims=["chain", "draw"]))
    assert np.isclose(mcse, p.std() / p.mean() / np.sqrt(arviz_ess), rtol=1e-9)
    assert np.isclose(ess, arviz_ess / (1 + p.var() / p.mean() ** 2), rtol=1e-9)
    # one draw carrying the estimate: about one effective draw
    log_p[0] = 50.0
    assert weighted_predictive(np.full(400, -np.log(400)), log_p, (1, 400))[2] < 1.5


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"min_observations": 0}, ValueError, r"min_observations must be an integer from 1 to 5"
                                              r" \(the 6 times less horizon=1\); got 0"),
        ({"min_observations": 6}, ValueError, "min_observations must be an integer from 1 to 5"),
        ({"min_observations": 3, "horizon": 2}, None, None),
        ({"min_observations": 5, "horizon": 2}, ValueError, "from 1 to 4.*got 5"),
        ({"min_observations": 3.0}, ValueError, "min_observations must be an integer.*float"),
        ({"min_observations": True}, ValueError, "min_observations must be an integer.*bool"),
        ({"min_observations": 3, "horizon": 0}, ValueError, "horizon must be a positive int"),
        ({"min_observations": 3, "horizon": 6}, ValueError, "horizon must be below the number"
                                                            " of times, 6; got 6"),
        ({"min_observations": 3, "method": "psis"}, ValueError,
         r"method must be one of \('approx', 'exact'\); got 'psis'"),
        ({"min_observations": 3, "method": NUTS}, ValueError,
         r"method must be one of \('approx', 'exact'\) \(the inference method of the refits is "
         r"refit_method=\.\.\.\); got NUTS"),
        ({"min_observations": 3, "k_threshold": 0.0}, ValueError, "k_threshold must be a posi"),
        ({"min_observations": 3, "seed": "0"}, TypeError, "seed must be an integer; got '0'"),
        ({"min_observations": 3, "refit_method": "nuts"}, TypeError,
         "refit_method must be the inference method.*got 'nuts' of type str"),
    ],
)
def test_bad_options(fit, kwargs, error, match, monkeypatch):
    def no_refit(*args, **kw):
        raise AssertionError("refit reached")

    monkeypatch.setattr(lfo_module, "infer", no_refit)
    kwargs = {"refit_method": NUTS, **kwargs}
    result = probde.InferenceResult(fit[0].idata, model=fit[0].model, data=fit[1])  # no refits kept
    if error is None:  # valid options: lfo gets as far as the first refit
        with pytest.raises(AssertionError, match="refit reached"):
            lfo(result, **kwargs)
        return
    with pytest.raises(error, match=match):
        lfo(result, **kwargs)


def test_bad_results(fit):
    result, data = fit
    with pytest.raises(TypeError,
                       match=r"(?s)result must be a probde\.InferenceResult.*of type DataTree"):
        lfo(result.idata, min_observations=3, refit_method=NUTS)
    loaded = probde.InferenceResult(result.idata)  # as probde.load gives it, without model
    with pytest.raises(ValueError, match=r"lfo needs the model and data.*probde\.load\(path"):
        lfo(loaded, min_observations=3, refit_method=NUTS)
    with pytest.raises(TypeError, match=r"refit_method must be.*got None"):
        lfo(result, min_observations=3)
    # several experiments: each needs an observed value among the first min_observations
    late = probde.TimeSeries([4.0, 5.0], [2.0, 2.5], ("x",), name="late")
    several = probde.InferenceResult(result.idata, model=result.model,
                                     data=[data, late])
    with pytest.raises(ValueError, match=r"experiment 'late' has its first observed value at 4; "
                                         r"every experiment needs one: use min_observations >= 4"):
        lfo(several, min_observations=3, refit_method=NUTS)


@pytest.mark.slow
def test_lfo_on_a_longer_series(monkeypatch):
    """10 times, 1 step ahead, with a missing value at t = 8 (its origin, 7, has nothing to
    forecast: no elpd, no refit). PSIS-LFO and exact LFO agree with the closed form;
    PSIS-LFO refits once, exact LFO at each of the 6 scored origins (reusing PSIS-LFO's
    refit at origin 3, kept with the result). A well-specified linear-Gaussian model never
    gives a Pareto k above 0.7 (new data move its posterior by less than its width), so a
    last run reports k = 0.9 at origin 6, to check that PSIS-LFO refits there (reusing
    exact LFO's refit) and reweights the later origins from that refit."""
    data = _series(10, missing=(1, 7))
    result = probde.InferenceResult(xr.DataTree(), model=_model(), data=data)
    approx = lfo(result, min_observations=MIN_OBS, refit_method=NUTS)
    exact = lfo(result, min_observations=MIN_OBS, method="exact", refit_method=NUTS)
    real_psis, origins = lfo_module.psis, iter([4, 5, 6, 8, 9])

    def psis_high_at_6(log_ratio, shape):
        log_w, k = real_psis(log_ratio, shape)
        return log_w, (0.9 if next(origins) == 6 else k)

    monkeypatch.setattr(lfo_module, "psis", psis_high_at_6)
    forced = lfo(result, min_observations=MIN_OBS, refit_method=NUTS)
    for cv in (approx, exact, forced):
        z_points, z_total = _z(cv, data)
        assert len(z_points) == 6 and np.all(np.abs(z_points) < Z_MAX), z_points
        assert abs(z_total) < Z_MAX
        assert np.isnan(cv.pointwise["elpd"][7]) and not cv.pointwise["refit"][7]
    assert approx.pointwise["elpd"][3] == exact.pointwise["elpd"][3]
    assert approx.refits == (3,) and exact.refits == (3, 4, 5, 6, 8, 9)
    assert forced.refits == (3, 6) and forced.pointwise["pareto_k"][6] == 0.9
    # origins 8 and 9 reweight the refit at 6: the same draws as exact LFO's refit at 6
    assert forced.pointwise["elpd"][6] == exact.pointwise["elpd"][6]
    assert np.all(forced.pointwise["pareto_k"][[8, 9]] < 0.7)


@pytest.mark.slow
def test_several_experiments_share_the_future_by_time():
    """Two experiments on different times: origin i conditions on both up to the i-th time
    of the union of their times and forecasts all their values at the next two times."""
    rng = np.random.default_rng(3)
    ta, tb = np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([1.5, 2.0, 3.5, 5.0])
    ya, yb = 0.5 * ta + SIGMA * rng.normal(size=5), 0.5 * tb + SIGMA * rng.normal(size=4)
    data = [probde.TimeSeries(ta, ya, ("x",), name="a"),
            probde.TimeSeries(tb, yb, ("x",), name="b")]
    result = probde.InferenceResult(xr.DataTree(), model=_model(), data=data)
    cv = lfo(result, min_observations=MIN_OBS, horizon=2, refit_method=NUTS)
    union = np.unique(np.concatenate([ta, tb]))
    t, y = np.concatenate([ta, tb]), np.concatenate([ya, yb])
    assert cv.pointwise.index.tolist() == [3, 4, 5]
    assert cv.pointwise["time"].tolist() == union[2:5].tolist()
    for i, row in cv.pointwise.iterrows():
        past, future = t <= union[i - 1], (t > union[i - 1]) & (t <= union[i + 1])
        precision = 1 / TAU**2 + np.sum(t[past] ** 2) / SIGMA**2
        mean = np.sum(t[past] * y[past]) / SIGMA**2 / precision
        tf = t[future]
        truth = multivariate_normal(mean * tf, SIGMA**2 * np.eye(tf.size)
                                    + np.outer(tf, tf) / precision).logpdf(y[future])
        assert row["ess"] >= MIN_ESS and abs(row["elpd"] - truth) < Z_MAX * row["mcse"]
