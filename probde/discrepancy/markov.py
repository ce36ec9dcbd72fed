r"""State-space (Markovian) Gaussian-process algebra for the discrepancy term: O(N) Kalman.

The same quantities as `probde.discrepancy.dense`, for kernels with a finite-dimensional
linear-SDE form, computed by Kalman filtering and smoothing in $O(N d^3)$ time and $O(N d^2)$
memory ($d$ = state dimension: 1, 2, 3 for Matérn-1/2, 3/2, 5/2) instead of $O(N^3)$ and
$O(N^2)$. They are pure, jit/vmap/grad-safe functions of one series whose `times` are sorted
increasing (irregular spacing and repeated times are fine); shapes are static and `mask`
(bool, `True` = observed) removes points without changing shapes.

gpjax 1.0 supplies the model: `gpjax.state_space.to_sde(kernel)` gives the SDE and its exact
discretisation `(A(dt), L_Q(dt))`, and `rts_smoother` the square-root smoother. The log
marginal likelihood, evaluated at every gradient of a sampler, runs a covariance-form filter
written here, with all intervals' transitions computed before its scan: gpjax's
`kalman_filter` (one QR per step, one noise variance for all points) was 60-90 times slower
than a hand-written filter on a CPU. The filtered trajectory that the smoother, the
leave-one-out terms and backward sampling need comes from a square-root filter of our own on
the same `discretise` (gpjax's returns only the log marginal likelihood).

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
import jax.scipy.linalg as jsl
from gpjax.kernels import Periodic
from gpjax.kernels.base import AbstractKernel
from gpjax.state_space import to_sde
from gpjax.state_space.inference import rts_smoother
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


def _tria(M):
    """Lower-triangular `T` with `T T^T = M M^T` (QR of `M^T`; diagonal signs arbitrary)."""
    _, R = jnp.linalg.qr(M.T, mode="reduced")
    return R.T


# ----------------------------------------------------------------------------- own filter
# gpjax's `kalman_filter` takes one noise standard deviation for every point and returns only
# the log marginal likelihood, so the per-point noise and the filtered trajectory (for the
# smoother, leave-one-out and backward sampling) need this square-root filter of our own.
def _filter_step(sde, carry, inputs):
    """One predict + (masked) update of a square-root Kalman filter with per-point noise."""
    m, L = carry
    dt, y, observed, noise_sd = inputs
    d = m.shape[0]
    A, L_Q = _discretise(sde, dt)
    m_pred = A @ m
    L_pred = _tria(jnp.concatenate([A @ L, L_Q], axis=1))
    H = sde.observation_matrix  # (1, d)
    # Array form of the scalar update: tria([[sd, H L], [0, L]]) = [[s, 0], [k, L_new]] with
    # s^2 the innovation variance, k / s the Kalman gain, L_new the updated square root.
    pre = jnp.concatenate(
        [
            jnp.concatenate([jnp.reshape(noise_sd, (1, 1)), H @ L_pred], axis=1),
            jnp.concatenate([jnp.zeros((d, 1), L_pred.dtype), L_pred], axis=1),
        ],
        axis=0,
    )
    post = _tria(pre)
    s = post[0, 0]
    gain = post[1:, 0] / s
    innovation = y - (H @ m_pred)[0]
    m_upd = m_pred + gain * innovation
    L_upd = post[1:, 1:]
    log_lik = -0.5 * (_LOG_2PI + jnp.log(s**2) + (innovation / s) ** 2)
    m_new = jnp.where(observed, m_upd, m_pred)
    L_new = jnp.where(observed, L_upd, L_pred)
    return (m_new, L_new), (m_new, L_new, m_pred, L_pred, jnp.where(observed, log_lik, 0.0))


def _initial_state(sde, dtype):
    L0 = jnp.asarray(sde.stationary_state_cov_sqrt, dtype)
    return jnp.zeros((sde.state_dim,), dtype), L0


def _dtype(sde, *arrays):
    return jnp.result_type(float, sde.stationary_state_cov_sqrt, *arrays)


def _filter(sde, dts, r, mask, noise_var):
    """Full filtered trajectory `(means, Ls, predicted means, predicted Ls)` and log
    marginal likelihood, in the layout `gpjax...rts_smoother` expects."""
    dtype = _dtype(sde, r, noise_var)
    inputs = (dts, r.astype(dtype), mask, jnp.sqrt(noise_var).astype(dtype))
    _, (ms, Ls, m_preds, L_preds, log_liks) = jax.lax.scan(
        lambda c, x: _filter_step(sde, c, x), _initial_state(sde, dtype), inputs
    )
    return (ms, Ls, m_preds, L_preds), jnp.sum(log_liks)


def _log_marginal_scan(sde, dts, r, mask, noise_var):
    """Log marginal likelihood with per-point noise, the hot path of sampling (one call per
    gradient). All intervals' transitions `A(dt)`, `Q(dt)` are computed at once, batched,
    before the scan (they depend on dt only); the scan then moves the covariance-form
    moments with the small products written out (`small_linalg`), which XLA fuses into one
    kernel per step. The square-root filter above, one QR per step (a LAPACK call each, and
    more under differentiation), made this 60-90 times a hand-written filter on a CPU
    (`benchmarks/RESULTS.md`, Markov-GP rows); its trajectory is still what the smoother,
    the leave-one-out terms and backward sampling use."""
    dtype = _dtype(sde, r, noise_var)
    A, L_Q = jax.vmap(lambda dt: _discretise(sde, dt))(dts.astype(dtype))
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
        log_lik = -0.5 * (_LOG_2PI + jnp.log(s) + innovation**2 / s)
        m_new = jnp.where(observed, m_pred + gain * innovation, m_pred)
        P_new = jnp.where(observed, P_upd, P_pred)
        return (m_new, P_new), jnp.where(observed, log_lik, 0.0)

    m0, L0 = _initial_state(sde, dtype)
    init = (m0, L0 @ L0.T)
    _, log_liks = jax.lax.scan(
        step, init, (A, Q, r.astype(dtype), mask, noise_var.astype(dtype)))
    return jnp.sum(log_liks)


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
    all intervals' transitions computed before the scan (`_log_marginal_scan`).
    """
    mask, r, nv = _inputs(residuals, noise_var, mask)
    return _log_marginal_scan(_sde(kernel), _time_steps(times), r, mask, nv)


def _smoothed(sde, dts, r, mask, nv):
    """Smoothed mean and variance of delta = H x at every grid point."""
    forward, _ = _filter(sde, dts, r, mask, nv)
    with jax.numpy_rank_promotion("allow"):
        means, Ls = rts_smoother(sde, forward, dts)
    h = sde.observation_matrix[0]
    mean = means @ h
    var = jnp.sum(jnp.einsum("d,nde->ne", h, Ls) ** 2, axis=-1)
    return mean, var


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


# gpjax has no backward sampler; forward-filter backward-sample (Frühwirth-Schnatter 1994,
# Carter & Kohn 1994) in square-root form on the same discretisation.
def _backward_sample(sde, forward, dts, key):
    ms, Ls, _, _ = forward
    n, d = ms.shape
    z = jax.random.normal(key, (n, d), ms.dtype)
    x_last = ms[-1] + Ls[-1] @ z[-1]

    def step(x_next, inputs):
        m, L, dt_next, zi = inputs
        A, L_Q = _discretise(sde, dt_next)
        # tria([[L_Q, A L], [0, L]]) = [[X, 0], [Y, Z]]: X X^T = P_pred(next), Y X^T = P A^T,
        # so the gain is G = Y X^{-1} and Z Z^T = P - G P_pred G^T, the covariance of
        # x | x_next, y_{1:i}.
        pre = jnp.concatenate(
            [
                jnp.concatenate([L_Q, A @ L], axis=1),
                jnp.concatenate([jnp.zeros((d, L_Q.shape[1]), L.dtype), L], axis=1),
            ],
            axis=0,
        )
        post = _tria(pre)
        X, Y, Z = post[:d, :d], post[d:, :d], post[d:, d:]
        gain = jsl.solve_triangular(X, Y.T, lower=True, trans="T").T
        x = m + gain @ (x_next - A @ m) + Z @ zi
        return x, x

    inputs = (ms[:-1], Ls[:-1], dts[1:], z[:-1])
    _, xs = jax.lax.scan(step, x_last, inputs, reverse=True)
    return jnp.concatenate([xs, x_last[None, :]], axis=0)


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
    (query points unobserved), filtered forward, and the state sampled backward from
    $x_i \mid x_{i+1}, r_{1:i}$. Returns `(delta_at_times (N,), delta_at_query (M,))`, one
    draw from the Gaussian whose moments `dense.conditional` gives (missing data points are
    sampled too). `vmap` over keys for several draws.
    """
    mask, r, nv = _inputs(residuals, noise_var, mask)
    sde = _sde(kernel)
    dts, rr, obs, vv, at_times, at_query = _merged(times, r, nv, mask, query_times)
    forward, _ = _filter(sde, dts, rr, obs, vv)
    xs = _backward_sample(sde, forward, dts, key)
    delta = xs @ sde.observation_matrix[0]
    return delta[at_times], delta[at_query]
