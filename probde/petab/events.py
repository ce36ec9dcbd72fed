"""SBML time-triggered events and the switches of `piecewise` in time, as `probde.Event`s.

Both need a time known before the solve, a number per experiment: it is evaluated at load
time from the condition table's numbers, the fixed parameters and the SBML file's values,
and reaches the model as a per-experiment input (`petab_event_K`, `petab_split_K`).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import sympy as sp

from ..dynamics import Event
from . import sbml
from .tables import INPUT, PEtabError, is_number


def sbml_events(problem) -> tuple[list[Event], dict[str, np.ndarray]]:
    """The SBML model's time-triggered events, and their times by input name. Each reset
    sets the assigned states to their expressions, all evaluated before the event."""
    model = problem.sbml
    if model.events and problem.steady_states:
        raise PEtabError(
            f"{problem.tables.model_file.name}: events together with steady-state (time = "
            "inf) measurements are not supported")
    names = list(model.parameters)
    out, inputs = [], {}
    for k, ev in enumerate(model.events):
        if not ev.assignments:
            continue  # an event that assigns nothing changes nothing
        key = f"{INPUT}event_{k}"
        inputs[key] = np.array([_event_time(problem, ev, e) for e in problem.experiments])
        targets = np.array([model.state_ids.index(s) for s in ev.assignments])
        fn = sbml.lambdify(list(ev.assignments.values()), model.state_ids, names)

        def reset(t, y, theta, fn=fn, targets=targets):
            new = fn(t, sbml.unstack(y), problem.sbml_parameters(theta))
            return y.at[targets].set(jnp.stack([jnp.asarray(v, y.dtype) for v in new]))

        out.append(Event(lambda theta, key=key: theta[key], reset, name=ev.id))
    return out, inputs


def time_splits(problem) -> tuple[list[Event], dict[str, np.ndarray], list]:
    """Identity events at the times where the vector field is discontinuous in time
    (`piecewise` or `Heaviside` conditions on `time` with thresholds known before the
    solve): the solve restarts there, so the adaptive solver does not step across them (it
    would find them only by rejected steps). A threshold that depends on an estimated
    parameter is left to the step-size controller. Returns the events, their times by
    input name, and the thresholds split at."""
    out, inputs, thresholds = [], {}, []
    for k, expr in enumerate(sbml.time_thresholds(problem.sbml.rhs)):
        values = [_known(problem, expr, e) for e in problem.experiments]
        if not all(v.is_Number for v in values):
            continue
        times = np.array([float(v) if float(v) > 0 else -1.0 for v in values])
        if not np.any(times > 0):
            continue
        key = f"{INPUT}split_{k}"
        inputs[key] = times
        thresholds.append(expr)
        out.append(Event(lambda theta, key=key: theta[key], _unchanged,
                         name=f"discontinuity at time = {expr}"))
    return out, inputs, thresholds


def _unchanged(t, y, theta):
    return y


def _event_time(problem, ev, experiment) -> float:
    """When `ev` happens in `experiment` (simulation time; -1, before the start, for
    never): its trigger time at the parameters' values there, which must not depend on an
    estimated parameter."""
    t = _known(problem, ev.trigger_time, experiment)
    if not t.is_Number:
        raise PEtabError(
            f"{problem.tables.model_file.name}: the trigger time of event {ev.id!r} in "
            f"condition {experiment.sim!r} depends on "
            f"{sorted(s.name for s in t.free_symbols)}, which are estimated; only event "
            "times that are known before the solve are supported")
    t = float(t)
    if t > 0:
        return t
    # a trigger true from the start fires there only if SBML's initialValue is false
    return -1.0 if ev.initial_value else 0.0


def _known(problem, expr: sp.Expr, experiment) -> sp.Expr:
    """`expr` with every parameter whose value is known before the solve in `experiment`
    (the condition table's numbers, fixed parameters, the file's values) replaced by that
    value: a number unless it reads an estimated parameter."""
    conds = problem.tables.conditions
    known: dict = {}
    for pid, default in problem.sbml.parameters.items():
        v = conds.loc[experiment.sim, pid] if pid in conds.columns else math.nan
        if isinstance(v, str) and not is_number(v):
            value = problem.fixed.get(v)  # None: an estimated parameter
        elif not math.isnan(float(v)):
            value = float(v)
        elif pid in problem.nominal:
            value = None
        elif pid in problem.fixed:
            value = problem.fixed[pid]
        else:
            value = default.xreplace(known)
            value = float(value) if value.is_Number else None
        if value is not None:
            known[sp.Symbol(pid, real=True)] = sp.Float(value)
    return expr.xreplace(known)
