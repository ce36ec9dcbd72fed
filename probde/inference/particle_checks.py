"""The particle filter's checks at fixed parameters: how noisy its estimate is
(`ParticleFilter.check_noise`) and whether its step is fine enough
(`ParticleFilter.check_discretisation`)."""

from __future__ import annotations

import dataclasses
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import correlation as check_correlation
from .._checks import integer_at_least
from ..model import auxiliary
from .likelihood import log_likelihood


@dataclasses.dataclass(frozen=True)
class NoiseCheck:
    """Result of `ParticleFilter.check_noise`.

    - `log_lik` `(num_seeds,)`: independent estimates of the log-likelihood; `sd`: their
      standard deviation.
    - `difference` `(num_seeds,)` (with `correlation > 0`, else None): each estimate's
      change when its random numbers take one Crank-Nicolson step of `correlation` at the
      same parameters; `difference_sd`: its standard deviation.
    - `num_particles`, `correlation`: the settings measured.
    """

    log_lik: np.ndarray
    sd: float
    difference: np.ndarray | None
    difference_sd: float | None
    num_particles: int
    correlation: float

    def particles_for(self, target_sd: float = 1.2) -> int:
        """Particles for a spread of `target_sd`, assuming variance proportional to 1 /
        particles: of the estimate without correlation (about 1-1.7 is efficient for
        pseudo-marginal MCMC, Doucet et al. 2015), of the difference with it (the noise
        the acceptance ratio sees). A rule of thumb: measure again at the suggestion."""
        sd = self.sd if self.difference_sd is None else self.difference_sd
        if not np.isfinite(sd):
            raise ValueError(f"the measured spread is not finite ({sd}): no suggestion")
        return max(1, math.ceil(self.num_particles * (sd / target_sd) ** 2))


@dataclasses.dataclass(frozen=True)
class DiscretisationCheck:
    """Result of `ParticleFilter.check_discretisation`.

    - `log_lik`, `log_lik_refined` `(num_seeds,)`: the estimates at the filter's step and
      at half of it.
    - `difference`: mean of the refined minus mean of the others (nats);
      `standard_error`: its Monte Carlo standard error.
    - `agrees`: `|difference| <= z * standard_error`.
    """

    log_lik: np.ndarray
    log_lik_refined: np.ndarray
    difference: float
    standard_error: float
    agrees: bool


def _estimates(pf, model, data, params, keys):
    """One log-likelihood estimate of `model` with the filter `pf` per key, in one
    compiled, vmapped call."""
    m = _with_likelihood(model, pf)
    return np.asarray(jax.jit(jax.vmap(
        lambda k: log_likelihood(m, data, params, seed=k)))(keys))


def _noise_check(pf, model, data, params, num_seeds, seed, correlation) -> NoiseCheck:
    """`ParticleFilter.check_noise`."""
    integer_at_least("num_seeds", num_seeds, 2)
    correlation = check_correlation(correlation)
    params = {k: jnp.asarray(v) for k, v in params.items()}
    m = _with_likelihood(model, pf)
    keys = jax.random.split(jax.random.PRNGKey(seed), 2 * num_seeds)
    if correlation == 0.0:
        est = _estimates(pf, model, data, params, keys[:num_seeds])
        return NoiseCheck(est, float(np.std(est, ddof=1)), None, None, pf.num_particles, 0.0)
    record = auxiliary.supply_normals()

    def probe(k):
        with record:
            return log_likelihood(m, data, params, seed=k)

    jax.eval_shape(probe, keys[0])
    if record.spec is None:
        raise ValueError(
            "correlation > 0 needs the filter to run on common random numbers: give an SDE "
            "not declared linear a fixed ParticleFilter(num_steps=...)")

    def pair(k, k_eps):
        u = auxiliary.standard_normals(k, record.spec)
        eps = auxiliary.standard_normals(k_eps, record.spec)
        v = jax.tree.map(lambda a, b: correlation * a + math.sqrt(1 - correlation**2) * b,
                         u, eps)
        with auxiliary.supply_normals(values=u):
            a = log_likelihood(m, data, params, seed=k)
        with auxiliary.supply_normals(values=v):
            b = log_likelihood(m, data, params, seed=k)
        return a, b - a

    # One set of normals at a time: they can be large (particles x times x steps).
    run = jax.jit(pair)
    out = [run(keys[i], keys[num_seeds + i]) for i in range(num_seeds)]
    est = np.array([float(a) for a, _ in out])
    diff = np.array([float(d) for _, d in out])
    return NoiseCheck(est, float(np.std(est, ddof=1)), diff, float(np.std(diff, ddof=1)),
                      pf.num_particles, float(correlation))


def _discretisation_check(pf, model, data, params, num_seeds, seed, z, num_particles
                          ) -> DiscretisationCheck:
    """`ParticleFilter.check_discretisation`."""
    integer_at_least("num_seeds", num_seeds, 2)
    params = {k: jnp.asarray(v) for k, v in params.items()}
    keys = jax.random.split(jax.random.PRNGKey(seed), 2 * num_seeds)
    coarse = pf if num_particles is None else dataclasses.replace(
        pf, num_particles=num_particles)

    fine = coarse.refined()
    a = _estimates(coarse, model, data, params, keys[:num_seeds])
    b = _estimates(fine, model, data, params, keys[num_seeds:])
    ok_a, ok_b = np.isfinite(a), np.isfinite(b)
    if ok_a.sum() < 2 or ok_b.sum() < 2:
        diff, se = float("nan"), float("nan")
    else:
        diff = float(b[ok_b].mean() - a[ok_a].mean())
        se = float(np.sqrt(a[ok_a].var(ddof=1) / ok_a.sum() + b[ok_b].var(ddof=1) / ok_b.sum()))
    agrees = bool(np.isfinite(diff) and abs(diff) <= z * se)
    if not agrees:
        now = (f"num_steps={pf.num_steps}" if pf.num_steps is not None else
               f"num_steps=None (the default rule, steps_per_time_scale="
               f"{pf.steps_per_time_scale:g}, max_steps={pf.max_steps})")
        fix = (f"num_steps={fine.num_steps}" if pf.num_steps is not None else
               f"steps_per_time_scale={fine.steps_per_time_scale:g}, "
               f"max_steps={fine.max_steps}, or an explicit num_steps")
        detail = (f"differs by {diff:.3g} nats (standard error {se:.2g})"
                  if np.isfinite(diff) else "failed (non-finite estimates)")
        warnings.warn(
            f"the particle filter's log-likelihood with {now} {detail} when the step is "
            f"halved: it is biased by the SDE's discretisation. Raise "
            f"ParticleFilter({fix}) until the check passes"
            + (" (or declare linear=True if the SDE is linear)" if not
               getattr(model.dynamics, "linear", False) else ""),
            stacklevel=3,
        )
    return DiscretisationCheck(a, b, diff, se, agrees)


def _with_likelihood(model, likelihood):
    """A shallow copy of `model` whose SDE likelihood is `likelihood`."""
    import copy

    m = copy.copy(model)
    m.likelihood = likelihood
    return m
