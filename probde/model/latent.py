"""The numpyro program of an SDE model whose path is latent (`probde.LatentPath`).

Instead of a filter's `log p(y | theta)`, the program samples the standardised Brownian
increments on a grid between observations (and a Gaussian initial state's standardised
value), runs the path they drive, and scores the data given the path with the noise model,
value by value: the joint density of the discretised SDE. The sites of the path
(`sites.PATH_SITES`) are latent sample sites that `probde.infer` keeps out of the parameter
posterior. Prior predictive draws simulate free paths, as under the filters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers

from .._optim import SMALL_INIT
from ..dynamics.sde import path_from_increments
from . import common, initial, sites
from .experiments import starts_of


def check_predict_times(predict_times) -> None:
    if predict_times is not None:
        raise ValueError(
            "predictions at new times are not available with likelihood=probde.LatentPath: "
            "the path is known on its grid only. Predictions at the data times are in the "
            "posterior predictive group; refit with a filter (probde.EKF(), "
            "probde.ParticleFilter(...)) to predict elsewhere")


def path_grid(model, data):
    """The latent path's grid for prepared data: `model.likelihood.grid` at the data times
    and the experiments' initial times, `(step_starts (E, J), steps (E, J), index (T,))`."""
    return model.likelihood.grid(np.asarray(data.times), starts_of(model, data))


def build(model, data, st, run_type, *, on_failure=None, sim_steps: int = 20):
    """The numpyro model function `fn(observed=True, conditional=False, states=False)` of
    an SDE model with a latent path, for prepared data (modes as in `filtered.build`;
    `conditional` predicts from the sampled path). `st` and `run_type` are the filter
    program's data on its grid and its run (`filtered._static`, `filtered._Run`: free paths
    for the prior predictive, predictions from states), passed in by `filtered.py` so
    that the import goes one way."""
    sde, lik = model.dynamics, model.likelihood
    step_starts, steps, index = path_grid(model, data)
    dtype = st.data.times.dtype
    step_starts = jnp.asarray(step_starts, dtype)
    steps_arr = jnp.asarray(steps, dtype)
    root_steps = jnp.asarray(np.sqrt(steps), dtype)  # constants: no gradient through sqrt(0)
    E, T, O = st.data.raw.shape
    J, S = steps.shape[1], sde.num_states

    def model_fn(observed: bool = True, conditional: bool = False, states: bool = False):
        theta = common.sample_parameters(model)
        hyper = common.sample_noise(model, O)
        init = initial.resolve(model.initial_state, theta, sde.state_names)
        run = run_type(model, st, theta, hyper, init)
        if not observed and not conditional:
            run.predict(*run.free_paths(sim_steps))
            return
        x0 = _initial_states(init, E, S, dtype)
        W = jax.eval_shape(lambda x: sde.noise_matrix(step_starts[0, 0], x, theta),
                           x0[0]).shape[1]
        z = numpyro.sample(sites.PATH_INCREMENTS,
                           dist.Normal(jnp.zeros((), dtype), 1.0).expand((E, J, W)).to_event(3),
                           infer={SMALL_INIT: "median"})

        def one(x, ts, hs, roots, zs):
            path, ok = path_from_increments(sde, theta, x, ts, hs, zs * roots[:, None],
                                            lik.solver)
            return jnp.concatenate([x[None], path])[index], ok

        xs, ok = jax.vmap(one)(x0, step_starts, steps_arr, root_steps, z)
        numpyro.deterministic(sites.SOLVER_STEPS, jnp.full(E, J, jnp.int32))
        if not observed:
            run.predict(xs, ok)
            return
        _score(model, st, theta, hyper, xs, ok, on_failure, states)

    return model_fn


def _initial_states(init, E: int, S: int, dtype):
    """`(E, S)` initial states: the fixed state; a Gaussian law's draws, non-centred
    (site `PATH_INITIAL` holds the standardised values); otherwise draws of the law itself
    (site `PATH_INITIAL` holds the states)."""
    if not isinstance(init, dist.Distribution):
        return jnp.broadcast_to(jnp.asarray(init, dtype), (E, S))
    base = initial._unwrap(init)
    standard = dist.Normal(jnp.zeros((), dtype), 1.0).expand((E, S)).to_event(2)
    if isinstance(base, (dist.Normal, dist.MultivariateNormal)):
        u = numpyro.sample(sites.PATH_INITIAL, standard, infer={SMALL_INIT: "median"})
        loc = jnp.broadcast_to(base.loc, (S,))[None]
        if isinstance(base, dist.Normal):
            return loc + jnp.broadcast_to(base.scale, (S,))[None] * u
        return loc + u @ base.scale_tril.T
    if isinstance(base, dist.Delta):
        return jnp.broadcast_to(jnp.asarray(base.v, dtype), (E, S))
    law = init if init.event_shape else init.to_event(1)
    return numpyro.sample(sites.PATH_INITIAL, law.expand((E,)).to_event(1)).astype(dtype)


def _score(model, st, theta, hyper, xs, ok, on_failure, states: bool) -> None:
    """The data given the path: the noise model's density of each observed value."""
    ys, mu, valid = common.checked_mean(model, xs, ok, theta, st.data.mask)
    numpyro.deterministic(sites.SOLVER_OK, ok)
    numpyro.deterministic(sites.VALID, valid)
    common.reject_invalid(valid, on_failure)
    noise = model.observation.distribution(mu, common.align_noise(hyper, 3))
    with handlers.mask(mask=st.data.mask):
        numpyro.sample(sites.OBSERVED, noise, obs=st.data.raw)
    if states:
        numpyro.deterministic(sites.SMOOTHED_MEAN, ys)
        numpyro.deterministic(sites.SMOOTHED_COV, jnp.zeros(ys.shape + ys.shape[-1:], ys.dtype))
