"""GP emulator of an expensive simulator (Kennedy–O'Hagan) and space-filling designs.

Layers (TESTING.md): designs against their defining stratification properties; the
emulator's marginal likelihood against scipy's `multivariate_normal.logpdf`; its predictions
(at the fitted and at given hyperparameters, and the held-out diagnostics) against a
hand-written numpy GP; gradients against central finite differences; held-out coverage
against a binomial band, over independent simulators drawn from the emulator's own GP
prior; every validation error by its message.
"""

import math
import re
from statistics import NormalDist

import gpjax
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from conftest import RTOL, Z_MAX
from numpyro.infer.util import log_density as log_density_of
from scipy.stats import Covariance, multivariate_normal

from probde.design import latin_hypercube, sobol
from probde.discrepancy.emulator import EmulatorDiagnostics, GPEmulator

matplotlib.use("Agg")

BOUNDS = {"r": (0.3, 1.5), "K": (5.0, 20.0)}
TIMES = np.linspace(0.0, 10.0, 11)
X0 = 1.0


def logistic(theta, times=TIMES):
    """Logistic growth x(t) and its rate r x (1 - x/K), in closed form (numpy)."""
    r, K = theta["r"], theta["K"]
    x = K / (1.0 + (K / X0 - 1.0) * np.exp(-r * times))
    return np.stack([x, r * x * (1.0 - x / K)], axis=-1)


WAVE_TIMES = np.linspace(0.0, 1.0, 10)


def noisy_wave(theta, times=WAVE_TIMES):
    """A smooth 1-parameter simulator with a little numerical noise (seeded by theta)."""
    rng = np.random.default_rng(int(theta["k"] * 1e6))
    return np.sin(3.0 * theta["k"] * times) + 0.01 * rng.standard_normal(times.shape)


@pytest.fixture(scope="module")
def emulator():
    design = latin_hypercube(BOUNDS, 30, seed=0)
    return GPEmulator.fit(
        logistic, TIMES, design, bounds=BOUNDS, observables=("x", "growth"), progress_bar=False
    )


@pytest.fixture(scope="module")
def noisy_emulator():
    design = latin_hypercube({"k": (0.5, 2.0)}, 10, seed=3)
    return GPEmulator.fit(
        noisy_wave,
        WAVE_TIMES,
        design,
        noise="fit",
        held_out=0.0,
        progress_bar=False,
    )


# ----------------------------------------------------------------- numpy reference GP
def matern52(xa, xb, lengthscale, variance):
    d = (xa[:, None, :] - xb[None, :, :]) / lengthscale
    r = np.sqrt(np.sum(d**2, axis=-1))
    return variance * (1.0 + math.sqrt(5.0) * r + 5.0 / 3.0 * r**2) * np.exp(-math.sqrt(5.0) * r)


def scaled_inputs(emu, times, thetas):
    """Rows (t, theta) scaled to the unit cube as the emulator does, run-major."""
    t = (np.asarray(times) - emu.times[0]) / (emu.times[-1] - emu.times[0])
    lo, hi = (np.array([emu.bounds[n][i] for n in emu.parameter_names]) for i in (0, 1))
    th = (np.atleast_2d(thetas) - lo) / (hi - lo)
    return np.concatenate(
        [np.tile(t, th.shape[0])[:, None], np.repeat(th, t.shape[0], axis=0)], axis=1
    )


def standardised(emu, runs):
    """Standardised outputs of the given runs, `(O, len(runs) * T)`."""
    z = (emu.outputs[runs] - emu.output_loc) / emu.output_scale
    return z.reshape(-1, z.shape[-1]).T


def numpy_conditional(emu, o, x_train, y_train, x_new):
    """Latent posterior mean/cov of observable `o` (standardised) by dense numpy algebra."""
    ls, var = emu.hyperparameters["lengthscale"][o], emu.hyperparameters["variance"][o]
    nugget = emu.noise[o] + emu.jitter * var
    C = matern52(x_train, x_train, ls, var) + nugget * np.eye(x_train.shape[0])
    Ks = matern52(x_new, x_train, ls, var)
    mean = Ks @ np.linalg.solve(C, y_train)
    cov = matern52(x_new, x_new, ls, var) - Ks @ np.linalg.solve(C, Ks.T)
    return mean, cov, nugget


# ------------------------------------------------------------------------------ designs
def unit(design, bounds):
    return np.stack([(design[n] - lo) / (hi - lo) for n, (lo, hi) in bounds.items()], axis=1)


def test_latin_hypercube_has_one_point_per_stratum():
    bounds = {"a": (-1.0, 1.0), "b": (0.0, 10.0), "c": (100.0, 101.0)}
    n = 13
    design = latin_hypercube(bounds, n, seed=4)
    assert list(design) == ["a", "b", "c"] and all(v.shape == (n,) for v in design.values())
    u = unit(design, bounds)
    assert np.all((u >= 0) & (u < 1))
    for p in range(3):
        assert sorted(np.floor(u[:, p] * n).astype(int)) == list(range(n))


def test_sobol_is_balanced_for_a_power_of_two():
    bounds = {"a": (0.0, 2.0), "b": (-5.0, 5.0), "c": (1.0, 3.0)}
    m = 5
    n = 2**m
    u = unit(sobol(bounds, n, seed=2), bounds)
    assert np.all((u >= 0) & (u < 1))
    for p in range(3):  # every 1-D stratum of width 1/n holds one point
        assert sorted(np.floor(u[:, p] * n).astype(int)) == list(range(n))
    for a in range(m + 1):  # the first two coordinates form a (0, m, 2)-net in base 2
        cells = np.floor(u[:, 0] * 2**a).astype(int) * 2 ** (m - a) + np.floor(
            u[:, 1] * 2 ** (m - a)
        ).astype(int)
        assert np.all(np.bincount(cells, minlength=n) == 1)


def test_designs_are_reproducible_by_seed():
    for make in (latin_hypercube, sobol):
        a, b, c = (make(BOUNDS, 8, seed=s) for s in (1, 1, 2))
        assert all(np.array_equal(a[k], b[k]) for k in BOUNDS)
        assert not np.array_equal(a["r"], c["r"])


def test_sobol_warns_when_n_is_not_a_power_of_two():
    with pytest.warns(UserWarning, match=r"n=12 is not a power of two.*use n=8 or n=16"):
        design = sobol(BOUNDS, 12, seed=0)
    assert design["K"].shape == (12,)


@pytest.mark.parametrize("make", [latin_hypercube, sobol])
@pytest.mark.parametrize(
    ("bounds", "n", "error", "match"),
    [
        ([(0.0, 1.0)], 4, TypeError, r"bounds must be a dict mapping parameter names to \(low"),
        ({}, 4, ValueError, "bounds must name at least one parameter"),
        ({"a": (1.0, 1.0)}, 4, ValueError, r"bounds\['a'\] must have low < high; got \(1.0, 1.0\)"),
        ({"a": (2.0, 1.0)}, 4, ValueError, r"bounds\['a'\] must have low < high"),
        ({"a": (0.0, np.inf)}, 4, ValueError, r"bounds\['a'\] must be finite; got \(0.0, inf\)"),
        ({"a": 1.0}, 4, TypeError, r"bounds\['a'\] must be a pair of numbers \(low, high\)"),
        ({"a": (0.0, 1.0)}, 1, ValueError, "n must be at least 2 design points; got 1"),
        ({"a": (0.0, 1.0)}, 4.0, TypeError, "n must be an integer number of design points"),
    ],
)
def test_design_bad_input(make, bounds, n, error, match):
    with pytest.raises(error, match=match):
        make(bounds, n)


# ------------------------------------------------------------------ emulator: exactness
def test_training_log_marginal_matches_scipy(emulator, noisy_emulator):
    for emu in (emulator, noisy_emulator):
        x = scaled_inputs(emu, emu.times, emu.design)
        y = standardised(emu, np.arange(emu.design.shape[0]))
        expected = 0.0
        for o in range(len(emu.observables)):
            ls, var = emu.hyperparameters["lengthscale"][o], emu.hyperparameters["variance"][o]
            C = matern52(x, x, ls, var) + (emu.noise[o] + emu.jitter * var) * np.eye(x.shape[0])
            # Covariance.from_cholesky: scipy's default eigen-check calls a covariance with
            # a 1e-6 nugget on a variance of ~30 x 330 points singular (cond > 1e6 / eps)
            cov = Covariance.from_cholesky(np.linalg.cholesky(C))
            expected += multivariate_normal(np.zeros(x.shape[0]), cov).logpdf(y[o])
        # plus the Jacobian of the standardisation: the density of the raw outputs
        expected -= x.shape[0] * np.sum(np.log(emu.output_scale))
        got = emu.training_log_marginal(emu.hyperparameters)
        np.testing.assert_allclose(got, expected, rtol=RTOL[np.dtype("float64")])
        np.testing.assert_allclose(emu.training_log_marginal(), got, rtol=1e-12)


def test_predict_reproduces_training_outputs(emulator):
    # With C = K + s2 I, the residual at a training point is s2 (C^-1 z)_i, distributed
    # N(0, s2^2 [C^-1]_ii) under the GP, and s2 [C^-1]_ii <= 1: its sd is at most sqrt(s2).
    # Five sds (in output units) bound all N residuals with probability > 1 - N * 6e-7.
    var = emulator.hyperparameters["variance"]
    tol = 5.0 * np.sqrt(emulator.noise + emulator.jitter * var) * emulator.output_scale
    for i in (0, 7, 29):
        mean, cov = emulator.predict(emulator.times, emulator.design[i])
        err = np.abs(np.asarray(mean) - emulator.outputs[i])
        assert np.all(err <= tol), (err.max(axis=0), tol)
        sd = np.sqrt(np.diagonal(np.asarray(cov), axis1=1, axis2=2)).T  # latent sd <= nugget sd
        assert np.all(sd <= tol / 5.0 * (1 + 1e-6))


def test_predictive_covariance_is_symmetric_psd(emulator):
    times = np.linspace(-1.0, 12.0, 17)  # includes extrapolation
    for include_noise in (False, True):
        _, cov = emulator.predict(times, {"r": 0.77, "K": 13.3}, include_noise=include_noise)
        cov = np.asarray(cov)
        assert cov.shape == (2, 17, 17)
        np.testing.assert_array_equal(cov, np.transpose(cov, (0, 2, 1)))
        for c in cov:
            w = np.linalg.eigvalsh(c)
            assert w.min() >= -1e-10 * w.max()


def test_predict_matches_numpy_gp(emulator):
    times = np.array([0.3, 2.5, 5.05, 9.9])
    theta = np.array([0.61, 17.2])
    mean, cov = emulator.predict(times, {"K": 17.2, "r": 0.61, "sigma": 0.1})  # extra keys ok
    x_train = scaled_inputs(emulator, emulator.times, emulator.design)
    y_train = standardised(emulator, np.arange(30))
    x_new = scaled_inputs(emulator, times, theta)
    s, m = emulator.output_scale, emulator.output_loc
    for o in range(2):
        mu, c, _ = numpy_conditional(emulator, o, x_train, y_train[o], x_new)
        np.testing.assert_allclose(mean[:, o], mu * s[o] + m[o], rtol=RTOL[np.dtype("float64")])
        scale = np.max(np.abs(c)) * s[o] ** 2
        np.testing.assert_allclose(cov[o], c * s[o] ** 2, rtol=1e-6, atol=1e-6 * scale)


def test_predict_with_given_hyperparameters_matches_fitted_path(emulator, noisy_emulator):
    for emu in (emulator, noisy_emulator):
        theta = {n: float(np.mean(emu.bounds[n])) for n in emu.parameter_names}
        times = np.linspace(emu.times[0], emu.times[-1], 5)
        m0, c0 = emu.predict(times, theta, include_noise=True)
        m1, c1 = emu.predict(times, theta, emu.hyperparameters, include_noise=True)
        np.testing.assert_allclose(m1, m0, rtol=RTOL[np.dtype("float64")])
        np.testing.assert_allclose(c1, c0, rtol=1e-6, atol=1e-9 * np.max(np.abs(c0)))


def test_held_out_diagnostics_match_numpy_gp(emulator):
    d = emulator.diagnostics
    held = d.held_out_runs
    fit = np.setdiff1d(np.arange(30), held)
    assert held.shape == (6,) and np.array_equal(d.simulated, emulator.outputs[held])
    x_fit = scaled_inputs(emulator, emulator.times, emulator.design[fit])
    y_fit = standardised(emulator, fit)
    s, m = emulator.output_scale, emulator.output_loc
    for k, i in enumerate(held):
        x_new = scaled_inputs(emulator, emulator.times, emulator.design[i])
        for o in range(2):
            mu, c, nugget = numpy_conditional(emulator, o, x_fit, y_fit[o], x_new)
            np.testing.assert_allclose(d.mean[k, :, o], mu * s[o] + m[o], rtol=1e-6)
            sd = np.sqrt(np.clip(np.diagonal(c), 0.0, None) + nugget) * s[o]
            np.testing.assert_allclose(d.sd[k, :, o], sd, rtol=1e-5)


# ------------------------------------------------------------------ emulator: gradients
def test_gradient_of_predict_mean_matches_finite_differences(emulator):
    times = np.array([1.0, 4.0, 6.5])

    def mean(theta):
        return emulator.predict(times, theta)[0]

    theta = jnp.array([0.83, 11.4])
    jac = np.asarray(jax.jit(jax.jacfwd(mean))(theta))  # (T, O, P)
    rev = jax.grad(lambda th: mean({"r": th["r"], "K": th["K"]})[1, 0])(
        {"r": theta[0], "K": theta[1]}
    )
    np.testing.assert_allclose([rev["r"], rev["K"]], jac[1, 0], rtol=1e-10)
    for p, (lo, hi) in enumerate(BOUNDS.values()):
        h = 1e-4 * (hi - lo)
        step = np.zeros(2)
        step[p] = h
        fd = (np.asarray(mean(theta + step)) - np.asarray(mean(theta - step))) / (2 * h)
        scale = np.max(np.abs(jac[..., p]))
        np.testing.assert_allclose(jac[..., p], fd, rtol=1e-5, atol=1e-6 * scale)


def test_training_log_marginal_gradient_matches_finite_differences(noisy_emulator):
    # away from the MAP (where the gradient is ~0 and a relative check measures only the
    # finite differences' rounding): every hyperparameter 1.5 times its fitted value
    emu = noisy_emulator
    hyper = {k: 1.5 * jnp.asarray(v) for k, v in emu.hyperparameters.items()}
    grad = jax.grad(emu.training_log_marginal)(hyper)
    scale = max(float(jnp.max(jnp.abs(g * hyper[k]))) for k, g in grad.items())
    for key in hyper:
        for idx in np.ndindex(hyper[key].shape):
            h = 1e-4 * float(hyper[key][idx])
            up = dict(hyper, **{key: hyper[key].at[idx].add(h)})
            down = dict(hyper, **{key: hyper[key].at[idx].add(-h)})
            fd = (emu.training_log_marginal(up) - emu.training_log_marginal(down)) / (2 * h)
            # compare d/d(log value), so that the tolerance is scale-free across keys
            v = float(hyper[key][idx])
            np.testing.assert_allclose(grad[key][idx] * v, fd * v, rtol=1e-6, atol=1e-7 * scale)


def test_full_kennedy_ohagan_log_density_is_differentiable(noisy_emulator):
    # theta and the emulator's hyperparameters inferred jointly: p(z | psi) p(y | z, theta, psi)
    emu = noisy_emulator
    times = np.array([0.1, 0.45, 0.8])
    y_obs = np.sin(3.0 * 1.3 * times)

    def model():
        hyper = {
            k: numpyro.sample(f"emulator_{k}", p) for k, p in emu.hyperparameter_priors().items()
        }
        numpyro.factor("simulator_runs", emu.training_log_marginal(hyper))
        k = numpyro.sample("k", dist.Uniform(0.5, 2.0))
        mean, cov = emu.predict(times, {"k": k}, hyper, include_noise=True)
        cov = cov[0] + 0.05**2 * jnp.eye(times.shape[0])
        numpyro.sample("y", dist.MultivariateNormal(mean[:, 0], cov), obs=y_obs)

    def log_density(k, hyper):
        params = {f"emulator_{key}": v for key, v in hyper.items()} | {"k": k}
        return log_density_of(model, (), {}, params)[0]

    hyper = {key: jnp.asarray(v) for key, v in emu.hyperparameters.items()}
    value, grad = jax.jit(jax.value_and_grad(log_density, argnums=(0, 1)))(1.2, hyper)
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad))
    h = 1e-5
    f = jax.jit(log_density)
    fd = (f(1.2 + h, hyper) - f(1.2 - h, hyper)) / (2 * h)
    np.testing.assert_allclose(grad[0], fd, rtol=1e-6)
    assert grad[0] > 0  # the data were made with k = 1.3


def test_predict_is_jit_and_vmap_friendly(emulator):
    thetas = jnp.array([[0.5, 8.0], [1.2, 15.0], [0.9, 19.0]])
    batched = jax.jit(jax.vmap(lambda th: emulator.predict(TIMES, th)))(thetas)
    for k in range(3):
        single = emulator.predict(TIMES, thetas[k])
        np.testing.assert_allclose(batched[0][k], single[0], rtol=1e-12)
    # hashable by identity: usable as a static argument
    f = jax.jit(lambda emu, th: emu.predict(TIMES, th)[0], static_argnums=0)
    np.testing.assert_allclose(f(emulator, thetas[0]), batched[0][0], rtol=1e-12)
    assert hash(emulator) == hash(emulator)


def test_fitted_predict_and_its_gradient_solve_by_products(emulator):
    # On CPU a triangular solve is a LAPACK trsm in scipy's multi-threaded OpenBLAS, whose
    # thread hand-offs cost milliseconds on shared cores (a 108-point emulator made a model's
    # gradient 25-50 times slower than the ODE's). At the fitted hyperparameters predict
    # solves by products with the stored inverse factor: neither it nor its gradient may
    # call LAPACK (the hyper= path must still factorise, so it does).
    times = jnp.linspace(0.5, 9.5, 7)

    def loss(theta, hyper=None):
        mean, cov = emulator.predict(times, theta, hyper)
        return jnp.sum(mean**2) + jnp.sum(cov)

    def solves(fn, *args):  # the compiled program's solver calls (LAPACK on CPU) and ops
        hlo = jax.jit(fn).lower(*args).compile().as_text()
        ops = re.findall(r'custom_call_target="([^"]*)"|(triangular-solve)\(', hlo)
        return [a + b for a, b in ops if re.search("lapack|solver|potrf|trsm|triangular", a + b)]

    theta = jnp.array([0.83, 11.4])
    assert solves(loss, theta) == [] and solves(jax.grad(loss), theta) == []
    hyper = {k: jnp.asarray(v) for k, v in emulator.hyperparameters.items()}
    assert solves(loss, theta, hyper) != []


def test_solve_by_inverse_factor_matches_triangular_solve(emulator):
    # the solve predict uses at the fitted hyperparameters, against LAPACK's trsm
    from probde.discrepancy.emulator import _solve_lower_by_inverse

    L, L_inv = emulator._chol[1], emulator._chol_inv[1]
    B = jnp.asarray(np.random.default_rng(5).standard_normal((L.shape[0], 4)))
    expected = jax.scipy.linalg.solve_triangular(L, B, lower=True)
    got = _solve_lower_by_inverse(L, L_inv, B)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9 * np.max(np.abs(expected)))


# ------------------------------------------------------------------ emulator: calibration
COVERAGE_SIMULATORS = 200


@pytest.mark.slow  # 200 emulator fits (about 0.1-0.2 s each)
def test_held_out_coverage_near_nominal():
    """Central predictive intervals cover held-out simulator outputs at their nominal rate.

    Each simulator is a draw from a Matern-5/2 GP in (t, a) on the unit square (lengthscales
    0.3 and 0.4): the emulator's own model, so its intervals should be calibrated. An
    emulator fitted to 12 runs x 6 times of one simulator predicts one held-out point of that
    simulator; over 200 independent simulators the held-out points are independent, and the
    number covered at level p is Binomial(200, p): |coverage - p| < Z_MAX sqrt(p (1 - p) / 200)
    (0.085 at p = 0.9). Points of a single emulator would not do: they share its
    hyperparameter estimate and their neighbours' errors (200 points of one emulator, six
    simulators: coverage of the 95 % interval 0.80 to 1.00).
    """
    rng = np.random.default_rng(0)
    times = np.linspace(0.0, 1.0, 6)
    design = latin_hypercube({"a": (0.0, 1.0)}, 12, seed=0)
    x_runs = np.stack([np.tile(times, 12), np.repeat(design["a"], 6)], axis=1)
    z = []
    for _ in range(COVERAGE_SIMULATORS):
        x_new = rng.uniform(0.0, 1.0, (1, 2))
        x = np.concatenate([x_runs, x_new])
        K = matern52(x, x, np.array([0.3, 0.4]), 1.0) + 1e-10 * np.eye(x.shape[0])
        f = np.linalg.cholesky(K) @ rng.standard_normal(x.shape[0])
        emu = GPEmulator.from_runs(times, design, f[:-1].reshape(12, 6, 1),
                                   bounds={"a": (0.0, 1.0)}, held_out=0.0)
        mean, cov = emu.predict(x_new[:, 0], {"a": x_new[0, 1]}, include_noise=True)
        z.append((f[-1] - float(mean[0, 0])) / math.sqrt(float(cov[0, 0, 0])))
    z = np.array(z)
    n = z.size
    for level in (0.5, 0.9, 0.95):
        coverage = np.mean(np.abs(z) <= NormalDist().inv_cdf(0.5 + level / 2))
        band = Z_MAX * math.sqrt(level * (1 - level) / n)
        assert abs(coverage - level) < band, (level, coverage, band)
    # the standardised errors are N(0, 1): mean 0 (sd 1 / sqrt(n)), mean square 1 (sd sqrt(2 / n))
    assert abs(z.mean()) < Z_MAX / math.sqrt(n), z.mean()
    assert abs(np.mean(z**2) - 1.0) < Z_MAX * math.sqrt(2.0 / n), np.mean(z**2)


def test_held_out_errors_are_small_and_unbiased(emulator):
    # The 6 held-out runs of the logistic emulator. Points of one run are strongly
    # correlated, so the mean standardised error is about as precise as a mean over runs.
    d = emulator.diagnostics
    m = d.held_out_runs.shape[0]
    assert np.all(np.abs(d.mean_standardised_error) < Z_MAX / math.sqrt(m))
    # and small: the emulator explains > 99.75% of each output's variance
    assert np.all(d.rmse < 0.05 * emulator.output_scale)


def test_noise_can_be_fitted(noisy_emulator):
    # The wave's numerical noise has sd 0.01; the nugget is in standardised variance units.
    # With 100 points the MAP nugget is identified to within a factor of about 1.25 (it
    # converges to 0.01 as runs are added: 0.0093 with 20 runs, 0.0100 with 40); with
    # 6 times per run it is not identified (the GP absorbs the noise), hence 10 times.
    noise_sd = np.sqrt(noisy_emulator.noise) * noisy_emulator.output_scale
    assert set(noisy_emulator.hyperparameter_priors()) == {"lengthscale", "variance", "noise"}
    assert 0.005 < noise_sd[0] < 0.02


def test_hyperparameter_priors_shapes(emulator):
    priors = emulator.hyperparameter_priors()
    assert set(priors) == {"lengthscale", "variance"}
    assert priors["lengthscale"].batch_shape == (2, 3)
    assert priors["variance"].batch_shape == (2,)
    assert emulator.hyperparameters["lengthscale"].shape == (2, 3)


def test_summary_and_plot(emulator, noisy_emulator):
    text = emulator.summary()
    assert repr(emulator) == text
    assert "30 runs x 11 times" in text and "growth" in text and "cov95" in text
    assert "no diagnostics" in noisy_emulator.summary()
    assert isinstance(emulator.diagnostics, EmulatorDiagnostics)
    assert "6 held-out runs" in repr(emulator.diagnostics)
    fig = emulator.plot_diagnostics()
    assert len(fig.axes) == 3
    matplotlib.pyplot.close(fig)
    with pytest.raises(ValueError, match="no diagnostics: it was fitted with held_out=0"):
        noisy_emulator.plot_diagnostics()


def test_properties(emulator):
    assert emulator.parameter_names == ("r", "K")
    assert emulator.observables == ("x", "growth")
    assert emulator.bounds == BOUNDS
    np.testing.assert_array_equal(emulator.times, TIMES)
    assert emulator.outputs.shape == (30, 11, 2) and emulator.design.shape == (30, 2)
    assert isinstance(emulator.kernel, gpjax.kernels.Matern52)


# -------------------------------------------------------------------------- bad input
LINEAR_TIMES = np.linspace(0.0, 1.0, 4)


def linear(theta, times=LINEAR_TIMES):
    return theta["a"] * times


LINEAR_DESIGN = {"a": np.array([0.1, 0.5, 0.9, 1.3])}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            dict(design={"b": LINEAR_DESIGN["a"]}, parameter_names=("a",)),
            ValueError,
            r"design names \('b',\) do not match parameter_names \('a',\)",
        ),
        (
            dict(design=np.ones((4, 2)) * np.arange(4)[:, None], parameter_names=("a",)),
            ValueError,
            r"design has 2 columns \(shape \(4, 2\)\) but parameter_names has 1",
        ),
        (
            dict(design=np.arange(8.0).reshape(4, 2)),
            ValueError,
            "an array design of shape \\(4, 2\\) needs parameter_names=",
        ),
        (
            dict(design={"a": LINEAR_DESIGN["a"][:2]}),
            ValueError,
            "the emulator needs at least 3 simulator runs \\(design points\\); got 2",
        ),
        (
            dict(design={"a": np.array([0.1, 0.5, 0.5, 0.9])}),
            ValueError,
            "design has repeated points",
        ),
        (
            dict(design={"a": np.array([0.1, np.nan, 0.5, 0.9])}),
            ValueError,
            "design must be finite; got nan for 'a' at run 1",
        ),
        (
            dict(design={"a": LINEAR_DESIGN["a"], "b": np.ones(3)}),
            ValueError,
            "design arrays must all have the same length n; got lengths a: 4, b: 3",
        ),
        (dict(design=[0.1, 0.2, 0.3]), TypeError, "design must be a dict of parameter name"),
        (
            dict(simulator=lambda th: np.ones(5)),
            ValueError,
            r"simulator run 0 \(theta=\{'a': 0.1\}\) returned outputs of shape \(5,\); expected "
            r"\(T, O\) or \(T,\) with T = 4 times",
        ),
        (
            dict(simulator=lambda th: np.ones((4, 1 + int(th["a"] > 0.3)))),
            ValueError,
            r"simulator run 1 \(theta=\{'a': 0.5\}\) returned 2 observables, but run 0 returned 1",
        ),
        (
            dict(simulator=lambda th: np.where(th["a"] < 0.3, np.nan, 1.0) * np.ones(4)),
            ValueError,
            r"simulator run 0 \(theta=\{'a': 0.1\}\) returned a non-finite output nan at time 0.0",
        ),
        (
            dict(simulator=lambda th: "out"),
            TypeError,
            "simulator run 0 .* expected an array of numbers",
        ),
        (dict(simulator="sim"), TypeError, "simulator must be a function theta -> outputs"),
        (dict(kernel=lambda x, y: 1.0), TypeError, "kernel must be a gpjax kernel such as"),
        (
            dict(kernel=gpjax.kernels.Linear()),
            TypeError,
            "kernel must be a stationary gpjax kernel with a lengthscale and a variance",
        ),
        (
            dict(kernel=gpjax.kernels.RBF(active_dims=[1])),
            ValueError,
            "kernel must act on all 2 inputs",
        ),
        (
            dict(times=np.array([0.0, 1.0, 0.5, 2.0])),
            ValueError,
            "times must be strictly increasing; got 0.5 after 1.0 at index 2",
        ),
        (dict(noise="auto"), ValueError, "noise must be a number >= 0 or \"fit\"; got 'auto'"),
        (dict(noise=-1.0), ValueError, "noise must be a finite number >= 0"),
        (
            dict(held_out=0.5),
            ValueError,
            "held_out=0.5 holds out 2 of 4 runs, leaving 2 to fit; the emulator needs at least 3",
        ),
        (dict(held_out=1.0), ValueError, r"held_out must be a fraction in \[0, 1\); got 1.0"),
        (
            dict(bounds={"a": (0.2, 2.0)}),
            ValueError,
            r"design point 0 has a=0.1, outside bounds\['a'\] = \(0.2, 2.0\)",
        ),
        (
            dict(bounds={"b": (0.0, 2.0)}),
            ValueError,
            r"bounds names \('b',\) do not match the design's parameters \('a',\)",
        ),
        (
            dict(observables=("x", "y")),
            ValueError,
            "observables names 2 outputs .* but the simulator returns 1 per time",
        ),
    ],
)
def test_emulator_bad_input(kwargs, error, match):
    args = dict(
        simulator=linear, times=np.linspace(0.0, 1.0, 4), design=LINEAR_DESIGN, held_out=0.0
    )
    args.update(kwargs)
    with pytest.raises(error, match=match):
        GPEmulator.fit(args.pop("simulator"), args.pop("times"), args.pop("design"), **args)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda e: e.predict(TIMES, {"r": 1.0}),
            ValueError,
            r"theta is missing the emulator's parameters \['K'\]",
        ),
        (
            lambda e: e.predict(TIMES, jnp.ones(3)),
            ValueError,
            r"theta must be a dict of \('r', 'K'\) or an array of shape \(2,\); got shape \(3,\)",
        ),
        (
            lambda e: e.predict(TIMES, {"r": jnp.ones(2), "K": 1.0}),
            ValueError,
            r"theta\['r'\] must be a scalar; got shape \(2,\)",
        ),
        (
            lambda e: e.predict(TIMES[:, None], {"r": 1.0, "K": 10.0}),
            ValueError,
            r"times must be a 1-D array \(T,\); got shape \(11, 1\)",
        ),
        (
            lambda e: e.predict(TIMES, {"r": 1.0, "K": 10.0}, {"lengthscale": 1.0}),
            ValueError,
            r"hyper must have exactly the keys \['lengthscale', 'variance'\]",
        ),
        (
            lambda e: e.predict(
                TIMES, {"r": 1.0, "K": 10.0}, {"lengthscale": jnp.ones((2, 2)), "variance": 1.0}
            ),
            ValueError,
            r"hyper\['lengthscale'\] must have shape \(2, 3\) \(or broadcast to it\)",
        ),
        (
            lambda e: e.training_log_marginal([1.0]),
            TypeError,
            "hyper must be a dict of hyperparameters",
        ),
    ],
)
def test_predict_bad_input(emulator, call, error, match):
    with pytest.raises(error, match=match):
        call(emulator)


def test_from_runs_bad_outputs():
    times = np.linspace(0.0, 1.0, 4)
    with pytest.raises(ValueError, match=r"outputs must have shape \(n, T, O\) = \(4, 4, O\)"):
        GPEmulator.from_runs(times, LINEAR_DESIGN, np.ones((4, 3, 1)))
    outputs = np.ones((4, 4, 1))
    outputs[2, 1, 0] = np.inf
    with pytest.raises(ValueError, match="outputs must be finite; run 2 has inf at time"):
        GPEmulator.from_runs(times, LINEAR_DESIGN, outputs)
