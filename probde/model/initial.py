"""The initial state: validating what the user gave and turning it into values.

The user gives a fixed array `(S,)` or `(E, S)`, a numpyro distribution, or a function of
theta returning either. For an ODE a distribution is sampled (site `initial_state`, one
draw per experiment); for an SDE it is the law of `x(t0)` that the filter integrates over.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from .._checks import describe
from . import population, sites


def is_function(value) -> bool:
    return callable(value) and not isinstance(value, dist.Distribution)


def check_array(arr, state_names) -> None:
    S = len(state_names)
    if arr.ndim not in (1, 2) or arr.shape[-1] != S:
        raise ValueError(
            f"initial_state must have shape ({S},) (one value per state "
            f"{tuple(state_names)}) or (num_experiments, {S}); got shape {arr.shape}"
        )


def check_finite(arr, state_names) -> None:
    """A fixed initial state must be finite: a NaN would make every solve fail."""
    bad = np.argwhere(~np.isfinite(arr))
    if bad.size:
        where = tuple(int(i) for i in bad[0])
        name = state_names[where[-1]]
        raise ValueError(
            f"initial_state must be finite; got {arr[where]} at index {where} (state "
            f"{name!r}). Give a number, or a distribution if the value is unknown"
        )


def check_distribution(d, state_names) -> None:
    S = len(state_names)
    shape = tuple(d.batch_shape) + tuple(d.event_shape)
    if shape != (S,):
        raise ValueError(
            f"initial_state distribution must have shape ({S},) (batch + event), one value "
            f"per state {tuple(state_names)}; got batch_shape {d.batch_shape} and "
            f"event_shape {d.event_shape}"
            + (f". Use .expand([{S}])" if shape == () else "")
        )


def check_argument(initial_state, state_names):
    """Validate the `initial_state` argument; return it (an array as a jax array)."""
    if is_function(initial_state):
        return initial_state
    if isinstance(initial_state, dist.Distribution):
        check_distribution(initial_state, state_names)
        return initial_state
    try:
        arr = np.asarray(initial_state, dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(
            "initial_state must be an array, a numpyro distribution or a function "
            f"theta -> array/distribution; got {describe(initial_state)}"
        ) from err
    check_array(arr, state_names)
    check_finite(arr, state_names)
    return jnp.asarray(arr)


def check_rows(initial_state, num_experiments: int) -> None:
    """A fixed `(E, S)` initial state needs one row per experiment."""
    if initial_state is None or is_function(initial_state):
        return
    if isinstance(initial_state, dist.Distribution):
        return
    if initial_state.ndim == 2 and initial_state.shape[0] != num_experiments:
        raise ValueError(
            f"initial_state has {initial_state.shape[0]} rows but the data has "
            f"{num_experiments} experiments; give one row per experiment or a single row"
        )


def resolve(initial_state, theta, state_names):
    """The initial state after applying a function of theta (array or distribution)."""
    value = initial_state
    if is_function(value):
        value = value(theta)
    if isinstance(value, dist.Distribution):
        check_distribution(value, state_names)
        return value
    value = jnp.asarray(value, dtype=jnp.result_type(float))
    check_array(value, state_names)
    return value


def sample(initial_state, theta, state_names, num_experiments: int | None):
    """ODE initial states `(E, S)`; samples the `initial_state` site for a distribution.

    `num_experiments=None` accepts any number of rows (used when tracing the model
    before data are known).
    """
    value = resolve(initial_state, theta, state_names)
    E = 1 if num_experiments is None else num_experiments
    if isinstance(value, dist.Distribution):
        if not value.event_shape:
            value = value.to_event(1)  # one draw is one state vector
        if E == 1:
            return numpyro.sample(sites.INITIAL_STATE, value)[None]
        with numpyro.plate(sites.EXPERIMENT_PLATE, E, dim=-1):
            return numpyro.sample(sites.INITIAL_STATE, value)
    if value.ndim == 1:
        return jnp.broadcast_to(value, (E, value.shape[0]))
    if num_experiments is not None:
        check_rows(value, num_experiments)
    return value


def mean(initial_state, theta, state_names):
    """A representative initial state `(S,)` (for tracing user functions)."""
    value = resolve(initial_state, theta, state_names)
    if isinstance(value, dist.Distribution):
        return jnp.broadcast_to(value.mean, (len(state_names),))
    return value if value.ndim == 1 else value[0]


def _unwrap(d):
    while isinstance(d, (dist.Independent, dist.ExpandedDistribution)):
        d = d.base_dist
    return d


def gaussian(value, S: int, what: str):
    """`(mean (S,), cov (S, S))` of a Gaussian (or fixed) initial state, else a ValueError."""
    if not isinstance(value, dist.Distribution):
        x = jnp.asarray(value)
        return x, jnp.zeros(x.shape[:-1] + (S, S), x.dtype)
    base = _unwrap(value)
    if isinstance(base, dist.Normal):
        loc = jnp.broadcast_to(base.loc, (S,))
        scale = jnp.broadcast_to(base.scale, (S,))
        return loc, jnp.diag(scale**2)
    if isinstance(base, dist.MultivariateNormal):
        return jnp.broadcast_to(base.loc, (S,)), base.covariance_matrix
    if isinstance(base, dist.Delta):
        loc = jnp.broadcast_to(base.v, (S,))
        return loc, jnp.zeros((S, S), loc.dtype)
    raise ValueError(
        f"{what} needs a Gaussian initial state: a fixed array, numpyro Normal or "
        f"MultivariateNormal (possibly a function of theta); got {type(base).__name__}. "
        "Use probde.ParticleFilter(...) for other initial distributions"
    )


def draw(init, keys, E: int, S: int, dtype):
    """`(E, S)` initial states: draws of a distribution, or the fixed state broadcast."""
    if isinstance(init, dist.Distribution):
        d = init if init.event_shape else init.to_event(1)
        return jax.vmap(lambda k: d.sample(k))(keys).astype(dtype)
    x = jnp.asarray(init, dtype)
    return jnp.broadcast_to(x, (E, S))


def sample_experiments(model, theta, num_experiments: int):
    """`(E, S)` ODE initial states of a model whose theta may differ between experiments
    (per-experiment parameters or inputs): a function of theta is evaluated for each
    experiment's theta."""
    names = model.dynamics.state_names
    if not (is_function(model.initial_state) and population.varies(model)):
        return sample(model.initial_state, theta, names, num_experiments)

    def one(th):
        value = model.initial_state(th)
        if isinstance(value, dist.Distribution):
            raise ValueError(
                "initial_state is a function returning a distribution, in a model whose "
                "theta differs between experiments (per-experiment parameters or inputs); "
                "return a fixed array of the experiment's theta instead")
        value = jnp.asarray(value, dtype=jnp.result_type(float))
        if value.ndim != 1:
            raise ValueError(
                "initial_state(theta) must return one state vector of shape "
                f"({len(names)},) per experiment in a model whose theta differs between "
                f"experiments; got shape {value.shape}")
        check_array(value, names)
        return value

    return jax.vmap(one, in_axes=(population.axes(model, theta),))(theta)
