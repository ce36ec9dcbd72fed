"""Parameters that vary by experiment (subjects, sites, regions) and the experiments' known
inputs: how they are declared, sampled, and handed to the user's functions.

Inside the program theta is one dict: shared parameters are scalars (or their own shape),
per-experiment parameters and inputs have a leading experiment axis `(E, ...)`. The user's
functions (vector field, initial state, observation) are written for one experiment and
are vmapped over that axis (`axes` says which entries carry it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.infer.reparam import LocScaleReparam

from .._checks import describe
from . import sites

#: families that `LocScaleReparam` non-centres exactly (value = loc + scale * standard draw)
LOC_SCALE_FAMILIES = (dist.Normal, dist.StudentT, dist.Cauchy, dist.Laplace, dist.Logistic)


@dataclasses.dataclass(frozen=True)
class PerExperiment:
    r"""A parameter with one value per experiment, drawn from a population distribution.

    Give it in `probde.Model(params=...)` next to the shared parameters:

    - `prior`: a numpyro distribution of one experiment's value (the same for all, no
      pooling), or a function `theta -> distribution` of the shared parameters: the
      hierarchical (partial pooling) case, e.g.
      `lambda th: dist.Normal(th["mu_lKa"], th["tau_lKa"])`, whose hyperparameters are
      ordinary entries of `params` with their own priors.
    - `centered`: `False` (default) samples the standardised value and shifts and scales it
      (the non-centred form, which NUTS needs on a hierarchical funnel: few data per
      experiment); `True` samples the value itself (better when every experiment has
      many data). Non-centring needs a location-scale family (Normal, StudentT, Cauchy,
      Laplace, Logistic); it is numpyro's `LocScaleReparam`, and the standardised values
      appear in the posterior as `<name>_decentered`.

    The vector field, initial state and observation function see one experiment's value
    under the parameter's name; the posterior has it along an `experiment` dim labelled
    by the experiments' names.

    **Example:**

    ```python
    >>> import numpyro.distributions as dist, probde
    >>> lka = probde.PerExperiment(lambda th: dist.Normal(th["mu_lKa"], th["tau_lKa"]))
    >>> lka.centered
    False

    ```
    """

    prior: dist.Distribution | Callable
    centered: bool = False

    def __post_init__(self):
        if not (isinstance(self.prior, dist.Distribution) or callable(self.prior)):
            raise TypeError(
                "PerExperiment prior must be a numpyro distribution or a function "
                f"theta -> distribution of the shared parameters; got {describe(self.prior)}"
            )
        if not isinstance(self.centered, bool):
            raise TypeError(f"PerExperiment centered must be True or False; got "
                            f"{describe(self.centered)}")

    def distribution(self, theta: dict, name: str) -> dist.Distribution:
        """The population distribution given the shared parameters, checked."""
        d = self.prior
        if not isinstance(d, dist.Distribution):
            d = d(theta)
            if not isinstance(d, dist.Distribution):
                raise TypeError(
                    f"params[{name!r}] is a PerExperiment whose prior function must return "
                    f"a numpyro distribution; got {describe(d)}"
                )
        if not self.centered and not isinstance(d, LOC_SCALE_FAMILIES):
            raise ValueError(
                f"params[{name!r}]: the non-centred form needs a location-scale "
                f"distribution ({', '.join(c.__name__ for c in LOC_SCALE_FAMILIES)}); got "
                f"{type(d).__name__}. Put the parameter on a scale where it is Normal (e.g. "
                "its log), or give PerExperiment(..., centered=True)"
            )
        return d


def split(params: dict) -> tuple[dict, dict]:
    """`(shared priors, per-experiment parameters)`, each in the order given."""
    shared = {k: v for k, v in params.items() if not isinstance(v, PerExperiment)}
    varying = {k: v for k, v in params.items() if isinstance(v, PerExperiment)}
    return shared, varying


def sample(model, shared_theta: dict, num_experiments: int, centered: bool = False) -> dict:
    """The per-experiment sites `(E, ...)`, each drawn given the shared parameters;
    `centered=True` samples every one in the centred form (the values themselves are the
    sites: `probde.log_likelihood` takes them by name)."""
    out = {}
    if not model.per_experiment:
        return out
    config = {name: LocScaleReparam(centered=0)
              for name, p in model.per_experiment.items() if not (p.centered or centered)}
    with handlers.reparam(config=config):
        with numpyro.plate(sites.EXPERIMENT_PLATE, num_experiments, dim=-1):
            for name, p in model.per_experiment.items():
                d = p.distribution(shared_theta, name)
                if d.event_shape:
                    raise ValueError(
                        f"params[{name!r}]: a per-experiment parameter is one number per "
                        f"experiment; its distribution has event shape {d.event_shape}"
                    )
                out[name] = numpyro.sample(name, d)
    return out


def _varying(model) -> set[str]:
    """The entries of theta with an experiment axis: per-experiment values and inputs."""
    return set(model.per_experiment) | set(model.inputs)


def axes(model, theta: dict) -> dict:
    """vmap axes of theta over experiments: 0 for per-experiment values and inputs."""
    varying = _varying(model)
    return {k: (0 if k in varying else None) for k in theta}


def varies(model) -> bool:
    """Whether theta differs between experiments."""
    return bool(_varying(model))


def take(model, theta: dict, rows) -> dict:
    """theta for a subset `rows` of the experiments."""
    if rows is None:
        return theta
    varying = _varying(model)
    return {k: (v[rows] if k in varying else v) for k, v in theta.items()}


def one(model, theta: dict, e: int = 0) -> dict:
    """theta of experiment `e` (per-experiment entries indexed)."""
    varying = _varying(model)
    return {k: (v[e] if k in varying else v) for k, v in theta.items()}


def example(model, shared_theta: dict) -> dict:
    """One experiment's theta for tracing: the population distributions' draws (seed 0)
    and each input set to 1."""
    key = jax.random.PRNGKey(0)
    theta = dict(shared_theta)
    for name, p in model.per_experiment.items():
        theta[name] = p.distribution(shared_theta, name).sample(key)
    for name in model.inputs:
        theta[name] = jnp.asarray(1.0)
    return theta
