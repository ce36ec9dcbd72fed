"""Markovian (Kalman) GP discrepancy algebra against the dense O(N^3) algebra.

Layers (TESTING.md): two implementations agree (log marginal, leave-one-out terms, smoother
moments), gradients agree, Monte Carlo agreement of posterior draws with the exact
conditional, float32 inputs under x64, bad input, and one long series (float32 itself:
tests/test_float32.py).

The Markov algebra is exact (no approximation for the kernels it accepts), so the
deterministic comparisons use 1e-8 relative, tighter than the float64 default of 5e-7; the
dense side runs with `jitter=0.0`, since its default jitter (1e-8 of the prior variance)
changes the result at about that level. Periodic kernels are compared as
`gpjax.state_space.TruncatedPeriodic`, the covariance that gpjax's SDE represents exactly
(the first K harmonics of gpjax's `Periodic`; `test_truncated_periodic_is_periodic_series`).
"""

import functools

import gpjax as gpx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gpjax.state_space import TruncatedPeriodic

from probde.discrepancy import dense, markov
from probde.inference import parallel_kalman

EXACT = 1e-8  # relative, float64: both sides are exact algebra
GRAD_RTOL = 1e-6

# A short irregular series that starts away from 0, with a repeated time and missing points.
TIMES = np.array([2.3, 2.5, 3.1, 3.1, 3.4, 4.4, 4.6, 5.9, 6.0, 7.2])
N = TIMES.size
_rng = np.random.default_rng(7)
RESIDUALS = _rng.normal(0.0, 1.0, N)
MASK = np.ones(N, dtype=bool)
MASK[[2, 6]] = False
NOISE_VAR = 0.2
NOISE_VEC = _rng.uniform(0.1, 0.4, N)
QUERY = np.array([6.5, 1.0, 3.1, 4.5, 8.0])  # unsorted, one before, one after, one on a datum

KERNELS = {
    "matern12": lambda: gpx.kernels.Matern12(lengthscale=0.8, variance=1.3),
    "matern32": lambda: gpx.kernels.Matern32(lengthscale=0.8, variance=1.3),
    "matern52": lambda: gpx.kernels.Matern52(lengthscale=0.8, variance=1.3),
    "periodic": lambda: TruncatedPeriodic(
        lengthscale=0.9, variance=1.1, period=1.7, truncation_order=4
    ),
    "quasi_periodic": lambda: (
        TruncatedPeriodic(lengthscale=0.9, variance=1.1, period=1.7, truncation_order=3)
        * gpx.kernels.Matern32(lengthscale=2.0, variance=1.0)
    ),
    "sum": lambda: (
        gpx.kernels.Matern32(lengthscale=0.8, variance=1.0)
        + gpx.kernels.Matern12(lengthscale=3.0, variance=0.5)
    ),
}


def _dense_results(kernel, noise_var):
    t, q = jnp.asarray(TIMES), jnp.asarray(QUERY)
    r, mask = jnp.asarray(RESIDUALS), jnp.asarray(MASK)
    K = dense.gram(kernel, t)
    mean, cov = dense.conditional(
        K, dense.gram(kernel, q, t), dense.gram(kernel, q), r, noise_var, mask, jitter=0.0
    )
    return {
        "log_marginal": dense.log_marginal(K, r, noise_var, mask, jitter=0.0),
        "loo": dense.loo_pointwise(K, r, noise_var, mask, jitter=0.0),
        "mean": mean,
        "var": jnp.diagonal(cov),
    }


def _markov_results(kernel, noise_var):
    t, q = jnp.asarray(TIMES), jnp.asarray(QUERY)
    r, mask = jnp.asarray(RESIDUALS), jnp.asarray(MASK)
    mean, var = markov.conditional_marginals(kernel, t, r, noise_var, mask, q)
    return {
        "log_marginal": markov.log_marginal(kernel, t, r, noise_var, mask),
        "loo": markov.loo_pointwise(kernel, t, r, noise_var, mask),
        "mean": mean,
        "var": var,
    }


@functools.cache
def _results(name, noise):
    """Both implementations for one kernel and noise, each in one compiled program."""
    kernel = KERNELS[name]()
    noise_var = jnp.asarray(NOISE_VAR if noise == "scalar" else NOISE_VEC)
    return (
        jax.jit(_dense_results)(kernel, noise_var),
        jax.jit(_markov_results)(kernel, noise_var),
    )


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))


# gpjax's filter (scalar noise) for every kernel; our per-point-noise filter, which also
# drives the leave-one-out terms and the smoother everywhere, for two (compile time).
CASES = [(name, "scalar") for name in KERNELS] + [
    ("matern52", "per_point"),
    ("quasi_periodic", "per_point"),
]


@pytest.mark.parametrize(("name", "noise"), CASES)
def test_log_marginal_matches_dense(name, noise):
    want, got = _results(name, noise)
    assert _rel(got["log_marginal"], want["log_marginal"]) < EXACT


@pytest.mark.parametrize(("name", "noise"), CASES)
def test_loo_matches_dense(name, noise):
    want, got = _results(name, noise)
    assert np.all(np.asarray(got["loo"])[~MASK] == 0.0)
    np.testing.assert_allclose(got["loo"], want["loo"], rtol=EXACT, atol=0.0)


@pytest.mark.parametrize(("name", "noise"), CASES)
def test_smoother_moments_match_dense_conditional(name, noise):
    # Means pass through zero; compare on the scale of the prior standard deviation.
    want, got = _results(name, noise)
    scale = np.sqrt(np.max(np.asarray(want["var"])))
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=EXACT, atol=EXACT * scale)
    np.testing.assert_allclose(got["var"], want["var"], rtol=EXACT, atol=0.0)


def test_truncated_periodic_is_periodic_series():
    # What the periodic comparisons stand for: with enough harmonics, TruncatedPeriodic is
    # gpjax's Periodic with the same hyperparameters.
    t = jnp.linspace(0.0, 3.0, 7)
    exact = dense.gram(gpx.kernels.Periodic(lengthscale=0.9, variance=1.1, period=1.7), t)
    series = dense.gram(
        TruncatedPeriodic(lengthscale=0.9, variance=1.1, period=1.7, truncation_order=12), t
    )
    np.testing.assert_allclose(series, exact, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- gradients
@functools.cache
def _potential(log_marginal, gram):
    """Jitted value-and-grad in (lengthscale, variance), residuals, noise; one per pair."""

    def f(params, residuals, noise_var):
        lengthscale, variance = params
        kernel = gpx.kernels.Matern32(lengthscale=lengthscale, variance=variance)
        t, mask = jnp.asarray(TIMES), jnp.asarray(MASK)
        if gram:
            return log_marginal(dense.gram(kernel, t), residuals, noise_var, mask, jitter=0.0)
        return log_marginal(kernel, t, residuals, noise_var, mask)

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))


@pytest.mark.parametrize("noise", ["scalar", "per_point"])
def test_gradients_match_dense(noise):
    params = (jnp.asarray(0.8), jnp.asarray(1.3))
    noise_var = jnp.asarray(NOISE_VAR if noise == "scalar" else NOISE_VEC)
    r = jnp.asarray(RESIDUALS)
    v_d, g_d = _potential(dense.log_marginal, gram=True)(params, r, noise_var)
    v_m, g_m = _potential(markov.log_marginal, gram=False)(params, r, noise_var)
    assert _rel(v_m, v_d) < EXACT
    for got, want in zip(jax.tree.leaves(g_m), jax.tree.leaves(g_d), strict=True):
        # residual gradients at missing points are exactly 0 on both sides
        np.testing.assert_allclose(got, want, rtol=GRAD_RTOL, atol=0.0)
    # and central finite differences in the hyperparameters (same compiled function)
    f = _potential(markov.log_marginal, gram=False)
    h = 1e-5
    for i in range(2):
        up = tuple(p + h * (j == i) for j, p in enumerate(params))
        down = tuple(p - h * (j == i) for j, p in enumerate(params))
        fd = (f(up, r, noise_var)[0] - f(down, r, noise_var)[0]) / (2 * h)
        np.testing.assert_allclose(g_m[0][i], fd, rtol=GRAD_RTOL)


def test_vmap_over_hyperparameters():
    lengthscales = jnp.array([0.3, 0.8, 2.5])
    t, r, mask = jnp.asarray(TIMES), jnp.asarray(RESIDUALS), jnp.asarray(MASK)

    def one(lengthscale, log_marginal, gram):
        kernel = gpx.kernels.Matern32(lengthscale=lengthscale, variance=1.3)
        if gram:
            return log_marginal(dense.gram(kernel, t), r, NOISE_VAR, mask, jitter=0.0)
        return log_marginal(kernel, t, r, NOISE_VAR, mask)

    got = jax.jit(jax.vmap(lambda l: one(l, markov.log_marginal, False)))(lengthscales)
    want = jax.jit(jax.vmap(lambda l: one(l, dense.log_marginal, True)))(lengthscales)
    assert _rel(got, want) < EXACT


def test_float32_inputs_under_x64():
    # computed in the default dtype (here float64) whatever the inputs' dtype
    f32 = jnp.float32
    kernel = gpx.kernels.Matern12(lengthscale=jnp.asarray(0.8, f32), variance=f32(1.3))
    t, r = jnp.asarray(TIMES, f32), jnp.asarray(RESIDUALS, f32)
    value = jax.jit(lambda: markov.log_marginal(kernel, t, r, f32(NOISE_VAR)))()
    assert value.dtype == jnp.float64
    # the same float32-rounded numbers, in float64
    kernel64 = gpx.kernels.Matern12(lengthscale=float(f32(0.8)), variance=float(f32(1.3)))
    K = dense.gram(kernel64, jnp.asarray(t, float))
    want = dense.log_marginal(K, jnp.asarray(r, float), float(f32(NOISE_VAR)), jitter=0.0)
    assert _rel(value, want) < EXACT


def test_missing_points_may_hold_nan():
    # Missing data arrive as NaN; neither the value nor the gradient may see them.
    r = jnp.asarray(RESIDUALS).at[~jnp.asarray(MASK)].set(jnp.nan)
    value, grads = _potential(markov.log_marginal, gram=False)(
        (jnp.asarray(0.8), jnp.asarray(1.3)), r, jnp.asarray(NOISE_VAR)
    )
    want, _ = _results("matern32", "scalar")
    assert _rel(value, want["log_marginal"]) < EXACT
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


# ----------------------------------------------------------------------------- sampling
def test_posterior_draws_match_dense_conditional():
    """Mean and covariance of many joint draws against `dense.conditional`.

    Draws are independent and exactly Gaussian, so the Monte Carlo standard errors are
    closed-form: for S draws, MCSE(mean_j) = sqrt(C_jj / S) and, for the sample covariance,
    MCSE(C_jk) = sqrt((C_jj C_kk + C_jk^2) / S) (Wishart variance).
    """
    kernel = gpx.kernels.Matern32(lengthscale=0.8, variance=1.3)
    t, q = jnp.asarray(TIMES), jnp.asarray(QUERY)
    r, mask = jnp.asarray(RESIDUALS), jnp.asarray(MASK)
    num_draws = 4000
    keys = jax.random.split(jax.random.key(0), num_draws)

    @jax.jit
    def draws(keys):
        one = lambda k: markov.sample_posterior(k, kernel, t, r, NOISE_VAR, mask, q)  # noqa: E731
        at_t, at_q = jax.vmap(one)(keys)
        return jnp.concatenate([at_t, at_q], axis=1)

    x = np.asarray(draws(keys))
    both = jnp.concatenate([t, q])
    mean, cov = dense.conditional(
        dense.gram(kernel, t), dense.gram(kernel, both, t), dense.gram(kernel, both),
        r, NOISE_VAR, mask, jitter=0.0,
    )
    mean, cov = np.asarray(mean), np.asarray(cov)
    # Two data times coincide (3.1) and query 3.1 sits on them: those draws are one value.
    np.testing.assert_allclose(x[:, 2], x[:, 3], rtol=0, atol=1e-9)
    np.testing.assert_allclose(x[:, 2], x[:, N + 2], rtol=0, atol=1e-9)

    d = np.diagonal(cov)
    z_mean = (x.mean(axis=0) - mean) / np.sqrt(d / num_draws)
    mcse_cov = np.sqrt((np.outer(d, d) + cov**2) / num_draws)
    z_cov = (np.cov(x, rowvar=False) - cov) / mcse_cov
    assert np.max(np.abs(z_mean)) < 4.0, z_mean
    assert np.max(np.abs(z_cov)) < 4.0, z_cov


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kernel", "match"),
    [
        (gpx.kernels.RBF(), r"kernel must have a state-space form.*Matern32.*got RBF"),
        (gpx.kernels.Periodic(), r"got Periodic.*use gpjax\.state_space\.TruncatedPeriodic"),
        (
            gpx.kernels.Matern32() * gpx.kernels.Matern52(),
            r"got ProductKernel\(Matern32, Matern52\)",
        ),
        (gpx.kernels.Matern32(lengthscale=jnp.ones(2)), r"scalar lengthscale"),
    ],
)
def test_unsupported_kernel_is_rejected(kernel, match):
    with pytest.raises(ValueError, match=match):
        markov.check_markov_kernel(kernel)


def test_non_kernel_is_rejected():
    match = r"kernel must be a gpjax kernel.*got 'matern32' of type str"
    with pytest.raises(TypeError, match=match):
        markov.check_markov_kernel("matern32")


def test_supported_kernels_pass_the_check():
    for make in KERNELS.values():
        markov.check_markov_kernel(make())


# ----------------------------------------------------------------------------- long series
# (float32 runs of the Markov GP: tests/test_float32.py, in one fresh process with the rest)
def test_long_series():
    n = 100_000
    t = jnp.cumsum(jnp.asarray(np.random.default_rng(1).uniform(0.05, 0.15, n)))
    r = jnp.sin(t) + 0.1 * jnp.cos(7.0 * t)
    kernel = gpx.kernels.Matern32(lengthscale=1.0, variance=1.0)
    value = jax.jit(lambda t, r: markov.log_marginal(kernel, t, r, 0.01))(t, r)
    assert np.isfinite(float(value))
    # Stable over 1e5 steps: the sequential covariance-form filter and smoother behind
    # every function here agree with the parallel-in-time (associative-scan) filter and
    # smoother of `probde.inference.parallel_kalman`, an independent implementation, to
    # exact-algebra precision at the end of the series and at every smoothed variance.
    sde, dts = markov._sde(kernel), markov._time_steps(t)
    mask, rr, nv = markov._inputs(r, 0.01, None)

    @jax.jit
    def both(dts, rr):
        A, L_Q = markov._transitions(sde, dts, rr.dtype)
        Q = L_Q @ jnp.swapaxes(L_Q, 1, 2)
        m0, L0 = markov._initial_state(sde, rr.dtype)
        h = sde.observation_matrix
        mf, Pf, mp, Pp, ll = parallel_kalman.kalman_filter(
            (A, jnp.zeros(A.shape[:2], A.dtype), Q), h, jnp.zeros(1), jnp.full(1, 0.01),
            m0, L0 @ L0.T, rr[:, None], mask[:, None])
        _, Ps = parallel_kalman.rts_smoother(A, mf, Pf, mp, Pp)
        return jnp.sum(ll), jnp.einsum("i,nij,j->n", h[0], Ps, h[0]), markov._smoothed(
            sde, dts, rr, mask, nv)[1]

    parallel, parallel_var, smoothed_var = both(dts, rr)
    assert _rel(value, parallel) < EXACT, (float(value), float(parallel))
    assert _rel(smoothed_var, parallel_var) < EXACT
