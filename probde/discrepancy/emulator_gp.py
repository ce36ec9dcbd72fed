r"""Pure GP algebra of `GPEmulator`, one observable at a time (the callers vmap over
observables): the training covariance, its log marginal likelihood, conditioning, the
posterior at new inputs, and the compiled cores of `predict` and `training_log_marginal`.

Dense: $O(N^3)$ in the number $N$ of training points. The kernel is a stationary gpjax
kernel whose `lengthscale` and `variance` are replaced by plain arrays.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from ._linalg import _solve_lower_by_inverse
from .emulator_runs import _new_x

_LOG_2PI = math.log(2.0 * math.pi)


def _jitter(dtype) -> float:
    """Diagonal jitter relative to the signal variance, keyed by dtype."""
    return 1e-9 if jnp.dtype(dtype) == jnp.float64 else 1e-5


def _with_hyper(kernel, lengthscale, variance):
    """The gpjax kernel with its lengthscale and variance replaced by plain arrays."""
    return eqx.tree_at(lambda k: (k.lengthscale, k.variance), kernel, (lengthscale, variance))


def _train_cov(kernel, lengthscale, variance, noise, x):
    """`K(x, x) + (noise + jitter * variance) I` for one observable."""
    K = _with_hyper(kernel, lengthscale, variance).cross_covariance(x, x)
    nugget = noise + _jitter(K.dtype) * variance
    return K + nugget * jnp.eye(x.shape[0], dtype=K.dtype)


def _log_marginal(kernel, lengthscale, variance, noise, x, y):
    r"""$\log\mathcal N(y \mid 0, K + \text{nugget}\, I)$ of one standardised observable."""
    L = jnp.linalg.cholesky(_train_cov(kernel, lengthscale, variance, noise, x))
    a = jsl.solve_triangular(L, y, lower=True)
    return -0.5 * jnp.sum(a**2) - jnp.sum(jnp.log(jnp.diagonal(L))) - 0.5 * y.shape[0] * _LOG_2PI


def _condition(kernel, lengthscale, variance, noise, x, y):
    """Cholesky factor `L` of the training covariance and `alpha = C^{-1} y`."""
    L = jnp.linalg.cholesky(_train_cov(kernel, lengthscale, variance, noise, x))
    return L, jsl.cho_solve((L, True), y)


def _predict(kernel, lengthscale, variance, x, L, alpha, x_new, L_inv=None):
    """Posterior mean `(M,)` and covariance `(M, M)` of the latent GP at `x_new (M, D)`.

    With `L_inv` (the inverse of the Cholesky factor `L`), the triangular solve is done by
    matrix products (`_solve_lower_by_inverse`), without LAPACK; else by `trsm`."""
    k = _with_hyper(kernel, lengthscale, variance)
    Ks = k.cross_covariance(x_new, x)
    if L_inv is None:
        V = jsl.solve_triangular(L, Ks.T, lower=True)
    else:
        V = _solve_lower_by_inverse(L, L_inv, Ks.T)
    cov = k.cross_covariance(x_new, x_new) - V.T @ V
    return Ks @ alpha, 0.5 * (cov + cov.T)


# ------------------------------------------------- compiled cores of the public methods
# Module-level `eqx.filter_jit` functions of the emulator's arrays (passed as arguments, not
# closed over): a direct call compiles once per shape, a call inside a user's `jit` inlines.
@eqx.filter_jit
def _training_log_marginal(kernel, x, y, ls, var, noise):
    """Sum over observables of the log marginal likelihoods of the standardised runs."""
    lml = jax.vmap(_log_marginal, in_axes=(None, 0, 0, 0, None, 0))(kernel, ls, var, noise, x, y)
    return jnp.sum(lml)


def _finish(kernel_out, var, noise, scaling, include_noise):
    """Add the nugget if asked, undo the standardisation: `(T, O)`, `(O, T, T)`."""
    mean, cov = kernel_out
    if include_noise:
        nugget = noise + _jitter(cov.dtype) * var
        cov = cov + nugget[:, None, None] * jnp.eye(cov.shape[-1], dtype=cov.dtype)[None]
    loc, scale = scaling
    return (mean * scale[:, None] + loc[:, None]).T, cov * (scale**2)[:, None, None]


@eqx.filter_jit
def _predict_fitted(
    state, chol, chol_inv, alpha, ls, var, noise, scaling, t_range, times, theta, include_noise
):
    """`predict` at the fitted hyperparameters: the stored factors, solves by products."""
    kernel, x, lows, highs = state
    x_new = _new_x(lows, highs, t_range, times, theta)
    out = jax.vmap(_predict, in_axes=(None, 0, 0, None, 0, 0, None, 0))(
        kernel, ls, var, x, chol, alpha, x_new, chol_inv
    )
    return _finish(out, var, noise, scaling, include_noise)


@eqx.filter_jit
def _predict_hyper(state, y, ls, var, noise, scaling, t_range, times, theta, include_noise):
    """`predict` at hyperparameters `(ls, var, noise)`: the training covariance factorised
    again."""
    kernel, x, lows, highs = state
    chol, alpha = jax.vmap(_condition, in_axes=(None, 0, 0, 0, None, 0))(
        kernel, ls, var, noise, x, y
    )
    x_new = _new_x(lows, highs, t_range, times, theta)
    out = jax.vmap(_predict, in_axes=(None, 0, 0, None, 0, 0, None))(
        kernel, ls, var, x, chol, alpha, x_new
    )
    return _finish(out, var, noise, scaling, include_noise)
