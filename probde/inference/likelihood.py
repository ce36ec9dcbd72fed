"""`probde.log_likelihood`: the model's log-likelihood at given parameter values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from numpyro import handlers

from .._checks import describe
from ..model import Model, auxiliary
from ..model.sites import OBSERVED, REJECTED


def _latent_names(model: Model, prepared) -> list[str]:
    fn = model.numpyro_model(prepared)
    with handlers.block(), handlers.seed(rng_seed=0):
        tr = handlers.trace(fn).get_trace(**_kwargs(model))
    return [k for k, s in tr.items() if s["type"] == "sample" and not s["is_observed"]]


def _kwargs(model: Model) -> dict:
    # per-experiment parameters by their own names (not their standardised values)
    return {"observed": True, "centered": True} if model.sde is None else {"observed": True}


def _is_key(seed) -> bool:
    """A JAX random key: a typed key, or a raw `uint32` key of shape `(2,)` (possibly traced)."""
    if not isinstance(seed, jax.Array):
        return False
    if jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
        return seed.shape == ()
    return seed.shape == (2,) and seed.dtype == jnp.uint32


def log_likelihood(model: Model, data, params: dict, *, seed=0):
    r"""$\log p(\text{data} \mid \text{params})$, summed over all observed values.

    Pure and jit-able in `params` (the data and model are fixed): use it to profile,
    optimise or plot the likelihood. A failed solve (or an impossible prediction) gives
    `-inf`. For an SDE model it is the filter's log-likelihood (the latent path integrated
    out); with `probde.ParticleFilter` it is the log of an unbiased, random estimate, drawn
    with `seed`.

    **Arguments:**

    - `model`: a `probde.Model`.
    - `data`: a `probde.TimeSeries` or a list of them.
    - `params`: dict with exactly the model's latent variable names: the keys of
      `Model(params=...)` (a `probde.PerExperiment` one with one value per experiment),
      inferred noise parameters (`sigma`, ...) and `initial_state` when the initial state
      is a distribution (ODE models).
    - `seed`: random seed of the particle filter (other likelihoods ignore it): an integer,
      or a JAX random key (`jax.random.PRNGKey(i)`), which can be traced, so that the
      estimate's spread over seeds is one compiled function:
      `jax.vmap(lambda k: probde.log_likelihood(model, data, params, seed=k))(keys)`.

    **Example:**

    ```python
    >>> import jax.numpy as jnp, numpyro.distributions as dist, probde
    >>> decay = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    >>> model = probde.Model(decay, {"k": dist.LogNormal(0.0, 1.0)}, jnp.array([1.0]),
    ...                      probde.noise.Normal(sigma=0.1))
    >>> data = probde.TimeSeries([0.0, 1.0], [1.0, 0.6], observables=("x",))
    >>> ll = probde.log_likelihood(model, data, {"k": 0.5})
    >>> bool(jnp.isfinite(ll))
    True

    ```
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a probde.Model; got {describe(model)}")
    if not _is_key(seed) and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an integer or a JAX random key; got {describe(seed)}")
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of parameter values; got {describe(params)}")
    if model.sde is not None and model.likelihood.latent_path:
        raise ValueError(
            "log_likelihood needs the SDE's path integrated out, which "
            "likelihood=probde.LatentPath does not do (it samples the path); use a model "
            "with likelihood=probde.EKF(), probde.UKF() or probde.ParticleFilter(...)")
    prepared = model.prepare(data)
    expected = _latent_names(model, prepared)
    if set(params) != set(expected):
        missing = sorted(set(expected) - set(params))
        extra = sorted(set(params) - set(expected))
        raise ValueError(
            f"params must have exactly the keys {sorted(expected)}; "
            f"missing {missing}, unexpected {extra}"
        )
    fn = model.numpyro_model(prepared)
    # Hidden from outer handlers except for a particle filter's request of common random
    # numbers, which `probde.model.auxiliary.supply_normals` around this call answers.
    with handlers.block(hide_fn=lambda msg: msg["type"] != auxiliary.MESSAGE):
        tr = handlers.trace(handlers.substitute(handlers.seed(fn, rng_seed=seed), data=params)).get_trace(
            **_kwargs(model)
        )
    site = tr[OBSERVED]
    # The site's distribution is masked (missing values contribute 0).
    lp = jnp.sum(site["fn"].log_prob(site["value"]))
    return lp + tr[REJECTED]["fn"].log_prob(tr[REJECTED]["value"])


