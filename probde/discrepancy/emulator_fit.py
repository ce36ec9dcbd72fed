"""Fitting `GPEmulator`'s hyperparameters: weak LogNormal priors on the
log-hyperparameters, their MAP by L-BFGS-B (scipy) for each observable, conditioning on the
training runs, and predictions at the held-out runs for the diagnostics.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import numpyro.distributions as dist
import scipy.optimize

from .emulator_gp import _condition, _jitter, _log_marginal, _predict

# Weak priors on the hyperparameters, in the emulator's scaled units: inputs in the unit
# cube, outputs standardised. (loc, scale) of LogNormal distributions.
_LENGTHSCALE_PRIOR = (0.0, 1.5)  # median 1 (the design's range), 95% within [0.05, 19]
_VARIANCE_PRIOR = (0.0, 1.5)  # median 1 (the outputs' sample variance)
_NOISE_PRIOR = (math.log(1e-4), 3.0)  # median 1e-4: a 1% noise standard deviation
# Box of the log-hyperparameters for the MAP fit (keeps L-BFGS-B away from degenerate GPs).
_LOG_BOUNDS = {
    "lengthscale": (math.log(1e-3), math.log(1e3)),
    "variance": (math.log(1e-4), math.log(1e4)),
    "noise": (math.log(1e-12), math.log(1.0)),
}


def _log_prior(u, fit_noise):
    """Log density of the log-hyperparameters `u` under the LogNormal priors (Normal in u)."""
    D = u.shape[0] - (2 if fit_noise else 1)
    lp = jnp.sum(dist.Normal(*_LENGTHSCALE_PRIOR).log_prob(u[:D]))
    lp = lp + dist.Normal(*_VARIANCE_PRIOR).log_prob(u[D])
    if fit_noise:
        lp = lp + dist.Normal(*_NOISE_PRIOR).log_prob(u[D + 1])
    return lp


def _unpack(u, noise, fit_noise):
    """Constrained `(lengthscale, variance, noise)` from the log-hyperparameters `u`."""
    D = u.shape[0] - (2 if fit_noise else 1)
    return jnp.exp(u[:D]), jnp.exp(u[D]), (jnp.exp(u[D + 1]) if fit_noise else noise)


def _hyperparameter_priors(n_obs, D, fit_noise) -> dict[str, dist.Distribution]:
    """The priors of `GPEmulator.hyperparameter_priors`: LogNormal `lengthscale (O, D)`,
    `variance (O,)` and, when fitted, `noise (O,)`."""
    priors = {
        "lengthscale": dist.LogNormal(
            jnp.full((n_obs, D), _LENGTHSCALE_PRIOR[0]), _LENGTHSCALE_PRIOR[1]
        ),
        "variance": dist.LogNormal(jnp.full((n_obs,), _VARIANCE_PRIOR[0]), _VARIANCE_PRIOR[1]),
    }
    if fit_noise:
        priors["noise"] = dist.LogNormal(jnp.full((n_obs,), _NOISE_PRIOR[0]), _NOISE_PRIOR[1])
    return priors


def _fit_hyper(kernel, x, y, noise, fit_noise):
    """MAP hyperparameters of each observable's GP by L-BFGS-B in log space."""
    D = x.shape[1]
    dtype = x.dtype
    objective = _objective(kernel, x, noise, fit_noise)
    box = [_LOG_BOUNDS["lengthscale"]] * D + [_LOG_BOUNDS["variance"]]
    if fit_noise:
        box.append(_LOG_BOUNDS["noise"])
    starts = []
    for ls0 in (0.2, 0.5, 1.0):
        u0 = [math.log(ls0)] * D + [0.0] + ([math.log(1e-4)] if fit_noise else [])
        starts.append(np.asarray(u0))

    hyper = {"lengthscale": [], "variance": [], "noise": []}
    for o in range(y.shape[0]):
        y_o = y[o]
        u0 = min(starts, key=lambda u: objective(u, y_o)[0])
        res = scipy.optimize.minimize(
            objective,
            u0,
            args=(y_o,),
            jac=True,
            method="L-BFGS-B",
            bounds=box,
            options={"maxiter": 500},
        )
        if not np.isfinite(res.fun) or res.fun >= 1e30:
            raise RuntimeError(
                f"the emulator's hyperparameter fit failed for observable {o}: the training "
                "covariance is not positive definite; raise noise= or use noise='fit'"
            )
        ls, var, nz = _unpack(jnp.asarray(res.x, dtype=dtype), noise, fit_noise)
        hyper["lengthscale"].append(np.asarray(ls))
        hyper["variance"].append(float(var))
        hyper["noise"].append(float(nz))
    return {k: np.asarray(v, dtype=dtype) for k, v in hyper.items()}


def _objective(kernel, x, noise, fit_noise):
    """`objective(u, y_o) -> (value, gradient)` for scipy: the negative log posterior of
    the log-hyperparameters `u` of one observable's GP, as floats; a huge value and a zero
    gradient where it is not finite."""
    dtype = x.dtype

    def neg_log_post(u, y_o):
        ls, var, nz = _unpack(u, noise, fit_noise)
        return -(_log_marginal(kernel, ls, var, nz, x, y_o) + _log_prior(u, fit_noise))

    value_and_grad = jax.jit(jax.value_and_grad(neg_log_post))

    def objective(u, y_o):
        v, g = value_and_grad(jnp.asarray(u, dtype=dtype), y_o)
        v, g = float(v), np.asarray(g, dtype=float)
        if not (np.isfinite(v) and np.all(np.isfinite(g))):
            return 1e30, np.zeros_like(g)  # a failed Cholesky: tell L-BFGS-B to step back
        return v, g

    return objective


def _condition_all(kernel, hyper, x, y):
    """Cholesky factors `(O, N, N)`, `alpha (O, N)` and the factors' inverses `(O, N, N)`."""
    ls, var, nz = (jnp.asarray(hyper[k]) for k in ("lengthscale", "variance", "noise"))

    def condition(kernel, ls, var, nz, x, y):
        L, alpha = _condition(kernel, ls, var, nz, x, y)
        eye = jnp.eye(L.shape[0], dtype=L.dtype)
        return L, alpha, jsl.solve_triangular(L, eye, lower=True)

    condition = jax.vmap(condition, in_axes=(None, 0, 0, 0, None, 0))
    return jax.jit(condition)(kernel, ls, var, nz, x, y)


def _held_out_predictions(kernel, hyper, x_fit, y_fit, x_held):
    """Standardised predictive means and sds (nugget included) at held-out runs:
    `x_held (m, T, D)` -> `(O, m, T)` each."""
    ls, var, nz = (jnp.asarray(hyper[k]) for k in ("lengthscale", "variance", "noise"))
    x_fit, y_fit = jnp.asarray(x_fit), jnp.asarray(y_fit)

    @jax.jit
    def run(ls, var, nz, y_o):
        L, alpha = _condition(kernel, ls, var, nz, x_fit, y_o)

        def one(x_new):
            mean, cov = _predict(kernel, ls, var, x_fit, L, alpha, x_new)
            return mean, jnp.sqrt(jnp.clip(jnp.diagonal(cov), 0.0) + nz + _jitter(cov.dtype) * var)

        return jax.vmap(one)(jnp.asarray(x_held))

    out = [run(ls[o], var[o], nz[o], y_fit[o]) for o in range(ls.shape[0])]
    means, sds = zip(*out, strict=True)
    return np.stack(means), np.stack(sds)


def _held_out_diagnostics(runs, kernel, hyper, x_fit, y_fit):
    """`EmulatorDiagnostics` at the held-out runs of `runs` (a split `_TrainingRuns`), from
    the GPs with hyperparameters `hyper` conditioned on the training points."""
    held, T = runs.held_idx.shape[0], runs.times.shape[0]
    x_held = runs.inputs(runs.held_idx).reshape(held, T, -1)
    mean, sd = _held_out_predictions(kernel, hyper, x_fit, y_fit, x_held)
    return runs.diagnostics(np.transpose(mean, (1, 2, 0)), np.transpose(sd, (1, 2, 0)))
