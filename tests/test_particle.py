"""The particle filter against exact answers: on linear SDEs (exact transitions) its
likelihood estimate is unbiased for the exact Kalman likelihood at default settings; on
nonlinear SDEs the default step follows the drift's time scale, and the discretisation
check warns when halving the step moves the estimate by more than its Monte Carlo error."""

import dataclasses
import math
import re
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from conftest import Z_MAX
from scipy import stats

import probde
from probde.dynamics.sde import FilterInputs
from probde.model import auxiliary
from probde.inference.particle import spectral_radius


# ============================================================ linear SDEs: exact answers
def ou_drift(t, x, th):
    return th["k"] * (th["m"] - x)


def ou_diffusion(t, x, th):
    return jnp.stack([th["s"]])


def matern_drift(t, x, th):
    lam = jnp.sqrt(3.0) / th["ell"]
    return jnp.stack([x[1], -(lam**2) * x[0] - 2.0 * lam * x[1]])


def matern_diffusion(t, x, th):
    lam = jnp.sqrt(3.0) / th["ell"]
    q = 2.0 * th["sf"] * lam**1.5
    return jnp.stack([jnp.zeros_like(q), q])[:, None]


OU = {lin: probde.SDE(ou_drift, ou_diffusion, ("x",), linear=lin) for lin in (False, True)}
MATERN = {lin: probde.SDE(matern_drift, matern_diffusion, ("x1", "x2"), linear=lin)
          for lin in (False, True)}
SIGMA = 0.3
NUM_OBS = 60
NUM_ESTIMATES = 48  # independent particle-filter estimates per case


def _ou_initial(th):
    return dist.Normal(th["m"], th["s"] / jnp.sqrt(2.0 * th["k"])).expand([1])


def _matern_initial(th):
    lam = jnp.sqrt(3.0) / th["ell"]
    var = jnp.stack([th["sf"] ** 2, lam**2 * th["sf"] ** 2])
    return dist.MultivariateNormal(jnp.zeros(2), jnp.diag(var))


def _model(kind, likelihood, linear=True):
    if kind == "ou":
        priors = {"k": dist.LogNormal(0.0, 0.5), "m": dist.Normal(0.0, 1.0),
                  "s": dist.LogNormal(-0.5, 0.5)}
        return probde.Model(OU[linear], priors, initial_state=_ou_initial,
                            observation=probde.noise.Normal(sigma=SIGMA),
                            likelihood=likelihood, t0=0.0)
    priors = {"ell": dist.LogNormal(0.0, 0.5), "sf": dist.LogNormal(0.0, 0.5)}
    return probde.Model(MATERN[linear], priors, initial_state=_matern_initial,
                        observation=probde.noise.Normal(sigma=SIGMA), observe=("x1",),
                        likelihood=likelihood, t0=0.0)


def _data(kind, ell, seed):
    """60 irregular times on [0, 20] and values drawn from the exact Gaussian process of
    the SDE (stationary OU or Matérn-3/2 with lengthscale `ell`) plus noise; the Matérn's
    second state (the derivative) is never observed."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0.0, 20.0, NUM_OBS))
    d = np.abs(t[:, None] - t[None])
    if kind == "ou":
        K = 0.7**2 / (2 * 0.8) * np.exp(-0.8 * d)
        mean = 0.6
    else:
        lam = math.sqrt(3.0) / ell
        K = (1 + lam * d) * np.exp(-lam * d)
        mean = 0.0
    y = mean + np.linalg.cholesky(K + 1e-10 * np.eye(t.size)) @ rng.normal(size=t.size)
    y = y + SIGMA * rng.normal(size=t.size)
    obs = ("x",) if kind == "ou" else ("x1",)
    return probde.TimeSeries(t, y, observables=obs)


CASES = {
    "ou": ("ou", {"k": 0.8, "m": 0.6, "s": 0.7}, 0),
    # Data on which 20 Euler steps per interval (the former default) are off the exact
    # log-likelihood by 0.42 (lengthscale 0.7) and 0.10 (2.0): the error of the Euler
    # chain changes sign and size with the data.
    "matern_short": ("matern", {"ell": 0.7, "sf": 1.0}, 3),
    "matern_long": ("matern", {"ell": 2.0, "sf": 1.0}, 3),
}


def _euler_matern_loglik(th, data, num_steps):
    """Exact log-likelihood of the Euler-Maruyama chain of the Matérn SDE with
    `num_steps` steps per interval (a linear-Gaussian chain, by a Kalman filter): what the
    particle filter estimated before linear SDEs had exact transitions."""
    lam = math.sqrt(3.0) / th["ell"]
    A = np.array([[0.0, 1.0], [-(lam**2), -2.0 * lam]])
    LL = np.diag([0.0, 4.0 * th["sf"] ** 2 * lam**3])
    m, P = np.zeros(2), np.diag([th["sf"] ** 2, lam**2 * th["sf"] ** 2])
    ll, prev = 0.0, 0.0
    for t, y in zip(data.times, np.asarray(data.values).reshape(-1), strict=True):
        h = (t - prev) / num_steps
        G = np.eye(2) + A * h
        for _ in range(num_steps if t > prev else 0):
            m, P = G @ m, G @ P @ G.T + h * LL
        S = P[0, 0] + SIGMA**2
        ll += stats.norm.logpdf(y, m[0], math.sqrt(S))
        gain = P[:, 0] / S
        m, P = m + gain * (y - m[0]), P - np.outer(gain, P[0])
        prev = t
    return ll


# 15-20 s for each model on two cores, almost all of it compiling (the two Matérn cases
# share one compilation): the OU with the slow tests.
@pytest.mark.parametrize("case", [
    pytest.param("ou", marks=pytest.mark.slow),
    "matern_short",
    "matern_long",
])
def test_particle_filter_on_linear_sde_matches_kalman_at_default_settings(case):
    kind, th, seed = CASES[case]
    data = _data(kind, th.get("ell"), seed)
    params = {k: jnp.asarray(v) for k, v in th.items()}
    # For a linear SDE observed linearly with Gaussian noise the EKF is exact.
    exact = float(probde.log_likelihood(_model(kind, probde.EKF()), data, params))
    model = _model(kind, probde.ParticleFilter())  # default settings
    run = jax.jit(jax.vmap(lambda k: probde.log_likelihood(model, data, params, seed=k)))
    est = np.asarray(run(jax.random.split(jax.random.PRNGKey(7), NUM_ESTIMATES)))
    assert np.all(np.isfinite(est))
    # The estimate of the likelihood (not of its log) is unbiased: compare exp(est - exact)
    # with 1, in units of its Monte Carlo standard error.
    ratio = np.exp(est - exact)
    se = ratio.std(ddof=1) / math.sqrt(ratio.size)
    assert abs(ratio.mean() - 1.0) / se < Z_MAX, (ratio.mean(), se, est.mean() - exact)
    if case == "matern_short":
        # The test sees the bias it guards against: the likelihood of the Euler chain with
        # 20 steps per interval is more than Z_MAX standard errors away.
        se_log = est.std(ddof=1) / math.sqrt(est.size)
        euler = _euler_matern_loglik(th, data, 20)
        assert abs(euler - exact) > Z_MAX * se_log, (euler - exact, se_log)


def test_linear_sde_transitions_are_exact_whatever_num_steps():
    # Exact transitions take no solver steps, and num_steps does not change the estimate.
    kind, th, seed = CASES["matern_short"]
    data = _data(kind, th["ell"], seed)
    params = {k: jnp.asarray(v) for k, v in th.items()}
    a = probde.log_likelihood(_model(kind, probde.ParticleFilter(num_particles=64)), data,
                              params, seed=3)
    b = probde.log_likelihood(_model(kind, probde.ParticleFilter(num_particles=64,
                                                                 num_steps=3)),
                              data, params, seed=3)
    assert float(a) == float(b)


# ============================================================== nonlinear: the step rule
def test_spectral_radius_against_eigenvalues():
    rng = np.random.default_rng(0)
    for J in (rng.normal(size=(3, 3)), np.array([[0.0, 1.0], [-6.1, -4.9]]),  # Jordan block
              np.zeros((2, 2)), np.diag([-50.0, -0.1])):
        rho = float(spectral_radius(jnp.asarray(J)))
        true = np.max(np.abs(np.linalg.eigvals(J)))
        # Gelfand's formula after 2^6 squarings: at most a factor 64^(1/64) = 1.067 over.
        assert true - 1e-9 <= rho <= 1.067 * true + 1e-12, (J, rho, true)


def _ou_inputs(times):
    times = jnp.asarray(times)
    return FilterInputs(times=times, t0=jnp.asarray(0.0), values=jnp.zeros((times.size, 1)),
                        mask=jnp.zeros((times.size, 1), bool), observe=lambda x: x,
                        log_density=lambda p, y: jnp.zeros_like(p))


def test_default_steps_follow_the_drift_time_scale_and_the_gaps():
    # OU not declared linear: the drift's time scale is 1/k; steps_per_time_scale steps per
    # 1/k, at least 1 and at most max_steps per interval; zero-length intervals take none.
    times = np.array([0.0, 0.01, 0.3, 0.35, 2.0, 40.0])
    th = {"k": jnp.asarray(2.5), "m": jnp.asarray(0.0), "s": jnp.asarray(0.3)}
    init = dist.Normal(0.0, 0.1).expand([1]).to_event(1)
    pf = probde.ParticleFilter(num_particles=8, max_steps=300)
    out = pf.run(OU[False], th, init, _ou_inputs(times), None, jax.random.PRNGKey(0))
    gaps = np.diff(np.concatenate([[0.0], times]))
    expected = np.clip(np.ceil(100.0 * 2.5 * gaps * (1 + 1e-12)), 1, 300)
    counts = np.asarray(pf.step_counts(OU[False], th, jnp.zeros(1), jnp.asarray(0.0),
                                       jnp.asarray(times)))
    np.testing.assert_allclose(counts, expected, atol=1)  # ceil at a float's rounding
    assert counts[-1] == 300  # the cap
    assert int(out.num_steps) == int(np.sum(counts[gaps > 0]))
    # An explicit integer keeps the fixed steps.
    fixed = probde.ParticleFilter(num_particles=8, num_steps=5)
    out = fixed.run(OU[False], th, init, _ou_inputs(times), None, jax.random.PRNGKey(0))
    assert int(out.num_steps) == 5 * int(np.sum(gaps > 0))


# ============================================================ the discretisation check
def double_well_drift(t, x, th):
    return th["k"] * (x - x**3)


def double_well_diffusion(t, x, th):
    return jnp.stack([th["s"]])


DOUBLE_WELL = probde.SDE(double_well_drift, double_well_diffusion, ("x",))
DW_TIMES = np.arange(1, 21) * 0.5


def _double_well_model(likelihood, priors=None):
    priors = priors or {"k": dist.LogNormal(0.0, 0.5), "s": dist.LogNormal(-1.0, 0.5)}
    return probde.Model(DOUBLE_WELL, priors,
                        initial_state=dist.Normal(1.0, 0.2).expand([1]),
                        observation=probde.noise.Normal(sigma=0.1), t0=0.0,
                        likelihood=likelihood)


@pytest.fixture(scope="module")
def double_well():
    model = _double_well_model(probde.ParticleFilter())
    th = {"k": 2.0, "s": 0.5}
    path = probde.simulate(DOUBLE_WELL, jnp.array([1.0]), th, DW_TIMES, jax.random.PRNGKey(4),
                           t0=0.0, num_steps=400)
    y = np.asarray(path.ys[:, 0]) + 0.1 * np.random.default_rng(5).normal(size=DW_TIMES.size)
    return model, probde.TimeSeries(DW_TIMES, y, observables=("x",)), th


def test_discretisation_check_warns_when_the_step_is_too_coarse(double_well):
    # Two Euler steps per gap of 0.5: k h = 0.5 against a drift whose Jacobian in the
    # wells is -2k = -4, so the Euler chain's variance in a well is about twice the SDE's.
    # The two means differ by about 0.9 nats; 40 seeds a setting put the standard error
    # near 0.12 (10 seeds, 0.2-0.25, left the test's power to the seed's luck).
    model, data, th = double_well
    pf = probde.ParticleFilter(num_particles=50, num_steps=2)
    with pytest.warns(UserWarning, match=r"num_steps=2 differs by .* Raise "
                                         r"ParticleFilter\(num_steps=4\)"):
        check = pf.check_discretisation(model, data, th, num_particles=200, num_seeds=40)
    assert not check.agrees
    assert abs(check.difference) > Z_MAX * check.standard_error


@pytest.mark.slow  # about 40 s on two cores: the refined run takes 200-400 steps per gap
def test_discretisation_check_is_quiet_when_the_step_is_fine(double_well):
    model, data, th = double_well
    pf = probde.ParticleFilter(num_particles=200)  # the default step rule
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check = pf.check_discretisation(model, data, th)
    assert check.agrees
    assert np.all(np.isfinite(check.log_lik)) and np.all(np.isfinite(check.log_lik_refined))


@pytest.mark.slow  # about 60 s: the sampler, the predictive and the check compile
def test_infer_runs_the_discretisation_check_at_the_posterior_median(double_well):
    # The coarse filter of the test above, fitted by random-walk Metropolis: probde.infer
    # runs the check at the posterior median and warns, naming num_steps; the outcome is
    # kept in the posterior. Tight priors keep k and s near the values of the test above
    # (2 and 0.5), where two steps per gap are too few. (With the fixture's wide priors the
    # 20 points put the median near k = 1, where the check agreed: -0.34 nats, standard
    # error 0.26; with k's prior tight only, at k = 1.99, s = 0.40: -0.22, 0.19.)
    _, data, th = double_well
    coarse = _double_well_model(probde.ParticleFilter(num_particles=200, num_steps=2),
                                {k: dist.LogNormal(np.log(v), 0.02) for k, v in th.items()})
    with warnings.catch_warnings(record=True) as caught:
        # the run also warns of a few failed filter runs (all particles' weights zero)
        warnings.simplefilter("always")
        result = probde.infer(coarse, data, probde.RandomWalkMetropolis(
            num_chains=1, num_warmup=200, num_samples=200), seed=0, num_prior_samples=0)
    messages = [str(w.message) for w in caught]
    assert any(re.search(r"num_steps=2 differs by .* Raise ParticleFilter\(num_steps=4\)", m)
               for m in messages), messages
    check = result.idata["posterior"].attrs["particle_steps_check"]
    assert "DISAGREES" in check
    # The check's 20 estimates at the filter's own step give its noise, recorded with it.
    assert re.search(r"the log-likelihood estimate's sd over 20 seeds [0-9.e+-]+ ", check), check


def test_bad_particle_filter_options():
    with pytest.raises(ValueError, match=r"num_steps must be a positive integer; got 0 "
                                         r"\(or None, the default step rule\)"):
        probde.ParticleFilter(num_steps=0)
    with pytest.raises(ValueError, match="steps_per_time_scale must be a positive number; got 0"):
        probde.ParticleFilter(steps_per_time_scale=0)
    with pytest.raises(ValueError, match="max_steps must be a positive integer; got 2.5"):
        probde.ParticleFilter(max_steps=2.5)
    with pytest.raises(ValueError, match="num_seeds must be an integer of at least 2; got 1"):
        probde.ParticleFilter().check_discretisation(None, None, {}, num_seeds=1)


# ============================================================ an exact nonlinear filter
def benes_drift(t, x, th):
    return th["a"] * jnp.tanh(th["a"] * x)


BENES = probde.SDE(benes_drift, lambda t, x, th: jnp.ones(1), ("x",))
BENES_X0, BENES_R = 0.5, 0.5


def benes_log_likelihood(a, times, y):
    r"""The exact log-likelihood of the Benes SDE `dx = a tanh(a x) dt + dW`, x(0) fixed,
    observed as `y_k = x(t_k) + N(0, R^2)`.

    Girsanov: against Brownian motion from the same x(0), a path's density is
    `cosh(a x_T) / cosh(a x_0) exp(-a^2 T / 2)` (since `f' + f^2 = a^2`, with T the last
    observation time). So `p(y) = p_BM(y) E_BM[cosh(a x_T) | y] exp(-a^2 T/2) / cosh(a x_0)`,
    and `E[cosh(a x_T) | y] = exp(a^2 s^2 / 2) cosh(a m)` with `m, s^2` the Kalman filter's
    moments of x_T given all the data: closed form, from a Kalman filter of Brownian motion.
    """
    m, P, t, ll = BENES_X0, 0.0, 0.0, 0.0
    for tk, yk in zip(times, y):
        P += tk - t
        S = P + BENES_R**2
        ll += stats.norm.logpdf(yk, m, math.sqrt(S))
        K = P / S
        m, P, t = m + K * (yk - m), (1 - K) * P, tk
    return (ll + a**2 * P / 2 + math.log(math.cosh(a * m)) - a**2 * times[-1] / 2
            - math.log(math.cosh(a * BENES_X0)))


def test_particle_filter_is_unbiased_on_the_benes_sde():
    # A nonlinear SDE whose filter is exact (Benes 1981): the estimate of the likelihood
    # at the default step rule is unbiased, to within its Monte Carlo error.
    a = 1.2
    times = np.sort(np.random.default_rng(11).uniform(0.0, 4.0, 15))
    path = probde.simulate(BENES, jnp.array([BENES_X0]), {"a": jnp.asarray(a)},
                           jnp.asarray(times), jax.random.PRNGKey(12), t0=0.0, num_steps=4000)
    y = np.asarray(path.ys[:, 0]) + BENES_R * np.random.default_rng(13).normal(size=times.size)
    exact = benes_log_likelihood(a, times, y)
    model = probde.Model(BENES, {"a": dist.LogNormal(0.0, 0.5)}, jnp.array([BENES_X0]),
                         probde.noise.Normal(sigma=BENES_R), t0=0.0,
                         likelihood=probde.ParticleFilter(num_particles=2000))
    data = probde.TimeSeries(times, y, observables=("x",))
    params = {"a": jnp.asarray(a)}
    run = jax.jit(jax.vmap(lambda k: probde.log_likelihood(model, data, params, seed=k)))
    est = np.asarray(run(jax.random.split(jax.random.PRNGKey(14), NUM_ESTIMATES)))
    ratio = np.exp(est - exact)
    se = ratio.std(ddof=1) / math.sqrt(ratio.size)
    assert abs(ratio.mean() - 1.0) / se < Z_MAX, (ratio.mean(), se, est.mean() - exact)
    # The drift matters: Brownian motion alone (a -> 0) is far off, in the same units.
    brownian = benes_log_likelihood(1e-9, times, y)
    assert abs(np.exp(brownian - exact) - 1.0) / se > Z_MAX


# ======================================================= common random numbers (CPM-MH)
def _spec(model, data, params):
    """The standard normals the model's particle filter asks a sampler for."""
    record = auxiliary.supply_normals()

    def probe(k):
        with record:
            return probde.log_likelihood(model, data, params, seed=k)

    jax.eval_shape(probe, jax.random.PRNGKey(0))
    return record.spec


def _estimates_from(model, data, params, normals, keys):
    """One log-likelihood estimate per row of `normals` (and key), the filter driven by
    those normals."""
    def one(u, k, p):
        with auxiliary.supply_normals(values=u):
            return probde.log_likelihood(model, data, p, seed=k)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None)))


def test_filter_asks_for_normals_only_when_their_number_is_fixed():
    data = _data("matern", 0.7, 3)
    params = {"ell": jnp.asarray(0.7), "sf": jnp.asarray(1.0)}
    exact = _spec(_model("matern", probde.ParticleFilter(num_particles=64)), data, params)
    shapes = {k: tuple(v.shape) for k, v in exact.items()}
    # One experiment: initial particles, exact transitions (S normals a particle), and one
    # normal per particle for resampling, at each of the 60 times.
    assert shapes == {"initial": (1, 64, 2), "move": (1, 60, 64, 2), "resample": (1, 60, 64)}
    fixed = _spec(_model("matern", probde.ParticleFilter(num_particles=64, num_steps=5),
                         linear=False), data, params)
    assert tuple(fixed["move"].shape) == (1, 60, 64, 5, 1)  # 5 steps of 1 Wiener process
    # Under the default step rule the count of steps follows theta: no fixed count of normals.
    assert _spec(_model("matern", probde.ParticleFilter(), linear=False), data, params) is None
    assert _spec(_model("matern", probde.EKF()), data, params) is None


def test_common_random_numbers_keep_the_estimate_unbiased_and_correlate_it():
    kind, th, seed = CASES["matern_short"]
    data = _data(kind, th["ell"], seed)
    params = {k: jnp.asarray(v) for k, v in th.items()}
    near = {"ell": jnp.asarray(0.72), "sf": jnp.asarray(1.02)}
    exact = float(probde.log_likelihood(_model(kind, probde.EKF()), data, params))
    model = _model(kind, probde.ParticleFilter(num_particles=256))
    spec = _spec(model, data, params)
    keys = jax.random.split(jax.random.PRNGKey(21), 3 * NUM_ESTIMATES)
    draw = jax.vmap(lambda k: auxiliary.standard_normals(k, spec))
    u, eps = draw(keys[:NUM_ESTIMATES]), draw(keys[NUM_ESTIMATES:2 * NUM_ESTIMATES])
    run = _estimates_from(model, data, params, u, keys)
    other = keys[2 * NUM_ESTIMATES:]
    est = np.asarray(run(u, other, params))
    assert np.all(np.isfinite(est))
    # Unbiased for the exact likelihood, as with keys.
    ratio = np.exp(est - exact)
    se = ratio.std(ddof=1) / math.sqrt(ratio.size)
    assert abs(ratio.mean() - 1.0) / se < Z_MAX, (ratio.mean(), se, est.mean() - exact)
    # The normals are all the randomness: the key makes no difference (Gaussian initial law).
    np.testing.assert_array_equal(np.asarray(run(u, keys[:NUM_ESTIMATES], params)), est)
    # At nearby parameters, estimates from correlated normals (rho = 0.99) differ less than
    # independent ones: the point of correlated pseudo-marginal MCMC. With two states the
    # particles' one-dimensional order loses part of the correlation (measured: spread 0.87
    # against 1.86); with one state (below) most of it stays.
    rho = 0.99
    u_near = jax.tree.map(lambda a, b: rho * a + math.sqrt(1 - rho**2) * b, u, eps)
    corr = np.asarray(run(u_near, other, near)) - est
    indep = np.asarray(run(eps, other, near)) - est
    assert corr.std() < 0.7 * indep.std(), (corr.std(), indep.std())


@pytest.mark.parametrize("linear", [True, False])
def test_common_random_numbers_correlate_one_state_estimates_strongly(linear):
    # Exact transitions (linear) and 5 Euler-Maruyama steps per gap from given increments.
    data = _data("ou", None, 0)
    params = {"k": jnp.asarray(0.8), "m": jnp.asarray(0.6), "s": jnp.asarray(0.7)}
    near = {"k": jnp.asarray(0.85), "m": jnp.asarray(0.62), "s": jnp.asarray(0.7)}
    model = _model("ou", probde.ParticleFilter(num_particles=100, num_steps=5), linear=linear)
    spec = _spec(model, data, params)
    keys = jax.random.split(jax.random.PRNGKey(22), 2 * NUM_ESTIMATES)
    draw = jax.vmap(lambda k: auxiliary.standard_normals(k, spec))
    u, eps = draw(keys[:NUM_ESTIMATES]), draw(keys[NUM_ESTIMATES:])
    run = _estimates_from(model, data, params, u, keys)
    est = np.asarray(run(u, keys[:NUM_ESTIMATES], params))
    rho = 0.99
    u_near = jax.tree.map(lambda a, b: rho * a + math.sqrt(1 - rho**2) * b, u, eps)
    corr = np.asarray(run(u_near, keys[:NUM_ESTIMATES], near)) - est
    indep = np.asarray(run(eps, keys[:NUM_ESTIMATES], near)) - est
    # measured: 0.26 against 1.5 (linear), 0.23 against 1.4 (Euler steps)
    assert corr.std() < 0.35 * indep.std(), (corr.std(), indep.std())
    # As rho -> 1 the difference vanishes: the estimate is continuous in the normals.
    rho = 1.0 - 1e-8
    u_next = jax.tree.map(lambda a, b: rho * a + math.sqrt(1 - rho**2) * b, u, eps)
    same = np.asarray(run(u_next, keys[:NUM_ESTIMATES], params)) - est
    assert same.std() < 0.01 * indep.std(), (same.std(), indep.std())


def test_correlated_sampler_refuses_a_filter_whose_step_count_follows_theta():
    data = _data("ou", None, 0)
    model = _model("ou", probde.ParticleFilter(num_particles=20), linear=False)
    method = probde.RandomWalkMetropolis(num_chains=1, num_warmup=5, num_samples=5,
                                         correlation=0.9)
    with pytest.raises(ValueError, match=r"correlation=0.9 needs .* a fixed "
                                         r"ParticleFilter\(num_steps=...\)"):
        probde.infer(model, data, method, seed=0, num_prior_samples=0)


def test_check_noise_measures_the_spread_and_suggests_particles():
    data = _data("ou", None, 0)
    params = {"k": 0.8, "m": 0.6, "s": 0.7}
    small = probde.ParticleFilter(num_particles=50, num_steps=5)
    model = _model("ou", small, linear=False)
    few = small.check_noise(model, data, params, num_seeds=40)
    many = dataclasses.replace(small, num_particles=400).check_noise(model, data, params,
                                                                     num_seeds=40)
    assert few.log_lik.shape == (40,) and few.difference is None and few.correlation == 0.0
    # The log-estimate's variance falls like 1 / particles: sd ratio sqrt(8) = 2.8 for 8x
    # (the sd of 40 estimates is within about 25% at 2.5 standard errors).
    assert 2.8 / 1.6 < few.sd / many.sd < 2.8 * 1.6, (few.sd, many.sd)
    assert few.particles_for(few.sd / 2) == 200
    # With correlation the relevant spread is that of a Crank-Nicolson move's change, far
    # smaller than the estimate's own for one state (measured 0.12 against 1.2 at 100
    # particles, rho = 0.99).
    corr = small.check_noise(model, data, params, num_seeds=10, correlation=0.99)
    assert corr.difference.shape == (10,) and corr.difference_sd < 0.5 * corr.sd
    assert corr.particles_for(1.0) == math.ceil(50 * corr.difference_sd**2)
    with pytest.raises(ValueError, match=r"correlation must be a number in \[0, 1\).*got 1.0"):
        small.check_noise(model, data, params, correlation=1.0)
    default_rule = probde.ParticleFilter(num_particles=50)
    with pytest.raises(ValueError, match="fixed ParticleFilter\\(num_steps=...\\)"):
        default_rule.check_noise(_model("ou", default_rule, linear=False), data, params,
                                 correlation=0.9)


@pytest.mark.slow  # about 90 s: NUTS on the exact likelihood, then the correlated chains
def test_correlated_pseudo_marginal_mcmc_matches_the_exact_posterior():
    # The OU model through probde.infer: correlated pseudo-marginal MCMC with 100 particles
    # against NUTS on the exact (Kalman) likelihood.
    data = _data("ou", None, 0)
    exact = probde.infer(_model("ou", probde.EKF()), data,
                         probde.NUTS(num_chains=4, num_warmup=500, num_samples=1000),
                         seed=0, num_prior_samples=0, progress_bar=False)
    method = probde.RandomWalkMetropolis(num_chains=4, num_warmup=2000, num_samples=4000,
                                         correlation=0.99, chain_method="vectorized")
    result = probde.infer(_model("ou", probde.ParticleFilter(num_particles=100)), data,
                          method, seed=1, num_prior_samples=0, progress_bar=False)
    for name in ("k", "m", "s"):
        a, b = result.idata.posterior[name], exact.idata.posterior[name]
        se = math.hypot(float(az.mcse(a, method="mean")), float(az.mcse(b, method="mean")))
        assert abs(float(a.mean()) - float(b.mean())) < Z_MAX * se, (name, float(a.mean()),
                                                                     float(b.mean()), se)
        se_sd = math.hypot(float(az.mcse(a, method="sd")), float(az.mcse(b, method="sd")))
        assert abs(float(a.std()) - float(b.std())) < Z_MAX * se_sd, name
