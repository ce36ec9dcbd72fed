"""The numpyro model of a `probde.Model` whose dynamics are a `probde.SDE` (internal).

The latent path is integrated out by the model's likelihood (a continuous-discrete filter),
so the posterior holds theta and the noise parameters only; the filter's log-likelihood
enters through the observed site `y`, and its filtered and smoothed states are recorded on
request (`states=True`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from ._checks import describe
from .dynamics.sde import FilterInputs, simulate
from .inference.failures import report as report_failure

FILTERED_MEAN = "filtered_mean"
FILTERED_COV = "filtered_cov"
SMOOTHED_MEAN = "smoothed_mean"
SMOOTHED_COV = "smoothed_cov"
STATE_SITES = (FILTERED_MEAN, FILTERED_COV, SMOOTHED_MEAN, SMOOTHED_COV)


def _unwrap(d):
    while isinstance(d, (dist.Independent, dist.ExpandedDistribution)):
        d = d.base_dist
    return d


def gaussian_initial(value, S: int, what: str):
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


class FilteredObservations(dist.Distribution):
    """The observations of an SDE with the latent path integrated out by a filter.

    It carries the filter's result for the data it was built for: `log_prob(value)` is the
    filter's `log p(y | theta)` per experiment and is only meaningful for those data (as
    the observed value of the site `y`). `loo_pointwise(value)` gives leave-one-out
    predictive log densities from the smoother (Gaussian filters), or `None`.
    """

    support = constraints.independent(constraints.real, 2)

    def __init__(self, log_lik, pointwise_fn, shape, has_loo=True):
        self.log_lik = log_lik
        self.pointwise_fn = pointwise_fn
        self.has_loo = has_loo  # False: `loo_pointwise` gives None (known without running it)
        super().__init__(batch_shape=shape[:1], event_shape=shape[1:])

    def log_prob(self, value):
        return self.log_lik

    def loo_pointwise(self, value):
        return self.pointwise_fn()

    def sample(self, key, sample_shape=()):
        raise NotImplementedError(
            "FilteredObservations cannot be sampled; the model simulates paths instead"
        )


def check_sde_model(model):
    """Construction-time checks of an SDE model (raise clear errors)."""
    lik = model.likelihood
    obs = model.observation
    if lik.gaussian and (not obs.gaussian_link or set(obs.hyperparameters()) != {"sigma"}):
        raise ValueError(
            f"{type(lik).__name__} needs Gaussian observation noise on the link scale "
            "(probde.noise.Normal or probde.noise.LogNormal); got "
            f"{type(obs).__name__}. Use probde.ParticleFilter(...) for other noise models"
        )
    if model.discrepancy is not None:
        raise ValueError(
            "an SDE model takes no discrepancy term (its process noise already absorbs "
            f"what the drift misses); got {describe(model.discrepancy)}"
        )


def sde_initial(model, theta):
    """The initial state as the user gave it, after applying a function of theta."""
    value = model.initial_state
    if callable(value) and not isinstance(value, dist.Distribution):
        value = value(theta)
    if not isinstance(value, dist.Distribution):
        value = jnp.asarray(value, dtype=jnp.result_type(float))
        model._check_initial_array(value)
    else:
        model._check_initial_distribution(value)
    return value


def initial_mean(model, theta):
    """A representative initial state `(S,)` (for tracing user functions)."""
    value = sde_initial(model, theta)
    if isinstance(value, dist.Distribution):
        return jnp.broadcast_to(value.mean, (model.dynamics.num_states,))
    return value if value.ndim == 1 else value[0]


def sde_model_fn(model, data, *, on_failure=None, predict_times=None, sim_steps: int = 20):
    """The numpyro model function of an SDE model for prepared data.

    `fn(observed=True, conditional=False, states=False)`: `observed` conditions on the
    data through the filter (recording filtered and smoothed states when `states`);
    otherwise paths are simulated: from the smoother's marginals when `conditional` (the
    posterior predictive given the data; Gaussian filters), or as free sample paths of
    the SDE (prior predictive, and the particle filter's posterior predictive).
    `predict_times` adds sites `trajectory_new`, `mu_new`, `y_new` at those times in the
    predictive modes (for Gaussian filters, from the smoother run on the union of the data
    and new times).
    """
    from .model import (  # noqa: PLC0415 (model imports this module)
        MEAN,
        OBSERVED,
        REJECTED,
        SOLVER_OK,
        SOLVER_STEPS,
        TRAJECTORY,
        VALID,
    )

    sde = model.dynamics
    lik = model.likelihood
    obs_model = model.observation
    S = sde.num_states
    times = jnp.asarray(data.times, dtype=jnp.result_type(float))
    starts_np = np.full(data.num_experiments, model.t0) if model.t0 is not None else data.starts
    starts = jnp.asarray(starts_np, dtype=times.dtype)
    active = jnp.asarray(model.active(data))
    mask = jnp.asarray(data.mask) & active[:, :, None]
    raw = jnp.asarray(np.where(data.mask, data.values, 1.0), dtype=times.dtype)
    E, T = raw.shape[:2]
    O = raw.shape[2]
    link_values = obs_model.link(raw) if lik.gaussian else raw
    jacobian = 0.0
    if lik.gaussian and obs_model.log_link:  # LogNormal: the density of y, not of log y
        jacobian = -jnp.sum(jnp.where(mask, jnp.log(raw), 0.0))
    # The predictive modes run on `grid`: the data times, merged with `predict_times`.
    if predict_times is None:
        grid = (times, raw, link_values, mask)
        idx_data = np.arange(T)
        idx_new = None
    else:
        union = np.union1d(np.asarray(data.times), np.asarray(predict_times, dtype=float))
        idx_data = np.searchsorted(union, np.asarray(data.times))
        idx_new = np.searchsorted(union, np.asarray(predict_times, dtype=float))
        g_raw = jnp.ones((E, union.size, O), times.dtype).at[:, idx_data].set(raw)
        g_mask = jnp.zeros((E, union.size, O), bool).at[:, idx_data].set(mask)
        grid = (jnp.asarray(union, times.dtype), g_raw,
                obs_model.link(g_raw) if lik.gaussian else g_raw, g_mask)

    def model_fn(observed: bool = True, conditional: bool = False, states: bool = False):
        theta = {name: numpyro.sample(name, prior) for name, prior in model.params.items()}
        for name, fn in model.derived.items():
            numpyro.deterministic(name, fn(theta))
        hyper = model._sample_hyper(O)
        init = sde_initial(model, theta)

        def h(x):
            return model._observe(x[None, None], theta)[0, 0]

        if observed or (conditional and lik.gaussian):
            if observed:
                out = _filter_all(model, theta, hyper, init, h, times, starts, link_values,
                                  raw, mask, smooth=states)
            else:
                g_times, g_raw, g_link, g_mask = grid
                out = _filter_all(model, theta, hyper, init, h, g_times, starts, g_link, g_raw,
                                  g_mask, smooth=True)
            ok = out.ok
            numpyro.deterministic(SOLVER_STEPS, out.num_steps)
            if observed:
                numpyro.deterministic(SOLVER_OK, ok)
                numpyro.deterministic(VALID, ok)
                rejected = ~jnp.all(ok)
                penalty = jnp.where(rejected, -jnp.inf, 0.0)
                if on_failure is not None:
                    penalty = penalty + report_failure(on_failure, rejected)
                numpyro.factor(REJECTED, penalty)
                log_lik = jnp.where(ok, out.log_lik, 0.0)
                log_lik = log_lik + (jacobian / E if E else 0.0)

                def pointwise():
                    # Only LOO needs the smoother: run it on demand, not in the sampler.
                    full = out if out.pointwise is not None or not lik.gaussian else _filter_all(
                        model, theta, hyper, init, h, times, starts, link_values, raw, mask,
                        smooth=True)
                    if full.pointwise is None:
                        return None
                    pw = full.pointwise
                    if obs_model.log_link:
                        pw = pw - jnp.where(mask, jnp.log(raw), 0.0)
                    return jnp.where(mask, pw, 0.0)

                numpyro.sample(OBSERVED, FilteredObservations(log_lik, pointwise, (E, T, O),
                                                                has_loo=lik.gaussian),
                               obs=raw)
                if states:
                    numpyro.deterministic(FILTERED_MEAN, out.filtered_mean)
                    numpyro.deterministic(FILTERED_COV, out.filtered_cov)
                    if out.smoothed_mean is not None:
                        numpyro.deterministic(SMOOTHED_MEAN, out.smoothed_mean)
                        numpyro.deterministic(SMOOTHED_COV, out.smoothed_cov)
                return
            # Conditional posterior predictive: states drawn from the smoothed marginals.
            eps = jax.random.normal(numpyro.prng_key(), out.smoothed_mean.shape,
                                    dtype=times.dtype)
            chol = jnp.linalg.cholesky(
                out.smoothed_cov + 1e-12 * jnp.eye(S, dtype=times.dtype)[None, None]
            )
            xs = out.smoothed_mean + jnp.einsum("etij,etj->eti", chol, eps)
            ok = ok & jnp.all(jnp.isfinite(xs), axis=(1, 2))
        else:
            # Free sample paths of the SDE from its initial distribution.
            key_init, key_path = jax.random.split(numpyro.prng_key())
            x0 = _draw_initial(init, jax.random.split(key_init, E), E, S, times.dtype)

            def path(x, start, k):
                return simulate(sde, x, theta, jnp.maximum(grid[0], start), k, t0=start,
                                num_steps=sim_steps)

            xs, ok = jax.vmap(path)(x0, starts, jax.random.split(key_path, E))
            numpyro.deterministic(SOLVER_STEPS,
                                  jnp.full(E, sim_steps * grid[0].shape[0], jnp.int32))
        numpyro.deterministic(SOLVER_OK, ok)
        xs = jnp.where(ok[:, None, None], xs, 1.0)
        mu = model._observe(xs, theta)
        valid = ok
        if obs_model.positive_mean:
            valid = valid & jnp.all(mu > 0, axis=(1, 2))
        numpyro.deterministic(VALID, valid)
        mu = jnp.where(valid[:, None, None], mu, 1.0)
        hyper_b = {k: jnp.reshape(v, (1,) * (3 - jnp.ndim(v)) + jnp.shape(v)) if jnp.ndim(v) else v
                   for k, v in hyper.items()}
        numpyro.deterministic(TRAJECTORY, xs[:, idx_data])
        numpyro.deterministic(MEAN, mu[:, idx_data])
        numpyro.sample(OBSERVED, obs_model.distribution(mu[:, idx_data], hyper_b))
        if idx_new is not None:
            numpyro.deterministic(TRAJECTORY + "_new", xs[:, idx_new])
            numpyro.deterministic(MEAN + "_new", mu[:, idx_new])
            numpyro.sample(OBSERVED + "_new", obs_model.distribution(mu[:, idx_new], hyper_b))

    return model_fn


def _draw_initial(init, keys, E, S, dtype):
    if isinstance(init, dist.Distribution):
        d = init if init.event_shape else init.to_event(1)
        return jax.vmap(lambda k: d.sample(k))(keys).astype(dtype)
    x = jnp.asarray(init, dtype)
    return jnp.broadcast_to(x, (E, S))


def _filter_all(model, theta, hyper, init, h, times, starts, link_values, raw, mask, *, smooth):
    """Run the likelihood's filter on every experiment (vmapped)."""
    sde = model.dynamics
    lik = model.likelihood
    obs_model = model.observation
    S = sde.num_states
    E = raw.shape[0]
    O = raw.shape[2]
    key = numpyro.prng_key() if lik.needs_key else None
    keys = jax.random.split(key, E) if key is not None else jnp.zeros((E, 2), jnp.uint32)

    if lik.gaussian:
        sigma = jnp.broadcast_to(jnp.reshape(hyper["sigma"], (-1,)), (O,))
        noise_var = sigma**2
        m0, P0 = gaussian_initial(init, S, type(lik).__name__)
        m0 = jnp.broadcast_to(m0, (E, S))
        P0 = jnp.broadcast_to(P0, (E, S, S))

        def observe(x):
            return obs_model.link(h(x))

        def one(m, P, start, y, msk, k):
            inputs = FilterInputs(times=jnp.maximum(times, start), t0=start, values=y,
                                  mask=msk, observe=observe, noise_var=noise_var)
            return lik.run(sde, theta, (m, P), inputs, model.solver, None, smooth=smooth)

        return jax.vmap(one)(m0, P0, starts, link_values, mask, keys)

    def log_density(pred, y):
        return obs_model.distribution(pred, hyper).log_prob(y)

    if isinstance(init, dist.Distribution):
        d0 = init if init.event_shape else init.to_event(1)

        def one(start, y, msk, k):
            inputs = FilterInputs(times=jnp.maximum(times, start), t0=start, values=y, mask=msk,
                                  observe=h, log_density=log_density)
            return lik.run(sde, theta, d0, inputs, model.solver, k, smooth=smooth)

        return jax.vmap(one)(starts, raw, mask, keys)
    x0 = jnp.broadcast_to(jnp.asarray(init), (E, S))

    def one_fixed(x, start, y, msk, k):
        inputs = FilterInputs(times=jnp.maximum(times, start), t0=start, values=y, mask=msk,
                              observe=h, log_density=log_density)
        return lik.run(sde, theta, dist.Delta(x, event_dim=1), inputs, model.solver, k,
                       smooth=smooth)

    return jax.vmap(one_fixed)(x0, starts, raw, mask, keys)
