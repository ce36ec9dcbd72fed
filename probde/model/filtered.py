"""The trajectory source of an SDE model, whose latent path a continuous-discrete filter
integrates out (`FilterSource`), and its numpyro program.

The posterior holds theta and the noise parameters only; the filter's log-likelihood
enters through the observed site, and its filtered and smoothed states are recorded on
request (`states=True`). The filter scores the data itself, so this source builds its own
program instead of the simulate-then-observe one of `program.py`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from .._checks import describe
from ..dynamics.sde import SDE, AbstractLikelihood, FilterInputs, simulate_paths
from . import auxiliary, common, initial, latent, sites, validate
from .experiments import starts_of
from .sources import AbstractSource, _derived_reads, _state_function_reads


class FilteredObservations(dist.Distribution):
    """The observations of an SDE with the latent path integrated out by a filter.

    It carries the filter's result for the data it was built for: `log_prob(value)` is the
    filter's `log p(y | theta)` per experiment and is only meaningful for those data (as
    the observed value of the observed site). `loo_pointwise(value)` gives leave-one-out
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


class FilterSource(AbstractSource):
    """An SDE whose latent path the model's likelihood (a filter) integrates out."""

    kinds = (SDE,)

    def __init__(self, dynamics):
        super().__init__(dynamics)
        self.sde = dynamics

    def check_arguments(self, model, initial_state, discrepancy, likelihood):
        if not isinstance(likelihood, AbstractLikelihood):
            raise TypeError(
                "an SDE model needs likelihood=probde.EKF(), probde.UKF(), "
                f"probde.ParticleFilter(...) or probde.LatentPath(...); got {describe(likelihood)}"
            )
        obs = model.observation
        if likelihood.gaussian and (not obs.gaussian_link or set(obs.hyperparameters()) != {"sigma"}):
            raise ValueError(
                f"{type(likelihood).__name__} needs Gaussian observation noise on the link "
                "scale (probde.noise.Normal or probde.noise.LogNormal); got "
                f"{type(obs).__name__}. Use probde.ParticleFilter(...) for other noise models"
            )
        if discrepancy is not None:
            raise ValueError(
                "an SDE model takes no discrepancy term (its process noise already absorbs "
                f"what the drift misses); got {describe(discrepancy)}"
            )
        return initial.check_argument(initial_state, self.sde.state_names)

    def trace(self, model, theta) -> set[str]:
        sde = self.sde
        x0 = initial.mean(model.initial_state, theta, sde.state_names)
        sde.check(x0, theta)
        if model.likelihood.gaussian:
            initial.gaussian(initial.resolve(model.initial_state, theta, sde.state_names),
                             sde.num_states, type(model.likelihood).__name__)
        read = validate.trace_reads(lambda th: sde.drift(0.0, x0, th), theta)
        read |= validate.trace_reads(lambda th: sde.diffusion(0.0, x0, th), theta)
        return read | _state_function_reads(model, x0, theta) | _derived_reads(model, theta)

    def program(self, model, data, *, on_failure=None, predict_times=None):
        if model.likelihood.latent_path:
            latent.check_predict_times(predict_times)
            return latent.build(model, data, _static(model, data, None), _Run,
                                on_failure=on_failure)
        return build(model, data, on_failure=on_failure, predict_times=predict_times)


@dataclasses.dataclass(frozen=True)
class _Grid:
    """Times, raw and link-scale values and mask on which a filter runs."""

    times: jax.Array
    raw: jax.Array
    link: jax.Array
    mask: jax.Array


@dataclasses.dataclass(frozen=True)
class _Static:
    data: _Grid
    grid: _Grid  # the data times merged with the prediction times
    starts: jax.Array
    idx_data: np.ndarray
    idx_new: np.ndarray | None
    jacobian: jax.Array | float


def _static(model, data, predict_times) -> _Static:
    lik, obs = model.likelihood, model.observation
    times = jnp.asarray(data.times, dtype=jnp.result_type(float))
    starts = starts_of(model, data)
    active = jnp.asarray(model.active(data))
    mask = jnp.asarray(data.mask) & active[:, :, None]
    raw = jnp.asarray(np.where(data.mask, data.values, 1.0), dtype=times.dtype)
    E, T, O = raw.shape
    link = obs.link(raw) if lik.gaussian else raw
    jacobian = 0.0
    if lik.gaussian and obs.log_link:  # LogNormal: the density of y, not of log y
        jacobian = -jnp.sum(jnp.where(mask, jnp.log(raw), 0.0))
    on_data = _Grid(times, raw, link, mask)
    if predict_times is None:
        return _Static(on_data, on_data, jnp.asarray(starts, times.dtype), np.arange(T), None,
                       jacobian)
    union = np.union1d(np.asarray(data.times), np.asarray(predict_times, dtype=float))
    idx_data = np.searchsorted(union, np.asarray(data.times))
    idx_new = np.searchsorted(union, np.asarray(predict_times, dtype=float))
    g_raw = jnp.ones((E, union.size, O), times.dtype).at[:, idx_data].set(raw)
    g_mask = jnp.zeros((E, union.size, O), bool).at[:, idx_data].set(mask)
    grid = _Grid(jnp.asarray(union, times.dtype), g_raw,
                 obs.link(g_raw) if lik.gaussian else g_raw, g_mask)
    return _Static(on_data, grid, jnp.asarray(starts, times.dtype), idx_data, idx_new, jacobian)


def build(model, data, *, on_failure=None, predict_times=None, sim_steps: int = 20):
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
    st = _static(model, data, predict_times)
    O = len(data.observables)

    def model_fn(observed: bool = True, conditional: bool = False, states: bool = False):
        theta = common.sample_parameters(model)
        hyper = common.sample_noise(model, O)
        run = _Run(model, st, theta, hyper,
                   initial.resolve(model.initial_state, theta, model.dynamics.state_names))
        if observed:
            run.condition(on_failure, states)
            return
        if conditional and model.likelihood.gaussian:
            xs, ok = run.smoothed_draws()
        else:
            xs, ok = run.free_paths(sim_steps)
        run.predict(xs, ok)

    return model_fn


@dataclasses.dataclass(frozen=True)
class _Run:
    """One run of the SDE program: theta, noise parameters and the initial state fixed."""

    model: object
    st: _Static
    theta: dict
    hyper: dict
    init: object

    def observe_state(self, x):
        return common.observe_states(self.model, x[None, None], self.theta)[0, 0]

    def filter(self, grid: _Grid, *, smooth: bool):
        return filter_all(self.model, self.theta, self.hyper, self.init, self.observe_state,
                          grid, self.st.starts, smooth=smooth)

    def condition(self, on_failure, states: bool) -> None:
        """Score the data with the filter (and record the filtered/smoothed states)."""
        model, st = self.model, self.st
        out = self.filter(st.data, smooth=states)
        ok = out.ok
        numpyro.deterministic(sites.SOLVER_STEPS, out.num_steps)
        numpyro.deterministic(sites.SOLVER_OK, ok)
        numpyro.deterministic(sites.VALID, ok)
        common.reject_invalid(ok, on_failure)
        E = st.data.raw.shape[0]
        log_lik = jnp.where(ok, out.log_lik, 0.0) + (st.jacobian / E if E else 0.0)
        gaussian = model.likelihood.gaussian

        def pointwise():
            # Only LOO needs the smoother: run it on demand, not in the sampler.
            full = out if out.pointwise is not None or not gaussian else self.filter(
                st.data, smooth=True)
            if full.pointwise is None:
                return None
            pw = full.pointwise
            if model.observation.log_link:
                pw = pw - jnp.where(st.data.mask, jnp.log(st.data.raw), 0.0)
            return jnp.where(st.data.mask, pw, 0.0)

        numpyro.sample(sites.OBSERVED,
                       FilteredObservations(log_lik, pointwise, st.data.raw.shape,
                                            has_loo=gaussian),
                       obs=st.data.raw)
        if states:
            numpyro.deterministic(sites.FILTERED_MEAN, out.filtered_mean)
            numpyro.deterministic(sites.FILTERED_COV, out.filtered_cov)
            if out.smoothed_mean is not None:
                numpyro.deterministic(sites.SMOOTHED_MEAN, out.smoothed_mean)
                numpyro.deterministic(sites.SMOOTHED_COV, out.smoothed_cov)

    def smoothed_draws(self):
        """Posterior predictive states: draws from the smoothed marginals on the grid."""
        out = self.filter(self.st.grid, smooth=True)
        numpyro.deterministic(sites.SOLVER_STEPS, out.num_steps)
        dtype = self.st.grid.times.dtype
        S = self.model.dynamics.num_states
        eps = jax.random.normal(numpyro.prng_key(), out.smoothed_mean.shape, dtype=dtype)
        chol = jnp.linalg.cholesky(out.smoothed_cov + 1e-12 * jnp.eye(S, dtype=dtype)[None, None])
        xs = out.smoothed_mean + jnp.einsum("etij,etj->eti", chol, eps)
        return xs, out.ok & jnp.all(jnp.isfinite(xs), axis=(1, 2))

    def free_paths(self, sim_steps: int):
        """Free sample paths of the SDE from its initial distribution, on the grid."""
        model, grid, starts = self.model, self.st.grid, self.st.starts
        E, S = grid.raw.shape[0], model.dynamics.num_states
        key_init, key_path = jax.random.split(numpyro.prng_key())
        x0 = initial.draw(self.init, jax.random.split(key_init, E), E, S, grid.times.dtype)

        def path(x, start, k):
            return simulate_paths(model.dynamics, x, self.theta, jnp.maximum(grid.times, start),
                                  k, t0=start, num_steps=sim_steps)

        xs, ok = jax.vmap(path)(x0, starts, jax.random.split(key_path, E))
        numpyro.deterministic(sites.SOLVER_STEPS,
                              jnp.full(E, sim_steps * grid.times.shape[0], jnp.int32))
        return xs, ok

    def predict(self, xs, ok) -> None:
        """Observations of the simulated states at the data times (and the new times)."""
        model, st = self.model, self.st
        numpyro.deterministic(sites.SOLVER_OK, ok)
        xs, mu, valid = common.checked_mean(model, xs, ok, self.theta)
        numpyro.deterministic(sites.VALID, valid)
        hyper = common.align_noise(self.hyper, 3)
        obs = model.observation
        numpyro.deterministic(sites.TRAJECTORY, xs[:, st.idx_data])
        numpyro.deterministic(sites.MEAN, mu[:, st.idx_data])
        numpyro.sample(sites.OBSERVED, obs.distribution(mu[:, st.idx_data], hyper))
        if st.idx_new is not None:
            numpyro.deterministic(sites.new(sites.TRAJECTORY), xs[:, st.idx_new])
            numpyro.deterministic(sites.new(sites.MEAN), mu[:, st.idx_new])
            numpyro.sample(sites.new(sites.OBSERVED), obs.distribution(mu[:, st.idx_new], hyper))


def filter_all(model, theta, hyper, init, h, grid: _Grid, starts, *, smooth):
    """Run the likelihood's filter on every experiment (vmapped)."""
    lik = model.likelihood
    E = grid.raw.shape[0]
    key = numpyro.prng_key() if lik.needs_key else None
    keys = jax.random.split(key, E) if key is not None else jnp.zeros((E, 2), jnp.uint32)
    if lik.gaussian:
        return _gaussian_filters(model, theta, hyper, init, h, grid, starts, keys, smooth)
    obs = model.observation
    normals = _common_normals(model, theta, grid) if lik.needs_key else None

    def log_density(pred, y):
        return obs.distribution(pred, hyper).log_prob(y)

    if isinstance(init, dist.Distribution):
        d0 = init if init.event_shape else init.to_event(1)
        x0 = jnp.zeros((E, 0), grid.times.dtype)  # unused: one law for every experiment
        law = lambda x: d0  # noqa: E731
    else:
        x0 = jnp.broadcast_to(jnp.asarray(init), (E, model.dynamics.num_states))
        law = lambda x: dist.Delta(x, event_dim=1)  # noqa: E731

    def one(x, start, y, msk, k, u):
        inputs = FilterInputs(times=jnp.maximum(grid.times, start), t0=start, values=y, mask=msk,
                              observe=h, log_density=log_density)
        return lik.run(model.dynamics, theta, law(x), inputs, model.solver,
                       k if u is None else (k, u), smooth=smooth)

    return jax.vmap(one)(x0, starts, grid.raw, grid.mask, keys, normals)


def _common_normals(model, theta, grid: _Grid):
    """The standard normals a correlated pseudo-marginal sampler supplies for every
    experiment's filter run (leading experiment dimension), or None: the filter asks for
    none, or no sampler answers (`auxiliary.auxiliary_normals`)."""
    E, T = grid.raw.shape[0], grid.times.shape[0]
    dtype, S = grid.times.dtype, model.dynamics.num_states
    W = jax.eval_shape(lambda: model.dynamics.noise_matrix(
        grid.times[0], jnp.zeros(S, dtype), theta)).shape[1]
    spec = model.likelihood.noise_spec(model.dynamics, T, W, dtype)
    if spec is None:
        return None
    return auxiliary.auxiliary_normals(
        jax.tree.map(lambda s: jax.ShapeDtypeStruct((E,) + tuple(s.shape), s.dtype), spec))


def _gaussian_filters(model, theta, hyper, init, h, grid: _Grid, starts, keys, smooth):
    lik, obs = model.likelihood, model.observation
    S = model.dynamics.num_states
    E, _, O = grid.raw.shape
    sigma = jnp.broadcast_to(jnp.reshape(hyper["sigma"], (-1,)), (O,))
    m0, P0 = initial.gaussian(init, S, type(lik).__name__)
    m0 = jnp.broadcast_to(m0, (E, S))
    P0 = jnp.broadcast_to(P0, (E, S, S))

    def observe(x):
        return obs.link(h(x))

    def one(m, P, start, y, msk, k):
        inputs = FilterInputs(times=jnp.maximum(grid.times, start), t0=start, values=y,
                              mask=msk, observe=observe, noise_var=sigma**2)
        return lik.run(model.dynamics, theta, (m, P), inputs, model.solver, None, smooth=smooth)

    return jax.vmap(one)(m0, P0, starts, grid.link, grid.mask, keys)
