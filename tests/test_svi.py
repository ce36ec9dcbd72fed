"""`probde.SVI` and `probde.Laplace`: exact linear-Gaussian posteriors, the DataTree they
produce through `probde.infer` (plain numpyro function and `probde.Model`), skipped
non-finite steps, the convergence warning and argument checks."""

import dataclasses
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import probde
from conftest import Z_MAX, decay_at_failure_edge
from probde.inference.loss_trace import loss_rose
from probde.inference.svi import loss_converged

# ------------------------------------------------------ linear-Gaussian regression
# y = X beta + eps, eps ~ N(0, SIGMA^2 I), beta ~ N(0, TAU^2 I): the posterior is
# N(m, S) with S = (X^T X / SIGMA^2 + I / TAU^2)^-1, m = S X^T y / SIGMA^2. The first two
# columns of X share a common factor, so beta_0 and beta_1 are strongly (negatively)
# correlated a posteriori (about -0.87).
_rng = np.random.default_rng(0)
N_OBS, TAU, SIGMA = 20, 2.0, 1.0
_z = _rng.normal(size=(N_OBS, 1))
X = np.concatenate(
    [_z + 0.3 * _rng.normal(size=(N_OBS, 1)), _z + 0.3 * _rng.normal(size=(N_OBS, 1)),
     _rng.normal(size=(N_OBS, 1))], axis=1,
)
Y = X @ np.array([1.0, -0.5, 0.8]) + SIGMA * _rng.normal(size=N_OBS)
POST_COV = np.linalg.inv(X.T @ X / SIGMA**2 + np.eye(3) / TAU**2)
POST_MEAN = POST_COV @ X.T @ Y / SIGMA**2
POST_SD = np.sqrt(np.diag(POST_COV))
POST_CORR = POST_COV[0, 1] / (POST_SD[0] * POST_SD[1])
NUM_DRAWS = 4000
# Allowance for the residual of a stochastic optimisation, in posterior sds (means) and
# relative (sds). The guide's parameters end where the noisy one-draw ELBO gradient
# leaves them, not at the optimum: with the default schedule (peak 1e-2, final 1e-4) and
# 3000 steps the means are off by a few hundredths of a posterior sd, and the scales
# (slow to converge) a few percent low (measured on this problem, 4000 draws: means within
# 0.03 sd, sds 3-5% low, correlation 0.008 weaker). The Monte Carlo part is added
# separately, by Z_MAX standard errors of the draws.
OPT_MEAN = 0.05
OPT_SD = 0.05
OPT_CORR = 0.02


def regression(data):
    beta = numpyro.sample("beta", dist.Normal(0.0, TAU).expand([3]).to_event(1))
    numpyro.sample("y", dist.Normal(jnp.asarray(X) @ beta, SIGMA), obs=data)


def fit(method, seed=0):
    return probde.infer(regression, jnp.asarray(Y), method, seed=seed, num_prior_samples=0)


@pytest.fixture(scope="module")
def full_rank():
    return fit(probde.SVI(num_steps=3000, num_draws=NUM_DRAWS))


@pytest.fixture(scope="module")
def mean_field():
    return fit(probde.SVI(guide="normal", num_steps=3000, num_draws=NUM_DRAWS))


@pytest.fixture(scope="module")
def laplace():
    return fit(probde.Laplace(num_draws=NUM_DRAWS))


def draws(result):
    beta = result.idata["posterior"]["beta"].values
    assert beta.shape == (1, NUM_DRAWS, 3)
    return beta[0]


def check_moments(beta, opt_mean, opt_sd, opt_corr):
    """Means, sds and the (0, 1) correlation of independent draws against the exact
    posterior: Monte Carlo error (Z_MAX standard errors: sd / sqrt(n) for a mean,
    sd / sqrt(2 n) for an sd, (1 - rho^2) / sqrt(n) for a correlation) plus the given
    optimisation allowance."""
    n = beta.shape[0]
    mean, sd = beta.mean(0), beta.std(0, ddof=1)
    tol_mean = Z_MAX * POST_SD / np.sqrt(n) + opt_mean * POST_SD
    tol_sd = Z_MAX * POST_SD / np.sqrt(2 * n) + opt_sd * POST_SD
    assert np.all(np.abs(mean - POST_MEAN) < tol_mean), (mean, POST_MEAN, tol_mean)
    assert np.all(np.abs(sd - POST_SD) < tol_sd), (sd, POST_SD, tol_sd)
    corr = np.corrcoef(beta.T)[0, 1]
    tol_corr = Z_MAX * (1 - POST_CORR**2) / np.sqrt(n) + opt_corr
    assert abs(corr - POST_CORR) < tol_corr, (corr, POST_CORR, tol_corr)


def test_full_rank_svi_matches_exact_posterior(full_rank):
    check_moments(draws(full_rank), OPT_MEAN, OPT_SD, OPT_CORR)


def test_mean_field_gets_means_but_underestimates_correlated_sds(mean_field):
    beta = draws(mean_field)
    n = beta.shape[0]
    tol_mean = Z_MAX * POST_SD / np.sqrt(n) + OPT_MEAN * POST_SD
    assert np.all(np.abs(beta.mean(0) - POST_MEAN) < tol_mean)
    # A factorised Gaussian fitted by KL(q || p) has the conditional sds
    # 1 / sqrt(precision_ii), well below the marginal sds when |rho| is large (here about
    # half). beta_2 is nearly uncorrelated: its sd is nearly exact.
    sd = beta.std(0, ddof=1)
    conditional = 1 / np.sqrt(np.diag(np.linalg.inv(POST_COV)))
    assert np.all(sd[:2] < 0.7 * POST_SD[:2]), (sd, POST_SD)
    tol_sd = Z_MAX * conditional / np.sqrt(2 * n) + OPT_SD * conditional
    assert np.all(np.abs(sd - conditional) < tol_sd), (sd, conditional)
    assert abs(np.corrcoef(beta.T)[0, 1]) < Z_MAX / np.sqrt(n)


def test_laplace_is_exact_for_a_gaussian_posterior(laplace):
    # The MAP fit is deterministic (a point guide) and converges to 1e-4 of the mode, and
    # the Hessian is exact (autodiff): only Monte Carlo error remains.
    check_moments(draws(laplace), 1e-3, 1e-3, 1e-3)


def test_datatree_groups_and_stats(full_rank, laplace):
    for result in (full_rank, laplace):
        idata = result.idata
        for group in ("posterior", "sample_stats", "log_likelihood", "posterior_predictive",
                      "svi_trace"):
            assert group in idata.children, group
        stats = idata["sample_stats"]
        for name in ("lp", "diverging", "n_steps"):
            assert stats[name].shape == (1, NUM_DRAWS), name
        assert not stats["diverging"].values.any()
        assert (stats["n_steps"].values == 1).all()
        # lp is the model's log joint at each draw (beta is unconstrained: no Jacobian).
        beta = draws(result)
        resid = Y - beta @ X.T
        exact_lp = (
            (-0.5 * (beta / TAU) ** 2 - np.log(TAU) - 0.5 * np.log(2 * np.pi)).sum(-1)
            + (-0.5 * (resid / SIGMA) ** 2 - np.log(SIGMA) - 0.5 * np.log(2 * np.pi)).sum(-1)
        )
        np.testing.assert_allclose(stats["lp"].values[0], exact_lp, rtol=5e-7)
        assert idata["log_likelihood"]["y"].shape == (1, NUM_DRAWS, N_OBS)
        assert idata["posterior_predictive"]["y"].shape == (1, NUM_DRAWS, N_OBS)
        trace = idata["svi_trace"]
        assert trace["loss"].dims == ("step",)
        assert trace["loss"].shape == (3000 if result is full_rank else 2000,)
        assert trace.attrs["skipped_steps"] == 0
        assert np.isfinite(trace["loss"].values).all()


def test_reproducible_with_seed():
    method = probde.SVI(guide="normal", num_steps=300, num_draws=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 300 steps may not have converged; not the point
        a, b = fit(method, seed=3), fit(method, seed=3)
    np.testing.assert_array_equal(a.idata["posterior"]["beta"].values,
                                  b.idata["posterior"]["beta"].values)
    np.testing.assert_array_equal(a.idata["svi_trace"]["loss"].values,
                                  b.idata["svi_trace"]["loss"].values)


@pytest.mark.parametrize("guide, rank, num_steps", [("low_rank", 2, 3000), ("flow", None, 2000)])
def test_other_guides_run_and_find_the_means(guide, rank, num_steps):
    result = fit(probde.SVI(guide=guide, rank=rank, num_steps=num_steps, num_draws=2000))
    beta = result.idata["posterior"]["beta"].values[0]
    # Means only (these families need not be exact): Monte Carlo plus a tenth of an sd.
    tol = Z_MAX * POST_SD / np.sqrt(beta.shape[0]) + 0.1 * POST_SD
    assert np.all(np.abs(beta.mean(0) - POST_MEAN) < tol), (beta.mean(0), POST_MEAN)


# ------------------------------------------- default settings against exact answers
# Linear-Gaussian calibrations with a closed-form posterior N(m, P^-1), P = X^T X / s^2 +
# I / t^2, m = P^-1 X^T y / s^2, fitted at SVI's default settings (Laplace start, 5000
# steps). The full-rank guide's optimum is the posterior itself; the mean-field guide's
# (KL(q || p)) has the exact means and the precisions diag(P). The fitted guide's location
# and scale are compared directly (`svi_trace.loc`, `.scale`: no Monte Carlo error); the
# draws' sd against the same scale within Monte Carlo error. The 1-D case is the one of
# issue 20: started at scale 0.1 (init="prior"), 3000 steps ended four times too wide.
_rng1 = np.random.default_rng(1)
X1 = np.linspace(0.5, 2.0, 40)
S1 = 0.05
Y1 = 1.3 * X1 + S1 * _rng1.normal(size=40)
P1 = np.array([[1.0 + X1 @ X1 / S1**2]])
M1 = np.linalg.solve(P1, [X1 @ Y1 / S1**2])

_z5 = _rng1.normal(size=(30, 1))
X5 = np.concatenate([_z5 + 0.4 * _rng1.normal(size=(30, 2)), _rng1.normal(size=(30, 3))], 1)
X5[:, 3] += 0.7 * X5[:, 4]
S5, T5 = 0.5, 2.0
Y5 = X5 @ np.array([1.0, -0.5, 0.3, 0.8, -1.2]) + S5 * _rng1.normal(size=30)
P5 = X5.T @ X5 / S5**2 + np.eye(5) / T5**2
M5 = np.linalg.solve(P5, X5.T @ Y5 / S5**2)


def one_parameter(data):
    theta = numpyro.sample("theta", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(theta * jnp.asarray(X1), S1), obs=data)


def five_parameters(data):
    # two sites, declared out of alphabetical order: the guide's flattening must follow
    # the model's order of sites
    b = numpyro.sample("b", dist.Normal(0.0, T5).expand([3]).to_event(1))
    a = numpyro.sample("a", dist.Normal(0.0, T5).expand([2]).to_event(1))
    numpyro.sample("y", dist.Normal(jnp.asarray(X5) @ jnp.concatenate([b, a]), S5),
                   obs=data)


EXACT = {"1d": (one_parameter, Y1, M1, P1), "5d": (five_parameters, Y5, M5, P5)}
DEFAULT_DRAWS = 4000


@pytest.fixture(scope="module")
def default_fits():
    fits = {}
    for case, (model, data, _, _) in EXACT.items():
        for guide in ("multivariate_normal", "normal"):
            fits[case, guide] = probde.infer(model, jnp.asarray(data),
                                             probde.SVI(guide=guide, num_draws=DEFAULT_DRAWS),
                                             seed=0, num_prior_samples=0)
    return fits


@pytest.mark.parametrize("case", ["1d", "5d"])
@pytest.mark.parametrize("guide", ["multivariate_normal", "normal"])
def test_default_svi_matches_exact_gaussian_optimum(default_fits, case, guide):
    _, _, mean, precision = EXACT[case]
    result = default_fits[case, guide]
    trace = result.idata["svi_trace"]
    assert trace.attrs["init"] == "laplace"
    labels = ["theta"] if case == "1d" else ["b[0]", "b[1]", "b[2]", "a[0]", "a[1]"]
    assert list(trace["latent"].values) == labels
    if guide == "multivariate_normal":
        sd = np.sqrt(np.diag(np.linalg.inv(precision)))
        mean_tol = 0.02  # in sds
    else:
        sd = 1 / np.sqrt(np.diag(precision))
        # The mean-field fit's means keep the optimiser's jitter (its gradient is not zero
        # at the optimum, unlike the full-rank guide's): with the location stepping in
        # Laplace sds and the last window averaged, measured up to 0.085 (seed 0) and
        # 0.056 (seed 1) of the mean-field sd on this problem (0.03-0.14 before); its sds
        # within 2%.
        mean_tol = 0.02 if case == "1d" else 0.2
    np.testing.assert_allclose(trace["scale"].values, sd, rtol=0.02)
    assert np.all(np.abs(trace["loc"].values - mean) < mean_tol * sd)
    np.testing.assert_allclose(trace["loc"].values, mean, rtol=0.02)  # issue 20's 2%
    # the draws: the sd of each parameter against the guide's, within Monte Carlo error
    post = result.idata.posterior
    drawn = np.concatenate([post[k].values.reshape(DEFAULT_DRAWS, -1)
                            for k in (["theta"] if case == "1d" else ["b", "a"])], axis=1)
    n = drawn.shape[0]
    fitted = trace["scale"].values
    assert np.all(np.abs(drawn.std(0, ddof=1) - fitted) < Z_MAX * fitted / np.sqrt(2 * n))
    assert np.all(np.abs(drawn.mean(0) - trace["loc"].values) < Z_MAX * fitted / np.sqrt(n))


def test_default_full_rank_is_exact_in_correlation(default_fits):
    # The full-rank guide of the 5-D case: draws' correlation matrix against the exact
    # one, within Monte Carlo error ((1 - rho^2) / sqrt(n) per entry).
    post = default_fits["5d", "multivariate_normal"].idata.posterior
    drawn = np.concatenate([post["b"].values[0], post["a"].values[0]], axis=1)
    cov = np.linalg.inv(P5)
    exact = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    tol = Z_MAX * (1 - exact**2) / np.sqrt(drawn.shape[0]) + 1e-12
    assert np.all(np.abs(np.corrcoef(drawn.T) - exact) < tol)


def test_prior_start_ends_too_wide_and_warns_where_the_default_is_exact(default_fits):
    # Issue 20 reproduced: the old start (scale 0.1, a random centre; init="prior") on the
    # 1-D case ends 3000 steps several times too wide, its scale moving by about 1% per
    # window (within its jitter: the parameter rule passes it), while the default
    # (Laplace) start is exact (test above). The gradient rule must flag it, naming the
    # parameter and the ratio to the optimum (exact sd / fitted: read off the trace).
    with pytest.warns(UserWarning, match=r"SVI has not converged: the ELBO's gradient at "
                                         r"1000 draws of the guide puts its scale of theta "
                                         r"\(about [3-9](\.\d)? times the optimum's\) off"):
        result = probde.infer(one_parameter, jnp.asarray(Y1),
                              probde.SVI(init="prior", num_steps=3000, num_draws=10),
                              seed=0, num_prior_samples=0)
    trace = result.idata["svi_trace"]
    assert trace.attrs["init"] == "prior (init='prior')"
    exact_sd = 1 / np.sqrt(P1[0, 0])
    ratio = float(trace["scale"].values[0]) / exact_sd
    assert ratio > 2
    # the gradient's estimate of the ratio, sqrt(1 + 2 * scale_offset), against the truth
    offset, se = float(trace["scale_offset"].values[0]), float(trace["scale_offset_se"][0])
    assert abs(offset - (ratio**2 - 1) / 2) < Z_MAX * se
    default = default_fits["1d", "multivariate_normal"].idata["svi_trace"]
    assert abs(float(default["scale"].values[0]) / exact_sd - 1) < 0.02


@pytest.mark.parametrize("guide", ["normal", "multivariate_normal", "low_rank"])
def test_gradient_rule_measures_a_guide_off_the_optimum(guide):
    # The 5-D Gaussian posterior N(M5, P5^-1) and a guide set off its family's optimum by a
    # known amount: location + 0.3 sd on the first coordinate, every sd times 1.5. For a
    # Gaussian posterior the estimates are exact in expectation: the location's Newton
    # step S P (m - mu) in sds (S the guide's covariance), and (r^2 - 1) / 2 = 0.625 for
    # the scales. Checked within Monte Carlo error, and which coordinates are flagged.
    from numpyro.infer.autoguide import (
        AutoLowRankMultivariateNormal,
        AutoMultivariateNormal,
        AutoNormal,
    )

    from probde.inference import stationarity
    from probde.inference.guide_draws import unconstrained_shapes

    kwargs = {"data": jnp.asarray(Y5)}
    shapes = unconstrained_shapes(five_parameters, kwargs)
    cov = np.linalg.inv(P5)
    if guide == "normal":
        g = AutoNormal(five_parameters)
        opt_cov = np.diag(1 / np.diag(P5))
    elif guide == "multivariate_normal":
        g = AutoMultivariateNormal(five_parameters)
        opt_cov = cov
    else:
        g = AutoLowRankMultivariateNormal(five_parameters, rank=5)  # full rank: exact
        opt_cov = cov
    sd = np.sqrt(np.diag(opt_cov))
    loc = M5 + np.r_[0.3 * sd[0], np.zeros(4)]
    S = 1.5**2 * opt_cov
    with numpyro.handlers.seed(rng_seed=0):
        g(**kwargs)  # set up the guide's prototype
    if guide == "normal":
        params = {"b_auto_loc": jnp.asarray(loc[:3]), "a_auto_loc": jnp.asarray(loc[3:]),
                  "b_auto_scale": jnp.asarray(1.5 * sd[:3]),
                  "a_auto_scale": jnp.asarray(1.5 * sd[3:])}
    elif guide == "multivariate_normal":
        params = {"auto_loc": jnp.asarray(loc),
                  "auto_scale_tril": jnp.asarray(np.linalg.cholesky(S))}
    else:
        w = np.linalg.cholesky(S - 1e-3 * np.diag(np.diag(S)))
        params = {"auto_loc": jnp.asarray(loc), "auto_scale": jnp.sqrt(1e-3 * jnp.diag(S)),
                  "auto_cov_factor": jnp.asarray(w / np.sqrt(1e-3 * np.diag(S))[:, None])}
    est = stationarity.check(five_parameters, g, params, shapes, jax_key(0), kwargs, 4000)
    assert est.used == 4000
    fitted_sd = np.sqrt(np.diag(S))
    expected_loc = (S @ P5 @ (loc - M5)) / fitted_sd
    np.testing.assert_array_less(np.abs(est.loc_offset - expected_loc), Z_MAX * est.loc_offset_se)
    expected_scale = 0.5 * (np.diag(P5 @ S) - 1)
    np.testing.assert_array_less(np.abs(est.scale_offset - expected_scale),
                                 Z_MAX * est.scale_offset_se)
    loc_off, scale_off = est.off()
    assert scale_off.all()
    # the shifted coordinate (0.45 sd after the stretch) is flagged, the last three (whose
    # expected offsets are within 0.05) are not; the second is, by the mean field's
    # Newton step only (it leans on the first through the posterior's correlation)
    assert loc_off[0] and not loc_off[2:].any()


def jax_key(seed):
    import jax

    return jax.random.PRNGKey(seed)


def test_parameter_rule_names_what_still_moves():
    from probde.inference.loss_trace import ParameterWindows, check_fit

    still = np.zeros(3)
    windows = ParameterWindows(loc=still, scale=np.ones(3), loc_change=np.array([0.0, 0.3, 0.0]),
                               scale_change=np.array([0.0, 0.0, -0.05]),
                               loc_spread=np.full(3, 0.01), scale_spread=np.full(3, 0.005),
                               window=100)
    loc, scale = windows.moving()
    assert loc.tolist() == [False, True, False] and scale.tolist() == [False, False, True]
    flat = 10.0 + np.random.default_rng(0).normal(size=1000) * 1e-3
    assert loss_converged(flat)  # the loss rule alone passes this fit
    with pytest.warns(UserWarning, match=r"SVI has not converged: the guide's location of b "
                                         r"\(by up to 0.3 of its scale\) and scale of c "
                                         r"\(by up to 0.05 \(relative\)\) still moved"):
        check_fit("SVI", flat, np.zeros(1000, bool), 1000, windows, ("a", "b", "c"))
    # jitter (change within twice the spread) is not movement
    jitter = dataclasses.replace(windows, loc_spread=np.full(3, 0.2),
                                 scale_spread=np.full(3, 0.03))
    assert not any(m.any() for m in jitter.moving())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_fit("SVI", flat, np.zeros(1000, bool), 1000, jitter, ("a", "b", "c"))


def test_flat_hessian_falls_back_to_the_prior_start():
    # `c` is not in the likelihood and a factor cancels its prior: the log density is
    # constant in c, so the Hessian at the mode is zero along c
    def flat_in_c(data):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        c = numpyro.sample("c", dist.Normal(0.0, 1.0))
        numpyro.factor("flat", 0.5 * c**2)
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=data)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = probde.infer(flat_in_c, Y_CONJ, probde.SVI(num_steps=200, num_draws=10),
                              seed=0, num_prior_samples=0)
    messages = [str(w.message) for w in caught]
    assert any("Hessian of the negative log density at the mode is not positive definite "
               "along c (" in m for m in messages), messages
    assert "Hessian" in result.idata["svi_trace"].attrs["init"]


# --------------------------------------------------------------- convergence warning
def conjugate(data):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=data)


Y_CONJ = jnp.array([0.9, 1.4, 1.1, 0.7, 1.2])


def test_converged_fit_does_not_warn(full_rank):
    # The fixture ran under filterwarnings = error: no warning was raised.
    assert loss_converged(full_rank.idata["svi_trace"]["loss"].values)


@pytest.mark.parametrize("seed", [0, 1])
def test_short_fit_warns(seed):
    # The same model as `full_rank`, stopped after 20 steps.
    with pytest.warns(UserWarning, match="SVI has not converged.*raise num_steps or "
                                         "learning_rate"):
        fit(probde.SVI(num_steps=20, num_draws=10), seed=seed)
    with pytest.warns(UserWarning, match="Laplace has not converged"):
        fit(probde.Laplace(num_steps=20, num_draws=10), seed=seed)


def test_still_falling_fit_warns():
    # A small constant step: the (deterministic) MAP loss is still falling steadily at
    # the end of 300 steps, far more than the tolerance.
    with pytest.warns(UserWarning, match="Laplace has not converged: the loss was still "
                                         "falling"):
        fit(probde.Laplace(num_steps=300, num_draws=10, optimizer=optax.adam(1e-3)))


def test_convergence_rule():
    rng = np.random.default_rng(0)
    flat = 10.0 + rng.normal(size=(400, 1000))
    flagged = np.mean([not loss_converged(x) for x in flat])
    # A stationary trace is flagged when the drop exceeds 2 sds of the difference plus
    # 1e-3 * 10 = 0.08 sd: P(Z > 2.08) = 0.019. Binomial sd over 400 traces: 0.007.
    assert flagged < 0.019 + Z_MAX * 0.007, flagged
    falling = flat[:20] - np.linspace(0.0, 20.0, 1000)  # 2.0 between windows, 14 sds
    assert not any(loss_converged(x) for x in falling)
    # Non-finite (skipped) steps are left out.
    base = next(x for x in flat if loss_converged(x))
    with_inf = base.copy()
    with_inf[::7] = np.inf
    assert loss_converged(with_inf)
    assert not loss_converged(falling[0] + np.where(np.arange(1000) % 7, 0.0, np.nan))
    # Too short to judge.
    assert not loss_converged(base[:50])



def test_rise_rule():
    rng = np.random.default_rng(1)
    # A stationary trace (20 windows of 50 steps): the last window would have to lie 6
    # standard errors of the difference (plus 0.1, 1% of the loss) above the best of the
    # 19 others, which by the order statistics of 19 normal window means has a
    # probability below 1e-6 a trace.
    flat = 10.0 + rng.normal(size=(400, 1000))
    assert not any(loss_rose(x) is not None for x in flat)
    # Falling to 50 over 500 steps, then jumping to about 80 (noise sd 1): flagged, with
    # the best window (steps 450-499, mean about 52.5) and the last one (about 80).
    up = np.concatenate([np.linspace(100.0, 50.0, 500), np.full(500, 80.0)])
    start, best, last = loss_rose(up + rng.normal(size=1000))
    assert start == 450 and abs(best - 52.45) < 0.5 and abs(last - 80.0) < 0.5
    # A falling trace, and one still above its best by less than the tolerance, are not.
    assert loss_rose(np.linspace(100.0, 50.0, 1000) + rng.normal(size=1000)) is None
    assert loss_rose(np.concatenate([np.full(900, 10.0), np.full(100, 10.05)])) is None
    # Skipped (non-finite) steps are left out; short runs are not judged.
    with_nan = up.copy()
    with_nan[::7] = np.nan
    assert loss_rose(with_nan) is not None
    assert loss_rose(up[::20]) is None  # 50 steps
    # A fit that ends where every step is skipped (no finite loss in the last window) has
    # risen: it ended where the loss cannot be evaluated.
    stuck = up.copy()
    stuck[600:] = np.inf
    start, best, last = loss_rose(stuck)
    assert start == 450 and last == np.inf


def push_after(step, size):
    """An optax transformation that adds `size` to every update from step `step` on."""
    def update(updates, count, params=None):
        push = jnp.where(count >= step, size, 0.0)
        return jax.tree.map(lambda u: u + push, updates), count + 1

    return optax.GradientTransformation(lambda params: jnp.zeros((), jnp.int32), update)


def test_best_window_tracker_agrees_with_the_rise_rule():
    # The fit keeps the best window while it runs (probde._loss_rules.track_best); the window it
    # returns must be the one loss_rose names, however the trace is cut: a partial window
    # before the first whole one (1037 steps), skipped (NaN, inf) steps. The "parameter"
    # after step i is i, so the window's average is its middle step.
    from probde._loss_rules import track_best
    from probde.inference.loss_trace import rise_window

    rng = np.random.default_rng(2)
    for n in (260, 1000, 1037):
        x = np.concatenate([np.linspace(100.0, 50.0, n // 2), np.full(n - n // 2, 80.0)])
        x = x + rng.normal(size=n)
        x[::7], x[3::11] = np.nan, np.inf
        w = rise_window(n)
        tracker = (jnp.full((w,), jnp.nan), jnp.zeros(()), jnp.array(jnp.inf), jnp.zeros(()),
                   jnp.array(-1))

        def body(t, i, x=jnp.asarray(x), n=n):
            return track_best(t, i, x[i], i.astype(float), n), None

        t, _ = jax.lax.scan(body, tracker, jnp.arange(n))
        start, best, _ = loss_rose(x)
        assert int(t[4]) == start and float(t[2]) == pytest.approx(best), (n, t, start, best)
        assert float(t[3]) / w == pytest.approx(start + (w - 1) / 2)


def test_fit_that_ends_worse_returns_its_best_window_and_says_why():
    # The MAP loss is deterministic: 200 Adam steps at 0.05 bring it to its minimum; from
    # then on every update is pushed by 0.1 in every coordinate, more than Adam's steps
    # can undo, so the parameters leave the optimum and the loss of the last window lies
    # far above what the fit had reached (a stand-in for a noisy step that throws a fit
    # into a worse basin).
    optimizer = optax.chain(optax.adam(0.05), push_after(200, 0.1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit(probde.Laplace(num_steps=400, num_draws=NUM_DRAWS, optimizer=optimizer))
    messages = [str(w.message) for w in caught]
    # What it returns is the guide averaged over the best window (steps 180-199, the
    # 20-step windows of the rule), where the fit sat at the mode: the Laplace
    # approximation of this Gaussian posterior is then exact up to the optimiser's
    # residual (its Hessian is the same everywhere). Without the repair the location would
    # be where the pushes left it, 200 steps of 0.1 away.
    assert result.idata["svi_trace"].attrs["returned_steps"] == [180, 199]
    check_moments(draws(result), OPT_MEAN, 0.0, 0.0)
    # the warning points at the caller of probde.infer (this file's `fit`)
    assert any(w.filename == __file__ for w in caught
               if str(w.message).startswith("Laplace ended")), [w.filename for w in caught]
    assert any(m.startswith("Laplace ended at a worse loss than it had reached")
               and "the result is the guide averaged over steps 180-199, not where it ended"
               in m and "Lower learning_rate, and compare fits" in m for m in messages), messages
    # the rise is reported instead of "not converged ... raise learning_rate"
    assert not any("raise num_steps or learning_rate" in m for m in messages), messages


# -------------------------------------------------------- skipped non-finite steps
THRESHOLD = 1.8


def walled(data):
    """The conjugate model (posterior N(0.88, 0.41^2)) with log density -inf for
    mu > THRESHOLD, 2.2 posterior sds out, as when a solve fails in the tail: guide draws
    beyond it (about 1% of them once fitted, more from a start near the wall) make the
    loss infinite."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.factor("wall", jnp.where(mu > THRESHOLD, -jnp.inf, 0.0))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=data)


@pytest.mark.parametrize("method", [probde.SVI(guide="normal", num_steps=1000, num_draws=500),
                                    probde.Laplace(num_steps=1000, num_draws=500)])
def test_non_finite_steps_are_skipped_and_counted(method):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = probde.infer(walled, Y_CONJ, method, seed=0, num_prior_samples=0)
    trace = result.idata["svi_trace"]
    skipped = trace["skipped"].values
    assert trace.attrs["skipped_steps"] == int(skipped.sum())
    loss = trace["loss"].values
    assert not np.isfinite(loss[skipped]).any()
    assert np.isfinite(loss[~skipped]).all()
    mu = result.idata["posterior"]["mu"].values
    assert np.isfinite(mu).all()
    if isinstance(method, probde.SVI):
        assert skipped.sum() > 0
        assert not any("optimisation steps were skipped" in str(w.message) for w in caught)
    # Both fits end near the (barely truncated) posterior: the mean within Monte Carlo
    # error plus a tenth of a posterior sd of 0.88.
    tol = Z_MAX * np.sqrt(1 / 6 / mu.size) + 0.1 * np.sqrt(1 / 6)
    assert abs(float(mu.mean()) - 5.3 / 6) < tol, float(mu.mean())


def test_fit_stuck_where_every_step_fails_returns_its_best_window():
    # From step 200 every update is pushed by +0.1: mu crosses the wall (1.8) within a few
    # steps, and there the loss is infinite. A skipped step keeps the parameters, so every
    # later step is skipped too, and the fit would end stuck beyond the wall (as a deep-GP
    # fit at a large learning rate did: 3345 of 4000 steps skipped, noise sd 11). A last
    # window without finite losses counts as a rise, and the fit returns its best window.
    optimizer = optax.chain(optax.adam(0.05), push_after(200, 0.1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = probde.infer(walled, Y_CONJ, probde.Laplace(num_steps=400, num_draws=NUM_DRAWS,
                                                             optimizer=optimizer),
                              seed=0, num_prior_samples=0)
    messages = [str(w.message) for w in caught]
    assert any("no finite loss over the last 20 steps" in m and "the result is the guide "
               "averaged over steps" in m for m in messages), messages
    first, last = result.idata["svi_trace"].attrs["returned_steps"]
    assert last < 200 + 10, (first, last)
    # the Laplace approximation at the mode of the (barely truncated) N(5.3/6, 1/6)
    mu = result.idata["posterior"]["mu"].values
    tol = Z_MAX * np.sqrt(1 / 6 / mu.size) + OPT_MEAN * np.sqrt(1 / 6)
    assert abs(float(mu.mean()) - 5.3 / 6) < tol, float(mu.mean())


@pytest.mark.slow  # about 25 s on two loaded cores, mostly compiling the ODE model
def test_failed_solves_are_skipped_and_the_fit_recovers():
    model, data = decay_at_failure_edge()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = probde.infer(model, data, probde.SVI(guide="normal", num_steps=500,
                                                      num_draws=200), seed=0,
                              num_prior_samples=0)
    trace = result.idata["svi_trace"]
    assert trace.attrs["skipped_steps"] > 0
    assert result.solver_failures > 0
    messages = [str(w.message) for w in caught]
    if trace.attrs["skipped_steps"] > 50:
        assert any("optimisation steps were skipped" in m for m in messages), messages
    k = result.idata["posterior"]["k"].values
    assert np.isfinite(k).all()
    # Noise-free data: the posterior of k is narrow around 2.9.
    assert abs(float(np.median(k)) - 2.9) < 0.1


def test_all_steps_infeasible_raise():
    def nowhere(data):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        # feasible only on a set of measure zero under any continuous guide
        numpyro.factor("wall", jnp.where(mu != 0.25, -jnp.inf, 0.0))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=data)

    with pytest.raises(RuntimeError, match="no feasible starting point"):
        probde.infer(nowhere, Y_CONJ, probde.SVI(num_steps=10, num_draws=10), seed=0,
                     num_prior_samples=0)


# ------------------------------------------------------------ a probde.Model (ODE)
K_TRUE, Y0 = 0.7, 2.0
T_DECAY = np.array([0.5, 1.0, 1.5, 2.0, 3.0, 4.0])
Y_DECAY = Y0 * np.exp(-K_TRUE * T_DECAY) + 0.05 * np.random.default_rng(2).normal(size=6)


def decay_model():
    ode = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    return probde.Model(ode, {"k": dist.LogNormal(0.0, 0.5)}, initial_state=jnp.array([Y0]),
                        observation=probde.noise.Normal(sigma=0.05), t0=0.0)


@pytest.fixture(scope="module")
def decay_result():
    data = probde.TimeSeries(T_DECAY, Y_DECAY, observables=("x",))
    return probde.infer(decay_model(), data, probde.SVI(num_steps=600, num_draws=400),
                        seed=0, num_prior_samples=0)


def test_model_datatree_and_arviz(decay_result, tmp_path):
    idata = decay_result.idata
    for group in ("posterior", "sample_stats", "log_likelihood", "posterior_predictive",
                  "observed_data", "svi_trace"):
        assert group in idata.children, group
    assert idata["posterior"].sizes["chain"] == 1
    assert idata["posterior"]["k"].shape == (1, 400)
    assert idata["posterior_predictive"]["y"].dims == ("chain", "draw", "time", "observable")
    assert idata["log_likelihood"]["y"].shape == (1, 400, 6, 1)
    assert idata["sample_stats"]["solver_steps"].shape == (1, 400)
    k = idata["posterior"]["k"].values
    assert abs(float(np.median(k)) - K_TRUE) < 0.05
    summary = decay_result.summary()
    assert "k" in summary.index
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd)
    path = tmp_path / "idata.nc"
    decay_result.to_netcdf(path)
    back = probde.load(path)
    np.testing.assert_array_equal(back.idata["svi_trace"]["loss"].values,
                                  idata["svi_trace"]["loss"].values)
    assert back.idata["svi_trace"].attrs["skipped_steps"] == 0
    np.testing.assert_array_equal(back.idata["posterior"]["k"].values, k)


def test_function_result_round_trips(full_rank, tmp_path):
    assert np.isfinite(az.loo(full_rank.idata).elpd)
    assert "beta[0]" in az.summary(full_rank.idata).index
    path = tmp_path / "idata.nc"
    full_rank.to_netcdf(path)
    back = probde.load(path)
    np.testing.assert_array_equal(back.idata["svi_trace"]["loss"].values,
                                  full_rank.idata["svi_trace"]["loss"].values)
    np.testing.assert_array_equal(back.idata["svi_trace"]["skipped"].values,
                                  full_rank.idata["svi_trace"]["skipped"].values)


def test_particle_filter_model_is_refused():
    sde = probde.SDE(lambda t, x, th: -th["k"] * x, lambda t, x, th: jnp.stack([0.1 + 0 * x[0]]),
                     state_names=("x",))
    model = probde.Model(sde, {"k": dist.LogNormal(0.0, 0.5)}, initial_state=jnp.array([1.0]),
                         observation=probde.noise.Normal(sigma=0.1),
                         likelihood=probde.ParticleFilter(num_particles=16, num_steps=2), t0=0.0)
    data = probde.TimeSeries([1.0, 2.0], [0.4, 0.1], observables=("x",))
    with pytest.raises(ValueError, match="which SVI cannot use"):
        probde.infer(model, data, probde.SVI(num_steps=10), seed=0)


# -------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"guide": "gaussian"}, ValueError,
         r"guide must be one of \('normal', 'multivariate_normal', 'low_rank', 'flow'\); "
         r"got 'gaussian'"),
        ({"optimizer": "adam"}, TypeError,
         "optimizer must be an optax.GradientTransformation .*got 'adam' of type str"),
        ({"num_steps": 0}, ValueError, "num_steps must be a positive integer; got 0"),
        ({"num_draws": 0}, ValueError, "num_draws must be a positive integer; got 0"),
        ({"learning_rate": 0.0}, ValueError,
         "learning_rate must be a positive finite number; got 0.0"),
        ({"learning_rate": -1e-2}, ValueError, "learning_rate must be a positive finite"),
        ({"rank": 2}, ValueError,
         "rank applies to guide='low_rank' only; got rank=2 with guide='multivariate_normal'"),
        ({"guide": "low_rank", "rank": 0}, ValueError, "rank must be a positive integer; got 0"),
        ({"num_particles": 0}, ValueError, "num_particles must be a positive integer"),
        ({"init_radius": -1.0}, ValueError, "init_radius must be a positive finite number"),
        ({"init_scale": 0.0}, ValueError, "init_scale must be a positive finite number"),
        ({"guide": "flow", "init_scale": 0.01}, ValueError, "init_scale applies to the Gaussian"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive integer; got 0"),
        ({"init": "map"}, ValueError, r"init must be one of \('laplace', 'prior'\); got 'map'"),
        ({"experiment_batch_size": 1.5}, ValueError,
         "experiment_batch_size must be a positive integer; got 1.5"),
    ],
)
def test_svi_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        probde.SVI(**kwargs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_steps": 0}, ValueError, "num_steps must be a positive integer; got 0"),
        ({"num_draws": 0}, ValueError, "num_draws must be a positive integer; got 0"),
        ({"learning_rate": 0}, ValueError, "learning_rate must be a positive finite number"),
        ({"optimizer": optax.adam}, TypeError, "optimizer must be an optax.GradientTransformation"),
    ],
)
def test_laplace_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        probde.Laplace(**kwargs)


def test_custom_optax_optimizer_and_hashable():
    method = probde.SVI(guide="normal", optimizer=optax.adam(5e-2), num_steps=1000, num_draws=200)
    hash(probde.SVI())
    hash(probde.Laplace())
    result = probde.infer(conjugate, Y_CONJ, method, seed=0, num_prior_samples=0)
    mu = result.idata["posterior"]["mu"].values
    # exact N(5.3 / 6, 1 / 6); constant step 5e-2 leaves the guide jittering near it
    assert abs(float(mu.mean()) - 5.3 / 6) < Z_MAX * np.sqrt(1 / 6 / 200) + 0.1


def test_flow_guide_needs_two_parameters():
    with pytest.raises(ValueError, match="guide='flow' needs at least two"):
        probde.infer(conjugate, Y_CONJ, probde.SVI(guide="flow", num_steps=10), seed=0,
                     num_prior_samples=0)


def _two_modes(data=None):
    # 0.9 N(4, 0.3^2) + 0.1 N(-4, 0.3^2): a minor mode far from the major one, whose
    # basin a single start inside it does not leave (the ELBO of a narrow Gaussian guide
    # is locally optimal there).
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    numpyro.factor("mix", jnp.logaddexp(jnp.log(0.9) + dist.Normal(4.0, 0.3).log_prob(mu),
                                        jnp.log(0.1) + dist.Normal(-4.0, 0.3).log_prob(mu)))


def _two_modes_energy(center):
    """The smallest negative log density of `_two_modes` within 0.5 of `center` (a grid
    of spacing 5e-6: the energy at that mode to about 1e-9)."""
    mu = np.linspace(center - 0.5, center + 0.5, 200001)
    normal = lambda m, s: -0.5 * ((mu - m) / s) ** 2 - np.log(s * np.sqrt(2 * np.pi))  # noqa: E731
    log_p = normal(0.0, 10.0) + np.logaddexp(np.log(0.9) + normal(4.0, 0.3),
                                             np.log(0.1) + normal(-4.0, 0.3))
    return float(-log_p.max())


@pytest.mark.parametrize("init", ["prior", "laplace"])
def test_several_starts_find_the_major_mode(init):
    # init_radius 6 in the unconstrained (here: identity) space puts starts in both basins;
    # a single start (of the guide, or of the mode search) in the minor basin stays there
    options = dict(guide="normal", num_steps=600, learning_rate=0.05, init_radius=6.0,
                   num_draws=200, init=init)
    single = [float(probde.infer(_two_modes, None, probde.SVI(**options), seed=s,
                                 num_prior_samples=0).idata.posterior["mu"].mean())
              for s in range(4)]
    assert min(single) < -3.0 < 3.0 < max(single)  # both optima are reachable
    if init == "prior":
        method = probde.SVI(**options, num_starts=8, start_steps=200)
    else:
        method = probde.SVI(**options, num_starts=8)
    for seed in range(2):
        trace = probde.infer(_two_modes, None, method, seed=seed, num_prior_samples=0).idata
        assert abs(float(trace.posterior["mu"].mean()) - 4.0) < 0.1
        loss = trace["svi_trace"]["loss"]
        assert loss.shape == (600,)
        if init == "prior":
            starts = trace["svi_trace"]["start_loss"].values
            assert starts.shape == (8,)
            # the kept path is the best start's: its first phase ends at the smallest score
            assert np.isclose(float(loss.values[160:200].mean()), starts.min())
            assert starts.max() - starts.min() > 1.0  # some starts ended in the minor mode
        else:
            # every mode search's end is kept: the two modes' negative log densities
            energies = trace["svi_trace"]["mode_energy"].values
            assert energies.shape == (8,)
            assert np.isclose(energies.min(), _two_modes_energy(4.0), atol=1e-6)
            assert np.isclose(energies.max(), _two_modes_energy(-4.0), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_starts": 0}, "num_starts must be a positive integer; got 0"),
        ({"num_starts": 4, "start_steps": 100, "num_steps": 100},
         r"start_steps must be below num_steps \(100\); got 100"),
        ({"start_steps": 1.5}, "start_steps must be a positive integer; got 1.5"),
    ],
)
def test_svi_bad_start_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        probde.SVI(**kwargs)


@pytest.mark.filterwarnings("ignore::probde.ConvergenceWarning")  # a short run on purpose
def test_plot_loss(tmp_path):
    """The loss trace plot, with skipped steps marked; refused for an MCMC result."""
    import matplotlib

    matplotlib.use("Agg")
    result = probde.infer(walled, Y_CONJ, probde.SVI(guide="normal", num_steps=300,
                                                     num_draws=50), seed=0,
                          num_prior_samples=0)
    fig = result.plot_loss(tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 0
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0] == "loss per step" and any("running median" in x for x in labels)
    nuts = probde.infer(walled, Y_CONJ, probde.NUTS(num_chains=1, num_warmup=50,
                                                    num_samples=50), num_prior_samples=0)
    with pytest.raises(ValueError, match="plot_loss needs the svi_trace group"):
        nuts.plot_loss()


@pytest.mark.filterwarnings("ignore::probde.ConvergenceWarning")  # a short run on purpose
def test_map_initialised_nuts_starts_near_the_mode_and_samples_correctly():
    """NUTS(init='map'): every chain's first warmup point comes from the Laplace
    approximation (here the exact posterior N(0.88, 0.41^2)), not from the prior's
    (-2, 2) box, and the posterior is the same."""
    import jax

    from probde.inference.mode import laplace_starts

    starts = laplace_starts(walled, jax.random.PRNGKey(0), 4, {"data": Y_CONJ}, 2.0)
    mu0 = np.asarray(starts["mu"])
    assert mu0.shape == (4,) and np.ptp(mu0) > 0  # one start per chain, all different
    assert np.all(np.abs(mu0 - 5.3 / 6) < 5 * np.sqrt(1 / 6)) and np.all(mu0 < THRESHOLD)
    method = probde.NUTS(num_chains=2, num_warmup=200, num_samples=500, init="map")
    result = probde.infer(walled, Y_CONJ, method, seed=1, num_prior_samples=0)
    post = result.idata.posterior["mu"]
    ess = float(az.ess(result.idata, var_names=["mu"])["mu"])
    assert abs(float(post.mean()) - 5.3 / 6) / (float(post.std()) / np.sqrt(ess)) < Z_MAX
    with pytest.raises(ValueError, match="init must be 'uniform', 'median' or 'map'; got 'mode'"):
        probde.NUTS(init="mode")


def test_median_initialised_nuts_starts_at_the_prior_median():
    """NUTS(init='median') starts at the prior median (in the unconstrained space, log 0.01
    for a scale LogNormal(log 0.01, 0.1)), where 'uniform' starts in (-2, 2)."""
    import jax
    import numpyro
    import numpyro.distributions as dist

    def scale_model():
        numpyro.sample("s", dist.LogNormal(np.log(0.01), 0.1))

    def start(init):
        kernel = probde.NUTS(init=init).kernel(scale_model)
        state = kernel.init(jax.random.PRNGKey(0), 10, None, (), {})
        return float(state.z["s"])

    assert abs(start("median") - np.log(0.01)) < 0.1
    assert abs(start("uniform")) < 2.0


def test_map_starts_keep_the_best_of_several_mode_searches():
    """NUTS(init='map') runs one search per chain: a minor mode that some searches end in
    (here x = -3, 3 nats below the major mode at x = 3) does not become the start."""
    import jax
    import jax.numpy as jnp
    import numpyro

    from probde.inference.mode import laplace_starts

    def two_modes():
        x = numpyro.sample("x", dist.Normal(0.0, 10.0))  # nearly flat
        near = dist.Normal(jnp.array([-3.0, 3.0]), 0.5).log_prob(x)
        numpyro.factor("mixture", jax.nn.logsumexp(near + jnp.log(jnp.array([0.05, 0.95]))))

    ends = [float(laplace_starts(two_modes, jax.random.PRNGKey(k), 1, {}, 2.0)["x"])
            for k in range(6)]
    assert min(ends) < -2 and max(ends) > 2  # single searches end in either mode
    for k in range(3):
        starts = laplace_starts(two_modes, jax.random.PRNGKey(k), 4, {}, 2.0, num_searches=8)
        assert np.all(np.asarray(starts["x"]) > 1.0)
