"""`probde.LatentPath` against exact answers.

On a linear SDE the discretised path is a linear Gaussian state-space model, so everything
has a closed form: the program's joint density, integrated over the increments (a Laplace
approximation is exact for a density quadratic in them), must equal a Kalman filter run on
the Euler-discretised chain; that marginal must converge to the SDE's exact likelihood
(the Van Loan Kalman filter) at the scheme's order as the grid refines; and NUTS on
parameters and path must reproduce the discretised model's posterior, computed by
quadrature."""

import math

import arviz as az
import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from conftest import Z_MAX
from numpyro import handlers
from numpyro.infer.util import log_density

import probde
from probde.model import sites


# --------------------------------------------------------------------------- the grid
def test_grid_has_the_substeps_and_the_step_asked_for():
    times = np.array([0.0, 0.5, 2.0, 2.0, 3.0])
    starts, steps, index = probde.LatentPath(num_substeps=4).grid(times, np.array([0.0]))
    # no step for the observation at the start, nor for the repeated time
    assert steps.shape == (1, 12) and list(index) == [0, 4, 8, 8, 12]
    np.testing.assert_allclose(steps[0, :4], 0.125)
    np.testing.assert_allclose(starts[0, 4:8], 0.5 + 0.375 * np.arange(4))
    np.testing.assert_allclose(np.cumsum(steps[0])[index[1:] - 1], times[1:])
    starts, steps, index = probde.LatentPath(step=0.4).grid(times, np.array([0.0, 1.0]))
    # gaps 0.5, 1.5, 0, 1 (longest over the experiments) -> 2, 4, 0, 3 steps
    assert list(index) == [0, 2, 6, 6, 9]
    # the second experiment starts at 1.0: its first interval and the part of the second
    # before its start have length 0; its first real step starts at its start
    np.testing.assert_allclose(steps[1, :2], 0.0)
    np.testing.assert_allclose(steps[1, 2:6], 0.25)
    np.testing.assert_allclose(starts[1, 2], 1.0)
    assert np.all(steps <= 0.4 + 1e-12)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_substeps": 0}, "num_substeps must be a positive integer"),
    ({"num_substeps": 2.5}, "num_substeps must be a positive integer"),
    ({"step": -1.0}, "step must be a positive number"),
    ({"step": 0.1, "num_substeps": 3}, "not both"),
    ({"screen_particles": 1}, "screen_particles must be an integer of at least 2"),
    ({"screen_particles": 100.0}, "screen_particles must be an integer of at least 2"),
])
def test_bad_arguments_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        probde.LatentPath(**kwargs)


# ------------------------------------------------------- a linear SDE: exact answers
def osc_drift(t, x, th):
    return jnp.stack([x[1], -th["a"] * x[0] - th["b"] * x[1]])


def osc_diffusion(t, x, th):
    return jnp.stack([jnp.zeros_like(th["q"]), th["q"]])[:, None]


OSC = probde.SDE(osc_drift, osc_diffusion, ("x1", "x2"))
OSC_PRIORS = {"a": dist.LogNormal(0.0, 0.5), "b": dist.LogNormal(-1.0, 0.5),
              "q": dist.LogNormal(-1.0, 0.5)}
OSC_THETA = {"a": 1.3, "b": 0.4, "q": 0.5}
OSC_INITIAL = dist.Normal(jnp.array([1.0, 0.0]), jnp.array([0.3, 0.2]))
SIGMA = 0.2
TIMES = np.array([0.3, 0.7, 1.5, 1.6, 2.9, 3.4, 4.8])
VALUES = np.array([0.9, 0.75, np.nan, 0.1, -0.5, -0.35, 0.2])[:, None]


def osc_model(likelihood, linear=None):
    sde = OSC if linear is None else probde.SDE(osc_drift, osc_diffusion, ("x1", "x2"),
                                                linear=linear)
    return probde.Model(sde, OSC_PRIORS, OSC_INITIAL, probde.noise.Normal(sigma=SIGMA),
                        likelihood=likelihood, observe=("x1",), t0=0.0)


OSC_DATA = probde.TimeSeries(TIMES, VALUES, observables=("x1",))


def path_marginal(model, data, theta):
    """`log p(y | theta)` of the discretised model from its program's joint density,
    integrated over the path's standardised values exactly (the density is quadratic in
    them for a linear SDE: one Newton step from 0 finds the mode, and the Laplace
    approximation there is exact)."""
    fn = model.numpyro_model(model.prepare(data))
    theta = {k: jnp.asarray(v) for k, v in theta.items()}
    shapes = {}

    def probe():
        with handlers.block(), handlers.seed(rng_seed=0):
            tr = handlers.trace(fn).get_trace(observed=True)
        for name in sites.PATH_SITES:
            if name in tr:
                shapes[name] = tr[name]["value"].shape
        return jnp.zeros(())

    jax.eval_shape(probe)
    sizes = {k: math.prod(s) for k, s in shapes.items()}

    def joint(u):
        parts, i = {}, 0
        for name, shape in shapes.items():
            parts[name] = u[i:i + sizes[name]].reshape(shape)
            i += sizes[name]
        return log_density(fn, (), {"observed": True}, {**theta, **parts})[0]

    @jax.jit
    def laplace():
        d = sum(sizes.values())
        u0 = jnp.zeros(d)
        g, H = jax.grad(joint)(u0), jax.hessian(joint)(u0)
        u_hat = u0 - jnp.linalg.solve(H, g)
        prior = sum(model.params[k].log_prob(v) for k, v in theta.items())
        _, logdet = jnp.linalg.slogdet(-H)
        return joint(u_hat) - prior + 0.5 * d * math.log(2 * math.pi) - 0.5 * logdet

    return float(laplace())


def euler_kalman(theta, grid, times, values, m0, P0, sigma):
    """The Kalman filter's `log p(y)` for the Euler-discretised oscillator on `grid`
    (x_{j+1} = (I + A h) x_j + L sqrt(h) z_j), observing x1 with noise `sigma`."""
    step_starts, steps, index = grid
    A = np.array([[0.0, 1.0], [-theta["a"], -theta["b"]]])
    L = np.array([[0.0], [theta["q"]]])
    m, P, ll, j = np.array(m0, float), np.array(P0, float), 0.0, 0
    for k in range(times.size):
        while j < index[k]:
            F = np.eye(2) + A * steps[0, j]
            m, P = F @ m, F @ P @ F.T + L @ L.T * steps[0, j]
            j += 1
        if np.isnan(values[k, 0]):
            continue
        S = P[0, 0] + sigma**2
        r = values[k, 0] - m[0]
        ll += -0.5 * (math.log(2 * math.pi * S) + r**2 / S)
        gain = P[:, 0] / S
        m, P = m + gain * r, P - np.outer(gain, P[0, :])
    return ll


@pytest.mark.parametrize("lik", [probde.LatentPath(num_substeps=3), probde.LatentPath(step=0.25)])
def test_joint_density_is_the_discretised_sde_exactly(lik):
    """Integrated over the path, the program's density is the Euler chain's likelihood,
    with a Gaussian initial state (non-centred), irregular times and a missing value."""
    got = path_marginal(osc_model(lik), OSC_DATA, OSC_THETA)
    grid = lik.grid(TIMES, np.array([0.0]))
    want = euler_kalman(OSC_THETA, grid, TIMES, VALUES, [1.0, 0.0], np.diag([0.09, 0.04]),
                        SIGMA)
    np.testing.assert_allclose(got, want, rtol=1e-9)


@pytest.mark.parametrize("solver, order", [(None, 1.0), (diffrax.Heun(), 2.0)])
def test_discretisation_error_shrinks_at_the_schemes_order(solver, order):
    """Against the exact likelihood (Van Loan discretisation in the Kalman filter), the
    error of the discretised likelihood halves (Euler-Maruyama, weak order 1) or quarters
    (Heun, weak order 2 with additive noise) as the step halves."""
    exact = float(probde.log_likelihood(osc_model(probde.EKF(), linear=True), OSC_DATA,
                                        OSC_THETA))
    errors = [path_marginal(osc_model(probde.LatentPath(num_substeps=n, solver=solver)),
                            OSC_DATA, OSC_THETA) - exact for n in (4, 8, 16, 32)]
    observed = np.log2(np.abs(errors[:-1]) / np.abs(errors[1:]))
    # At least the scheme's order at every halving, less the next term's share at these
    # steps; Euler-Maruyama's exactly (Heun's leading term is small on this model: its
    # error falls faster, then changes sign).
    assert np.all(observed > order - 0.15), (errors, observed)
    if solver is None:
        assert np.all(np.abs(observed[1:] - order) < 0.15), (errors, observed)


def test_model_refuses_what_the_latent_path_cannot_do():
    model = osc_model(probde.LatentPath(num_substeps=2))
    with pytest.raises(ValueError, match="log_likelihood needs the SDE's path integrated out"):
        probde.log_likelihood(model, OSC_DATA, OSC_THETA)
    with pytest.raises(ValueError, match="predictions at new times are not available"):
        model.numpyro_model(model.prepare(OSC_DATA), predict_times=np.array([5.0]))
    with pytest.raises(TypeError, match="LatentPath is not a filter"):
        model.likelihood.run(OSC, OSC_THETA, None, None, None, None)
    # A joint mode of parameters and path is no start (the noise shrinks to zero with the
    # path through the data): NUTS(init="map") warns, at the caller; the filters do not.
    with pytest.warns(UserWarning, match=r"NUTS\(init='map'\) with likelihood=probde.LatentPath")\
            as caught:
        probde.NUTS(init="map").check_model(model, None)
    assert all(w.filename == __file__ for w in caught)
    probde.NUTS(init="map").check_model(osc_model(probde.EKF()), None)
    probde.NUTS().check_model(model, None)


# ------------------------------------------- NUTS on parameters and path: the posterior
def ou_drift(t, x, th):
    return -th["k"] * x


def ou_diffusion(t, x, th):
    return jnp.stack([th["s"]])


OU_PRIORS = {"k": dist.LogNormal(0.0, 0.5), "s": dist.LogNormal(-1.0, 0.5)}
OU_SIGMA = 0.1


def ou_data():
    rng = np.random.default_rng(3)
    times = np.sort(rng.uniform(0.0, 8.0, 15))
    path = probde.simulate(probde.SDE(ou_drift, ou_diffusion, ("x",)), jnp.array([1.0]),
                           {"k": 0.8, "s": 0.4}, times, jax.random.PRNGKey(3), t0=0.0,
                           num_steps=50)
    values = np.asarray(path.ys) + OU_SIGMA * rng.standard_normal((times.size, 1))
    return probde.TimeSeries(times, values, observables=("x",))


def ou_euler_kalman(grid, times, values, k, s):
    """The Kalman filter's `log p(y | k, s)` for the Euler-discretised OU model on `grid`
    (x starts at 1; `k` and `s` arrays of any shape, the result of theirs)."""
    _, steps, index = grid
    m, P, ll, j = np.ones_like(k), np.zeros_like(k), np.zeros_like(k), 0
    for t in range(times.size):
        while j < index[t]:
            h = steps[0, j]
            m, P = (1 - k * h) * m, (1 - k * h) ** 2 * P + s**2 * h
            j += 1
        S = P + OU_SIGMA**2
        r = values[t, 0] - m
        ll += -0.5 * (np.log(2 * np.pi * S) + r**2 / S)
        m, P = m + P / S * r, P - P**2 / S
    return ll


def ou_euler_posterior(grid, times, values, num=160):
    """Posterior mean and sd of k and s for the Euler-discretised OU model, by quadrature
    on a grid in (log k, log s) with the Kalman filter of the discretised chain."""
    lk, ls = np.meshgrid(np.linspace(-2.5, 1.5, num), np.linspace(-3.5, 0.5, num),
                         indexing="ij")
    k, s = np.exp(lk), np.exp(ls)
    ll = ou_euler_kalman(grid, times, values, k, s)
    # log prior of (log k, log s): the LogNormal densities times the Jacobians k and s
    log_post = ll - 0.5 * (lk / 0.5) ** 2 - 0.5 * ((ls + 1.0) / 0.5) ** 2
    w = np.exp(log_post - log_post.max())
    w /= w.sum()
    out = {}
    for name, v in (("k", k), ("s", s)):
        mean = float((w * v).sum())
        out[name] = (mean, float(np.sqrt((w * (v - mean) ** 2).sum())))
    return out


# A divergence or two in 4000 transitions is common on this path (the increments and the
# diffusion scale make a funnel): with the warmup resumed after the screen, seeds 1-6 had
# divergences in 2 of 6 runs with num_warmup=500 and in 2 of 6 with 575 (the 500 + 75
# iterations the warmup ran when it restarted its adaptation after the screen, which gave
# 0 of 6), at most 3 in a run, so the resumed warmup's shorter adaptation is not the cause.
# It warns; what this test checks is the posterior against quadrature, and that
# divergences stay that rare.
@pytest.mark.filterwarnings("ignore::probde.ConvergenceWarning")
def test_nuts_on_the_latent_path_gives_the_discretised_posterior():
    """NUTS on (k, s, 60 increments) reproduces the posterior of the Euler-discretised
    OU model (quadrature): means and sds within Z_MAX Monte Carlo standard errors."""
    data = ou_data()
    lik = probde.LatentPath(num_substeps=4)
    model = probde.Model(probde.SDE(ou_drift, ou_diffusion, ("x",)), OU_PRIORS,
                         jnp.array([1.0]), probde.noise.Normal(sigma=OU_SIGMA),
                         likelihood=lik, t0=0.0)
    result = probde.infer(model, data, probde.NUTS(num_chains=4, num_warmup=500,
                                                   num_samples=1000, target_accept=0.95),
                          seed=1, num_prior_samples=0)
    want = ou_euler_posterior(lik.grid(data.times, np.array([0.0])), np.asarray(data.times),
                              np.asarray(data.values))
    assert int(result.idata["sample_stats"]["diverging"].sum()) <= 2  # of 4000
    report = result.diagnose(show=False)
    assert all(c.passed for c in report.checks if c.name != "divergences"), report
    post = result.idata.posterior
    for name, (mean, sd) in want.items():
        draws = post[name]
        z_mean = abs(float(draws.mean()) - mean) / float(az.mcse(draws, method="mean"))
        z_sd = abs(float(draws.std()) - sd) / float(az.mcse(draws, method="sd"))
        assert z_mean < Z_MAX and z_sd < Z_MAX, (name, float(draws.mean()), mean,
                                                  float(draws.std()), sd)
    # the path's sites are in their own group, not among the parameters
    assert set(post.data_vars) == {"k", "s"}
    assert result.idata["latent_path"]["increments"].shape == (4, 1000, 60, 1)
    smoothed = result.idata["smoothed_states"]["mean"]
    np.testing.assert_allclose(smoothed.values, result.idata.posterior_predictive[
        "trajectory"].values)


# -------------------------------------- any noise model, several experiments, failures
def logistic_drift(t, x, th):
    return th["r"] * x * (1.0 - x / 50.0)


def logistic_diffusion(t, x, th):
    return th["s"] * x


LOGISTIC = probde.SDE(logistic_drift, logistic_diffusion, ("n",))


def logistic_model(lik):
    return probde.Model(LOGISTIC, {"r": dist.LogNormal(0.0, 0.5), "s": dist.LogNormal(-2.0, 0.5)},
                        dist.LogNormal(jnp.log(5.0), 0.3).expand([1]), probde.noise.Poisson(),
                        likelihood=lik)


LOGISTIC_DATA = [
    probde.TimeSeries([0.0, 1.0, 2.5, 4.0], [4, 11, 30, 44], observables=("n",), name="a"),
    probde.TimeSeries([1.0, 2.0, 3.0], [6, 12, 25], observables=("n",), name="b"),
]


@pytest.mark.parametrize("method", [
    probde.NUTS(num_chains=2, num_warmup=300, num_samples=300),
    probde.SVI(num_steps=4000, num_draws=200),
])
def test_counts_several_experiments_and_a_non_gaussian_initial_state(method):
    """Poisson counts (no Gaussian filter applies), a LogNormal initial state (sampled as
    it is, not standardised), two experiments with their own start times; NUTS and SVI."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", probde.ConvergenceWarning)
        result = probde.infer(logistic_model(probde.LatentPath(step=0.25)), LOGISTIC_DATA,
                              method, seed=0, num_prior_samples=20)
    group = result.idata["latent_path"]
    # grid over the union of times 0, 1, 2, 2.5, 3, 4: 4 + 4 + 2 + 2 + 4 steps
    assert dict(group["increments"].sizes)["path_step"] == 16
    assert dict(group["increments"].sizes)["experiment"] == 2
    initial = group["initial"].values
    assert np.all(initial > 0)  # the initial counts themselves (LogNormal support)
    # the second experiment's path starts at its first observation
    first = result.idata["smoothed_states"]["mean"].sel(experiment="b", time=1.0)
    np.testing.assert_allclose(first.values[..., 0], initial[:, :, 1, 0])
    assert np.isnan(result.idata.posterior_predictive["y"].sel(experiment="b", time=0.0)).all()
    r = float(result.idata.posterior["r"].mean())
    assert 0.5 < r < 2.0  # the counts grow about e-fold per unit time early on


def test_a_path_that_blows_up_is_rejected_not_a_crash():
    explosive = probde.SDE(lambda t, x, th: th["r"] * x**3, lambda t, x, th: jnp.stack([th["r"]]),
                           ("x",))
    model = probde.Model(explosive, {"r": dist.LogNormal(0.0, 0.5)}, jnp.array([1.0]),
                         probde.noise.Normal(sigma=0.1), likelihood=probde.LatentPath(num_substeps=5))
    data = probde.TimeSeries([1.0, 2.0], [1.0, 1.0], observables=("x",))
    fn = model.numpyro_model(model.prepare(data))
    calm = {"r": 0.01, sites.PATH_INCREMENTS: jnp.zeros((1, 5, 1))}
    wild = {"r": 5.0, sites.PATH_INCREMENTS: jnp.full((1, 5, 1), 1e3)}
    assert np.isfinite(float(log_density(fn, (), {"observed": True}, calm)[0]))
    assert float(log_density(fn, (), {"observed": True}, wild)[0]) == -np.inf


# ------------------------------------------ the screen: chains judged by the parameters
def ou_latent_model(lik):
    return probde.Model(probde.SDE(ou_drift, ou_diffusion, ("x",)), OU_PRIORS,
                        jnp.array([1.0]), probde.noise.Normal(sigma=OU_SIGMA),
                        likelihood=lik, t0=0.0)


def ou_euler_log_density(grid, times, values, lk, ls):
    """The Euler-discretised OU model's exact log density of (log k, log s), the path
    integrated out: the Kalman filter's log-likelihood plus the log prior in the
    unconstrained space (LogNormal priors with their Jacobians: Normal in the logs)."""
    ll = float(ou_euler_kalman(grid, times, values, np.exp(lk), np.exp(ls)))
    prior = sum(-0.5 * ((u - c) / 0.5) ** 2 - math.log(0.5 * math.sqrt(2 * math.pi))
                for u, c in ((lk, 0.0), (ls, -1.0)))
    return ll + prior


def test_the_screens_score_is_the_parameters_log_density():
    """The score NUTS screens a latent path's chains by (`path_screen.scorer`) is the
    log density of the parameters alone in NUTS's unconstrained space, the path
    integrated out: on the Euler-discretised OU model, the Kalman filter's exact value,
    chain by chain, within the particle filter's Monte Carlo error (Z_MAX standard
    errors of the mean of 20 scores, plus the bias of a median of logs, half the
    estimate's variance)."""
    from probde.inference import path_screen

    data = ou_data()
    lik = probde.LatentPath(num_substeps=4)
    model = ou_latent_model(lik)
    prepared = model.prepare(data)
    score = path_screen.scorer(model, prepared, num_particles=1000)
    # the truth, and a process noise far too large (16 nats lower; not a point where the
    # data are far from every path, where the bootstrap filter's estimates degenerate)
    points = np.log(np.array([[0.8, 0.4], [0.8, 1.5]]))
    z = {"k": jnp.asarray(points[:, 0]), "s": jnp.asarray(points[:, 1]),
         sites.PATH_INCREMENTS: jnp.zeros((2, 1, 60, 1))}  # ignored: the path is integrated
    scores = np.stack([score(z, jax.random.PRNGKey(i)) for i in range(20)])  # (20, chains)
    grid = lik.grid(data.times, np.array([0.0]))
    for c, (lk, ls) in enumerate(points):
        want = ou_euler_log_density(grid, np.asarray(data.times), np.asarray(data.values),
                                    lk, ls)
        sd = scores[:, c].std(ddof=1)
        # a median of 8 has variance (pi / 2) / 8 times one estimate's
        variance_one = sd**2 * 8 / (math.pi / 2)
        tol = Z_MAX * sd / math.sqrt(scores.shape[0]) + variance_one / 2
        assert abs(scores[:, c].mean() - want) < tol, (c, scores[:, c].mean(), want, tol)
    # the two points are far apart in density, and the score says so
    assert scores[:, 1].mean() < scores[:, 0].mean() - 10


def test_nuts_asks_for_the_screen_only_for_a_latent_path():
    data = ou_data()
    path = ou_latent_model(probde.LatentPath(num_substeps=2))
    prepared = path.prepare(data)
    assert set(probde.NUTS().run_options(path, prepared)) == {"chain_score"}
    assert probde.NUTS(restart_stuck=False).run_options(path, prepared) == {}
    off = ou_latent_model(probde.LatentPath(num_substeps=2, screen_particles=None))
    assert probde.NUTS().run_options(off, off.prepare(data)) == {}
    ekf = ou_latent_model(probde.EKF())
    assert probde.NUTS().run_options(ekf, ekf.prepare(data)) == {}
    assert probde.SVI().run_options(path, prepared) == {}


def test_the_screen_moves_a_chain_its_score_puts_far_below_and_restarts_after_sampling():
    """With a chain score (a latent path's), NUTS screens at the ends of the adaptation
    windows in the first half of the warmup (75, 100 and 150 of 300 iterations) and once
    after sampling: a chain scored far below the best is moved each time, and after
    sampling the run restarts once, warning, with no screen in the second run."""
    import numpyro

    def model_fn():
        numpyro.sample("x", dist.Normal(0.0, 1.0))

    calls = []

    def score(z, key):
        calls.append(np.shape(z["x"]))
        return np.array([0.0, -50.0])  # chain 1 always far below

    method = probde.NUTS(num_chains=2, num_warmup=300, num_samples=50,
                         chain_method="vectorized")
    with pytest.warns(probde.ConvergenceWarning, match="restarted from chain 0's final point"):
        samples, stats = method.run(model_fn, jax.random.PRNGKey(0), progress_bar=False,
                                    model_kwargs={}, chain_score=score)
    assert calls == [(2,)] * 4  # three screens and the check after sampling
    notes = stats[probde.inference.restart.NOTES]
    for point in (75, 100, 150):
        assert f"after warmup iteration {point}," in notes["screened"]
    assert notes["screened"].count("chain 1 (score -50; moved to chain 0's") == 3
    assert "the density of the parameters alone" in notes["restarted"]
    assert np.shape(samples["x"]) == (2, 50)
