"""SDE models: exact discretisation, Gaussian filters and smoother, LOO terms, gradients,
the particle filter, sample paths, inference and bad input.

Layers (TESTING.md):

1. Closed form: the Van Loan discretisation against the OU transition and against
   `expm` / the stationary covariance for the Matern-3/2 SDE.
2. Two implementations agree: EKF and UKF (moment ODEs and exact discretisation) against
   dense Gaussian algebra written here in numpy/scipy: the marginal likelihood of the
   observations (kernel covariance + noise), filtered and smoothed moments (conditioning
   the joint Gaussian of all states and observations), leave-one-out predictive densities.
3. Gradients of `probde.log_likelihood` against central differences and against the
   gradient of the dense likelihood.
4. Monte Carlo: particle-filter unbiasedness, sample-path moments (4 standard errors).
5. Calibration: coverage of NUTS intervals over datasets simulated from the prior (slow;
   the datasets are independent blocks of one model, so one vmapped run samples them all).
6. Bad input: each validation error is triggered and its message matched. Solver failures
   give -inf and are counted during inference (slow), never raised.

Tolerances. Exact algebra (declared linear SDEs, matrix exponentials): `EXACT` relative.
Moment ODEs solved with rtol = atol = 1e-10: `SOLVER` = 1e-7 relative (three orders above
the solver's tolerance, for the error accumulated over a few intervals and the update).
"""

import functools
import math
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.linalg
from scipy import stats

import probde
from conftest import Z_MAX
from probde.dynamics.sde import FilterInputs
from probde.inference.filters import _exact_linear

EXACT = 1e-8  # relative: both sides exact float64 algebra (as in test_markov.py)
DISCRETE = 1e-10  # relative: one transition (matrix exponentials of 2x2 / 4x4 matrices)
SOLVER = 1e-7  # relative: moment ODEs solved at rtol = atol = 1e-10
TIGHT = probde.Solver(rtol=1e-10, atol=1e-10, max_steps=100_000)

FILTERS = {"EKF": probde.EKF(), "UKF": probde.UKF()}


# ============================================================================ the models
# Ornstein-Uhlenbeck: dx = k (m - x) dt + s dW; stationary N(m, s^2 / (2k)).
def ou_drift(t, x, th):
    return th["k"] * (th["m"] - x)


def ou_diffusion(t, x, th):
    return jnp.stack([th["s"]])  # (1,): diagonal noise


OU = {lin: probde.SDE(ou_drift, ou_diffusion, state_names=("x",), linear=lin)
      for lin in (False, True)}
OU_THETA = {"k": 0.8, "m": 0.6, "s": 0.7}
OU_SIGMA = 0.3


def ou_var(th):
    return th["s"] ** 2 / (2 * th["k"])


# Matern-3/2 GP as an SDE: dx1 = x2 dt, dx2 = (-lam^2 x1 - 2 lam x2) dt + q dW,
# q^2 = 4 lam^3 sf^2; x1 has covariance sf^2 (1 + lam r) exp(-lam r).
def matern_drift(t, x, th):
    lam = th["lam"]
    return jnp.stack([x[1], -(lam**2) * x[0] - 2.0 * lam * x[1]])


def matern_diffusion(t, x, th):
    q = 2.0 * th["sf"] * th["lam"] ** 1.5
    return jnp.stack([jnp.zeros_like(q), q])[:, None]  # (2, 1): one Wiener process


MATERN = {lin: probde.SDE(matern_drift, matern_diffusion, state_names=("x1", "x2"),
                          linear=lin)
          for lin in (False, True)}
MATERN_THETA = {"lam": 1.3, "sf": 0.9}
MATERN_SIGMA = 0.25


def matern_A(th):
    lam = th["lam"]
    return np.array([[0.0, 1.0], [-(lam**2), -2.0 * lam]])


def matern_pinf(th):
    return np.diag([th["sf"] ** 2, th["lam"] ** 2 * th["sf"] ** 2])


# ================================================================ dense Gaussian algebra
class LinearGaussian:
    """A linear time-invariant SDE observed at `times` through `H` with noise variance
    `r`: the joint Gaussian of all states and observations, written out densely.

    `transition(dt)` is `expm(A dt)`, `x_inf, p_inf` the stationary mean and covariance;
    the state at `t0` is N(m0, P0). Then E x(t) = x_inf + F(t - t0) (m0 - x_inf),
    Var x(t) = F P0 F' + p_inf - F p_inf F', and Cov(x(t_i), x(t_j)) = F(t_i - t_j)
    Var x(t_j) for t_i >= t_j.
    """

    def __init__(self, transition, x_inf, p_inf, t0, m0, P0, times, H, r, mask):
        self.T, self.S = len(times), len(x_inf)
        T, S = self.T, self.S
        mean = np.zeros((T, S))
        var = np.zeros((T, S, S))
        for i, t in enumerate(times):
            F = transition(t - t0)
            mean[i] = x_inf + F @ (m0 - x_inf)
            var[i] = F @ P0 @ F.T + p_inf - F @ p_inf @ F.T
        C = np.zeros((T * S, T * S))
        for i in range(T):
            for j in range(i + 1):
                block = transition(times[i] - times[j]) @ var[j]
                C[i * S:(i + 1) * S, j * S:(j + 1) * S] = block
                C[j * S:(j + 1) * S, i * S:(i + 1) * S] = block.T
        self.mean_x, self.cov_x = mean.reshape(-1), C
        O = H.shape[0]
        self.O = O
        Hb = np.kron(np.eye(T), H)  # (T O, T S)
        self.mean_y = Hb @ self.mean_x
        self.cov_xy = C @ Hb.T
        self.cov_y = Hb @ C @ Hb.T + np.diag(np.tile(r, T))
        self.mask = np.asarray(mask).reshape(-1)
        self.obs_time = np.repeat(np.arange(T), O)

    def loglik(self, y):
        o = self.mask
        return stats.multivariate_normal(self.mean_y[o], self.cov_y[np.ix_(o, o)]).logpdf(
            np.asarray(y).reshape(-1)[o])

    def condition(self, y, k_last):
        """Mean `(T, S)` and covariance `(T, S, S)` of every state given the observations
        at times `<= k_last`."""
        o = self.mask & (self.obs_time <= k_last)
        yv = np.asarray(y).reshape(-1)[o]
        Kyy = self.cov_y[np.ix_(o, o)]
        Kxy = self.cov_xy[:, o]
        gain = np.linalg.solve(Kyy, Kxy.T).T
        m = self.mean_x + gain @ (yv - self.mean_y[o])
        P = self.cov_x - gain @ Kxy.T
        S = self.S
        return m.reshape(self.T, S), np.stack(
            [P[i * S:(i + 1) * S, i * S:(i + 1) * S] for i in range(self.T)])

    def filtered(self, y):
        out = [self.condition(y, k) for k in range(self.T)]
        return np.stack([m[k] for k, (m, _) in enumerate(out)]), np.stack(
            [P[k] for k, (_, P) in enumerate(out)])

    def smoothed(self, y):
        return self.condition(y, self.T)

    def loo(self, y):
        """`(T, O)` log p(y_i | y_-i) for observed values (0 elsewhere)."""
        yv = np.asarray(y).reshape(-1)
        out = np.zeros(self.T * self.O)
        for i in np.flatnonzero(self.mask):
            rest = self.mask.copy()
            rest[i] = False
            g = np.linalg.solve(self.cov_y[np.ix_(rest, rest)], self.cov_y[rest, i])
            mu = self.mean_y[i] + g @ (yv[rest] - self.mean_y[rest])
            v = self.cov_y[i, i] - g @ self.cov_y[rest, i]
            out[i] = stats.norm.logpdf(yv[i], mu, np.sqrt(v))
        return out.reshape(self.T, self.O)


def ou_dense(th, sigma, times, mask, t0, m0, P0):
    return LinearGaussian(lambda dt: np.array([[np.exp(-th["k"] * dt)]]), np.array([th["m"]]),
                          np.array([[ou_var(th)]]), t0, np.atleast_1d(m0), np.atleast_2d(P0),
                          times, np.eye(1), np.array([sigma**2]), mask)


def matern_dense(th, sigma, times, mask, t0, m0, P0):
    A = matern_A(th)
    return LinearGaussian(lambda dt: scipy.linalg.expm(A * dt), np.zeros(2), matern_pinf(th),
                          t0, m0, P0, times, np.array([[1.0, 0.0]]), np.array([sigma**2]),
                          mask)


def ou_kernel_loglik(th, sigma, times, y):
    """Stationary OU observed with noise: the kernel s^2/(2k) exp(-k |t - t'|) + noise."""
    t = np.asarray(times)
    K = ou_var(th) * np.exp(-th["k"] * np.abs(t[:, None] - t[None])) + sigma**2 * np.eye(t.size)
    return stats.multivariate_normal(np.full(t.size, th["m"]), K).logpdf(y)


def matern_kernel_loglik(th, sigma, times, y):
    t = np.asarray(times)
    d = th["lam"] * np.abs(t[:, None] - t[None])
    K = th["sf"] ** 2 * (1 + d) * np.exp(-d) + sigma**2 * np.eye(t.size)
    return stats.multivariate_normal(np.zeros(t.size), K).logpdf(y)


# ================================================================== data of the tests
# Irregular times (gaps from 0.05 to 1.2), one missing value.
OU_TIMES = np.array([0.0, 0.3, 1.1, 1.5, 2.7, 3.0, 4.2, 4.25])
OU_VALUES = np.array([0.52, 0.95, 0.31, np.nan, 1.18, 0.84, 0.12, 0.27])
MATERN_TIMES = np.array([0.0, 0.2, 0.9, 1.0, 1.6, 2.8, 3.1, 4.0, 4.6])
MATERN_VALUES = np.array([0.41, 0.65, -0.32, -0.48, np.nan, 0.9, 1.22, -0.15, 0.05])


def _stationary_ou(th):
    return dist.Normal(th["m"], th["s"] / jnp.sqrt(2.0 * th["k"])).expand([1])


def _stationary_matern(th):
    var = jnp.stack([th["sf"] ** 2, th["lam"] ** 2 * th["sf"] ** 2])
    return dist.MultivariateNormal(jnp.zeros(2), jnp.diag(var))


def ou_model(likelihood, linear, solver=TIGHT, **kw):
    return probde.Model(
        OU[linear],
        {"k": dist.LogNormal(0.0, 0.5), "m": dist.Normal(0.0, 1.0),
         "s": dist.LogNormal(-0.5, 0.5)},
        initial_state=_stationary_ou,
        observation=probde.noise.Normal(sigma=dist.HalfNormal(1.0)),
        likelihood=likelihood, solver=solver, **kw)


def matern_model(likelihood, linear, solver=TIGHT):
    return probde.Model(
        MATERN[linear], {"lam": dist.LogNormal(0.0, 0.5), "sf": dist.LogNormal(0.0, 0.5)},
        initial_state=_stationary_matern, observation=probde.noise.Normal(sigma=MATERN_SIGMA),
        observe=("x1",), likelihood=likelihood, solver=solver)


OU_DATA = probde.TimeSeries(OU_TIMES, OU_VALUES, observables=("x",))
MATERN_DATA = probde.TimeSeries(MATERN_TIMES, MATERN_VALUES, observables=("x1",))
OU_PARAMS = {**OU_THETA, "sigma": OU_SIGMA}


@functools.cache
def model_loglik_fn(name, filt, linear):
    """`params -> probde.log_likelihood(model, data, params)` for one combination."""
    if name == "ou":
        model, data = ou_model(FILTERS[filt], linear), OU_DATA
    else:
        model, data = matern_model(FILTERS[filt], linear), MATERN_DATA
    return lambda p: probde.log_likelihood(model, data, p)


@functools.cache
def model_loglik(name, filt, linear):
    """The jit-compiled log-likelihood, compiled once per combination and shared by the
    likelihood, gradient and finite-difference tests."""
    return jax.jit(model_loglik_fn(name, filt, linear))


# ========================================================== exact discretisation
@pytest.mark.parametrize("dt", [1e-3, 0.37, 2.0, 9.0])
def test_exact_discretisation_of_ou_is_the_closed_form(dt):
    th = {k: jnp.asarray(v) for k, v in OU_THETA.items()}
    m0, P0 = jnp.array([1.7]), jnp.array([[0.05]])
    m, P, F = _exact_linear(OU[True], th, m0, P0, 0.4, 0.4 + dt)
    k, mu, v = OU_THETA["k"], OU_THETA["m"], ou_var(OU_THETA)
    e = np.exp(-k * dt)
    np.testing.assert_allclose(F, [[e]], rtol=DISCRETE)
    np.testing.assert_allclose(m, [mu + (1.7 - mu) * e], rtol=DISCRETE)
    np.testing.assert_allclose(P, [[0.05 * e**2 + v * (1 - e**2)]], rtol=DISCRETE)


@pytest.mark.parametrize("dt", [1e-3, 0.37, 2.0, 9.0])
def test_exact_discretisation_of_matern32_is_expm_and_stationary_covariance(dt):
    th = {k: jnp.asarray(v) for k, v in MATERN_THETA.items()}
    m0 = jnp.array([0.3, -1.1])
    P0 = jnp.array([[0.4, 0.1], [0.1, 0.9]])
    m, P, F = _exact_linear(MATERN[True], th, m0, P0, 1.3, 1.3 + dt)
    F_ref = scipy.linalg.expm(matern_A(MATERN_THETA) * dt)
    pinf = matern_pinf(MATERN_THETA)
    Q_ref = pinf - F_ref @ pinf @ F_ref.T
    # Entries of order `scale` are compared relatively; the reference's own rounding
    # (pinf - F pinf F' cancels for small dt) is eps * scale in absolute terms.
    scale = np.abs(pinf).max()
    np.testing.assert_allclose(F, F_ref, rtol=DISCRETE, atol=DISCRETE * np.abs(F_ref).max())
    np.testing.assert_allclose(m, F_ref @ np.asarray(m0), rtol=DISCRETE, atol=1e-15)
    np.testing.assert_allclose(P, F_ref @ np.asarray(P0) @ F_ref.T + Q_ref, rtol=DISCRETE,
                               atol=DISCRETE * scale)
    # The process noise alone (P0 = 0) is Q itself, symmetric and positive semi-definite.
    _, Q, _ = _exact_linear(MATERN[True], th, m0, jnp.zeros((2, 2)), 1.3, 1.3 + dt)
    np.testing.assert_allclose(Q, Q_ref, rtol=DISCRETE, atol=DISCRETE * scale)
    np.testing.assert_array_equal(Q, np.asarray(Q).T)
    assert np.linalg.eigvalsh(np.asarray(Q)).min() > -1e-15 * scale


def _check_ou_transition(k, m, s, dt, what):
    th = {"k": jnp.asarray(k), "m": jnp.asarray(m), "s": jnp.asarray(s)}
    x0, p0 = 0.95 * m + 1.0, 0.01 * (s**2 / (2 * k))
    mean, P, F = _exact_linear(OU[True], th, jnp.array([x0]), jnp.array([[p0]]), 0.0, dt)
    e = np.exp(-k * dt)
    v = s**2 / (2 * k)
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(P)), (
        f"_exact_linear is not finite for k={k}, m={m}, s={s}, dt={dt} ({what}): mean {mean}, "
        f"cov {P}")
    np.testing.assert_allclose(F, [[e]], rtol=DISCRETE)
    np.testing.assert_allclose(mean, [m + (x0 - m) * e], rtol=DISCRETE)
    np.testing.assert_allclose(P, [[p0 * e**2 + v * (1 - e**2)]], rtol=DISCRETE)


@pytest.mark.parametrize(("k", "m", "s", "dt"), [
    (0.8, 2.0e6, 1.0e3, 0.7),  # a count-sized level and noise: b dt ~ 1e6, s^2 dt ~ 1e6
    (2.0e-6, 0.5, 1.0e3, 1.2),  # slow reversion, large diffusion: s^2 dt ~ 1e6
], ids=["large_level", "large_diffusion"])
def test_exact_discretisation_does_not_depend_on_units(k, m, s, dt):
    # The same process in other units: the matrix exponentials must not see the size of
    # b or L L' (JAX's expm returns NaN beyond 16 squarings, a norm of about 3.5e5).
    _check_ou_transition(k, m, s, dt, "large b or L L'")


def test_exact_discretisation_of_fast_reversion_is_the_stationary_law():
    # k dt = 2000: the transition forgets x0 and P is the stationary variance. Van Loan's
    # block matrix [[-A, L L'], [0, A']] dt holds expm(-A dt) = exp(k dt), which overflows
    # for k dt above about 709 (inf * 0 = NaN in Q); the result itself is well defined.
    _check_ou_transition(2.0e3, 0.5, 30.0, 1.0, "fast mean reversion, k dt = 2000")


# Two OU processes in one state (A diagonal): the matrix route (scaling, Taylor
# polynomials, doubling), where one state takes the closed form. Each component must be
# its own OU transition, in the regimes above.
def _two_ou_drift(t, x, th):
    return th["k"] * (th["m"] - x)


TWO_OU = probde.SDE(_two_ou_drift, lambda t, x, th: th["s"], state_names=("x1", "x2"),
                    linear=True)


@pytest.mark.parametrize(("k", "m", "s", "dt"), [
    ((0.8, 0.3), (0.6, -1.0), (0.7, 0.2), 0.37),
    ((0.8, 1.5), (0.6, 0.1), (0.7, 1.1), 9.0),
    ((0.8, 0.8), (2.0e6, 0.5), (1.0e3, 1.0e3), 0.7),  # large b dt and s^2 dt
    ((2.0e3, 0.5), (0.5, 0.2), (30.0, 0.3), 1.0),  # k dt = 2000: expm(-A dt) overflows
    ((1e-9, 0.4), (0.5, 0.2), (0.3, 0.3), 1e-3),
], ids=["moderate", "long", "large_units", "fast_reversion", "tiny"])
def test_matrix_route_is_the_closed_form_of_each_component(k, m, s, dt):
    th = {"k": jnp.asarray(k), "m": jnp.asarray(m), "s": jnp.asarray(s)}
    x0 = jnp.array([0.95 * m[0] + 1.0, 0.95 * m[1] - 0.5])
    P0 = jnp.diag(jnp.array([0.05, 0.02]))
    mean, P, F = _exact_linear(TWO_OU, th, x0, P0, 0.0, dt)
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(P))
    for i in range(2):
        e = np.exp(-k[i] * dt)
        v = s[i] ** 2 * -np.expm1(-2 * k[i] * dt) / (2 * k[i])  # Q, no cancellation
        np.testing.assert_allclose(F[i, i], e, rtol=DISCRETE)
        np.testing.assert_allclose(mean[i], m[i] + (float(x0[i]) - m[i]) * e, rtol=DISCRETE)
        np.testing.assert_allclose(P[i, i], float(P0[i, i]) * e**2 + v, rtol=DISCRETE)
    np.testing.assert_allclose([F[0, 1], F[1, 0], P[0, 1]], 0.0, atol=1e-300)


def _van_loan(A, b, QC, dt):
    """One interval's `(F, offset, Q)` from `jax.scipy.linalg.expm` (Van Loan 1978)."""
    S = A.shape[0]
    G = jax.scipy.linalg.expm(jnp.block([[-A, QC], [jnp.zeros_like(A), A.T]]) * dt)
    F = G[S:, S:].T
    E = jax.scipy.linalg.expm(jnp.block([[A, b[:, None]], [jnp.zeros((1, S + 1))]]) * dt)
    return F, E[:S, S], F @ G[:S, S:]


def test_matrix_route_and_its_derivatives_are_van_loans():
    # All intervals at once (moments.linear_transitions, custom derivative) against one
    # `expm` per interval, differentiated by JAX: values, derivatives in a parameter (both
    # modes) and in the intervals' lengths.
    from probde.inference import moments

    def drift(t, x, th):
        return jnp.stack([x[1], -th["lam"] ** 2 * x[0] - 2.0 * th["lam"] * x[1] + 0.3])

    sde = probde.SDE(drift, lambda t, x, th: jnp.stack([0.1 * th["lam"], 0.8]),
                     state_names=("x1", "x2"), linear=True)
    dts = jnp.array([1e-6, 0.05, 0.7, 3.0, 12.0])

    def ours(lam, dts):
        return moments.linear_transitions(sde, {"lam": lam}, dts, jnp.zeros(2))

    def reference(lam, dts):
        th = {"lam": lam}
        A = jax.jacfwd(drift, argnums=1)(0.0, jnp.zeros(2), th)
        b = drift(0.0, jnp.zeros(2), th)
        L = sde.noise_matrix(0.0, jnp.zeros(2), th)
        return jax.vmap(lambda dt: _van_loan(A, b, L @ L.T, dt))(dts)

    lam = jnp.asarray(1.3)
    for got, want in zip(ours(lam, dts), reference(lam, dts)):
        np.testing.assert_allclose(got, want, rtol=DISCRETE, atol=1e-14)
    for derivative in (jax.jacfwd, jax.jacrev):
        for argnum in (0, 1):
            got = derivative(ours, argnums=argnum)(lam, dts)
            want = derivative(reference, argnums=argnum)(lam, dts)
            for g, w in zip(got, want):
                np.testing.assert_allclose(g, w, rtol=1e-8, atol=1e-12)


def test_one_state_closed_form_is_the_matrix_route():
    # The closed form for one state and the matrix route agree, values and gradients.
    from probde.inference import moments

    dts = jnp.array([1e-9, 1e-4, 0.37, 2.0, 40.0])

    def both(a):
        closed = moments._scalar_transitions(a, 0.7, 0.49, dts)
        matrix = moments.linear_transitions(
            probde.SDE(lambda t, x, th: a * x + 0.7, lambda t, x, th: jnp.array([0.7, 0.0]),
                       state_names=("x", "unused"), linear=True), {}, dts, jnp.zeros(2))
        return closed, tuple(m[(slice(None),) + (0,) * (m.ndim - 1)] for m in matrix)

    for a in (-0.8, -1e-12, 0.0, 0.3):
        closed, matrix = both(jnp.asarray(a))
        for c, mtx in zip(closed, matrix):
            np.testing.assert_allclose(np.reshape(c, -1), mtx, rtol=DISCRETE, atol=1e-300)
        d_closed, d_matrix = jax.jacfwd(both)(jnp.asarray(a))
        for c, mtx in zip(d_closed, d_matrix):
            np.testing.assert_allclose(np.reshape(c, -1), mtx, rtol=1e-8, atol=1e-14)


# Linearity read off the traced drift and diffusion (probde.dynamics.affine): exact, and
# conservative (what it cannot read counts as nonlinear).
_S = lambda t, x, th: jnp.stack([th["s"]])  # noqa: E731
AFFINE_CASES = {
    "ou": (ou_drift, _S, 1, True),
    "matrix_and_offset": (lambda t, x, th: jnp.array([[0.0, 1.0], [-th["k"], -th["m"]]]) @ x
                          + 1.0, lambda t, x, th: jnp.stack([0.0 * th["s"], th["s"]]), 2, True),
    "through_jit": (lambda t, x, th: jax.jit(lambda a: -th["k"] * a)(x), _S, 1, True),
    "cubic": (lambda t, x, th: -th["k"] * x**3, _S, 1, False),
    "time_forcing": (lambda t, x, th: -th["k"] * x + jnp.sin(t), _S, 1, False),
    "time_matrix": (lambda t, x, th: -th["k"] * (1.0 + t) * x, _S, 1, False),
    "state_noise": (ou_drift, lambda t, x, th: th["s"] * x, 1, False),
    "time_noise": (ou_drift, lambda t, x, th: jnp.stack([th["s"] * (1.0 + t)]), 1, False),
    "clip": (lambda t, x, th: -th["k"] * jnp.clip(x, -1.0, 1.0), _S, 1, False),
    "branch": (lambda t, x, th: jnp.where(x > 0, -th["k"] * x, 0.0), _S, 1, False),
    "loop": (lambda t, x, th: jax.lax.fori_loop(0, 2, lambda i, a: a * 0.5, -th["k"] * x), _S,
             1, False),  # linear, but a loop is not read: counted as nonlinear
}


@pytest.mark.parametrize("case", AFFINE_CASES)
def test_linearity_is_read_off_the_traced_program(case):
    drift, diffusion, S, expected = AFFINE_CASES[case]
    sde = probde.SDE(drift, diffusion, state_names=tuple(f"x{i}" for i in range(S)))
    assert sde.linear is None
    th = {k: jnp.asarray(v) for k, v in OU_THETA.items()}
    assert sde.is_linear(th, jnp.zeros(S)) is expected
    # A declaration stands either way.
    assert probde.SDE(drift, diffusion, sde.state_names, linear=False).is_linear(
        th, jnp.zeros(S)) is False


def test_undeclared_linear_sde_gets_the_exact_filter():
    # The default (linear=None) finds OU linear: the EKF's log-likelihood is the exact
    # discretisation's, not the moment ODEs' (which differ by the solver's error).
    undeclared = probde.SDE(ou_drift, ou_diffusion, state_names=("x",))
    p = {k: jnp.asarray(v) for k, v in OU_PARAMS.items()}
    lls = {}
    for name, sde in (("undeclared", undeclared), ("exact", OU[True]), ("moment", OU[False])):
        model = probde.Model(sde, {"k": dist.LogNormal(0.0, 0.5), "m": dist.Normal(0.0, 1.0),
                                   "s": dist.LogNormal(-0.5, 0.5)},
                             initial_state=_stationary_ou,
                             observation=probde.noise.Normal(sigma=dist.HalfNormal(1.0)),
                             likelihood=probde.EKF(), solver=probde.Solver(rtol=1e-4, atol=1e-4))
        lls[name] = float(probde.log_likelihood(model, OU_DATA, p))
    assert lls["undeclared"] == pytest.approx(lls["exact"], rel=1e-13)
    assert abs(lls["moment"] - lls["exact"]) > 1e-9 * abs(lls["exact"])


# ============================================== log-likelihoods through probde.Model
def _close(actual, expected, tol, scale=1.0):
    """Relative `tol`, with an absolute floor `tol * scale` for entries near zero."""
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=tol,
                               atol=tol * scale)


@pytest.mark.parametrize("linear", [False, True], ids=["moment_ode", "exact"])
@pytest.mark.parametrize("filt", FILTERS)
def test_ou_model_log_likelihood_is_the_dense_gaussian(filt, linear):
    # Stationary initial state (a function of theta), irregular times, a missing value.
    ll = model_loglik("ou", filt, linear)(OU_PARAMS)
    obs = ~np.isnan(OU_VALUES)
    expected = ou_kernel_loglik(OU_THETA, OU_SIGMA, OU_TIMES[obs], OU_VALUES[obs])
    _close(ll, expected, EXACT if linear else SOLVER)


# Two of the four combinations through the model (all four run at the low level below).
@pytest.mark.parametrize(("filt", "linear"), [("EKF", True), ("UKF", False)],
                         ids=["EKF-exact", "UKF-moment_ode"])
def test_matern32_model_log_likelihood_is_the_dense_gp(filt, linear):
    # Only the first of two states observed; one Wiener process drives both (L is (2, 1)).
    ll = model_loglik("matern", filt, linear)(MATERN_THETA)
    obs = ~np.isnan(MATERN_VALUES)
    expected = matern_kernel_loglik(MATERN_THETA, MATERN_SIGMA, MATERN_TIMES[obs],
                                    MATERN_VALUES[obs])
    _close(ll, expected, EXACT if linear else SOLVER)


# ======================================= low-level filter: moments, smoother and LOO
LOW_FILTERS = {**FILTERS, "UKF_unscented": probde.UKF(alpha=1e-3, beta=2.0, kappa=0.0)}
# OU: a non-stationary initial state N(1.5, 0.4^2) at t0 = -0.5, before the first datum.
# Matern: stationary initial state at t0 = -0.3.
LOW_CASES = {
    "ou": dict(sde=OU, theta=OU_THETA, times=OU_TIMES, values=OU_VALUES, t0=-0.5,
               m0=np.array([1.5]), P0=np.array([[0.16]]), sigma=OU_SIGMA,
               observe=lambda x: x, dense=ou_dense),
    "matern": dict(sde=MATERN, theta=MATERN_THETA, times=MATERN_TIMES, values=MATERN_VALUES,
                   t0=-0.3, m0=np.zeros(2), P0=matern_pinf(MATERN_THETA), sigma=MATERN_SIGMA,
                   observe=lambda x: x[:1], dense=matern_dense),
}
# The classic unscented weights (a large negative centre weight) on the OU case only.
LOW_COMBOS = [(c, f, lin) for c in LOW_CASES for f in LOW_FILTERS for lin in (False, True)
              if not (f == "UKF_unscented" and (lin or c != "ou"))]
LOW_IDS = [f"{c}-{f}-{'exact' if lin else 'moment_ode'}" for c, f, lin in LOW_COMBOS]


@functools.cache
def low_level(case, filt, linear):
    """`filter.run(..., smooth=True)` on a case and the dense reference, as numpy."""
    c = LOW_CASES[case]
    values = c["values"][:, None]
    mask = ~np.isnan(values)
    inputs = FilterInputs(
        times=jnp.asarray(c["times"]), t0=jnp.asarray(c["t0"]),
        values=jnp.asarray(np.where(mask, values, 0.0)), mask=jnp.asarray(mask),
        observe=c["observe"], noise_var=jnp.array([c["sigma"] ** 2]))
    run = jax.jit(lambda th: LOW_FILTERS[filt].run(
        c["sde"][linear], th, (jnp.asarray(c["m0"]), jnp.asarray(c["P0"])), inputs, TIGHT, None,
        smooth=True))
    out = jax.tree.map(np.asarray, run({k: jnp.asarray(v) for k, v in c["theta"].items()}))
    ref = c["dense"](c["theta"], c["sigma"], c["times"], mask, c["t0"], c["m0"], c["P0"])
    scale = max(1.0, float(np.abs(c["P0"]).max()))
    tol = EXACT if linear else SOLVER
    return out, ref, values, scale, tol


@pytest.mark.parametrize(("case", "filt", "linear"), LOW_COMBOS, ids=LOW_IDS)
def test_filter_log_likelihood_is_the_dense_gaussian(case, filt, linear):
    out, ref, values, _, tol = low_level(case, filt, linear)
    assert bool(out.ok)
    _close(out.log_lik, ref.loglik(values), tol)


@pytest.mark.parametrize(("case", "filt", "linear"), LOW_COMBOS, ids=LOW_IDS)
def test_filtered_moments_are_exact_conditionals(case, filt, linear):
    out, ref, values, scale, tol = low_level(case, filt, linear)
    m, P = ref.filtered(values)
    _close(out.filtered_mean, m, tol, scale)
    _close(out.filtered_cov, P, tol, scale)


@pytest.mark.parametrize(("case", "filt", "linear"), LOW_COMBOS, ids=LOW_IDS)
def test_smoothed_moments_are_exact_conditionals(case, filt, linear):
    # Smoothed: x(t_k) given all observations, from the joint Gaussian (no recursion).
    out, ref, values, scale, tol = low_level(case, filt, linear)
    m, P = ref.smoothed(values)
    _close(out.smoothed_mean, m, tol, scale)
    _close(out.smoothed_cov, P, tol, scale)


@pytest.mark.parametrize(("case", "filt", "linear"), LOW_COMBOS, ids=LOW_IDS)
def test_pointwise_terms_are_exact_leave_one_out_densities(case, filt, linear):
    out, ref, values, _, tol = low_level(case, filt, linear)
    loo = ref.loo(values)
    mask = ~np.isnan(values)
    _close(out.pointwise, loo, tol)
    assert np.all(out.pointwise[~mask] == 0.0)


# ======================================================================== gradients
def ou_dense_loglik_jax(p):
    """The dense OU log-likelihood of OU_DATA in jax (for its gradient)."""
    obs = ~np.isnan(OU_VALUES)
    t, y = jnp.asarray(OU_TIMES[obs]), jnp.asarray(OU_VALUES[obs])
    K = (p["s"] ** 2 / (2 * p["k"]) * jnp.exp(-p["k"] * jnp.abs(t[:, None] - t[None, :]))
         + p["sigma"] ** 2 * jnp.eye(t.shape[0]))
    return jax.scipy.stats.multivariate_normal.logpdf(y, p["m"] * jnp.ones_like(y), K)


# Central differences with step h: truncation error h^2 f''' / 6 ~ 1e-9 and rounding
# eps |f| / h ~ 1e-10 at h = 1e-5 for the exact filter; for the moment ODEs the
# likelihood is a smooth function of the parameters up to the solver's error (1e-10 here)
# over h, 1e-5. Against the dense gradient: exact algebra (EXACT) or the derivative of
# the solver's error, of the order of the SOLVER tolerance of the values.
FD_STEP = 1e-5


@pytest.mark.parametrize(("filt", "linear"), [("EKF", False), ("EKF", True), ("UKF", False)],
                         ids=["EKF-moment_ode", "EKF-exact", "UKF-moment_ode"])
def test_gradient_matches_finite_differences_and_dense_gradient(filt, linear):
    f = model_loglik("ou", filt, linear)
    p = {k: jnp.asarray(v) for k, v in OU_PARAMS.items()}
    grad = jax.jit(jax.grad(model_loglik_fn("ou", filt, linear)))(p)
    dense = jax.grad(ou_dense_loglik_jax)(p)
    fd_tol = 1e-6 if linear else 1e-5
    for name in p:
        up, dn = dict(p), dict(p)
        up[name] = p[name] + FD_STEP
        dn[name] = p[name] - FD_STEP
        fd = (float(f(up)) - float(f(dn))) / (2 * FD_STEP)
        assert np.isfinite(float(grad[name])), name
        np.testing.assert_allclose(float(grad[name]), fd, rtol=fd_tol, atol=fd_tol, err_msg=name)
        _close(grad[name], dense[name], EXACT if linear else 10 * SOLVER)


@pytest.mark.parametrize("filt", FILTERS)
def test_exact_linear_gradient_is_the_same_in_forward_and_reverse_mode(filt):
    # Forward mode (the default here) differentiates the transitions' first-order
    # expansion in the parameters; reverse mode differentiates the transitions themselves
    # (through the chunked map, the doubling's scan and its cond). Same algebra, so the
    # gradients agree to rounding.
    import diffrax

    grads = []
    for adjoint in ("auto", diffrax.RecursiveCheckpointAdjoint()):
        model = matern_model(FILTERS[filt], True, solver=probde.Solver(adjoint=adjoint))
        params = {"lam": jnp.asarray(1.3), "sf": jnp.asarray(0.9)}
        grads.append(jax.jit(jax.grad(lambda p: probde.log_likelihood(model, MATERN_DATA, p)))(
            params))
    for name in grads[0]:
        _close(grads[0][name], grads[1][name], EXACT)


def test_gradient_of_jit_compiled_log_likelihood():
    # `jax.grad(jax.jit(f))` is as legitimate as `jax.jit(jax.grad(f))` (test_likelihood.py
    # differentiates a jitted ODE log-likelihood this way). The forward-mode gradient's
    # custom_vjp must not close over the (vmapped, hence traced) data, or this raises
    # UnexpectedTracerError.
    p = {k: jnp.asarray(v) for k, v in OU_PARAMS.items()}
    expected = jax.grad(ou_dense_loglik_jax)(p)
    grad = jax.grad(model_loglik("ou", "EKF", True))(p)
    for name in p:
        _close(grad[name], expected[name], EXACT)


# ========================================================== particle filter: unbiased
PF_TIMES = np.array([0.0, 0.4, 1.0, 1.7, 2.5])
PF_VALUES = np.array([0.35, 0.9, 0.55, np.nan, 1.05])
PF_STEPS = 100
PF_PARTICLES = 128
PF_REPLICATES = 200


def _pf_inputs(times, values, sigma):
    values = np.asarray(values, dtype=float)[:, None]
    mask = ~np.isnan(values)
    return FilterInputs(
        times=jnp.asarray(times), t0=jnp.asarray(times[0]),
        values=jnp.asarray(np.where(mask, values, 0.0)), mask=jnp.asarray(mask),
        observe=lambda x: x,
        log_density=lambda pred, y: dist.Normal(pred, sigma).log_prob(y))


def euler_ou_loglik(th, sigma, times, values, num_steps, m0, v0):
    """Exact log-likelihood of what the particle filter simulates: Euler-Maruyama OU with
    `num_steps` steps per interval, a linear-Gaussian AR(1) chain (scalar Kalman filter).
    Over n steps of size h, x -> m + a^n (x - m) + noise of variance
    s^2 h (1 - a^(2n)) / (1 - a^2), a = 1 - k h."""
    k, mu, s = th["k"], th["m"], th["s"]
    m, v, ll, prev = m0, v0, 0.0, times[0]
    for t, y in zip(times, values):
        h = (t - prev) / num_steps
        a = 1.0 - k * h
        an = a**num_steps
        q = s**2 * h * (1 - a ** (2 * num_steps)) / (1 - a**2) if h > 0 else 0.0
        m, v = mu + an * (m - mu), an**2 * v + q
        if not np.isnan(y):
            S = v + sigma**2
            ll += stats.norm.logpdf(y, m, np.sqrt(S))
            g = v / S
            m, v = m + g * (y - m), (1 - g) * v
        prev = t
    return ll


@pytest.fixture(scope="module")
def pf_replicates():
    pf = probde.ParticleFilter(num_particles=PF_PARTICLES, num_steps=PF_STEPS)
    th = {k: jnp.asarray(v) for k, v in OU_THETA.items()}
    init = dist.Normal(OU_THETA["m"], math.sqrt(ou_var(OU_THETA))).expand([1]).to_event(1)
    inputs = _pf_inputs(PF_TIMES, PF_VALUES, OU_SIGMA)
    run = jax.jit(jax.vmap(lambda key: pf.run(OU[False], th, init, inputs, None, key).log_lik))
    keys = jax.random.split(jax.random.PRNGKey(2024), PF_REPLICATES)
    return np.asarray(run(keys))


def test_particle_filter_likelihood_estimate_is_unbiased(pf_replicates):
    obs = ~np.isnan(PF_VALUES)
    exact = ou_kernel_loglik(OU_THETA, OU_SIGMA, PF_TIMES[obs], PF_VALUES[obs])
    euler = euler_ou_loglik(OU_THETA, OU_SIGMA, PF_TIMES, PF_VALUES, PF_STEPS, OU_THETA["m"],
                            ou_var(OU_THETA))
    assert np.all(np.isfinite(pf_replicates))
    ratio = np.exp(pf_replicates - exact)
    se = ratio.std(ddof=1) / np.sqrt(ratio.size)
    # Euler-Maruyama's stationary variance is s^2 / (k (2 - k h)), too large by a factor
    # 1 / (1 - k h / 2): with h <= 0.8 / 100 and k = 0.8, 0.3 %, which moves the likelihood
    # by well under a quarter of the Monte Carlo standard error (checked here exactly with
    # the likelihood of the Euler chain), so the comparison with the SDE's exact
    # likelihood tests unbiasedness, not the discretisation.
    assert abs(np.exp(euler - exact) - 1.0) < se / 4, (euler, exact, se)
    assert abs(ratio.mean() - 1.0) / se < Z_MAX, (ratio.mean(), se)
    # ... and against the exact likelihood of the Euler chain the particle filter samples.
    assert abs(ratio.mean() - np.exp(euler - exact)) / se < Z_MAX


def test_particle_filter_through_model_log_likelihood(pf_replicates):
    # The model-level path (noise model's log density, initial distribution of theta,
    # a key from `seed`) estimates the same likelihood as the low-level filter above.
    model = ou_model(probde.ParticleFilter(num_particles=PF_PARTICLES, num_steps=PF_STEPS), False)
    data = probde.TimeSeries(PF_TIMES, PF_VALUES, observables=("x",))
    f = jax.jit(lambda p: probde.log_likelihood(model, data, p, seed=3))
    a, b = float(f(OU_PARAMS)), float(f(OU_PARAMS))
    assert a == b  # same seed, same estimate
    mean, sd = pf_replicates.mean(), pf_replicates.std(ddof=1)
    assert abs(a - mean) / sd < Z_MAX, (a, mean, sd)


# ====================================================================== long series
LONG_N = 2000
DEFAULT_SOLVER = probde.Solver()  # rtol = atol = 1e-6
# The moment ODEs at default tolerances for both filters, the exact discretisation on the
# harder (near-singular covariances after the 1e-3 gaps) two-state model.
LONG_COMBOS = [("ou", "EKF", False), ("matern", "EKF", True), ("matern", "UKF", False)]


def _long_series(case):
    """2000 irregular times (gaps from 1e-3 to 8, mostly about 0.3) and data simulated
    exactly from the stationary process plus noise."""
    rng = np.random.default_rng(11)
    gaps = rng.exponential(0.3, LONG_N - 1)
    gaps[rng.choice(LONG_N - 1, 200, replace=False)] = 1e-3
    gaps[rng.choice(LONG_N - 1, 10, replace=False)] = 8.0
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    c = LOW_CASES[case]
    th = c["theta"]
    if case == "ou":
        A, x_inf, pinf = np.array([[-th["k"]]]), np.array([th["m"]]), np.array([[ou_var(th)]])
    else:
        A, x_inf, pinf = matern_A(th), np.zeros(2), matern_pinf(th)
    x = x_inf + np.linalg.cholesky(pinf) @ rng.normal(size=len(x_inf))
    xs = [x]
    for dt in gaps:
        F = scipy.linalg.expm(A * dt)
        Q = pinf - F @ pinf @ F.T
        w, V = np.linalg.eigh(Q)
        x = x_inf + F @ (x - x_inf) + V @ (np.sqrt(np.clip(w, 0, None)) * rng.normal(size=w.size))
        xs.append(x)
    values = np.stack(xs)[:, 0] + c["sigma"] * rng.normal(size=LONG_N)
    values[rng.choice(LONG_N, 50, replace=False)] = np.nan
    return times, values, x_inf, pinf


@pytest.mark.parametrize(("case", "filt", "linear"), LONG_COMBOS,
                         ids=[f"{c}-{f}-{'exact' if lin else 'moment_ode'}"
                              for c, f, lin in LONG_COMBOS])
def test_long_series_is_stable_and_exact(case, filt, linear):
    c = LOW_CASES[case]
    times, values, x_inf, pinf = _long_series(case)
    mask = ~np.isnan(values)[:, None]
    inputs = FilterInputs(
        times=jnp.asarray(times), t0=jnp.asarray(times[0]),
        values=jnp.asarray(np.where(mask, values[:, None], 0.0)), mask=jnp.asarray(mask),
        observe=c["observe"], noise_var=jnp.array([c["sigma"] ** 2]))
    out = jax.jit(lambda th: FILTERS[filt].run(
        c["sde"][linear], th, (jnp.asarray(x_inf), jnp.asarray(pinf)), inputs, DEFAULT_SOLVER,
        None, smooth=True))({k: jnp.asarray(v) for k, v in c["theta"].items()})
    out = jax.tree.map(np.asarray, out)
    assert bool(out.ok) and np.isfinite(out.log_lik)
    scale = np.abs(pinf).max()
    for name in ("filtered", "smoothed"):
        m, P = getattr(out, f"{name}_mean"), getattr(out, f"{name}_cov")
        assert np.all(np.isfinite(m)) and np.all(np.isfinite(P)), name
        np.testing.assert_array_equal(P, np.swapaxes(P, 1, 2), err_msg=name)
        assert np.linalg.eigvalsh(P).min() >= -1e-12 * scale, name
    assert np.all(np.isfinite(out.pointwise))
    # Against the dense likelihood of all 1950 values: exact algebra, or the moment ODEs
    # at the default tolerances (1e-6), compared at 1e3 times that (as SOLVER above).
    obs = mask[:, 0]
    loglik = (ou_kernel_loglik if case == "ou" else matern_kernel_loglik)(
        c["theta"], c["sigma"], times[obs], values[obs])
    _close(out.log_lik, loglik, EXACT if linear else 1e3 * DEFAULT_SOLVER.rtol)


# ======================================================================== inference


@pytest.fixture(scope="module")
def ou_result():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=probde.ConvergenceWarning)
        return probde.infer(
            ou_model(probde.EKF(), True, solver=probde.Solver()), OU_DATA,
            probde.NUTS(num_chains=2, num_warmup=150, num_samples=100), seed=0,
            num_prior_samples=20)


def test_infer_sde_groups_and_dims(ou_result):
    idata = ou_result.idata
    for group in ("posterior", "sample_stats", "filtered_states", "smoothed_states",
                  "log_likelihood", "posterior_predictive", "observed_data", "prior",
                  "prior_predictive"):
        assert group in idata.children, group
    post = idata["posterior"]
    assert set(post.data_vars) >= {"k", "m", "s", "sigma"}
    assert "initial_state" not in post.data_vars  # integrated out by the filter
    T = OU_TIMES.size
    for group in ("filtered_states", "smoothed_states"):
        mean, cov = idata[group]["mean"], idata[group]["cov"]
        assert mean.dims == ("chain", "draw", "time", "state"), group
        assert cov.dims == ("chain", "draw", "time", "state", "state_col"), group
        assert mean.shape == (2, 100, T, 1) and cov.shape == (2, 100, T, 1, 1)
        assert np.all(np.isfinite(mean.values)) and np.all(cov.values > 0)
    y = idata["posterior_predictive"]["y"]
    assert y.dims == ("chain", "draw", "time", "observable") and y.shape == (2, 100, T, 1)
    assert np.all(np.isfinite(y.values))  # the missing time is predicted too
    assert idata["prior_predictive"]["y"].shape == (1, 20, T, 1)
    # The exact discretisation solves no ODE, so no proposal is rejected for a failed
    # solve: the count is recorded, and it is 0.
    assert ou_result.solver_failures == 0
    assert idata["sample_stats"].attrs["solver_failures"] == 0
    # One term per observed value (the missing one is left out) and PSIS-LOO runs on them.
    ll = idata["log_likelihood"]["y"]
    assert ll.shape == (2, 100, int((~np.isnan(OU_VALUES)).sum()))
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd)


def test_infer_records_exact_states_and_loo_terms_per_draw(ou_result):
    # For a few posterior draws, the recorded filtered / smoothed moments and the
    # log_likelihood group are the exact conditionals and LOO densities at those values.
    idata = ou_result.idata
    post = idata["posterior"]
    obs = ~np.isnan(OU_VALUES)
    for chain, draw in [(0, 0), (1, 57)]:
        th = {k: float(post[k].values[chain, draw]) for k in ("k", "m", "s", "sigma")}
        ref = ou_dense(th, th["sigma"], OU_TIMES, obs[:, None], OU_TIMES[0], th["m"],
                       ou_var(th))
        scale = max(1.0, ou_var(th))
        m, P = ref.filtered(OU_VALUES[:, None])
        _close(idata["filtered_states"]["mean"].values[chain, draw], m, EXACT, scale)
        _close(idata["filtered_states"]["cov"].values[chain, draw], P, EXACT, scale)
        m, P = ref.smoothed(OU_VALUES[:, None])
        _close(idata["smoothed_states"]["mean"].values[chain, draw], m, EXACT, scale)
        _close(idata["smoothed_states"]["cov"].values[chain, draw], P, EXACT, scale)
        _close(idata["log_likelihood"]["y"].values[chain, draw],
               ref.loo(OU_VALUES[:, None])[obs, 0], EXACT)


@pytest.mark.slow  # about 50 s, almost all of it compiling (sampler, smoother, states)
def test_filter_failures_are_counted_not_raised():
    # With at most 6 steps per moment solve every k above about 1 fails (the moment ODEs
    # stiffen with k); the posterior straddles that edge.
    model = ou_model(probde.EKF(), False, solver=probde.Solver(max_steps=6))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = probde.infer(model, OU_DATA, probde.NUTS(num_chains=1, num_warmup=40,
                                                          num_samples=40, max_tree_depth=4),
                              seed=1, num_prior_samples=0)
    failures = result.idata["sample_stats"].attrs["solver_failures"]
    assert failures > 0
    assert result.solver_failures == failures
    assert np.all(np.isfinite(result.idata["posterior"]["k"].values))
    messages = [str(w.message) for w in caught]
    assert any("raise Solver(max_steps=...) (now 6)" in m for m in messages), messages


def test_failed_moment_solve_gives_minus_infinity_not_an_error():
    # Two steps per moment solve cannot cover the data's intervals at the default tolerances.
    model = ou_model(probde.EKF(), False, solver=probde.Solver(max_steps=2))
    assert float(probde.log_likelihood(model, OU_DATA, OU_PARAMS)) == -np.inf


def test_particle_filter_with_nuts_is_a_clear_error():
    model = ou_model(probde.ParticleFilter(num_particles=16, num_steps=2), False)
    with pytest.raises(ValueError, match="RandomWalkMetropolis"):
        probde.infer(model, OU_DATA, probde.NUTS(num_chains=1, num_warmup=5, num_samples=5))


@pytest.mark.slow  # about 50 s, almost all of it compiling (sampler, predictive, states)
@pytest.mark.filterwarnings("ignore::probde.ConvergenceWarning")  # a short run on purpose
def test_particle_filter_with_random_walk_metropolis_runs():
    model = ou_model(probde.ParticleFilter(num_particles=32, num_steps=4), False)
    result = probde.infer(model, OU_DATA, probde.RandomWalkMetropolis(
        num_chains=1, num_warmup=40, num_samples=30), seed=0, num_prior_samples=0)
    idata = result.idata
    assert idata["posterior"]["k"].shape == (1, 30)
    assert np.all(np.isfinite(idata["posterior"]["k"].values))
    assert idata["filtered_states"]["mean"].shape == (1, 30, OU_TIMES.size, 1)
    assert "smoothed_states" not in idata.children  # no smoother for the particle filter
    assert "log_likelihood" not in idata.children  # no LOO terms for a random estimate
    assert idata["posterior_predictive"]["y"].shape == (1, 30, OU_TIMES.size, 1)


# ======================================================================== bad input
OU_PRIORS = {"k": dist.LogNormal(0.0, 0.5), "m": dist.Normal(0.0, 1.0),
             "s": dist.LogNormal(-0.5, 0.5)}


def _sde_model(sde=None, likelihood="ekf", **kw):
    kw.setdefault("initial_state", jnp.array([0.5]))
    kw.setdefault("observation", probde.noise.Normal(sigma=0.3))
    return probde.Model(OU[False] if sde is None else sde, OU_PRIORS,
                        likelihood=probde.EKF() if likelihood == "ekf" else likelihood, **kw)


def _ode_model_with_likelihood():
    ode = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    return probde.Model(ode, {"k": dist.LogNormal(0.0, 1.0)}, jnp.array([1.0]),
                        probde.noise.Normal(sigma=0.1), likelihood=probde.EKF())


def _simulate(x0, num_steps=5, sde=None):
    return probde.simulate(OU[False] if sde is None else sde, x0, OU_THETA,
                           jnp.array([0.0, 1.0]), jax.random.PRNGKey(0), num_steps=num_steps)


def _particle_run(key, initial):
    return probde.ParticleFilter(num_particles=4, num_steps=1).run(
        OU[False], OU_THETA, initial, _pf_inputs(PF_TIMES, PF_VALUES, OU_SIGMA), None, key)


_WIDE_DIFFUSION = probde.SDE(ou_drift, lambda t, x, th: jnp.ones(2) * th["s"], ("x",))
_BAD_CASES = {
    "diffusion_shape": (lambda: _sde_model(_WIDE_DIFFUSION), ValueError,
                        r"diffusion must return shape \(1,\) .* got shape \(2,\)"),
    "diffusion_rows": (lambda: _sde_model(probde.SDE(
        ou_drift, lambda t, x, th: jnp.ones((2, 1)), ("x",))), ValueError,
        r"diffusion must return shape .*one row per state.* got shape \(2, 1\)"),
    "drift_shape": (lambda: _sde_model(probde.SDE(
        lambda t, x, th: jnp.ones(2), ou_diffusion, ("x",))), ValueError,
        r"drift must return shape \(1,\) .* got shape \(2,\)"),
    "lognormal_initial_ekf": (
        lambda: _sde_model(initial_state=dist.LogNormal(0.0, 1.0).expand([1])), ValueError,
        "EKF needs a Gaussian initial state.*got LogNormal.*ParticleFilter"),
    "lognormal_initial_ukf": (
        lambda: _sde_model(likelihood=probde.UKF(),
                           initial_state=dist.LogNormal(0.0, 1.0).expand([1])), ValueError,
        "UKF needs a Gaussian initial state.*got LogNormal"),
    "poisson_ekf": (lambda: _sde_model(observation=probde.noise.Poisson()), ValueError,
                    "EKF needs Gaussian observation noise.*got Poisson.*ParticleFilter"),
    "linear_nonlinear_drift": (lambda: _sde_model(probde.SDE(
        lambda t, x, th: -th["k"] * x**3, ou_diffusion, ("x",), linear=True)), ValueError,
        "linear=True declares a drift A x \\+ b .* Jacobian changes"),
    "linear_state_diffusion": (lambda: _sde_model(probde.SDE(
        ou_drift, lambda t, x, th: th["s"] * x, ("x",), linear=True)), ValueError,
        "linear=True needs a diffusion that depends on neither x nor t"),
    "linear_forcing": (lambda: _sde_model(probde.SDE(
        lambda t, x, th: -th["k"] * x + jnp.sin(3.0 * t), ou_diffusion, ("x",), linear=True)),
        ValueError, "linear=True .* offset b .* changes with t"),
    "ode_with_likelihood": (_ode_model_with_likelihood, ValueError,
                            "likelihood is for SDE models.*takes likelihood=None"),
    "sde_without_likelihood": (lambda: _sde_model(likelihood=None), TypeError,
                               r"an SDE model needs likelihood=probde.EKF\(\)"),
    "sde_with_discrepancy": (lambda: _sde_model(discrepancy=probde.GPDiscrepancy(
        __import__("gpjax").kernels.RBF(lengthscale=1.0, variance=0.1))), ValueError,
        "an SDE model takes no discrepancy term"),
    "missing_parameter": (lambda: _sde_model(probde.SDE(
        lambda t, x, th: -th["rate"] * x, ou_diffusion, ("x",))), ValueError,
        "reads parameter 'rate'"),
    "pf_particles": (lambda: probde.ParticleFilter(num_particles=0), ValueError,
                     "num_particles must be a positive integer; got 0"),
    "pf_steps": (lambda: probde.ParticleFilter(num_steps=2.5), ValueError,
                 "num_steps must be a positive integer; got 2.5"),
    "pf_resampling": (lambda: probde.ParticleFilter(resampling="residual"), ValueError,
                      "resampling must be one of .*systematic.*got 'residual'"),
    "pf_no_key": (lambda: _particle_run(None, dist.Normal(0.0, 1.0).expand([1]).to_event(1)),
                  ValueError, "the particle filter needs a random key"),
    "pf_initial_array": (lambda: _particle_run(jax.random.PRNGKey(0), jnp.array([0.5])),
                         TypeError, "initial must be a numpyro distribution"),
    "ukf_alpha": (lambda: probde.UKF(alpha=0.0), ValueError, "alpha must be positive"),
    "ukf_beta": (lambda: probde.UKF(beta=float("nan")), TypeError,
                 "beta must be a finite number"),
    "ukf_kappa": (lambda: probde.UKF(kappa="1"), TypeError, "kappa must be a finite number"),
    "ukf_exact_linear": (lambda: probde.UKF(exact_linear=1), TypeError,
                         "exact_linear must be True or False"),
    "ekf_exact_linear": (lambda: probde.EKF(exact_linear="yes"), TypeError,
                         "exact_linear must be True or False"),
    "sde_drift": (lambda: probde.SDE("drift", ou_diffusion, ("x",)), TypeError,
                  r"drift must be a callable f\(t, x, theta\)"),
    "sde_diffusion": (lambda: probde.SDE(ou_drift, 0.3, ("x",)), TypeError,
                      r"diffusion must be a callable L\(t, x, theta\); got 0.3"),
    "sde_linear": (lambda: probde.SDE(ou_drift, ou_diffusion, ("x",), linear="yes"), TypeError,
                   "linear must be None, True or False"),
    "simulate_x0": (lambda: _simulate(jnp.array([1.0, 2.0])), ValueError,
                    r"x0 must have shape \(1,\), one value per state \('x',\); got shape \(2,\)"),
    "simulate_scalar_x0": (lambda: _simulate(1.0), ValueError,
                           r"x0 must have shape \(1,\).*got shape \(\)"),
    "simulate_steps": (lambda: _simulate(jnp.array([1.0]), num_steps=0), ValueError,
                       "num_steps must be a positive integer"),
    "simulate_diffusion": (lambda: _simulate(jnp.array([1.0]), sde=_WIDE_DIFFUSION), ValueError,
                           r"diffusion must return shape \(1,\)"),
    "simulate_not_sde": (lambda: probde.simulate(
        probde.ODE(ou_drift, ("x",)), jnp.array([1.0]), OU_THETA, jnp.array([0.0, 1.0]),
        jax.random.PRNGKey(0)), TypeError, "sde must be a probde.SDE"),
}


@pytest.mark.parametrize("case", _BAD_CASES)
def test_bad_input_is_a_clear_error(case):
    make, error, match = _BAD_CASES[case]
    with pytest.raises(error, match=match):
        make()


def test_particle_filter_accepts_what_gaussian_filters_reject():
    # A non-Gaussian initial state and count noise are fine for the particle filter.
    model = _sde_model(likelihood=probde.ParticleFilter(num_particles=8, num_steps=1),
                       initial_state=dist.LogNormal(0.0, 1.0).expand([1]),
                       observation=probde.noise.Poisson())
    assert isinstance(model.likelihood, probde.ParticleFilter)


# ========================================================= sample paths: simulate
SIM_PATHS = 4000


def test_simulate_ou_moments_are_those_of_the_euler_chain():
    # Euler-Maruyama with n steps of size h per interval is the AR(1) chain
    # x -> m + a^n (x - m) + noise, a = 1 - k h, noise variance s^2 h (1 - a^2n) / (1 - a^2):
    # the sample paths' mean and variance at each record time must match it within
    # Z_MAX standard errors (mean: sqrt(v / M); variance: v sqrt(2 / (M - 1))).
    times = np.array([0.0, 0.5, 1.5, 3.0])
    num_steps, x0 = 8, 1.8
    th = {k: jnp.asarray(v) for k, v in OU_THETA.items()}
    sim = jax.jit(jax.vmap(lambda key: probde.simulate(
        OU[False], jnp.array([x0]), th, jnp.asarray(times), key, num_steps=num_steps)))
    path = sim(jax.random.split(jax.random.PRNGKey(5), SIM_PATHS))
    xs = np.asarray(path.ys)[:, :, 0]
    assert np.all(np.asarray(path.ok))
    np.testing.assert_array_equal(path.ts[0], times)
    np.testing.assert_array_equal(path.num_steps, 3 * num_steps)  # 3 intervals, t0 = times[0]
    np.testing.assert_array_equal(xs[:, 0], x0)  # the first record time is t0: x0 itself
    k, mu, s = OU_THETA["k"], OU_THETA["m"], OU_THETA["s"]
    mean, var = x0, 0.0
    for i in range(1, times.size):
        h = (times[i] - times[i - 1]) / num_steps
        a = 1.0 - k * h
        mean = mu + a**num_steps * (mean - mu)
        var = a ** (2 * num_steps) * var + s**2 * h * (1 - a ** (2 * num_steps)) / (1 - a**2)
        m_hat, v_hat = xs[:, i].mean(), xs[:, i].var(ddof=1)
        assert abs(m_hat - mean) / np.sqrt(var / SIM_PATHS) < Z_MAX, (i, m_hat, mean)
        assert abs(v_hat - var) / (var * np.sqrt(2 / (SIM_PATHS - 1))) < Z_MAX, (i, v_hat, var)


def test_simulate_matrix_diffusion_covariance_is_that_of_the_euler_chain():
    # Two states driven by one Wiener process (L is (2, 1)), from t0 before the first
    # record time: Euler's chain x -> (I + A h) x + L sqrt(h) z has covariance
    # P -> B P B' + h L L'. Entries within Z_MAX standard errors
    # (Var of a sample covariance: (P_ii P_jj + P_ij^2) / M for Gaussian draws).
    th = MATERN_THETA
    times, t0, num_steps = np.array([0.4, 1.0]), -0.2, 12
    x0 = np.array([1.0, -0.5])
    sim = jax.jit(jax.vmap(lambda key: probde.simulate(
        MATERN[False], jnp.asarray(x0), {k: jnp.asarray(v) for k, v in th.items()},
        jnp.asarray(times), key, t0=t0, num_steps=num_steps)))
    path = sim(jax.random.split(jax.random.PRNGKey(6), SIM_PATHS))
    assert np.all(np.asarray(path.ok))
    np.testing.assert_array_equal(path.num_steps, 2 * num_steps)  # t0 -> 0.4 -> 1.0
    xs = np.asarray(path.ys)
    A = matern_A(th)
    L = np.array([[0.0], [2.0 * th["sf"] * th["lam"] ** 1.5]])
    mean, P, prev = x0, np.zeros((2, 2)), t0
    for i, t in enumerate(times):
        h = (t - prev) / num_steps
        B = np.eye(2) + A * h
        for _ in range(num_steps):
            mean, P = B @ mean, B @ P @ B.T + h * L @ L.T
        prev = t
        m_hat = xs[:, i].mean(axis=0)
        P_hat = np.cov(xs[:, i].T)
        z_mean = (m_hat - mean) / np.sqrt(np.diag(P) / SIM_PATHS)
        se = np.sqrt((np.outer(np.diag(P), np.diag(P)) + P**2) / SIM_PATHS)
        assert np.all(np.abs(z_mean) < Z_MAX), (i, m_hat, mean)
        assert np.all(np.abs(P_hat - P) / se < Z_MAX), (i, P_hat, P)


def test_simulate_flags_a_path_that_blows_up():
    explode = probde.SDE(lambda t, x, th: x**3, lambda t, x, th: jnp.array([0.1]), ("x",))
    path = probde.simulate(explode, jnp.array([3.0]), {}, jnp.array([0.0, 5.0]),
                           jax.random.PRNGKey(0), num_steps=10)
    assert not bool(path.ok)


# ================================================== NUTS coverage over simulated data
COVERAGE_DATASETS = 20
COVERAGE_PRIORS = {"k": dist.LogNormal(0.0, 0.4), "m": dist.Normal(0.0, 1.0),
                   "s": dist.LogNormal(-0.5, 0.3)}
COVERAGE_SIGMA = 0.2
COVERAGE_TIMES = np.linspace(0.0, 21.0, 15)


def _coverage_model(times, ys):
    """Independent OU models, one per dataset (row of `ys`), each with the EKF likelihood:
    the joint posterior is the product of the datasets' posteriors, so one NUTS run (one
    compilation, one vmapped filter) samples them all."""
    with numpyro.plate("dataset", ys.shape[0]):
        th = {name: numpyro.sample(name, prior) for name, prior in COVERAGE_PRIORS.items()}

    def one(th, y):
        inputs = FilterInputs(times=times, t0=times[0], values=y[:, None],
                              mask=jnp.ones(y.shape + (1,), bool), observe=lambda x: x,
                              noise_var=jnp.array([COVERAGE_SIGMA**2]))
        init = (jnp.stack([th["m"]]), jnp.reshape(th["s"] ** 2 / (2 * th["k"]), (1, 1)))
        return probde.EKF().run(OU[True], th, init, inputs, probde.Solver(), None).log_lik

    numpyro.factor("log_lik", jnp.sum(jax.vmap(one)(th, ys)))


@pytest.mark.slow
def test_nuts_intervals_cover_the_simulating_parameters():
    # Truths drawn from the prior, data simulated from them with probde.simulate
    # (Euler-Maruyama, h = 0.015: variance error k h / 2 of about 1 %, far inside the
    # posterior widths), so each parameter's central 90 % interval covers its truth with
    # probability 0.9 when the likelihood and the sampler are right: the number of covering
    # datasets is Binomial(20, 0.9), and that of the central 50 % intervals Binomial(20, 0.5).
    key_theta, key_x0, key_path, key_run = jax.random.split(jax.random.PRNGKey(12), 4)
    D = COVERAGE_DATASETS
    truth = {name: np.asarray(prior.sample(k, (D,)))
             for (name, prior), k in zip(COVERAGE_PRIORS.items(),
                                         jax.random.split(key_theta, len(COVERAGE_PRIORS)))}
    times = jnp.asarray(COVERAGE_TIMES)
    x0 = truth["m"] + np.sqrt(truth["s"] ** 2 / (2 * truth["k"])) * np.asarray(
        jax.random.normal(key_x0, (D,)))
    sim = jax.vmap(lambda th, x, k: probde.simulate(OU[False], x[None], th, times, k,
                                                    num_steps=100))
    path = sim({k: jnp.asarray(v) for k, v in truth.items()}, jnp.asarray(x0),
               jax.random.split(key_path, D))
    assert np.all(np.asarray(path.ok))
    ys = np.asarray(path.ys)[:, :, 0] + COVERAGE_SIGMA * np.random.default_rng(12).normal(
        size=(D, times.shape[0]))
    samples, _ = probde.NUTS(num_chains=1, num_warmup=200, num_samples=200).run(
        _coverage_model, key_run, progress_bar=False,
        model_kwargs={"times": times, "ys": jnp.asarray(ys)})
    covered90, covered50 = {}, {}
    for name in COVERAGE_PRIORS:
        draws = np.asarray(samples[name]).reshape(-1, D)
        lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
        covered90[name] = int(np.sum((lo <= truth[name]) & (truth[name] <= hi)))
        lo, hi = np.quantile(draws, [0.25, 0.75], axis=0)
        covered50[name] = int(np.sum((lo <= truth[name]) & (truth[name] <= hi)))
    # The p-value of each observed count under its binomial: for the 90 % intervals,
    # one-sided (too few covering datasets: intervals too narrow or off target), for the
    # 50 % intervals both ways (too narrow or too wide). At levels 2.5e-3 and 5e-4 a
    # correct sampler fails a check with probability P(X <= 13) = 2.4e-3 and
    # P(X <= 2) + P(X >= 18) = 4e-4: all six checks together, under 1 %.
    p90 = {name: stats.binom.cdf(c, D, 0.9) for name, c in covered90.items()}
    p50 = {name: min(1.0, 2 * min(stats.binom.cdf(c, D, 0.5), stats.binom.sf(c - 1, D, 0.5)))
           for name, c in covered50.items()}
    assert all(p > 2.5e-3 for p in p90.values()), (covered90, p90)
    assert all(p > 5e-4 for p in p50.values()), (covered50, p50)
