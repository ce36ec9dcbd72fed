"""The numpyro program of a model whose trajectory source simulates (an ODE solve or an
emulator): theta -> trajectory -> observation, with the discrepancy's term in between.

`fn(observed, conditional, batch_size, experiment_batch_size)`: `observed` conditions on
the data, else the observations are sampled (prior and posterior predictive);
`conditional` draws the discrepancy from its posterior given the data (the posterior
predictive of the Kennedy-O'Hagan model); `values` (optional, `(E, T, O)`) stand in for
the data's values, on the same times and mask. Minibatches (SVI) are random subsets of the time
points and/or experiments drawn by numpyro's subsampling plates, which also scale the
log-likelihood by size / subsample size; only the chosen experiments are solved, and only
at the chosen (sorted) times.
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro import handlers

from ..discrepancy.base import DiscrepancyInputs
from . import common, experiments, population, sites
from .experiments import PreparedData, starts_of


@dataclasses.dataclass(frozen=True)
class _Static:
    """Arrays fixed for the data: built once, closed over by the program."""

    times: jax.Array
    starts: jax.Array
    values: jax.Array
    mask: jax.Array
    new_times: jax.Array | None
    discrepancy: object
    index: np.ndarray | None
    setup: object
    inputs: dict
    events: tuple | None
    grids: tuple | None


@dataclasses.dataclass(frozen=True)
class _Batch:
    times: jax.Array
    values: jax.Array
    mask: jax.Array
    plates: list
    rows: jax.Array | None


def _static(model, data: PreparedData, predict_times) -> _Static:
    times = jnp.asarray(data.times, dtype=jnp.result_type(float))
    disc = model.discrepancy
    if disc is None:
        disc = model.source.default_discrepancy()
    index = setup = None
    if disc is not None:
        index = disc.observable_index(data.observables)
        # The data are numbers even when the program is built inside a jit trace
        # (`probde.log_likelihood` under jit): evaluate the link now, not staged.
        with jax.ensure_compile_time_eval():
            link_values = np.asarray(model.observation.link(jnp.asarray(data.values)))
        setup = disc.setup(data.times, link_values, data.mask)
    return _Static(
        times=times,
        starts=jnp.asarray(starts_of(model, data), dtype=times.dtype),
        values=jnp.asarray(np.where(data.mask, data.values, 1.0), dtype=times.dtype),
        mask=jnp.asarray(data.mask),
        new_times=None if predict_times is None else jnp.asarray(predict_times, times.dtype),
        discrepancy=disc,
        index=index,
        setup=setup,
        inputs={k: jnp.asarray(v, times.dtype) for k, v in data.inputs.items()},
        events=None if data.events is None else tuple(
            None if a is None else jnp.asarray(a, times.dtype) for a in data.events),
        grids=None if data.own is None else tuple(
            jnp.asarray(a) for a in experiments.own_grids(data.own)),
    )


def _minibatch(st: _Static, batch_size, experiment_batch_size) -> _Batch:
    times, values, mask, plates, rows = st.times, st.values, st.mask, [], None
    if experiment_batch_size is not None:
        eplate = numpyro.plate(sites.EXPERIMENT_BATCH, values.shape[0],
                               subsample_size=experiment_batch_size, dim=-3)
        with eplate as rows:
            rows = jnp.sort(rows)
        values, mask = values[rows], mask[rows]
        plates.append(eplate)
    if batch_size is not None:
        tplate = numpyro.plate(sites.TIME_BATCH, times.shape[0], subsample_size=batch_size,
                               dim=-2)
        with tplate as cols:
            cols = jnp.sort(cols)
        times, values, mask = times[cols], values[:, cols], mask[:, cols]
        plates.append(tplate)
    return _Batch(times, values, mask, plates, rows)


def build(model, data: PreparedData, *, on_failure=None, predict_times=None):
    """The numpyro model function of `model` for prepared data (see the module docstring)."""
    st = _static(model, data, predict_times)
    O = len(data.observables)

    def model_fn(observed: bool = True, conditional: bool = False,
                 batch_size: int | None = None, experiment_batch_size: int | None = None,
                 centered: bool = False, values: jax.Array | None = None):
        # `values` (E, T, O) replace the data's values (the mask stays): one program, and
        # one compilation, serves many data sets of the same shape (simulation-based
        # calibration vmaps the sampler over them).
        run = st if values is None else dataclasses.replace(
            st, values=jnp.where(st.mask, jnp.asarray(values, st.values.dtype), 1.0))
        batch = _minibatch(run, batch_size, experiment_batch_size)
        theta = common.sample_parameters(model, st.values.shape[0], st.inputs, centered)
        simulate = model.source.simulator(model, theta, st.starts, batch.rows, st.events,
                                          st.grids)
        theta = population.take(model, theta, batch.rows)
        sim = simulate(batch.times, own=batch_size is None)
        ys, mu, valid = common.checked_mean(model, sim.ys, sim.ok, theta, batch.mask)
        raw_hyper = common.sample_noise(model, O)
        hyper = common.evaluate_noise(model, raw_hyper, ys, theta)
        numpyro.deterministic(sites.SOLVER_OK, sim.ok)
        numpyro.deterministic(sites.VALID, valid)
        numpyro.deterministic(sites.SOLVER_STEPS, sim.num_steps)
        numpyro.deterministic(sites.TRAJECTORY, ys)
        numpyro.deterministic(sites.MEAN, mu)
        common.reject_invalid(valid, on_failure)
        hyper = common.align_noise(hyper, mu.ndim)
        observe = _Observer(model, run, batch, theta, simulate, hyper, observed, conditional,
                            raw_hyper)
        if st.discrepancy is None:
            observe.independent(mu)
        else:
            observe.with_discrepancy(mu, sim.cov)

    return model_fn


@dataclasses.dataclass
class _Observer:
    """The observation step of one program run."""

    model: object
    st: _Static
    batch: _Batch
    theta: dict
    simulate: object
    hyper: dict
    observed: bool
    conditional: bool
    raw_hyper: dict

    def independent(self, prediction, delta_new=None) -> None:
        """Independent noise around `prediction`; predictions at new times on request."""
        noise = self.model.observation.distribution(prediction, self.hyper)
        if self.observed:
            with contextlib.ExitStack() as stack:
                for plate in self.batch.plates:
                    stack.enter_context(plate)
                stack.enter_context(handlers.mask(mask=self.batch.mask))
                numpyro.sample(sites.OBSERVED, noise, obs=self.batch.values)
        else:
            numpyro.sample(sites.OBSERVED, noise)
        if self.conditional and self.st.new_times is not None:
            self.predict_new(delta_new)

    def with_discrepancy(self, mu, cov) -> None:
        obs = self.model.observation
        loc = obs.link(mu)
        st = self.st
        term = st.discrepancy.term(DiscrepancyInputs(
            names=self.model.discrepancy_names, times=self.batch.times, loc=loc,
            index=st.index, observation=obs, hyper=self.hyper, values=self.batch.values,
            mask=self.batch.mask, observed=self.observed, conditional=self.conditional,
            new_times=st.new_times, extra=cov, setup=st.setup, key=numpyro.prng_key,
        ))
        if term.joint is not None:
            numpyro.sample(sites.OBSERVED, term.joint,
                           obs=self.batch.values if self.observed else None)
            return
        delta = jnp.zeros(mu.shape, mu.dtype).at[..., st.index].set(term.delta)
        corrected = obs.inverse_link(loc + delta)
        numpyro.deterministic(sites.DELTA, delta)
        numpyro.deterministic(sites.CORRECTED, corrected)
        self.independent(corrected, term.delta_new)

    def predict_new(self, delta_new) -> None:
        """Sites `mu_new`, `discrepancy_new`, `corrected_new`, `y_new` at the new times."""
        model, obs, new_times = self.model, self.model.observation, self.st.new_times
        sim = self.simulate(new_times)
        ys = jnp.where(sim.ok[:, None, None], sim.ys, jnp.nan)
        hyper = self.hyper
        if common.noise_functions(model):
            safe_ys = jnp.where(sim.ok[:, None, None], sim.ys, 1.0)
            hyper = common.align_noise(
                common.evaluate_noise(model, self.raw_hyper, safe_ys, self.theta), 3)
        if sim.cov is not None:
            # The emulator's uncertainty at the new times is added to the noise variance of
            # y_new (its correlation with the uncertainty at the data times is dropped).
            var = jnp.diagonal(sim.cov, axis1=1, axis2=2).T[None]  # (1, M, O)
            hyper = dict(hyper, sigma=jnp.sqrt(hyper["sigma"] ** 2 + var))
        mu = common.observe_states(model, ys, self.theta)
        numpyro.deterministic(sites.new(sites.MEAN), mu)
        delta = jnp.zeros(mu.shape, mu.dtype)
        if callable(delta_new):  # a function of the new times and predictions
            delta_new = delta_new(new_times, obs.link(mu))
        if delta_new is not None:
            delta = delta.at[..., self.st.index].set(delta_new)
        corrected = obs.inverse_link(obs.link(mu) + delta)
        numpyro.deterministic(sites.new(sites.DELTA), delta)
        numpyro.deterministic(sites.new(sites.CORRECTED), corrected)
        safe = jnp.where(jnp.isfinite(corrected), corrected, 1.0)
        numpyro.sample(sites.new(sites.OBSERVED), obs.distribution(safe, hyper))
