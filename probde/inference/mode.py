"""The posterior mode and the Laplace approximation there as starting points: for MCMC
(`NUTS(init="map")`) and for the Gaussian guides of `probde.SVI(init="laplace")`.

Kept apart from the method classes: both `probde.NUTS` and `probde.SVI` use it. The mode
is found by L-BFGS on the log density (deterministic), not by the Adam steps of
`probde.Laplace`, which fits numpyro's `AutoLaplaceApproximation` guide.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax, random

from numpyro.infer.util import initialize_model

from ._options import check_init_radius
from .guide_draws import flat_labels, flat_potential, site_kinds
from .hessian import hessian as hessian_of
from .initialisation import init_strategy


def laplace_starts(model_fn, key, num_chains, model_kwargs, init_radius, num_searches=1):
    """Starting points for MCMC chains from the Laplace approximation (`NUTS(init="map")`):
    the best of the modes found by `num_searches` L-BFGS searches (`laplace_gaussians`;
    the highest finite log density), then one draw per chain
    from the normal approximation there, in the unconstrained space (the form numpyro's
    `MCMC.run(init_params=...)` takes), with a leading chain dimension when
    `num_chains > 1`. Draws whose log density is not finite are replaced by the mode;
    where the Hessian is not positive definite every chain starts at the mode. `None`
    (start as with `init="uniform"`, with a warning) when the search ended where the log
    density is not finite."""
    key_fit, key_draw = random.split(key)
    found = laplace_gaussians(model_fn, key_fit, model_kwargs, init_radius, num_searches)
    finite = [g for g in found if g.finite and np.isfinite(g.energy)]
    gaussian = min(finite, key=lambda g: g.energy) if finite else found[0]
    if not gaussian.finite:
        # stacklevel 6: laplace_starts < NUTS.run < _run_method < _infer_* < infer < caller
        warnings.warn(
            "NUTS(init='map'): the mode search ended where the log density is not finite "
            "(a failed solve or an impossible prediction), so the chains start as with "
            "init='uniform'; check the priors against the data or raise Solver(max_steps=...)",
            stacklevel=6,
        )
        return None
    loc = gaussian.loc
    draws = np.broadcast_to(loc, (num_chains, loc.size)).copy()
    if gaussian.usable:
        cov = np.linalg.inv(gaussian.precision)
        chol = np.linalg.cholesky(0.5 * (cov + cov.T))
        eps = np.asarray(random.normal(key_draw, (num_chains, loc.size)), dtype=float)
        draws = loc + eps @ chol.T
        energy = flat_potential(model_fn, model_kwargs,
                                dict(zip(gaussian.names, gaussian.shapes, strict=True)))
        ok = np.isfinite(np.asarray(jax.jit(jax.vmap(energy))(jnp.asarray(draws))))
        draws = np.where(ok[:, None], draws, loc)
    dtype = jnp.result_type(float)
    starts = {name: jnp.asarray(gaussian.site(draws.T, name), dtype=dtype)
              for name in gaussian.names}
    # gaussian.site puts the draws last; chains go first
    starts = {k: jnp.moveaxis(v, -1, 0) for k, v in starts.items()}
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
    at each mode found (`jax.hessian` of numpyro's potential energy, exact by autodiff, or
    central differences of its gradient where the solves have no forward mode; see
    `probde.inference.hessian`).
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
    # one call for all starts: numpyro draws a feasible point per key (batched keys)
    points = initialize_model(keys, model_fn, init_strategy=strategy,
                              model_kwargs=model_kwargs, validate_grad=True)[0].z
    shapes = {k: tuple(jnp.shape(points[k])[1:]) for k in latent}
    energy = flat_potential(model_fn, model_kwargs, shapes)
    x0 = jnp.concatenate([jnp.reshape(points[k], (num_starts, -1)) for k in latent], axis=1)
    # one start at a time: under vmap the ODE solves' loops inside the line search's loop
    # get batched predicates, which XLA compiles slowly (and with warnings)
    search = jax.jit(lambda x: _lbfgs(energy, x))
    hessian, value = jax.jit(lambda x: hessian_of(energy, x)), jax.jit(energy)
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
