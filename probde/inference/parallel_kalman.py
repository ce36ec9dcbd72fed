"""Parallel-in-time Kalman filter and Rauch-Tung-Striebel smoother (associative scans).

A sequential filter takes T dependent steps however many cores there are. For a linear-
Gaussian model, `x_k = F_k x_{k-1} + u_k + N(0, Q_k)`, `y_k = H x_k + d + N(0, R)`, the
filtering and smoothing recursions can instead be written as associative operations on
per-step elements (Särkkä & García-Fernández 2021, "Temporal parallelization of Bayesian
smoothers", IEEE TAC 66(1)), which `jax.lax.associative_scan` evaluates in O(log T)
dependent steps. That pays on accelerators with long series; on a CPU it does about twice
the arithmetic of the sequential scan and is slower (`benchmarks/linear_filter.py`).

The filtering element of step k is `(A, b, C, eta, J)`: conditional on the state before
it, `x_k | y_k` is `N(A x + b, C)`, and the observation's likelihood of that state is
proportional to `exp(-x'Jx/2 + eta'x)`. The first element absorbs the initial law. The
smoothing element is `(E, g, L)`: `x_k | x_{k+1}, y_{1:k}` is `N(E x_{k+1} + g, L)`.

Missing components are masked as in the sequential filter (their rows of `H` and their
residuals are zero and their noise variance is 1), so shapes stay static. The log-
likelihood is evaluated afterwards from the predicted moments, batched over all steps.

jax has the scan but not these elements, and gpjax's Kalman filter is sequential, hence
this module. Applies only where the model is linear-Gaussian (exact transitions, affine
observations): `probde.EKF(parallel=True)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from .. import _small_linalg as small_linalg
from .moments import _jitter, _sym


def _eye(n, dtype):
    return jnp.eye(n, dtype=dtype)


def _masked(H, R, mask):
    """The observation model of one step with missing components removed (static shapes)."""
    Hm = jnp.where(mask[:, None], H, 0.0)
    Rm = jnp.diag(jnp.where(mask, R, 1.0))
    return Hm, Rm


def _filter_element(F, u, Q, H, d, R, y, mask):
    """`(A, b, C, eta, J)` of a step after the first."""
    S_dim = F.shape[0]
    Hm, Rm = _masked(H, R, mask)
    r = jnp.where(mask, y - Hm @ u - d, 0.0)
    S = _sym(Hm @ Q @ Hm.T + Rm)
    chol = jnp.linalg.cholesky(S)
    K = jsl.cho_solve((chol, True), Hm @ Q).T  # Q H' S^{-1}
    IKH = _eye(S_dim, F.dtype) - K @ Hm
    HF = Hm @ F
    SinvHF = jsl.cho_solve((chol, True), HF)
    A = IKH @ F
    b = u + K @ r
    C = _sym(IKH @ Q)
    eta = SinvHF.T @ r
    J = _sym(HF.T @ SinvHF)
    return A, b, C, eta, J


def _first_element(F, u, Q, H, d, R, y, mask, m0, P0):
    """The first step's element: the initial law pushed through the first transition and
    conditioned on the first observation (no dependence on an earlier state)."""
    S_dim = F.shape[0]
    mp = F @ m0 + u
    Pp = _sym(F @ P0 @ F.T + Q)
    Hm, Rm = _masked(H, R, mask)
    r = jnp.where(mask, y - Hm @ mp - d, 0.0)
    S = _sym(Hm @ Pp @ Hm.T + Rm)
    chol = jnp.linalg.cholesky(S)
    K = jsl.cho_solve((chol, True), Hm @ Pp).T
    zero = jnp.zeros((S_dim, S_dim), F.dtype)
    return (zero, mp + K @ r, _sym(Pp - K @ S @ K.T), jnp.zeros(S_dim, F.dtype), zero)


def _combine_filter(earlier, later):
    """The filtering operator: the element of two consecutive spans from theirs."""
    A1, b1, C1, eta1, J1 = earlier
    A2, b2, C2, eta2, J2 = later
    n = A1.shape[-1]
    N = _eye(n, A1.dtype) + C1 @ J2  # (I + C1 J2); (I + J2 C1) is its transpose
    lu = jsl.lu_factor(N)
    W = jsl.lu_solve(lu, A2.T, trans=1).T  # A2 (I + C1 J2)^{-1}
    V = jsl.lu_solve(lu, A1).T  # A1' (I + J2 C1)^{-1}
    A = W @ A1
    b = W @ (b1 + C1 @ eta2) + b2
    C = _sym(W @ C1 @ A2.T + C2)
    eta = V @ (eta2 - J2 @ b1) + eta1
    J = _sym(V @ J2 @ A1 + J1)
    return A, b, C, eta, J


def _combine_smoother(later, earlier):
    """The smoothing operator (spans taken from the end backwards)."""
    E2, g2, L2 = later
    E1, g1, L1 = earlier
    return E1 @ E2, E1 @ g2 + g1, _sym(E1 @ L2 @ E1.T + L1)


def _scan(combine, elements):
    """`associative_scan` with `combine` written for one pair of elements."""
    return jax.lax.associative_scan(jax.vmap(combine), elements)


def predicted(F, u, Q, mf, Pf, m0, P0):
    """The predicted moments of every step from the filtered moments of the step before."""
    m_prev = jnp.concatenate([m0[None], mf[:-1]], axis=0)
    P_prev = jnp.concatenate([P0[None], Pf[:-1]], axis=0)
    mp = small_linalg.batched_matvec(F, m_prev) + u
    Pp = small_linalg.batched_matmul_t(small_linalg.batched_matmul(F, P_prev), F) + Q
    return mp, _sym(Pp)


def _step_loglik(mp, Pp, H, d, R, y, mask):
    Hm, Rm = _masked(H, R, mask)
    r = jnp.where(mask, y - Hm @ mp - d, 0.0)
    S = _sym(Hm @ Pp @ Hm.T + Rm)
    return small_linalg.gaussian_log_density(r, small_linalg.cholesky(S), jnp.sum(mask))


def kalman_filter(transitions, H, d, R, m0, P0, values, mask):
    """Filtered and predicted moments and per-step log-likelihoods, in parallel over time.

    `transitions = (F, u, Q)` with shapes `(T, S, S)`, `(T, S)`, `(T, S, S)` (step k moves
    the state from step k-1, or from the initial `N(m0, P0)`, to step k); `H` `(O, S)`,
    `d` `(O,)`, `R` `(O,)` the affine observation and its noise variances; `values`,
    `mask` `(T, O)`. Returns `(mf, Pf, mp, Pp, loglik)`, leading dim T.

    **Example** (a random walk seen with unit noise, against the sequential recursion):

    ```python
    >>> import jax.numpy as jnp
    >>> from probde.inference.parallel_kalman import kalman_filter
    >>> T = 4
    >>> F, u, Q = jnp.ones((T, 1, 1)), jnp.zeros((T, 1)), jnp.ones((T, 1, 1))
    >>> y = jnp.array([[0.5], [1.0], [0.2], [-0.3]])
    >>> mf, Pf, mp, Pp, ll = kalman_filter((F, u, Q), jnp.ones((1, 1)), jnp.zeros(1),
    ...                                    jnp.ones(1), jnp.zeros(1), jnp.ones((1, 1)), y,
    ...                                    jnp.ones((T, 1), bool))
    >>> [round(float(p), 4) for p in Pf[:, 0, 0]]  # P <- (P + 1) / (P + 2) from P = 1
    [0.6667, 0.625, 0.619, 0.6182]

    ```
    """
    F, u, Q = transitions
    first = _first_element(F[0], u[0], Q[0], H, d, R, values[0], mask[0], m0, P0)
    rest = jax.vmap(_filter_element, in_axes=(0, 0, 0, None, None, None, 0, 0))(
        F[1:], u[1:], Q[1:], H, d, R, values[1:], mask[1:])
    elements = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b], axis=0), first, rest)
    _, mf, Pf, _, _ = _scan(_combine_filter, elements)
    mp, Pp = predicted(F, u, Q, mf, Pf, m0, P0)
    ll = jax.vmap(_step_loglik, in_axes=(0, 0, None, None, None, 0, 0))(
        mp, Pp, H, d, R, values, mask)
    return mf, _sym(Pf), mp, Pp, ll


def rts_smoother(F, mf, Pf, mp, Pp):
    """Smoothed moments `(ms, Ps)` from the filtered and predicted ones and the transition
    matrices `F` (step k-1 to k), in parallel over time."""

    def element(m_f, P_f, F_next, m_p_next, P_p_next):
        Pj = _sym(P_p_next) + _jitter(P_p_next)
        E = jsl.cho_solve(jsl.cho_factor(Pj), F_next @ P_f).T  # P_f F' P_p^{-1}
        return E, m_f - E @ m_p_next, _sym(P_f - E @ Pj @ E.T)

    E, g, L = jax.vmap(element)(mf[:-1], Pf[:-1], F[1:], mp[1:], Pp[1:])
    S = mf.shape[-1]
    last = (jnp.zeros((1, S, S), mf.dtype), mf[-1:], Pf[-1:])
    elements = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0)[::-1],
                            (E, g, L), last)
    _, ms, Ps = _scan(_combine_smoother, elements)
    return ms[::-1], _sym(Ps[::-1])
