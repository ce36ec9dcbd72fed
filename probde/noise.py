"""Observation noise models: how the data scatter around the model's prediction.

Each class maps the model's noise-free prediction `mu` of an observable to a numpyro
distribution of the data. Scale and dispersion arguments take a number (fixed) or a numpyro
distribution (inferred as a posterior variable named after the argument: `sigma`, `phi`,
`phi_inv`, `nu`). A distribution with batch shape `()` is shared by all observables; one
with batch shape `(num_observables,)` gives each observable its own value (dim
`observable`). The scale `sigma` of `Normal`, `LogNormal` and `StudentT` may also be a
function `sigma(y, theta) -> (num_observables,)` (or a scalar) of the state at a time and
the parameters, like `observe`: a noise level that grows with the signal, e.g. the
combined additive and proportional error of pharmacokinetics,
`lambda y, th: th["a"] + th["b"] * y[1]` (ODE models).

They live in the `probde.noise` namespace so that they never shadow numpyro's
`dist.Normal` and friends.
"""

from __future__ import annotations

import abc
import dataclasses

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from ._checks import check_number_or_distribution

__all__ = [
    "AbstractObservation",
    "Normal",
    "LogNormal",
    "Poisson",
    "NegativeBinomial",
    "StudentT",
]


class AbstractObservation(abc.ABC):
    """Extension point for noise models.

    A subclass defines `hyperparameters()` (name -> number or distribution),
    `distribution(mu, hyper)` and, where the mean must be positive, sets
    `positive_mean = True`: a prediction that is not positive then rejects the proposal
    (log density -inf, counted) instead of being clipped.
    """

    positive_mean: bool = False
    # Gaussian on the link scale (identity for Normal, log for LogNormal): a GP discrepancy
    # on that scale can then be integrated out analytically.
    gaussian_link: bool = False

    @property
    def log_link(self) -> bool:
        """`True` when the mean is modelled on the log scale (a discrepancy multiplies it)."""
        return self.positive_mean

    def link(self, mu):
        """The mean on the scale where a discrepancy term adds to it."""
        return jnp.log(mu) if self.log_link else mu

    def inverse_link(self, eta):
        return jnp.exp(eta) if self.log_link else eta

    @abc.abstractmethod
    def hyperparameters(self) -> dict:
        """Names and values (numbers or numpyro distributions) of the noise parameters."""

    @abc.abstractmethod
    def distribution(self, mu, hyper: dict) -> dist.Distribution:
        """The distribution of the data given the prediction `mu` and hyperparameters."""

    def check_data(self, values: np.ndarray, argument: str) -> None:
        """Raise a `ValueError` if observed `values` (NaN = missing) are outside the support."""

    def valid_mean(self, mu, mask):
        """`(E,)`: whether each experiment's predictions `mu (E, T, O)` are possible (a
        positive mean where the noise model needs one); `mask (E, T, O)` marks the observed
        values. `None`: every prediction is possible."""
        if self.positive_mean:
            return jnp.all(mu > 0, axis=(1, 2))
        return None


def _check_counts(values, argument, name):
    v = values[~np.isnan(values)]
    if np.any(v < 0):
        raise ValueError(
            f"{argument} must hold non-negative counts for noise.{name}; "
            f"got {v[v < 0][0]} (and {int(np.sum(v < 0)) - 1} more negative values)"
        )
    if np.any(v != np.round(v)):
        bad = v[v != np.round(v)][0]
        raise ValueError(f"{argument} must hold integer counts for noise.{name}; got {bad}")


@dataclasses.dataclass(frozen=True, eq=False)
class Normal(AbstractObservation):
    r"""Additive Gaussian noise: $y \sim \mathcal N(\mu, \sigma^2)$.

    **Arguments:** `sigma`: the noise standard deviation, a number or a distribution.

    ```python
    >>> import numpyro.distributions as dist, probde
    >>> noise = probde.noise.Normal(sigma=dist.HalfNormal(1.0))   # sigma is inferred
    >>> sorted(noise.hyperparameters())
    ['sigma']

    ```
    """

    sigma: object = 1.0

    def __post_init__(self):
        object.__setattr__(self, "sigma", check_number_or_distribution("sigma", self.sigma,
                                                                      function=True))

    gaussian_link = True

    def hyperparameters(self):
        return {"sigma": self.sigma}

    def distribution(self, mu, hyper):
        return dist.Normal(mu, hyper["sigma"])


@dataclasses.dataclass(frozen=True, eq=False)
class LogNormal(AbstractObservation):
    r"""Multiplicative noise: $\log y \sim \mathcal N(\log \mu, \sigma^2)$; needs $\mu > 0$, $y > 0$.

    **Arguments:** `sigma`: the standard deviation on the log scale.
    """

    sigma: object = 1.0
    positive_mean = True
    gaussian_link = True

    def __post_init__(self):
        object.__setattr__(self, "sigma", check_number_or_distribution("sigma", self.sigma,
                                                                      function=True))

    def hyperparameters(self):
        return {"sigma": self.sigma}

    def distribution(self, mu, hyper):
        return dist.LogNormal(jnp.log(mu), hyper["sigma"])

    def check_data(self, values, argument):
        v = values[~np.isnan(values)]
        if np.any(v <= 0):
            raise ValueError(
                f"{argument} must be positive for noise.LogNormal; got {v[v <= 0][0]}"
            )


@dataclasses.dataclass(frozen=True, eq=False)
class Poisson(AbstractObservation):
    r"""Counts: $y \sim \mathrm{Poisson}(\mu)$; needs $\mu > 0$ and non-negative integer data."""

    positive_mean = True

    def hyperparameters(self):
        return {}

    def distribution(self, mu, hyper):
        return dist.Poisson(mu)

    def check_data(self, values, argument):
        _check_counts(values, argument, "Poisson")


@dataclasses.dataclass(frozen=True, eq=False)
class NegativeBinomial(AbstractObservation):
    r"""Over-dispersed counts, mean/dispersion form: $\mathbb E y = \mu$,
    $\mathrm{Var}\, y = \mu + \mu^2 / \phi$.

    Give exactly one of `phi` (the dispersion) or `phi_inv` ($1/\phi$, often easier to
    put a prior on: `phi_inv=dist.Exponential(5.0)` as in Grinsztajn et al. 2021).
    """

    phi: object = None
    phi_inv: object = None
    positive_mean = True

    def __post_init__(self):
        if (self.phi is None) == (self.phi_inv is None):
            raise ValueError(
                "NegativeBinomial needs exactly one of phi or phi_inv; "
                f"got phi={self.phi!r}, phi_inv={self.phi_inv!r}"
            )
        for name in ("phi", "phi_inv"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_number_or_distribution(name, value))

    def hyperparameters(self):
        if self.phi is not None:
            return {"phi": self.phi}
        return {"phi_inv": self.phi_inv}

    def distribution(self, mu, hyper):
        phi = hyper["phi"] if "phi" in hyper else 1.0 / hyper["phi_inv"]
        return dist.NegativeBinomial2(mu, phi)

    def check_data(self, values, argument):
        _check_counts(values, argument, "NegativeBinomial")


@dataclasses.dataclass(frozen=True, eq=False)
class StudentT(AbstractObservation):
    r"""Heavy-tailed noise: $y \sim t_\nu(\mu, \sigma)$, robust to outliers.

    **Arguments:** `sigma`: scale; `nu`: degrees of freedom (default 4).
    """

    sigma: object = 1.0
    nu: object = 4.0

    def __post_init__(self):
        object.__setattr__(self, "sigma", check_number_or_distribution("sigma", self.sigma,
                                                                      function=True))
        object.__setattr__(self, "nu", check_number_or_distribution("nu", self.nu))

    def hyperparameters(self):
        return {"sigma": self.sigma, "nu": self.nu}

    def distribution(self, mu, hyper):
        return dist.StudentT(hyper["nu"], mu, hyper["sigma"])
