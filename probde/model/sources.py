"""Trajectory sources: how the latent states at the observation times arise.

One class per kind of dynamics, each with the same small interface, so that a new kind is
one new class registered here and the model never switches on the kind:

- `ODESource`: an ODE solved from each experiment's initial state;
- `EmulatorSource`: a GP (or deep-GP) emulator predicting the simulator's outputs, with
  their covariance;
- `FilterSource` (in `filtered.py`): an SDE whose latent path a continuous-discrete filter
  integrates out; it builds its own program, as the filter scores the data itself (or,
  with `probde.LatentPath`, the program that samples the path, `latent.py`).
"""

from __future__ import annotations

import abc
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpyro
from numpyro import handlers

from .._checks import describe
from ..discrepancy.deep_emulator import DeepGPEmulator
from ..discrepancy.emulator import GPEmulator
from ..discrepancy.gp import NoDiscrepancy
from ..dynamics import ODE, check_vector_field, solve
from ..dynamics.solve import solve_with_events
from . import initial, population, program, sites, validate


class Simulation(NamedTuple):
    """States `ys (E, T, S)`, `ok (E,)`, solver steps `(E,)`, and a covariance of the
    predictions `(O, T, T)` or `None`."""

    ys: jax.Array
    ok: jax.Array
    num_steps: jax.Array
    cov: jax.Array | None


class AbstractSource(abc.ABC):
    """The part of a model that yields the latent states at the observation times."""

    kinds: ClassVar[tuple[type, ...]] = ()
    #: whether theta may differ between experiments (per-experiment parameters, inputs,
    #: doses)
    per_experiment_values: ClassVar[bool] = False
    #: whether `simulate(times, own=True)` solves each experiment at its own times only
    #: (the rest of the union of the times are then stand-ins, masked in the results)
    own_times: ClassVar[bool] = False
    #: the SDE, or the emulator, when the source is one (read by the inference layer)
    sde = None
    emulator = None

    def __init__(self, dynamics):
        self.dynamics = dynamics

    @abc.abstractmethod
    def check_arguments(self, model, initial_state, discrepancy, likelihood):
        """Construction-time checks of the arguments that depend on the kind of dynamics;
        return the validated initial state."""

    @abc.abstractmethod
    def trace(self, model, theta) -> set[str]:
        """Trace the user's functions abstractly at `theta`; return the parameters read."""

    def example_state(self, model, theta):
        """A representative state `(S,)` for tracing the observation function."""
        return initial.mean(model.initial_state, theta, self.dynamics.state_names)

    def check_experiments(self, model, num_experiments: int) -> None:
        initial.check_rows(model.initial_state, num_experiments)

    def earliest_time(self, start: float) -> float:
        """The earliest time the source models, given the experiments' earliest start."""
        return start

    def default_discrepancy(self):
        """The discrepancy term used when the model has none (`None`: independent noise)."""
        return None

    def program(self, model, data, *, on_failure=None, predict_times=None):
        """The numpyro model function (see `probde.model.program`)."""
        return program.build(model, data, on_failure=on_failure, predict_times=predict_times)

    def simulator(self, model, theta, starts, rows=None, events=None, grids=None):
        """`simulate(times, own=False) -> Simulation` for the experiments (a minibatch
        `rows` of them); `events` are the experiments' doses (`PreparedData.events`), if
        any; `grids` the experiments' own times in the union
        (`experiments.own_grids`), used when `own=True` (times are the data's)."""
        raise NotImplementedError


def _derived_reads(model, theta) -> set[str]:
    read: set[str] = set()
    for fn in model.derived.values():
        read |= validate.trace_reads(fn, theta)
    return read


def _state_function_reads(model, state, theta) -> set[str]:
    """Check and trace the observation function (if any) and the initial-state function."""
    read = set()
    if callable(model.observe):
        validate.observation_function_shape(model.observe, state, theta)
        read |= validate.trace_reads(lambda th: model.observe(state, th), theta)
    if initial.is_function(model.initial_state):
        read |= validate.trace_reads(
            lambda th: initial.mean(model.initial_state, th, model.dynamics.state_names), theta
        )
    return read


class ODESource(AbstractSource):
    """An ODE solved from each experiment's initial state (sampled if it is uncertain)."""

    kinds = (ODE,)
    per_experiment_values = True
    own_times = True

    def check_arguments(self, model, initial_state, discrepancy, likelihood):
        if likelihood is not None:
            raise ValueError(
                "likelihood is for SDE models (a filter integrating out the latent path); "
                f"an ODE model takes likelihood=None; got {describe(likelihood)}"
            )
        return initial.check_argument(initial_state, self.dynamics.state_names)

    def trace(self, model, theta) -> set[str]:
        names = self.dynamics.state_names
        y0 = handlers.seed(initial.sample, 0)(model.initial_state, theta, names, None)[0]
        fn = self.dynamics.vector_field
        check_vector_field(fn, "vector_field", 0.0, y0, theta, (len(names),), states=names)
        read = validate.trace_reads(lambda th: fn(0.0, y0, th), theta)
        read |= _event_reads(model, self.dynamics.events, y0, theta)
        # The solve gets only what the vector field and its events read: forward
        # sensitivities cost one column per scalar input, and a hierarchical model's theta
        # also holds the population's parameters (and inputs) that only the priors or the
        # initial state read.
        self.vector_field_reads = frozenset(read)
        return read | _state_function_reads(model, y0, theta) | _derived_reads(model, theta)

    def simulator(self, model, theta, starts, rows=None, events=None, grids=None):
        y0 = initial.sample_experiments(model, theta, starts.shape[0])
        if rows is not None:  # a minibatch of experiments
            y0, starts = y0[rows], starts[rows]
            theta = population.take(model, theta, rows)
            events = None if events is None else jax.tree.map(lambda a: a[rows], events)
            grids = None if grids is None else jax.tree.map(lambda a: a[rows], grids)
        th_axes = population.axes(model, theta)
        ev_axes = None if events is None else jax.tree.map(lambda _: 0, events)

        reads = getattr(self, "vector_field_reads", None)

        def one(y, t0, th, ev, times):
            if reads is not None:
                th = {k: v for k, v in th.items() if k in reads}
            times = jnp.maximum(times, t0)
            if ev is None:
                return solve(self.dynamics, y, th, times, solver=model.solver, t0=t0)
            return solve_with_events(self.dynamics, y, th, times, t0, *ev,
                                     solver=model.solver)

        def simulate(times, own=False):
            if y0.shape[0] == 1:
                # One experiment: no vmap. A vmapped solver loop runs every step under a
                # batched predicate, with a select on every carried value: about twice the
                # time per step for a batch of one.
                ev = None if events is None else jax.tree.map(lambda a: a[0], events)
                traj = one(y0[0], starts[0], population.one(model, theta), ev, times)
                return Simulation(traj.ys[None], traj.ok[None], traj.num_steps[None], None)
            if own and grids is not None:
                # Each experiment saved at its own times only (saving costs an
                # interpolation per time, under vmap for the slowest experiment); the other
                # times of the union get the value at its nearest own time, a finite
                # stand-in that the likelihood masks and the results leave out.
                own_index, fill_index = grids
                traj = jax.vmap(one, in_axes=(0, 0, th_axes, ev_axes, 0))(
                    y0, starts, theta, events, times[own_index])
                ys = jnp.take_along_axis(traj.ys, fill_index[:, :, None], axis=1)
                return Simulation(ys, traj.ok, traj.num_steps, None)
            traj = jax.vmap(one, in_axes=(0, 0, th_axes, ev_axes, None))(
                y0, starts, theta, events, times)
            return Simulation(traj.ys, traj.ok, traj.num_steps, None)

        return simulate


def _event_reads(model, events, y0, theta) -> set[str]:
    """What the ODE's events read; an event time that reads an estimated parameter is an
    error (no derivative is taken with respect to event times)."""
    read: set[str] = set()
    estimated = set(model.params) | set(model.per_experiment)
    for e in events:
        if callable(e.time):
            when = validate.trace_reads(e.time, theta)
            if when & estimated:
                raise ValueError(
                    f"Event {e.name!r}: its time reads {sorted(when & estimated)}, which "
                    "the model estimates; event times must be known (numbers, or functions "
                    "of fixed inputs), since no derivative is taken with respect to them")
            read |= when
        read |= validate.trace_reads(lambda th, e=e: e.reset(0.0, y0, th), theta)
    return read


class EmulatorSource(AbstractSource):
    """An emulator of an expensive simulator: predictions with their covariance."""

    kinds = (GPEmulator, DeepGPEmulator)

    def __init__(self, dynamics):
        super().__init__(dynamics)
        self.emulator = dynamics

    def check_arguments(self, model, initial_state, discrepancy, likelihood):
        emu = self.emulator
        name = type(emu).__name__
        if model.emulation == "joint" and not hasattr(emu, "training_log_marginal"):
            raise ValueError(
                f"emulation='joint' needs a probde.GPEmulator (its hyperparameters have a "
                f"closed-form training likelihood); a probde.{name} is fitted once by SVI "
                "and takes emulation='modular'"
            )
        if initial_state is not None:
            raise ValueError(
                f"initial_state must be None when dynamics is a probde.{name} (the emulator "
                f"predicts the outputs directly); got {describe(initial_state)}"
            )
        if likelihood is not None:
            raise ValueError(
                "likelihood is for SDE models (a filter integrating out the latent path); "
                f"a model of an emulator takes likelihood=None; got {describe(likelihood)}"
            )
        obs = model.observation
        if obs.hyperparameters().keys() != {"sigma"} or obs.log_link:
            raise ValueError(
                "an emulated simulator needs probde.noise.Normal observation noise (its "
                "uncertainty is Gaussian and adds to the noise covariance); got "
                f"{type(obs).__name__}"
            )
        self._check_discrepancy(discrepancy)
        missing = [n for n in emu.parameter_names if n not in model.params]
        if missing:
            raise ValueError(
                f"the emulator takes parameters {list(emu.parameter_names)} but params has no "
                f"prior for {missing}; params has {sorted(model.params)}"
            )
        return None

    @staticmethod
    def _check_discrepancy(discrepancy):
        if discrepancy is None:
            return
        if not discrepancy.accepts_covariance:
            raise ValueError(
                "an emulated simulator's predictive covariance joins the discrepancy's, which "
                f"a {type(discrepancy).__name__} cannot take; use probde.GPDiscrepancy"
            )
        if discrepancy.observables is not None:
            raise ValueError(
                "with an emulator the discrepancy must cover all observables "
                f"(observables=None); got {discrepancy.observables}"
            )

    def trace(self, model, theta) -> set[str]:
        return set(self.emulator.parameter_names) | _derived_reads(model, theta)

    def example_state(self, model, theta):
        return jnp.zeros(len(self.dynamics.state_names))

    def check_experiments(self, model, num_experiments: int) -> None:
        return None

    def earliest_time(self, start: float) -> float:
        # the emulator knows the simulator from its runs
        return min(start, float(jnp.min(jnp.asarray(self.emulator.times))))

    def default_discrepancy(self):
        return NoDiscrepancy()  # the emulator's covariance still needs the GP algebra

    def _sample_hyperparameters(self, model):
        """Joint Kennedy-O'Hagan: the emulator's hyperparameters are inferred with theta, and
        the simulator runs enter the likelihood; modular: fixed at their fitted values."""
        if model.emulation != "joint":
            return None
        hyper = {
            k: numpyro.sample(f"emulator_{k}", prior)
            for k, prior in self.emulator.hyperparameter_priors().items()
        }
        numpyro.factor(sites.EMULATOR_RUNS, self.emulator.training_log_marginal(hyper))
        return hyper

    def simulator(self, model, theta, starts, rows=None, events=None, grids=None):
        E = starts.shape[0] if rows is None else rows.shape[0]
        hyper = self._sample_hyperparameters(model)

        def simulate(times, own=False):
            m, cov = self.emulator.predict(times, theta, hyper)
            ok = jnp.broadcast_to(jnp.all(jnp.isfinite(m)), (E,))
            return Simulation(jnp.broadcast_to(m, (E,) + m.shape), ok,
                              jnp.zeros(E, jnp.int32), cov)

        return simulate
