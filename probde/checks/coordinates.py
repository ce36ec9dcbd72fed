"""The coordinates of an identifiability analysis: every scalar of the model's latent sites
on its *analysis scale* (the log of a positive parameter, else the parameter itself), and
the maps between them, the parameter dict that `probde.log_likelihood` takes, and numpyro's
unconstrained space, in which the profiles optimise (so that nuisance parameters stay in
their supports: a noise scale positive, a parameter with a `Uniform` prior inside it).

Why the log scale for a positive parameter: sloppiness is about relative changes; the
Fisher information of `log k` is that of `k` times `k^2`, so a direction such as
`log k1 - log k2` (the product `k1 k2` fixed) is a straight line there, whatever the
values of `k1` and `k2`.

The maps into and out of the unconstrained space go through numpyro's
`constrain_fn`/`unconstrain_fn`, which trace the model to find each site's support. They
are meant to run inside `jit`, where the model's solve is traced but unused (and dropped
by the compiler); the supports of sites built inside the model (a prior that depends on
another parameter) are then handled like any other.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.infer.util import constrain_fn, unconstrain_fn

from ..inference.guide_draws import flat_labels, site_kinds, unconstrained_shapes
from ..model.sites import OBSERVED, REJECTED

#: Scales a user may ask for; "auto" picks "log" for a site whose support is the positive
#: half-line and "natural" for any other.
SCALES = ("auto", "log", "natural")

#: Draws from each prior for its spread on the analysis scale (the profiles' default range).
PRIOR_DRAWS = 2000


@dataclasses.dataclass(frozen=True)
class Coordinates:
    """The flat analysis coordinates of a model's latent sites (see the module docstring).

    - `model_fn`, `kwargs`: the model's numpyro program (seeded, built once) and the
      keyword arguments under which it conditions on the data (`probde.log_likelihood`'s);
    - `names`, `shapes`: the latent sites in the model's order and their shapes;
    - `scales`: `"log"` or `"natural"` per site;
    - `labels`: one per flat coordinate (`"k"`, `"z_init[0]"`);
    - `lower`, `upper`: the support's bounds per coordinate, on the analysis scale
      (`-inf`/`inf` where unbounded);
    - `prior_sd`: the prior's standard deviation per coordinate on the analysis scale
      (NaN where the prior cannot be sampled).
    """

    model_fn: object
    kwargs: dict
    names: tuple
    shapes: tuple
    scales: tuple
    labels: tuple
    lower: np.ndarray
    upper: np.ndarray
    prior_sd: np.ndarray

    @property
    def size(self) -> int:
        return len(self.labels)

    @property
    def coordinate_scales(self) -> tuple:
        return tuple(s for s, shape in zip(self.scales, self.shapes, strict=True)
                     for _ in range(math.prod(shape)))

    @property
    def axis_labels(self) -> tuple:
        """`"log k"` or `"k"` per coordinate."""
        return tuple(f"log {lab}" if s == "log" else lab
                     for lab, s in zip(self.labels, self.coordinate_scales, strict=True))

    def site_of(self, label: str) -> str:
        return self.names[self._site_index(label)]

    def _site_index(self, label: str) -> int:
        i = self.labels.index(label)
        sizes = np.cumsum([math.prod(s) for s in self.shapes])
        return int(np.searchsorted(sizes, i, side="right"))

    def unflatten(self, flat) -> dict:
        sizes = [math.prod(s) for s in self.shapes]
        parts = jnp.split(flat, np.cumsum(sizes)[:-1])
        return {k: jnp.reshape(p, s) for k, p, s in zip(self.names, parts, self.shapes,
                                                       strict=True)}

    def flatten(self, sites: dict):
        dtype = jnp.result_type(float)
        return jnp.concatenate([jnp.ravel(jnp.asarray(sites[k], dtype)) for k in self.names])

    # analysis scale <-> constrained values (elementwise, no model trace)
    def params(self, z) -> dict:
        """The constrained parameter dict at analysis coordinates `z`."""
        sites = self.unflatten(z)
        return {k: jnp.exp(v) if s == "log" else v
                for (k, v), s in zip(sites.items(), self.scales, strict=True)}

    def analysis(self, params: dict):
        """The analysis coordinates of a constrained parameter dict."""
        dtype = jnp.result_type(float)
        return self.flatten({k: jnp.log(jnp.asarray(params[k], dtype)) if s == "log"
                             else params[k] for k, s in zip(self.names, self.scales,
                                                             strict=True)})

    def log_likelihood(self, params: dict):
        """`probde.log_likelihood(model, data, params)` (seed 0), computed as it does (the
        observed site's log-density plus the rejection term, from one run of the model's
        program), but with the program built once, outside any trace:
        `probde.log_likelihood` builds it on every call, which a model with a discrepancy
        term cannot do under `jit` (the program's set-up converts the data with numpy).
        Checked against `probde.log_likelihood` in tests/test_identifiability.py."""
        with handlers.block():
            tr = handlers.trace(handlers.substitute(self.model_fn, data=params))
            tr = tr.get_trace(**self.kwargs)
        site = tr[OBSERVED]
        lp = jnp.sum(site["fn"].log_prob(site["value"]))
        return lp + tr[REJECTED]["fn"].log_prob(tr[REJECTED]["value"])

    # unconstrained space <-> constrained values (traces the model: use inside jit)
    def params_from_unconstrained(self, x) -> dict:
        return constrain_fn(self.model_fn, (), self.kwargs, self.unflatten(x))

    def unconstrained(self, z):
        return self.flatten(unconstrain_fn(self.model_fn, (), self.kwargs, self.params(z)))

    def from_unconstrained(self, x):
        return self.analysis(self.params_from_unconstrained(x))


def build(model, prepared, kwargs, scale) -> Coordinates:
    """The coordinates of `model`'s latent sites for prepared data; `scale` is `"auto"`,
    `"log"`, `"natural"` or a dict of site name -> one of them (sites not named: "auto").
    Validates `scale` against the sites' supports."""
    model_fn = handlers.seed(model.numpyro_model(prepared), rng_seed=0)
    names, _ = site_kinds(model_fn, kwargs)
    free = unconstrained_shapes(model_fn, kwargs)
    lower, upper, draws, shapes = _probe(model_fn, kwargs, names)
    for name in names:
        if free[name] != shapes[name]:
            raise ValueError(
                f"identifiability needs parameters whose unconstrained form has their own "
                f"shape; the site {name!r} has shape {shapes[name]} but unconstrained shape "
                f"{free[name]} (a simplex or a correlation matrix), which is not supported")
    scales = _scales(scale, names, lower, upper)
    to_scale = {"log": np.log, "natural": lambda a: a}
    with np.errstate(divide="ignore", invalid="ignore"):
        pairs = list(zip(names, scales, strict=True))
        lo = np.concatenate([np.ravel(to_scale[s](lower[k])) for k, s in pairs])
        hi = np.concatenate([np.ravel(to_scale[s](upper[k])) for k, s in pairs])
        sd = np.concatenate([np.std(np.reshape(to_scale[s](draws[k]), (PRIOR_DRAWS, -1)),
                                    axis=0) for k, s in pairs])
    sd = np.where(np.isfinite(sd) & (sd > 0), sd, np.nan)
    return Coordinates(model_fn, kwargs, tuple(names), tuple(shapes[k] for k in names),
                       tuple(scales), flat_labels({k: shapes[k] for k in names}), lo, hi, sd)


def _probe(model_fn, kwargs, names):
    """Each latent site's support bounds (broadcast to its shape), draws from its prior and
    its shape, from one trace of the model under `jit` (its solve is traced, not run)."""

    def probe(key):
        with handlers.block():
            tr = handlers.trace(model_fn).get_trace(**kwargs)
        out = {}
        for name in names:
            fn, shape = tr[name]["fn"], jnp.shape(tr[name]["value"])
            dtype = jnp.result_type(float)
            support = fn.support
            lo = jnp.broadcast_to(jnp.asarray(getattr(support, "lower_bound", -jnp.inf), dtype),
                                  shape)
            hi = jnp.broadcast_to(jnp.asarray(getattr(support, "upper_bound", jnp.inf), dtype),
                                  shape)
            try:
                draws = jnp.reshape(fn.sample(key, (PRIOR_DRAWS,)), (PRIOR_DRAWS, *shape))
            except NotImplementedError:  # an improper prior: no spread to use
                draws = jnp.full((PRIOR_DRAWS, *shape), jnp.nan, dtype)
            out[name] = (lo, hi, draws.astype(dtype))
        return out

    found = jax.jit(probe)(jax.random.PRNGKey(1))
    lower = {k: np.asarray(v[0]) for k, v in found.items()}
    upper = {k: np.asarray(v[1]) for k, v in found.items()}
    draws = {k: np.asarray(v[2]) for k, v in found.items()}
    shapes = {k: tuple(np.shape(v)) for k, v in lower.items()}
    return lower, upper, draws, shapes


def _scales(scale, names, lower, upper) -> list[str]:
    if isinstance(scale, str):
        chosen = dict.fromkeys(names, scale)
    elif isinstance(scale, dict):
        unknown = sorted(set(scale) - set(names))
        if unknown:
            raise ValueError(
                f"scale names parameters the model does not have: {unknown}; its "
                f"parameters are {list(names)}")
        chosen = {k: scale.get(k, "auto") for k in names}
    else:
        raise TypeError(
            f"scale must be one of {SCALES} or a dict of parameter name -> one of them; got "
            f"{scale!r} of type {type(scale).__name__}")
    out = []
    for name in names:
        s = chosen[name]
        if s not in SCALES:
            raise ValueError(
                f"scale of {name!r} must be one of {SCALES}; got {s!r}")
        positive_line = bool(np.all(lower[name] == 0) and np.all(np.isinf(upper[name])))
        if s == "auto":
            s = "log" if positive_line else "natural"
        elif s == "log" and not np.all(lower[name] >= 0):
            raise ValueError(
                f"scale 'log' needs a parameter that cannot be negative; the prior of "
                f"{name!r} has support down to {np.min(lower[name])}; use 'natural'")
        out.append(s)
    return out
