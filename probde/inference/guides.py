"""The variational families of `probde.SVI` and `probde.Laplace`: numpyro autoguides built
from the methods' options."""

from __future__ import annotations

from numpyro.infer.autoguide import (
    AutoIAFNormal,
    AutoLaplaceApproximation,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)

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
    return AutoLaplaceApproximation(model_fn, init_loc_fn=init_strategy(init_radius, model_fn))


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
