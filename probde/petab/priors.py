"""PEtab parameter priors as numpyro distributions of the parameter on its linear scale.

A PEtab parameter has a scale (lin, log, log10), bounds, and a prior: given by
`objectivePriorType` / `objectivePriorParameters`, or by default uniform on the bounds on
the parameter scale. The prior's value is the linear-scale parameter (the model reads it,
and the posterior reports it under the PEtab id), but the sampler should move on the
parameter scale between the bounds: a log10-scale parameter spanning 1e-5 to 1e5 is
hopeless on its linear scale. numpyro chooses the unconstrained space from a
distribution's `support`; `OnScale` is a support whose bijection is "logistic onto the
bounds on the parameter scale, then back to the linear scale", registered with numpyro's
`biject_to`.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints, transforms
from numpyro.distributions.transforms import biject_to

SCALES = ("lin", "log", "log10")


def to_scale(value, scale: str):
    if scale == "lin":
        return value
    if scale == "log":
        return np.log(value)
    return np.log10(value)


def _from_scale(scale: str) -> list:
    if scale == "lin":
        return []
    if scale == "log":
        return [transforms.ExpTransform()]
    return [transforms.AffineTransform(0.0, math.log(10.0)), transforms.ExpTransform()]


class OnScale(constraints._Interval):
    """The interval `[lower, upper]` of a parameter's linear value, unconstrained on its
    PEtab scale."""

    def __init__(self, lower, upper, scale):
        super().__init__(lower, upper)
        self.scale = scale

    def tree_flatten(self):
        return (self.lower_bound, self.upper_bound), (("lower_bound", "upper_bound"),
                                                      {"scale": self.scale})

    def __eq__(self, other):
        return (isinstance(other, OnScale) and self.scale == other.scale
                and jnp.array_equal(self.lower_bound, other.lower_bound)
                and jnp.array_equal(self.upper_bound, other.upper_bound))


@biject_to.register(OnScale)
def _on_scale(constraint: OnScale):
    lo = to_scale(constraint.lower_bound, constraint.scale)
    hi = to_scale(constraint.upper_bound, constraint.scale)
    return transforms.ComposeTransform(
        [transforms.SigmoidTransform(), transforms.AffineTransform(lo, hi - lo)]
        + _from_scale(constraint.scale))


class ScaledPrior(dist.TransformedDistribution):
    """A prior given on some space `w` (the parameter scale or the log or linear value),
    truncated to the bounds, as a distribution of the linear value."""

    def __init__(self, base, space: str, lower: float, upper: float, scale: str):
        super().__init__(base, _from_scale(space) or [transforms.IdentityTransform()])
        self._support = OnScale(lower, upper, scale)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return self._support

    def tree_flatten(self):  # pragma: no cover - not vmapped as a pytree
        raise NotImplementedError


def _truncated(family: str, a: float, b: float, low: float, high: float):
    if family == "uniform":
        lo, hi = max(a, low), min(b, high)
        if not lo < hi:
            raise ValueError(f"uniform prior [{a}, {b}] does not meet the bounds "
                             f"[{low}, {high}]")
        return dist.Uniform(lo, hi)
    if family == "normal":
        return dist.TruncatedNormal(a, b, low=low, high=high)
    if family == "laplace":
        return dist.TruncatedDistribution(dist.Laplace(a, b), low=low, high=high)
    raise ValueError(family)


#: objectivePriorType -> (family, space it is given on)
PRIOR_TYPES = {
    "uniform": ("uniform", "lin"),
    "normal": ("normal", "lin"),
    "laplace": ("laplace", "lin"),
    "logNormal": ("normal", "log"),
    "logLaplace": ("laplace", "log"),
    "parameterScaleUniform": ("uniform", None),
    "parameterScaleNormal": ("normal", None),
    "parameterScaleLaplace": ("laplace", None),
}


def prior(row, pid: str) -> ScaledPrior:
    """The prior of an estimated parameter from its parameter-table row."""
    scale = row.get("parameterScale", "lin")
    if scale not in SCALES:
        raise ValueError(f"parameter table, {pid!r}: parameterScale must be one of {SCALES}; "
                         f"got {scale!r}")
    lower, upper = float(row["lowerBound"]), float(row["upperBound"])
    if not (np.isfinite(lower) and np.isfinite(upper) and lower < upper):
        raise ValueError(f"parameter table, {pid!r}: an estimated parameter needs finite "
                         f"bounds lowerBound < upperBound; got [{lower}, {upper}]")
    if scale != "lin" and lower <= 0:
        raise ValueError(f"parameter table, {pid!r}: a {scale}-scale parameter needs "
                         f"lowerBound > 0; got {lower}")
    kind = row.get("objectivePriorType", None)
    if not isinstance(kind, str) or not kind:
        kind = "parameterScaleUniform"
        a, b = to_scale(lower, scale), to_scale(upper, scale)
    else:
        if kind not in PRIOR_TYPES:
            raise ValueError(f"parameter table, {pid!r}: objectivePriorType {kind!r} is not "
                             f"supported; supported: {sorted(PRIOR_TYPES)}")
        try:
            a, b = (float(v) for v in str(row["objectivePriorParameters"]).split(";"))
        except (ValueError, KeyError):
            raise ValueError(f"parameter table, {pid!r}: objectivePriorParameters must be "
                             f"two numbers 'a;b'; got {row.get('objectivePriorParameters')!r}"
                             ) from None
    family, space = PRIOR_TYPES[kind]
    space = scale if space is None else space
    base = _truncated(family, a, b, to_scale(lower, space), to_scale(upper, space))
    return ScaledPrior(base, space, lower, upper, scale)
