"""PEtab's noise models as one probde observation model: each data column (an observable
with its measurement-specific parameters) has its own distribution (normal or Laplace), its
own transformation of the data (lin, log, log10) and its own scale, a function of the
state and the parameters (PEtab's `noiseFormula`).

numpyro has no distribution that switches family per element; `ColumnNoise` is that, with
the log-density of the untransformed data (the transformation's Jacobian included), as
PEtab defines its likelihood.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.util import promote_shapes

from ..noise import AbstractObservation

DISTRIBUTIONS = ("normal", "laplace")
TRANSFORMATIONS = ("lin", "log", "log10")


def _forward(x, code):
    """The transformation of each column: 0 lin, 1 log, 2 log10 (safe where x <= 0)."""
    logged = code > 0
    # log only of positive values: a `where` whose untaken branch is log(0) still has an
    # infinite derivative there, and 0 * inf makes the gradient NaN
    safe = jnp.where(logged & (x > 0), x, 1.0)
    z = jnp.where(logged, jnp.log(safe), x)
    return jnp.where(code == 2, z / math.log(10.0), z)


def _inverse(z, code):
    return jnp.where(code == 0, z, jnp.where(code == 1, jnp.exp(z), 10.0 ** z))


class ColumnNoise(dist.Distribution):
    """Independent values, each normal or Laplace on its column's transformed scale."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    reparametrized_params = ["loc", "scale"]

    def __init__(self, loc, scale, family, transform, *, validate_args=None):
        self.loc, self.scale = promote_shapes(loc, scale)
        batch_shape = jax.lax.broadcast_shapes(jnp.shape(loc), jnp.shape(scale))
        self.loc = jnp.broadcast_to(self.loc, batch_shape)
        self.scale = jnp.broadcast_to(self.scale, batch_shape)
        self.family = jnp.broadcast_to(jnp.asarray(family), batch_shape)
        self.transform = jnp.broadcast_to(jnp.asarray(transform), batch_shape)
        super().__init__(batch_shape=batch_shape, validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape
        k1, k2 = jax.random.split(key)
        gauss = jax.random.normal(k1, shape)
        laplace = jax.random.laplace(k2, shape)
        eps = jnp.where(self.family == 1, laplace, gauss)
        z = _forward(self.loc, self.transform) + self.scale * eps
        return _inverse(z, self.transform)

    def log_prob(self, value):
        code = self.transform
        z = _forward(value, code)
        m = _forward(self.loc, code)
        s = self.scale
        normal = -0.5 * jnp.log(2 * jnp.pi * s**2) - 0.5 * ((z - m) / s) ** 2
        laplace = -jnp.log(2 * s) - jnp.abs(z - m) / s
        lp = jnp.where(self.family == 1, laplace, normal)
        safe = jnp.where(value > 0, value, 1.0)
        jacobian = jnp.where(code == 1, -jnp.log(safe),
                             jnp.where(code == 2, -jnp.log(safe * math.log(10.0)), 0.0))
        return lp + jacobian

    @property
    def mean(self):  # the median on the transformed scale, mapped back (the prediction)
        return self.loc


@dataclasses.dataclass(frozen=True, eq=False)
class Measurements(AbstractObservation):
    """PEtab's noise model of every data column.

    - `families`, `transforms`: per column, the index into `DISTRIBUTIONS` and
      `TRANSFORMATIONS`;
    - `sigma`: `sigma(y, theta) -> (O,)`, the columns' noise formulas.
    """

    families: tuple
    transforms: tuple
    sigma: object

    def hyperparameters(self):
        return {"sigma": self.sigma}

    def distribution(self, mu, hyper):
        return ColumnNoise(mu, hyper["sigma"], np.asarray(self.families),
                           np.asarray(self.transforms))

    def valid_mean(self, mu, mask):
        """A log-transformed column's prediction must be positive where it is observed."""
        logged = np.asarray(self.transforms) > 0
        if not logged.any():
            return None
        bad = logged.reshape((1,) * (mu.ndim - 1) + logged.shape) & (mu <= 0)
        if mask is not None:
            bad = bad & mask
        return ~jnp.any(bad, axis=(1, 2))

    def check_data(self, values, argument):
        logged = np.asarray(self.transforms) > 0
        v = values[..., logged]
        bad = ~np.isnan(v) & (v <= 0)
        if bad.any():
            raise ValueError(f"{argument}: a log-transformed observable has a non-positive "
                             f"measurement {v[bad][0]}")
