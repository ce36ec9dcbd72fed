"""Experiments and their data: one or several `TimeSeries`, validated against a model and
aligned on the union of their times (`PreparedData`)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from .._checks import describe
from ..dynamics import doses as doses_
from ..observations import TimeSeries


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """Data of one or several experiments aligned on the union of their times.

    `values` has shape `(E, T, O)` with NaN wherever an experiment has no value (missing, or
    not observed at that time); `mask` is `True` where a value was observed; `starts[e]` is
    the first time of experiment `e` (its initial time unless the model sets `t0`).
    `inputs` maps each input name to its values `(E,)`; `events` is `None` or the
    experiments' doses as padded event arrays `(times (E, K), jumps (E, K, S),
    rate changes (E, K, S) or None)` (`probde.dynamics.doses.pad_events`). `own` `(E, T)`
    is `True` at the times that are an experiment's own (rows of its TimeSeries), or
    `None` when every experiment has every time.
    """

    times: np.ndarray
    starts: np.ndarray
    values: np.ndarray
    mask: np.ndarray
    observables: tuple[str, ...]
    experiments: tuple[str, ...]
    single: bool
    inputs: dict = dataclasses.field(default_factory=dict)
    events: tuple | None = None
    own: np.ndarray | None = None

    @property
    def num_experiments(self) -> int:
        return self.values.shape[0]


def as_series(data) -> tuple[list[TimeSeries], bool]:
    """`data` as a list of `TimeSeries`, and whether it was a single one."""
    single = isinstance(data, TimeSeries)
    series = [data] if single else data
    if not isinstance(series, (list, tuple)) or not series:
        raise TypeError(
            f"data must be a probde.TimeSeries or a non-empty list of them; got {describe(data)}"
        )
    for i, ts in enumerate(series):
        if not isinstance(ts, TimeSeries):
            raise TypeError(f"data[{i}] must be a probde.TimeSeries; got {describe(ts)}")
    return list(series), single


def _check_observables(model, series, single) -> tuple[str, ...]:
    observables = model.observables or series[0].observables
    for i, ts in enumerate(series):
        where = "data" if single else f"data[{i}]"
        if set(ts.observables) != set(observables):
            raise ValueError(
                f"{where}.observables must match the model's observables {observables}; "
                f"got {ts.observables}"
            )
        model.observation.check_data(ts.values, f"{where}.values")
    return tuple(observables)


def _align(series, observables) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    times = np.unique(np.concatenate([ts.times for ts in series]))
    values = np.full((len(series), len(times), len(observables)), np.nan)
    own = np.zeros((len(series), len(times)), dtype=bool)
    for e, ts in enumerate(series):
        rows = np.searchsorted(times, ts.times)
        cols = [ts.observables.index(o) for o in observables]
        values[e, rows, :] = ts.values[:, cols]
        own[e, rows] = True
    return times, values, (None if own.all() else own)


def own_grids(own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(own_index (E, M), fill_index (E, T))` for experiments with their own times: the
    positions in the union of the times of each experiment's own times (padded to the
    longest by repeating its last), and for every union time the position in that list of
    the experiment's nearest own time (a finite stand-in where it has none)."""
    E, T = own.shape
    M = int(own.sum(axis=1).max())
    own_index = np.zeros((E, M), dtype=np.int32)
    fill_index = np.zeros((E, T), dtype=np.int32)
    for e in range(E):
        rows = np.nonzero(own[e])[0]
        own_index[e, : len(rows)] = rows
        own_index[e, len(rows):] = rows[-1]
        nearest = np.clip(np.searchsorted(rows, np.arange(T)), 0, len(rows) - 1)
        fill_index[e] = nearest
    return own_index, fill_index


def _where(i, ts, single) -> str:
    if single:
        return "data"
    return f"data[{i}]" + (f" (experiment {ts.name!r})" if ts.name is not None else "")


def _inputs(model, series, single) -> dict:
    """Each declared input's values `(E,)`, every experiment giving exactly those."""
    declared = set(model.inputs)
    for i, ts in enumerate(series):
        given = set(ts.inputs)
        missing, extra = sorted(declared - given), sorted(given - declared)
        if missing:
            raise ValueError(
                f"{_where(i, series[i], single)} gives no value for input(s) {missing} that "
                f"the model declares (Model(inputs={tuple(model.inputs)})); give them as "
                "TimeSeries(..., inputs={...})")
        if extra:
            raise ValueError(
                f"{_where(i, series[i], single)} gives input(s) {extra} that the model does "
                f"not declare; the model's inputs are {tuple(model.inputs)} (declare them "
                "with Model(inputs=...))")
    return {name: np.array([ts.inputs[name] for ts in series]) for name in model.inputs}


def _events(model, series, single):
    """The experiments' doses as padded event arrays, or None when no experiment has any."""
    if not any(ts.doses for ts in series):
        return None
    if not model.source.per_experiment_values:
        raise ValueError(
            f"doses are supported for ODE models only; this model's dynamics is a "
            f"{type(model.dynamics).__name__}")
    names = tuple(model.dynamics.state_names)
    arrays = []
    for i, ts in enumerate(series):
        start = model.t0 if model.t0 is not None else float(ts.times[0])
        checked = doses_.check_doses(list(ts.doses), names, start,
                                     where=f"{_where(i, ts, single)}.doses")
        arrays.append(doses_.event_arrays(checked, names))
    times, jumps, rates = doses_.pad_events(arrays, len(names))
    return times, jumps, (rates if np.any(rates) else None)


def _check_population(model, single) -> None:
    if model.per_experiment and single:
        raise ValueError(
            f"params {sorted(model.per_experiment)} vary by experiment (PerExperiment), but "
            "data is a single TimeSeries; give a list of TimeSeries, one per experiment")


def _check_observe_shape(model, observables):
    if not callable(model.observe):
        return
    theta = model.example_theta()
    state = model.source.example_state(model, theta)
    h = jax.eval_shape(model.observe, state, theta)
    if h.shape != (len(observables),):
        raise ValueError(
            f"observe(y, theta) returns shape {h.shape} but the data has "
            f"{len(observables)} observables {observables}"
        )


def prepare(model, data) -> PreparedData:
    """Validate `data` (a TimeSeries or a list of them) against `model` and align it."""
    series, single = as_series(data)
    observables = _check_observables(model, series, single)
    times, values, own = _align(series, observables)
    if model.t0 is not None and model.t0 > times[0]:
        raise ValueError(
            f"t0 must not be after the first observation time {times[0]}; got t0={model.t0}"
        )
    names = [ts.name if ts.name is not None else str(i) for i, ts in enumerate(series)]
    if len(set(names)) != len(names):
        raise ValueError(f"experiment names must be unique; got {names}")
    _check_observe_shape(model, observables)
    model.source.check_experiments(model, len(series))
    _check_population(model, single)
    inputs = _inputs(model, series, single)
    events = _events(model, series, single)
    starts = np.array([ts.times[0] for ts in series])
    if model.discrepancy is not None:
        model.discrepancy.check_model(observables, model.observation)
        start = model.t0 if model.t0 is not None else float(starts.min())
        model.discrepancy.check_times(model.source.earliest_time(start), float(times[-1]))
    return PreparedData(
        times=times,
        starts=starts,
        values=values,
        mask=~np.isnan(values),
        observables=observables,
        experiments=tuple(names),
        single=single,
        inputs=inputs,
        events=events,
        own=own,
    )


def starts_of(model, data: PreparedData) -> np.ndarray:
    """`(E,)`: each experiment's initial time (the model's `t0`, or its first time)."""
    if model.t0 is not None:
        return np.full(data.num_experiments, model.t0)
    return data.starts


def active(model, data: PreparedData) -> np.ndarray:
    """`(E, T)`: `True` where time is at or after the experiment's initial time (and, for
    a source that solves each experiment at its own times only, is one of them)."""
    after_start = data.times[None, :] >= starts_of(model, data)[:, None]
    if data.own is not None and model.source.own_times:
        return after_start & data.own
    return after_start
