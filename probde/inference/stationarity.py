"""Is a fitted Gaussian guide at its optimum? The ELBO's gradient along moves that stay in
the guide's family, estimated from the model's gradient at the guide's draws.

Why this check exists: a fit can stop short where neither the loss nor the parameters show
it. Under the default schedule the learning rate, not the gradient, limits the last steps,
so the guide's parameters barely move between windows even when they are far from the
optimum (a one-parameter fit started at scale 0.1 ended 3000 steps four times too wide, its
scale moving by about 1% per window, within its jitter). The gradient does not shrink with
the learning rate: it says how far the optimum is, whatever the optimiser did.

The moves: for a guide q with location m and draws z = m + e, shifting every draw by a
vector a and stretching each coordinate's deviation by exp(b_i), z' = m + a + exp(b) * e,
maps q to another member of the same family (the mean-field, full-rank and low-rank
Gaussians are all closed under a shift and a diagonal rescaling). With U the model's
negative log density in the unconstrained space (numpyro's potential energy), the negative
ELBO's derivatives at a = b = 0 are

    d/da_i = E_q[dU/dz_i],        d/db_i = E_q[dU/dz_i (z_i - m_i)] - 1,

and both are zero at the family's optimum, for any posterior, Gaussian or not. For a
Gaussian posterior N(mu, P^-1) and a guide with covariance S: d/da = P (m - mu), whose
Newton step `S d/da` is the location's offset (exact when S = P^-1); and
d/db_i = (P S)_ii - 1, which is r^2 - 1 for a guide sd r times the optimum's, about twice
the relative error of the scale.

`check` estimates both from `num_draws` draws and reports, per unconstrained coordinate,
`loc_offset = (S d/da)_i / sd_i` (about the location's distance from the optimum, in sds)
and `scale_offset = (d/db_i) / 2` (about the scale's relative error), each with its Monte
Carlo standard error.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax import lax, random
from numpyro import distributions as dist
from numpyro.infer.autoguide import AutoNormal
from scipy.stats import norm

from .guide_draws import flat_potential
from .guides import guide_moments

# Draws for the estimates: the Monte Carlo standard error of `loc_offset` is about
# 1 / sqrt(_NUM_DRAWS) = 0.03 sd for a Gaussian posterior, that of `scale_offset`
# about 1 / sqrt(2 * _NUM_DRAWS) = 0.02.
NUM_DRAWS = 1000
# A coordinate is off when its offset's magnitude exceeds this tolerance (sds for the
# location, relative for the scale) plus z standard errors, z at a family-wise false-alarm
# rate of 1% over all coordinates and both kinds (Bonferroni).
_TOL = 0.1
_FALSE_ALARM = 0.01


@dataclasses.dataclass(frozen=True)
class Stationarity:
    """The estimates of `check`, per unconstrained coordinate: `loc_offset`,
    `scale_offset` and their standard errors `loc_offset_se`, `scale_offset_se`; `used`
    draws had a finite gradient (of `num_draws`)."""

    loc_offset: np.ndarray
    scale_offset: np.ndarray
    loc_offset_se: np.ndarray
    scale_offset_se: np.ndarray
    used: int
    num_draws: int

    def off(self):
        """Boolean masks `(loc, scale)`: the coordinates whose offset exceeds `_TOL`
        plus z standard errors (z from a 1% family-wise false-alarm rate)."""
        z = norm.isf(_FALSE_ALARM / (2 * 2 * self.loc_offset.size))
        loc = np.abs(self.loc_offset) > _TOL + z * self.loc_offset_se
        scale = np.abs(self.scale_offset) > _TOL + z * self.scale_offset_se
        return loc, scale


def guide_distribution(guide, params, names):
    """The fitted Gaussian guide as one distribution over the flat unconstrained vector
    (sites `names` in the model's order): independent normals for `AutoNormal`, numpyro's
    own posterior for the full-rank and low-rank guides."""
    if isinstance(guide, AutoNormal):
        loc, scale = guide_moments(guide, names)(params)
        return dist.Normal(loc, scale).to_event(1)
    return guide.get_posterior(params)


def _covariance(q):
    if isinstance(q, dist.Independent):
        return None  # diagonal: the Newton step is the variance times the gradient
    return q.covariance_matrix


def check(model_fn, guide, params, shapes, key, model_kwargs, num_draws=NUM_DRAWS):
    """`Stationarity` of the fitted Gaussian `guide` (its constrained `params`) for the
    model `model_fn` with latent sites `{name: unconstrained shape}` `shapes`: the model's
    gradient at `num_draws` draws of the guide (draws where it is not finite, failed
    solves, are left out); `None` when fewer than 10 draws remain."""
    q = guide_distribution(guide, params, list(shapes))
    energy = flat_potential(model_fn, model_kwargs, shapes)
    z = jax.vmap(q.sample)(random.split(key, num_draws))
    grads = jax.jit(lambda zs: lax.map(jax.grad(energy), zs, batch_size=min(num_draws, 64)))(z)
    z, grads = np.asarray(z, dtype=float), np.asarray(grads, dtype=float)
    ok = np.all(np.isfinite(grads), axis=1)
    if ok.sum() < 10:
        return None
    z, grads = z[ok], grads[ok]
    m = np.asarray(q.mean, dtype=float)
    sd = np.sqrt(np.asarray(q.variance, dtype=float))
    cov = _covariance(q)
    # per-draw Newton steps of the location, in sds, and the scale's per-draw terms
    step = grads * sd**2 if cov is None else grads @ np.asarray(cov, dtype=float)
    loc_terms = step / sd
    scale_terms = 0.5 * (grads * (z - m) - 1.0)
    n = loc_terms.shape[0]
    return Stationarity(
        loc_offset=loc_terms.mean(0), scale_offset=scale_terms.mean(0),
        loc_offset_se=loc_terms.std(0, ddof=1) / np.sqrt(n),
        scale_offset_se=scale_terms.std(0, ddof=1) / np.sqrt(n),
        used=int(n), num_draws=int(num_draws),
    )
