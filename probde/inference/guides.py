"""The variational families of `probde.SVI` and `probde.Laplace`: numpyro autoguides built
from the methods' options, their start at the Laplace approximation
(`laplace_start`), and their location and scale as the convergence check reads them
(`guide_moments`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from numpyro.infer.autoguide import (
    AutoIAFNormal,
    AutoLaplaceApproximation,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)

from .hessian import hessian
from .initialisation import init_strategy

GUIDES = ("normal", "multivariate_normal", "low_rank", "flow")
# AutoIAFNormal defaults: two flows with one hidden layer (2 * latent_dim units) each.
_FLOW_NUM_FLOWS = 2


def make_guide(kind: str, model_fn, init_radius: float, init_scale: float, rank=None):
    """The numpyro autoguide of family `kind` (one of `GUIDES`) for `model_fn`, centred at
    a start drawn by `init_strategy(init_radius, model_fn)`, with initial scale
    `init_scale` (the Gaussian families) and rank `rank` (`"low_rank"`)."""
    init = init_strategy(init_radius, model_fn)
    if kind == "normal":
        return AutoNormal(model_fn, init_loc_fn=init, init_scale=init_scale)
    if kind == "multivariate_normal":
        return AutoMultivariateNormal(model_fn, init_loc_fn=init, init_scale=init_scale)
    if kind == "low_rank":
        return AutoLowRankMultivariateNormal(model_fn, init_loc_fn=init, rank=rank,
                                             init_scale=init_scale)
    return FlowGuide(model_fn, init_loc_fn=init, num_flows=_FLOW_NUM_FLOWS)


def laplace_guide(model_fn, init_radius: float) -> AutoLaplaceApproximation:
    """numpyro's `AutoLaplaceApproximation` for `model_fn`, started at a point drawn by
    `init_strategy(init_radius, model_fn)`."""
    return AutoLaplaceApproximation(model_fn, init_loc_fn=init_strategy(init_radius, model_fn),
                                    hessian_fn=hessian)


class FlowGuide(AutoIAFNormal):
    """`AutoIAFNormal` with one hidden layer of `2 * latent_dim` units per flow (numpyro's
    default is two layers of `latent_dim`, too narrow for two or three parameters), and a
    clear error for a single parameter (a flow needs at least two)."""

    def _get_posterior(self):
        if self.latent_dim == 1:
            raise ValueError(
                "guide='flow' needs at least two unconstrained parameters; this model has "
                "one. Use guide='normal' (exact family for one Gaussian parameter) instead"
            )
        self._hidden_dims = [2 * self.latent_dim]
        return super()._get_posterior()


@dataclasses.dataclass(frozen=True)
class GuideStart:
    """Where a Gaussian guide starts (`laplace_start`):

    - `params`: a function from the guide's default initial parameters (constrained, as
      `SVI.get_params` gives them) to the ones to pass as `SVI.init(init_params=...)`;
    - `loc_scales`: `{parameter name: array}`, the Laplace approximation's sd of every
      coordinate of the guide's location parameters, shaped like them (the start's step
      units; during the fit the default optimiser steps the location in the guide's
      current sds, `location_units` and `guide_fit.scaled_location_steps`);
    - `mode_energies`: the negative log density at every mode the search found (one per
      starting point), kept in `svi_trace.mode_energy`.
    """

    params: Callable
    loc_scales: dict
    mode_energies: tuple = ()


def laplace_start(kind: str, prefix: str, gaussian) -> GuideStart | None:
    """The start of a Gaussian guide of family `kind` at the Laplace approximation
    `gaussian` (a usable `mode.LaplaceGaussian`); `None` for a family without a Gaussian
    start (`"flow"`).

    With precision matrix H (the Hessian of the negative log density at the mode m):

    - `"multivariate_normal"`: N(m, H^-1), the Laplace approximation itself;
    - `"normal"` (mean field): independent normals with variances `1 / H_ii`, not the
      marginal variances `(H^-1)_ii`. For a Gaussian posterior the mean-field optimum of
      the ELBO (KL(q || p)) has exactly this precision, diag(H), so the start is the answer
      SVI converges to and the optimiser has nothing left to shrink; starting at the
      (larger) marginal variances would leave it the slow work of shrinking the scales
      that this start exists to avoid.
    - `"low_rank"` (numpyro's covariance `S (F F^T + I) S`, S diagonal): the top-r
      eigenvectors of H^-1 scaled by the square roots of their eigenvalues as `S F`, and
      the rest of H^-1's diagonal as `S^2` (floored at 1e-6 of the marginal variance), so
      the marginal variances and the r leading directions are exact. This is the truncated
      eigendecomposition, not the best rank-r-plus-diagonal fit in KL (a factor-analysis
      problem without a closed form); the optimiser corrects the difference.

    The location's step units (`GuideStart.loc_scales`) are the start's sds: `1 / sqrt(H_ii)`
    for the mean field, `sqrt((H^-1)_ii)` for the others.
    """
    loc = gaussian.loc
    if kind == "flow":
        return None
    if kind == "normal":
        scale = 1.0 / np.sqrt(np.diag(gaussian.precision))

        def make(default):
            params = dict(default)
            for name in gaussian.names:
                for part, flat in (("loc", loc), ("scale", scale)):
                    key = f"{name}_{prefix}_{part}"
                    params[key] = _like(gaussian.site(flat, name), default[key])
            return params

        loc_scales = {f"{name}_{prefix}_loc": gaussian.site(scale, name)
                      for name in gaussian.names}
        return GuideStart(make, loc_scales)
    cov = np.linalg.inv(gaussian.precision)
    cov = 0.5 * (cov + cov.T)
    loc_scales = {f"{prefix}_loc": np.sqrt(np.diag(cov))}

    def make(default):
        params = dict(default)
        params[f"{prefix}_loc"] = _like(loc, default[f"{prefix}_loc"])
        if kind == "multivariate_normal":
            key = f"{prefix}_scale_tril"
            params[key] = _like(np.linalg.cholesky(cov), default[key])
            return params
        rank = default[f"{prefix}_cov_factor"].shape[-1]
        eig, vec = np.linalg.eigh(cov)
        top = np.argsort(eig)[::-1][:rank]
        factor = vec[:, top] * np.sqrt(np.clip(eig[top], 0.0, None))  # (D, r): S F
        rest = np.clip(np.diag(cov) - (factor**2).sum(-1), 1e-6 * np.diag(cov), None)
        scale = np.sqrt(rest)
        params[f"{prefix}_scale"] = _like(scale, default[f"{prefix}_scale"])
        params[f"{prefix}_cov_factor"] = _like(factor / scale[:, None],
                                               default[f"{prefix}_cov_factor"])
        return params

    return GuideStart(make, loc_scales)


def location_units(guide):
    """A function from a Gaussian guide's constrained parameters to `{location parameter
    name: the guide's marginal sd of each of its coordinates}` (shaped like the
    parameter): the units in which `guide_fit.scaled_location_steps` steps the location.
    `None` for the other guides."""
    if isinstance(guide, AutoNormal):
        p = guide.prefix

        def units(params):
            return {k[: -len("scale")] + "loc": v for k, v in params.items()
                    if k.endswith(f"_{p}_scale")}

        return units
    if isinstance(guide, (AutoMultivariateNormal, AutoLowRankMultivariateNormal)):

        def units(params):
            return {f"{guide.prefix}_loc": jnp.sqrt(guide.get_posterior(params).variance)}

        return units
    return None


def _like(value, default):
    return jnp.asarray(np.reshape(value, np.shape(default)), dtype=jnp.result_type(default))


def guide_moments(guide, names):
    """A function from a Gaussian guide's constrained parameters to its location and
    marginal standard deviations in the unconstrained space, flat in the order of the
    latent sites `names` (jit-compatible); `None` for the other guides (the flow, whose
    parameters are network weights, and the Laplace guide, a point)."""
    if isinstance(guide, AutoNormal):
        p = guide.prefix

        def moments(params):
            loc = jnp.concatenate([jnp.reshape(params[f"{n}_{p}_loc"], -1) for n in names])
            scale = jnp.concatenate([jnp.reshape(params[f"{n}_{p}_scale"], -1)
                                     for n in names])
            return loc, scale

        return moments
    if isinstance(guide, (AutoMultivariateNormal, AutoLowRankMultivariateNormal)):

        def moments(params):
            posterior = guide.get_posterior(params)
            return posterior.mean, jnp.sqrt(posterior.variance)

        return moments
    return None
