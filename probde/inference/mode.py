"""The posterior mode and the Laplace approximation there as starting points: for MCMC
(`NUTS(init="map")`) and for the Gaussian guides of `probde.SVI(init="laplace")`.

Kept apart from the method classes: `probde.NUTS` uses it, and it uses the same fitting
code as `probde.Laplace` (whose defaults, `LAPLACE_NUM_STEPS` and
`LAPLACE_LEARNING_RATE`, live here), so neither methods module imports the other.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import random

from numpyro import handlers
from numpyro.infer.util import log_density, unconstrain_fn

from .._optim import default_optimizer
from ._options import check_init_radius
from .guide_draws import flat_labels, flat_potential, guide_draws, site_kinds
from .guide_fit import fit
from .guides import laplace_guide
from .loss_trace import check_fit

# `probde.Laplace`'s defaults, which the mode search of `NUTS(init="map")` uses too.
LAPLACE_NUM_STEPS = 2000
LAPLACE_LEARNING_RATE = 1e-2


def laplace_starts(model_fn, key, num_chains, model_kwargs, init_radius, progress_bar):
    """Starting points for MCMC chains from the Laplace approximation (`NUTS(init="map")`):
    the MAP found by `probde.Laplace` (default settings), then one draw per chain from
    the normal approximation there, in the unconstrained space (the form numpyro's
    `MCMC.run(init_params=...)` takes), with a leading chain dimension when
    `num_chains > 1`. Draws whose log density is not finite are replaced by the MAP."""
    key_fit, key_draw = random.split(key)
    guide, params, losses, skipped = find_mode(model_fn, key_fit, model_kwargs, init_radius,
                                               progress_bar)
    check_fit("NUTS(init='map')", losses, skipped, LAPLACE_NUM_STEPS)
    latent, _ = site_kinds(model_fn, model_kwargs)
    drawn = guide_draws(guide, params, key_draw, num_chains + 1, latent, model_kwargs)
    mode = guide.median(params)
    seeded = handlers.seed(model_fn, rng_seed=0)

    def unconstrained(sample):
        return unconstrain_fn(seeded, (), model_kwargs, sample)

    def finite(sample):
        return jnp.isfinite(log_density(seeded, (), model_kwargs, sample)[0])

    ok = np.asarray(jax.vmap(finite)({k: v[:num_chains] for k, v in drawn.items()}))
    starts = jax.vmap(unconstrained)({k: v[:num_chains] for k, v in drawn.items()})
    at_mode = unconstrained({k: mode[k] for k in latent})
    starts = {
        k: jnp.where(jnp.reshape(ok, (-1,) + (1,) * (v.ndim - 1)), v, at_mode[k][None])
        for k, v in starts.items()
    }
    if num_chains == 1:
        starts = {k: v[0] for k, v in starts.items()}
    return starts


@dataclasses.dataclass(frozen=True)
class LaplaceGaussian:
    """The Laplace approximation as a Gaussian in the unconstrained space, flattened in the
    model's order of latent sites (numpyro's autoguides flatten in the same order).

    - `names`, `shapes`: the latent sites and their unconstrained shapes;
    - `labels`: one label per flat coordinate (`"beta[0]"`, `"mu"`);
    - `loc`: the mode, flat, unconstrained;
    - `precision`: the Hessian of the negative log density (numpyro's potential energy) in
      the unconstrained space at `loc`;
    - `flat_directions`: the labels of the coordinates along which the Hessian is not
      positive definite (empty when it is); then the approximation must not be used;
    - `finite`: whether the log density at `loc` is finite. The mode search can end
      where it is not (a failed solve: it stepped into the infeasible region and every
      later step was skipped), and there the Hessian ignores the infinite term; then the
      approximation must not be used either.
    """

    names: tuple
    shapes: tuple
    labels: tuple
    loc: np.ndarray
    precision: np.ndarray
    flat_directions: tuple
    finite: bool = True

    @property
    def usable(self) -> bool:
        return self.finite and not self.flat_directions

    def site(self, flat, name):
        """The part of a flat vector (or of a flat matrix's rows) for site `name`,
        reshaped to the site's unconstrained shape."""
        i = self.names.index(name)
        start = sum(math.prod(s) for s in self.shapes[:i])
        size = math.prod(self.shapes[i])
        return np.reshape(flat[start:start + size], self.shapes[i] + np.shape(flat)[1:])


def find_mode(model_fn, key, model_kwargs, init_radius, progress_bar):
    """The posterior mode by `probde.Laplace`'s optimisation (default settings):
    `(guide, params, losses, skipped)` of the fitted `AutoLaplaceApproximation`."""
    check_init_radius(init_radius)
    guide = laplace_guide(model_fn, init_radius)
    params, losses, skipped, _, _ = fit(
        model_fn, guide, default_optimizer(LAPLACE_LEARNING_RATE, LAPLACE_NUM_STEPS), 1,
        LAPLACE_NUM_STEPS, key, progress_bar, model_kwargs,
    )
    return guide, params, losses, skipped


def laplace_gaussian(model_fn, key, model_kwargs, init_radius, progress_bar):
    """The Laplace approximation for the start of `probde.SVI(init="laplace")`: the mode
    found by `find_mode` and the Hessian there (`jax.hessian` of numpyro's potential
    energy in the unconstrained space, exact by autodiff). Returns `LaplaceGaussian`."""
    guide, params, _, _ = find_mode(model_fn, key, model_kwargs, init_radius, progress_bar)
    latent, _ = site_kinds(model_fn, model_kwargs)
    seeded = handlers.seed(model_fn, rng_seed=0)
    mode = guide.median(params)
    z = unconstrain_fn(seeded, (), model_kwargs, {k: mode[k] for k in latent})
    shapes = tuple(tuple(jnp.shape(z[k])) for k in latent)
    loc = jnp.concatenate([jnp.reshape(z[k], -1) for k in latent])
    energy = flat_potential(model_fn, model_kwargs, dict(zip(latent, shapes, strict=True)))

    hessian = jax.jit(jax.hessian(energy))(loc)
    finite = bool(jnp.isfinite(jax.jit(energy)(loc)))
    eps = float(jnp.finfo(hessian.dtype).eps)
    precision = np.asarray(hessian, dtype=float)
    labels = flat_labels(dict(zip(latent, shapes, strict=True)))
    loc = np.asarray(loc, dtype=float)
    return LaplaceGaussian(tuple(latent), shapes, labels, loc, precision,
                           _flat_directions(loc, precision, labels, eps), finite)


def _flat_directions(loc, precision, labels, eps):
    """Labels of the coordinates that carry the eigenvectors of `precision` whose
    eigenvalue is not clearly positive (below the rank tolerance `n * eps * max|eig|` of
    the computation's dtype, as `numpy.linalg.matrix_rank` uses); every label when anything is not
    finite."""
    if not (np.all(np.isfinite(loc)) and np.all(np.isfinite(precision))):
        return labels
    eig, vec = np.linalg.eigh(0.5 * (precision + precision.T))
    tol = len(labels) * eps
    bad = eig <= tol * max(np.abs(eig).max(), np.finfo(float).tiny)
    if not bad.any():
        return ()
    weight = np.abs(vec[:, bad]).max(axis=1)
    return tuple(lab for lab, wt in zip(labels, weight, strict=True) if wt >= 0.5 * weight.max())
