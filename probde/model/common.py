"""Steps every model program shares, whatever its trajectory source: sampling theta and the
noise parameters, observing states, and rejecting impossible points (invariant 1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from . import initial, population, sites
from .report import note_rejection, report


def sample_parameters(model, num_experiments: int = 1, inputs=None,
                      centered: bool = False) -> dict:
    """theta (one site per prior; per-experiment parameters `(E,)` given the shared ones;
    the experiments' inputs `(E,)`) and the derived quantities (deterministic sites)."""
    theta = {name: numpyro.sample(name, prior) for name, prior in model.params.items()}
    theta.update(population.sample(model, theta, num_experiments, centered))
    if inputs:
        theta.update(inputs)
    for name, fn in model.derived.items():
        numpyro.deterministic(name, fn(theta))
    return theta


def sample_noise(model, num_observables: int) -> dict:
    """The noise model's hyperparameters: sites for those given as priors, else the values."""
    hyper = {}
    for arg, value in model.observation.hyperparameters().items():
        if initial.is_function(value):
            hyper[arg] = value  # evaluated at the states (`evaluate_noise`)
        elif isinstance(value, dist.Distribution):
            shape = tuple(value.batch_shape) + tuple(value.event_shape)
            if shape not in ((), (num_observables,)):
                raise ValueError(
                    f"the prior of noise parameter {arg!r} must have shape () (shared) or "
                    f"({num_observables},) (one per observable); got {shape}"
                )
            hyper[arg] = numpyro.sample(model.hyper_names[arg], value)
        else:
            hyper[arg] = value
    return hyper


def align_noise(hyper: dict, ndim: int) -> dict:
    """Per-observable hyperparameters `(O,)` aligned with the predictions' last axis
    explicitly, so the program also runs under `jax_numpy_rank_promotion="raise"`."""
    return {
        k: jnp.reshape(v, (1,) * (ndim - jnp.ndim(v)) + jnp.shape(v)) if jnp.ndim(v) else v
        for k, v in hyper.items()
    }


def observe_states(model, ys, theta):
    """Noise-free predictions of the observables, `(E, T, S) -> (E, T, O)`."""
    if callable(model.observe):
        return per_time_point(model, model.observe, ys, theta)
    idx = np.array([model.dynamics.state_names.index(n) for n in model.observe])
    return ys[..., idx]


def per_time_point(model, fn, ys, theta):
    """`fn(y, theta_e)` of one state and one experiment's theta, at every time of every
    experiment: `ys (E, T, S) -> (E, T, ...)`."""
    th_axes = population.axes(model, theta) if population.varies(model) else None
    return jax.vmap(jax.vmap(fn, in_axes=(0, None)), in_axes=(0, th_axes))(ys, theta)


def noise_functions(model) -> dict:
    """The noise hyperparameters given as functions `fn(y, theta)` of the state."""
    return {k: v for k, v in model.observation.hyperparameters().items()
            if initial.is_function(v)}


def evaluate_noise(model, hyper: dict, ys, theta) -> dict:
    """`hyper` with each function-valued noise parameter evaluated at the states
    `ys (E, T, S)`, per time point like `observe`: arrays `(E, T, O)` (or `(E, T, 1)`)."""
    out = dict(hyper)
    for name, fn in noise_functions(model).items():
        out[name] = per_time_point(model, lambda y, th, fn=fn: jnp.atleast_1d(fn(y, th)),
                                   ys, theta)
    return out


def checked_mean(model, ys, ok, theta, mask=None):
    """`(mu, valid)`: the predictions, with failed or impossible ones (a non-positive mean
    under a positive noise model) flagged and replaced by a finite placeholder."""
    ys = jnp.where(ok[:, None, None], ys, 1.0)
    mu = observe_states(model, ys, theta)
    valid = ok
    possible = model.observation.valid_mean(mu, mask)
    if possible is not None:
        valid = valid & possible
    return ys, jnp.where(valid[:, None, None], mu, 1.0), valid


def reject_invalid(valid, on_failure) -> None:
    """Log density -inf where any experiment is invalid; counted (`report.py`), and
    reported to `on_failure` if given."""
    rejected = ~jnp.all(valid)
    penalty = jnp.where(rejected, -jnp.inf, 0.0)
    note_rejection(rejected)
    if on_failure is not None:
        penalty = penalty + report(on_failure, rejected)
    numpyro.factor(sites.REJECTED, penalty)
