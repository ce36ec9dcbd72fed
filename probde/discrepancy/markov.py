r"""State-space (Markovian) Gaussian-process algebra for the discrepancy term: O(N) Kalman.

The same quantities as `probde.discrepancy.dense`, for kernels with a finite-dimensional
linear-SDE form, computed by Kalman filtering and smoothing in $O(N d^3)$ time and $O(N d^2)$
memory ($d$ = state dimension: 1, 2, 3 for Matérn-1/2, 3/2, 5/2) instead of $O(N^3)$ and
$O(N^2)$. They are pure, jit/vmap/grad-safe functions of one series whose `times` are sorted
increasing (irregular spacing and repeated times are fine); shapes are static and `mask`
(bool, `True` = observed) removes points without changing shapes.

gpjax 1.0 supplies the model: `gpjax.state_space.to_sde(kernel)` gives the SDE and its exact
discretisation `(A(dt), L_Q(dt))`. The filter, the smoother and the sampler are written
here (`_cov_filter`, `_rts`, `_draw_states`): gpjax's `kalman_filter` takes one noise
variance for every point and returns only the log marginal likelihood, its `rts_smoother`
and a square-root filter of our own ran one QR per step, and it has no sampler. In
covariance form, with all intervals' transitions computed before the scans, the log
marginal likelihood is within a few times a hand-written filter, and the leave-one-out
terms, smoothed moments and posterior draws cost two to three filters.

All arrays are computed in JAX's default float dtype (float64 with `jax_enable_x64`, else
float32); inputs of another dtype are converted.

!!! note
    gpjax's state-space code broadcasts arrays of different ranks, which fails under
    `jax_numpy_rank_promotion="raise"`; every call into it is therefore traced under
    `jax.numpy_rank_promotion("allow")` (the code in this file itself does not rely on it).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from gpjax.kernels import Periodic
from gpjax.kernels.base import AbstractKernel
from gpjax.state_space import to_sde
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .. import _small_linalg as small_linalg

_LOG_2PI = math.log(2.0 * math.pi)

_SUPPORTED = (
    "gpjax.kernels.Matern12, Matern32 or Matern52, "
    "gpjax.state_space.TruncatedPeriodic, a product of one TruncatedPeriodic and one Matern "
    "(quasi-periodic), or a sum of these, each with a scalar lengthscale (1-D time)"
)


# ----------------------------------------------------------------------------- kernel check
def check_markov_kernel(kernel) -> None:
    """Raise unless `kernel` has a state-space (linear SDE) form that gpjax can build.

    Call it outside `jit`, once, when the discrepancy term is set up. Supported: gpjax's
    `Matern12`, `Matern32`, `Matern52`, `gpjax.state_space.TruncatedPeriodic`, the
    quasi-periodic product `TruncatedPeriodic * Matern..`, and sums of these, all on 1-D
    time (scalar lengthscale). gpjax's exact `Periodic` has no finite state-space form: use
    `TruncatedPeriodic` with the same `lengthscale`, `variance` and `period` (it keeps the
    first `truncation_order` harmonics of the same Fourier series).

    **Raises:** `TypeError` if `kernel` is not a gpjax kernel; `ValueError` if it is one that
    has no state-space form here (e.g. `RBF`, `Periodic`, a product of two Matérns).
    """
    if not isinstance(kernel, AbstractKernel):
        raise TypeError(
            f"kernel must be a gpjax kernel with a state-space form ({_SUPPORTED}); "
            f"got {kernel!r} of type {type(kernel).__name__}"
        )
    hint = ""
    if _contains(kernel, Periodic):
        hint = (
            " gpjax's Periodic has no finite state-space form; use "
            "gpjax.state_space.TruncatedPeriodic(lengthscale=..., variance=..., period=..., "
            "truncation_order=K) with the same hyperparameters (the first K harmonics of the "
            "same Fourier series)."
        )
    try:
        jax.eval_shape(_sde, kernel)  # traces the conversion only: no compilation
    except (NotImplementedError, ValueError, TypeError) as error:
        raise ValueError(
            f"kernel must have a state-space form for the Markovian (Kalman) GP: {_SUPPORTED}; "
            f"got {_describe(kernel)}.{hint} (gpjax says: {error})"
        ) from None


def _contains(kernel, cls) -> bool:
    if isinstance(kernel, cls):
        return True
    return any(_contains(k, cls) for k in getattr(kernel, "kernels", ()))


def _describe(kernel) -> str:
    parts = getattr(kernel, "kernels", None)
    if parts is None:
        return type(kernel).__name__
    return f"{type(kernel).__name__}({', '.join(_describe(k) for k in parts)})"


# ----------------------------------------------------------------------------- gpjax calls
def _float():
    """JAX's default float dtype (float64 with `jax_enable_x64`, else float32)."""
    return jnp.result_type(float)


def _sde(kernel):
    # gpjax builds the constant parts of an SDE (the identity at dt = 0, ...) in the default
    # float dtype; float32 hyperparameters under x64 would make its `lax.cond` branches
    # disagree, so everything is computed in the default dtype.
    dtype = _float()
    kernel = jax.tree.map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, kernel)
    with jax.numpy_rank_promotion("allow"):
        return to_sde(kernel)


def _discretise(sde, dt):
    with jax.numpy_rank_promotion("allow"):
        return sde.discretise(dt)


def _time_steps(times):
    """`dt[0] = 0` (the filter starts from the stationary prior at `times[0]`, whatever its
    value), `dt[i] = t_i - t_{i-1}`."""
    times = times.astype(_float())
    return jnp.concatenate([jnp.zeros((1,), times.dtype), jnp.diff(times)])


def _inputs(residuals, noise_var, mask):
    """Mask, residuals and noise variances with safe values (0, 1) at missing points, so
    that neither the value nor the gradient sees what is stored there."""
    n = residuals.shape[0]
    dtype = _float()
    mask = jnp.ones(n, dtype=bool) if mask is None else mask
    r = jnp.where(mask, residuals, 0.0).astype(dtype)
    noise_var = jnp.where(mask, jnp.broadcast_to(noise_var, (n,)), 1.0).astype(dtype)
    return mask, r, noise_var


# ----------------------------------------------------------------------------- own filter
# gpjax's `kalman_filter` takes one noise standard deviation for every point and returns only
# the log marginal likelihood, and its smoother runs one QR per step; the per-point noise,
# the filtered trajectory and the smoother are therefore written here, in covariance form,
# with every interval's transition computed batched before the scans (they depend on dt
# only) and the small products written out (`small_linalg`), which XLA fuses into one kernel
# per step. A square-root filter (one QR per step: a LAPACK call each, and more under
# differentiation) made the log marginal 60-90 times and the leave-one-out terms 10-20 times
# a hand-written filter on a CPU (`benchmarks/RESULTS.md`, Markov-GP rows).
def _initial_state(sde, dtype):
    L0 = jnp.asarray(sde.stationary_state_cov_sqrt, dtype)
    return jnp.zeros((sde.state_dim,), dtype), L0


def _dtype(sde, *arrays):
    return jnp.result_type(float, sde.stationary_state_cov_sqrt, *arrays)


def _transitions(sde, dts, dtype):
    """Every interval's `A(dt)` and `L_Q(dt)` (`Q = L_Q L_Q'`), `(N, d, d)` each."""
    return jax.vmap(lambda dt: _discretise(sde, dt))(dts.astype(dtype))


def _cov_filter(sde, transitions, r, mask, noise_var, trajectory=False):
    """Covariance-form Kalman filter with per-point noise on the intervals' `transitions`
    (`_transitions`): the log marginal likelihood, and with `trajectory` also `(A, filtered
    means, covariances, predicted means, covariances)`, leading dim N."""
    A, L_Q = transitions
    dtype = A.dtype
    Q = small_linalg.batched_matmul_t(L_Q, L_Q)
    h = jnp.asarray(sde.observation_matrix, dtype)[0]  # (d,)
    mm = small_linalg.matmul

    def step(carry, x):
        m, P = carry
        A_k, Q_k, y, observed, nv = x
        m_pred = mm(A_k, m[:, None])[:, 0]
        P_pred = mm(mm(A_k, P), A_k.T) + Q_k
        Ph = mm(P_pred, h[:, None])[:, 0]
        s = jnp.sum(h * Ph) + nv
        gain = Ph / s
        innovation = y - jnp.sum(h * m_pred)
        # Joseph form for a scalar observation: (I - k h') P (I - k h')' + nv k k'; it keeps
        # P positive in float32, where `P - k k' s` can lose it after very precise points.
        IKH = jnp.eye(h.shape[0], dtype=dtype) - gain[:, None] * h[None, :]
        P_upd = mm(mm(IKH, P_pred), IKH.T) + nv * gain[:, None] * gain[None, :]
        P_upd = 0.5 * (P_upd + P_upd.T)
        log_lik = jnp.where(observed, -0.5 * (_LOG_2PI + jnp.log(s) + innovation**2 / s), 0.0)
        m_new = jnp.where(observed, m_pred + gain * innovation, m_pred)
        P_new = jnp.where(observed, P_upd, P_pred)
        out = (m_new, P_new, m_pred, P_pred, log_lik) if trajectory else log_lik
        return (m_new, P_new), out

    m0, L0 = _initial_state(sde, dtype)
    _, out = jax.lax.scan(
        step, (m0, L0 @ L0.T), (A, Q, r.astype(dtype), mask, noise_var.astype(dtype)))
    if not trajectory:
        return jnp.sum(out)
    ms, Ps, m_preds, P_preds, log_liks = out
    return jnp.sum(log_liks), (A, ms, Ps, m_preds, P_preds)


def _rts(forward, covariances=True):
    """Rauch-Tung-Striebel smoother in covariance form: smoothed means `(N, d)` and, with
    `covariances`, covariances `(N, d, d)`. The gains `G_k = P_k A_{k+1}' P_pred_{k+1}^{-1}`
    depend on the filter's covariances only, so they are solved for all steps at once,
    batched, before the backward scan."""
    A, ms, Ps, m_preds, P_preds = forward
    PAt = small_linalg.batched_matmul_t(Ps[:-1], A[1:])  # P_k A_{k+1}'
    G = jnp.swapaxes(jnp.linalg.solve(P_preds[1:], jnp.swapaxes(PAt, 1, 2)), 1, 2)
    mm = small_linalg.matmul

    def step(carry, x):
        m_next, P_next = carry
        m, P, m_pred, P_pred, G_k = x
        m_new = m + mm(G_k, (m_next - m_pred)[:, None])[:, 0]
        if not covariances:
            return (m_new, P_next), m_new
        P_new = P + mm(mm(G_k, P_next - P_pred), G_k.T)
        P_new = 0.5 * (P_new + P_new.T)
        return (m_new, P_new), (m_new, P_new)

    _, out = jax.lax.scan(step, (ms[-1], Ps[-1]),
                          (ms[:-1], Ps[:-1], m_preds[1:], P_preds[1:], G), reverse=True)
    if not covariances:
        return jnp.concatenate([out, ms[-1:]])
    return jnp.concatenate([out[0], ms[-1:]]), jnp.concatenate([out[1], Ps[-1:]])


def _prior_path(transitions, L0, key):
    """One draw of the state at every grid point from the GP prior `(N, d)`."""
    A, L_Q = transitions
    z = jax.random.normal(key, A.shape[:2], A.dtype)
    kicks = small_linalg.batched_matvec(L_Q, z)  # L_Q(dt_k) z_k

    def step(x, inputs):
        A_k, kick = inputs
        x = small_linalg.matmul(A_k, x[:, None])[:, 0] + kick
        return x, x

    x0 = L0 @ z[0]
    _, xs = jax.lax.scan(step, x0, (A[1:], kicks[1:]))
    return jnp.concatenate([x0[None], xs])


def _draw_states(sde, dts, r, mask, noise_var, key):
    """One draw of the states `(N, d)` given the observed residuals, by the simulation
    smoother of Durbin & Koopman (2002): with `x+`, `y+` drawn from the prior, `x+ +
    E[x | r - y+]` is distributed as `x | r`. One prior path, one filter and the smoother's
    means (gpjax has no backward sampler; this needs no factorisation of the conditional
    covariances, which are singular at repeated times)."""
    dtype = _dtype(sde, r, noise_var)
    transitions = _transitions(sde, dts, dtype)
    k_path, k_noise = jax.random.split(key)
    x_plus = _prior_path(transitions, _initial_state(sde, dtype)[1], k_path)
    h = jnp.asarray(sde.observation_matrix, dtype)[0]
    noise = jnp.sqrt(noise_var.astype(dtype)) * jax.random.normal(k_noise, r.shape, dtype)
    y_plus = x_plus @ h + noise
    _, forward = _cov_filter(sde, transitions, r.astype(dtype) - y_plus, mask, noise_var,
                             trajectory=True)
    return x_plus + _rts(forward, covariances=False)


# ----------------------------------------------------------------------------- public
def log_marginal(
    kernel,
    times: Float[Array, " N"],
    residuals: Float[Array, " N"],
    noise_var,
    mask: Bool[Array, " N"] | None = None,
) -> Float[Array, ""]:
    r"""$\log \mathcal N(r_{\text{obs}} \mid 0, K + \mathrm{diag}(\sigma^2))$ by Kalman
    filtering, in $O(N)$.

    **Arguments:**

    - `kernel`: a gpjax kernel with a state-space form (see `check_markov_kernel`).
    - `times`: `(N,)`, sorted increasing; need not start at 0.
    - `residuals`: `(N,)`, data minus simulator; ignored where `mask` is `False`.
    - `noise_var`: observation noise variance, scalar or `(N,)`, positive.
    - `mask`: `(N,)` bool, `True` = observed; missing points contribute nothing.

    **Returns:** the scalar log marginal likelihood, equal to
    `dense.log_marginal(dense.gram(kernel, times), residuals, noise_var, mask, jitter=0.0)`.

    The filter runs in covariance form on gpjax's exact discretisation of the kernel's SDE,
    all intervals' transitions computed before the scan (`_cov_filter`).
    """
    mask, r, nv = _inputs(residuals, noise_var, mask)
    sde = _sde(kernel)
    dts = _time_steps(times)
    return _cov_filter(sde, _transitions(sde, dts, _dtype(sde, r, nv)), r, mask, nv)


def _smoothed(sde, dts, r, mask, nv):
    """Smoothed mean and variance of delta = H x at every grid point."""
    transitions = _transitions(sde, dts, _dtype(sde, r, nv))
    _, forward = _cov_filter(sde, transitions, r, mask, nv, trajectory=True)
    means, Ps = _rts(forward)
    h = jnp.asarray(sde.observation_matrix, means.dtype)[0]
    Ph = small_linalg.batched_matvec(Ps, jnp.broadcast_to(h, means.shape))
    return means @ h, Ph @ h


def loo_pointwise(
    kernel,
    times: Float[Array, " N"],
    residuals: Float[Array, " N"],
    noise_var,
    mask: Bool[Array, " N"] | None = None,
) -> Float[Array, " N"]:
    r"""Leave-one-out predictive log densities $\log p(r_i \mid r_{-i})$, shape `(N,)`, in
    $O(N)$.

    Arguments as in `log_marginal`. From the smoothed marginal $\delta_i \mid r \sim
    \mathcal N(\mu_i, s_i)$ the own observation is removed in precision form,
    $1/v_{-i} = 1/s_i - 1/\sigma_i^2$, $m_{-i} = v_{-i}(\mu_i/s_i - r_i/\sigma_i^2)$, and
    $\log p(r_i \mid r_{-i}) = \log \mathcal N(r_i; m_{-i}, v_{-i} + \sigma_i^2)$; since
    $v_{-i} + \sigma_i^2 = \sigma_i^4 / (\sigma_i^2 - s_i)$ and $r_i - m_{-i} = \sigma_i^2
    (r_i - \mu_i) / (\sigma_i^2 - s_i)$, this is computed as $-\tfrac12[\log 2\pi +
    \log(\sigma_i^4 / (\sigma_i^2 - s_i)) + (r_i - \mu_i)^2 / (\sigma_i^2 - s_i)]$.
    Missing points get 0. Equal to `dense.loo_pointwise`; needs `noise_var > 0`.
    """
    mask, r, nv = _inputs(residuals, noise_var, mask)
    sde = _sde(kernel)
    mu, s = _smoothed(sde, _time_steps(times), r, mask, nv)
    gap = jnp.where(mask, nv - s, 1.0)  # Var(r_i - delta_i | r) > 0
    lp = -0.5 * (_LOG_2PI + 2.0 * jnp.log(nv) - jnp.log(gap) + (r - mu) ** 2 / gap)
    return jnp.where(mask, lp, 0.0)


def _merged(times, r, nv, mask, query_times):
    """Data and query points on one sorted grid (data first on ties); query points are
    unobserved. Returns the grid arrays and the grid positions of data and query points."""
    n, m = times.shape[0], query_times.shape[0]
    grid = jnp.concatenate([times.astype(_float()), query_times.astype(_float())])
    order = jnp.argsort(grid, stable=True)
    where = jnp.argsort(order)  # where[j] = grid position of point j
    obs = jnp.concatenate([mask, jnp.zeros((m,), bool)])[order]
    rr = jnp.concatenate([r, jnp.zeros((m,), r.dtype)])[order]
    vv = jnp.concatenate([nv, jnp.ones((m,), nv.dtype)])[order]
    return _time_steps(grid[order]), rr, obs, vv, where[:n], where[n:]


def conditional_marginals(
    kernel,
    times: Float[Array, " N"],
    residuals: Float[Array, " N"],
    noise_var,
    mask: Bool[Array, " N"] | None,
    query_times: Float[Array, " M"],
) -> tuple[Float[Array, " M"], Float[Array, " M"]]:
    r"""Posterior mean and variance of the discrepancy $\delta$ at `query_times` given the
    residuals, in $O(N + M)$ (RTS smoother on the merged grid).

    Arguments as in `log_marginal`; `query_times (M,)` in any order (they may coincide with
    data times). Returns `(mean (M,), var (M,))`: the mean and the diagonal of the
    covariance of `dense.conditional`. Pass `query_times=times` for the data times.
    """
    mask, r, nv = _inputs(residuals, noise_var, mask)
    sde = _sde(kernel)
    dts, rr, obs, vv, _, at_query = _merged(times, r, nv, mask, query_times)
    mean, var = _smoothed(sde, dts, rr, obs, vv)
    return mean[at_query], var[at_query]


def sample_posterior(
    key: PRNGKeyArray,
    kernel,
    times: Float[Array, " N"],
    residuals: Float[Array, " N"],
    noise_var,
    mask: Bool[Array, " N"] | None,
    query_times: Float[Array, " M"],
) -> tuple[Float[Array, " N"], Float[Array, " M"]]:
    r"""One joint draw of the discrepancy $\delta$ given the residuals, at the data times and
    at `query_times`, in $O(N + M)$.

    Arguments as in `conditional_marginals`, plus a PRNG `key`. The two grids are merged
    (query points unobserved) and the states drawn by the simulation smoother
    (`_draw_states`). Returns `(delta_at_times (N,), delta_at_query (M,))`, one
    draw from the Gaussian whose moments `dense.conditional` gives (missing data points are
    sampled too). `vmap` over keys for several draws.
    """
    mask, r, nv = _inputs(residuals, noise_var, mask)
    sde = _sde(kernel)
    dts, rr, obs, vv, at_times, at_query = _merged(times, r, nv, mask, query_times)
    xs = _draw_states(sde, dts, rr, obs, vv, key)
    delta = xs @ jnp.asarray(sde.observation_matrix, xs.dtype)[0]
    return delta[at_times], delta[at_query]
