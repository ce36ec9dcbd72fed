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
import optax
from jax import lax, random

from numpyro import handlers
from numpyro.infer.util import initialize_model, log_density, unconstrain_fn

from .._optim import default_optimizer
from ._options import check_init_radius
from .guide_draws import flat_labels, flat_potential, guide_draws, site_kinds
from .guide_fit import fit
from .guides import laplace_guide
from .initialisation import init_strategy
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
    - `energy`: the negative log density (numpyro's potential energy) at `loc`, by which
      modes found from several starts are compared.
    """

    names: tuple
    shapes: tuple
    labels: tuple
    loc: np.ndarray
    precision: np.ndarray
    flat_directions: tuple
    finite: bool = True
    energy: float = math.nan

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


# The mode search of `laplace_gaussians`: L-BFGS iterations at most, and the gradient norm
# (relative to max(1, |energy|)) at which a search stops.
MODE_MAX_ITER = 1000
MODE_GRAD_TOL = 1e-8


def laplace_gaussians(model_fn, key, model_kwargs, init_radius, num_starts=1):
    """Laplace approximations for the start of `probde.SVI(init="laplace")`, one per
    starting point: `num_starts` feasible points drawn uniformly in
    (-init_radius, init_radius) in the unconstrained space (numpyro redraws infeasible
    ones), each followed by an L-BFGS search for the mode of the log density (optax's
    `lbfgs` with its zoom line search), and the Hessian
    at each mode found (`jax.hessian` of numpyro's potential energy, exact by autodiff).
    Returns a list of `LaplaceGaussian`.

    Why L-BFGS, not the Adam steps of `probde.Laplace`: the log density is deterministic,
    and a quasi-Newton search with a line search reaches a mode in tens to hundreds of
    iterations where Adam's fixed schedule may not: on the lynx-hare model, eight searches
    of 2000 Adam steps (peak rate 0.01) ended at eight different points, none of them a
    mode (negative log densities 196 to 639)."""
    check_init_radius(init_radius)
    latent, _ = site_kinds(model_fn, model_kwargs)
    keys = random.split(key, num_starts)
    strategy = init_strategy(init_radius, model_fn, model_kwargs)
    points = [initialize_model(k, model_fn, init_strategy=strategy, model_kwargs=model_kwargs,
                               validate_grad=True)[0].z for k in keys]
    shapes = {k: tuple(jnp.shape(points[0][k])) for k in latent}
    energy = flat_potential(model_fn, model_kwargs, shapes)
    x0 = [jnp.concatenate([jnp.reshape(z[k], -1) for k in latent]) for z in points]
    # one start at a time: under vmap the ODE solves' loops inside the line search's loop
    # get batched predicates, which XLA compiles slowly (and with warnings)
    search = jax.jit(lambda x: _lbfgs(energy, x))
    hessian, value = jax.jit(jax.hessian(energy)), jax.jit(energy)
    modes = [search(x) for x in x0]
    hessians = [hessian(x) for x in modes]
    energies = [float(value(x)) for x in modes]
    labels = flat_labels(shapes)
    eps = float(jnp.finfo(hessians[0].dtype).eps)
    out = []
    for loc, precision, at_mode in zip(modes, hessians, energies, strict=True):
        loc, precision = np.asarray(loc, dtype=float), np.asarray(precision, dtype=float)
        finite = bool(np.isfinite(at_mode) and np.all(np.isfinite(loc)))
        out.append(LaplaceGaussian(tuple(latent), tuple(shapes.values()), labels, loc,
                                   precision, _flat_directions(loc, precision, labels, eps),
                                   finite, at_mode))
    return out


def _lbfgs(energy, x0):
    """The point where optax's L-BFGS (zoom line search) stops on `energy` from `x0`:
    after `MODE_MAX_ITER` iterations, or when the gradient's norm is below
    `MODE_GRAD_TOL * max(1, |energy|)`, or when an iteration left the value not finite or
    unchanged (the line search found no better point)."""
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(energy)

    def step(carry):
        x, state, _ = carry
        value, grad = value_and_grad(x, state=state)
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=energy)
        new = optax.apply_updates(x, updates)
        ok = jnp.all(jnp.isfinite(new))
        return jnp.where(ok, new, x), state, value

    def running(carry):
        x, state, previous = carry
        count = optax.tree.get(state, "count")
        value = optax.tree.get(state, "value")
        grad = optax.tree.get(state, "grad")
        tol = MODE_GRAD_TOL * jnp.maximum(1.0, jnp.abs(value))
        moving = jnp.isfinite(value) & (value != previous)
        return (count == 0) | ((count < MODE_MAX_ITER) & (optax.tree.norm(grad) >= tol)
                               & moving)

    x, _, _ = lax.while_loop(running, step, (x0, opt.init(x0), jnp.asarray(jnp.inf, x0.dtype)))
    return x


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
