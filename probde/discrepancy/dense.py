"""Dense Gaussian-process algebra for the discrepancy term: O(N^3) Cholesky.

These are pure, jit/vmap/grad-safe functions of one series (one experiment, one observable).
gpjax's `ConjugatePosterior` offers the same marginal likelihood, but only for the full data
of a `gpjax.Dataset` with a constant noise variance; probde needs a mask for missing values
with static shapes (so that one compiled program serves every posterior draw), the
leave-one-out predictive densities of a correlated Gaussian (for `az.loo`), and conditional
draws at new times, so the few lines of linear algebra are written here on top of the
kernel's own `cross_covariance`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

# In Python floats: `jnp.log` at import runs in float32 unless float64 was switched on
# before `import probde`, which put every log marginal up to 2e-7 nats off.
_LOG_2PI = math.log(2.0 * math.pi)


def gram(kernel, x, y=None):
    """Covariance matrix `k(x_i, y_j)` of a gpjax kernel on 1-D inputs `x (N,)`, `y (M,)`."""
    y = x if y is None else y
    return kernel.cross_covariance(jnp.reshape(x, (-1, 1)), jnp.reshape(y, (-1, 1)))


def _jitter(K, jitter):
    """Diagonal jitter relative to the mean prior variance (scale-free)."""
    scale = jnp.maximum(jnp.mean(jnp.diagonal(K)), jnp.finfo(K.dtype).tiny)
    return jitter * scale


def masked_covariance(K, noise_var, mask, jitter=1e-8):
    """`K + diag(noise_var) + jitter`, with the rows and columns of missing points replaced
    by those of the identity so that shapes stay static under `jit`."""
    n = K.shape[0]
    eye = jnp.eye(n, dtype=K.dtype)
    C = K + jnp.diag(jnp.broadcast_to(noise_var, (n,))) + _jitter(K, jitter) * eye
    both = mask[:, None] & mask[None, :]
    return jnp.where(both, C, eye)


def log_marginal(K, residuals, noise_var, mask=None, jitter=1e-8):
    r"""$\log \mathcal N(r_{\text{obs}} \mid 0, K + \sigma^2 I)$ over the observed points.

    `K (N, N)` prior covariance of the discrepancy at the data times, `residuals (N,)`
    (data minus simulator), `noise_var` scalar or `(N,)`, `mask (N,)` bool (`True` =
    observed). Missing points contribute nothing.
    """
    n = residuals.shape[0]
    mask = jnp.ones(n, dtype=bool) if mask is None else mask
    C = masked_covariance(K, noise_var, mask, jitter)
    r = jnp.where(mask, residuals, 0.0)
    L = jnp.linalg.cholesky(C)
    alpha = jsl.solve_triangular(L, r, lower=True)
    m = jnp.sum(mask)
    return (
        -0.5 * jnp.sum(alpha**2)
        - jnp.sum(jnp.where(mask, jnp.log(jnp.diagonal(L)), 0.0))
        - 0.5 * m * _LOG_2PI
    )


def loo_pointwise(K, residuals, noise_var, mask=None, jitter=1e-8):
    r"""Leave-one-out predictive log densities $\log p(r_i \mid r_{-i})$, shape `(N,)`.

    For a correlated Gaussian the pointwise terms that PSIS-LOO needs are these conditional
    densities, not the marginals: with $C = K + \sigma^2 I$, $g = C^{-1} r$ and
    $\bar c_{ii} = [C^{-1}]_{ii}$, $\log p(r_i\mid r_{-i}) = -\tfrac12\log 2\pi
    + \tfrac12\log\bar c_{ii} - \tfrac12 g_i^2/\bar c_{ii}$ (Bürkner, Gabry & Vehtari 2021,
    "Efficient leave-one-out cross-validation for Bayesian non-factorized normal and
    Student-t models"). Missing points get 0.
    """
    n = residuals.shape[0]
    mask = jnp.ones(n, dtype=bool) if mask is None else mask
    C = masked_covariance(K, noise_var, mask, jitter)
    r = jnp.where(mask, residuals, 0.0)
    cho = jsl.cho_factor(C, lower=True)
    Cinv = jsl.cho_solve(cho, jnp.eye(n, dtype=C.dtype))
    g = Cinv @ r
    cbar = jnp.diagonal(Cinv)
    lp = -0.5 * _LOG_2PI + 0.5 * jnp.log(cbar) - 0.5 * g**2 / cbar
    return jnp.where(mask, lp, 0.0)


def conditional(K, K_star, K_star_star, residuals, noise_var, mask=None, jitter=1e-8):
    r"""Posterior mean and covariance of the discrepancy at new points given the residuals.

    `K (N, N)` at the data, `K_star (M, N)` between new points and data, `K_star_star (M, M)`.
    Returns `(mean (M,), cov (M, M))` of $\delta_* \mid r$ with
    $r = \delta + \varepsilon$, $\varepsilon \sim \mathcal N(0, \mathrm{diag}(\text{noise\_var}))$.
    Pass `noise_var = 0` to condition on exact values of $\delta$.
    """
    n = residuals.shape[0]
    mask = jnp.ones(n, dtype=bool) if mask is None else mask
    C = masked_covariance(K, noise_var, mask, jitter)
    r = jnp.where(mask, residuals, 0.0)
    Ks = jnp.where(mask[None, :], K_star, 0.0)
    L = jnp.linalg.cholesky(C)
    alpha = jsl.cho_solve((L, True), r)
    V = jsl.solve_triangular(L, Ks.T, lower=True)
    mean = Ks @ alpha
    cov = K_star_star - V.T @ V
    return mean, 0.5 * (cov + cov.T)


def sample_mvn(key, mean, cov, jitter=1e-8):
    """One draw from `N(mean, cov)` for a possibly singular `cov` (eigen-decomposition, so a
    conditioned covariance with exact zeros, e.g. at a constraint, is sampled exactly)."""
    w, V = jnp.linalg.eigh(0.5 * (cov + cov.T))
    w = jnp.clip(w, 0.0, None)
    z = jax.random.normal(key, mean.shape, dtype=mean.dtype)
    return mean + V @ (jnp.sqrt(w) * z)
