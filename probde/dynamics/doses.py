"""Doses: bolus jumps of a state and constant-rate infusions, and solves that restart at them.

A dose is a discontinuity the adaptive solver must not step across: a bolus makes the state
jump, an infusion switches a constant inflow on and off. The solve is split at every event
time into segments, each an ordinary diffrax solve from the previous segment's end state
plus the jump, with the segment's infusion rates added to the vector field. Gradients flow
through each segment's solve and the jumps, so they stay exact across events.

diffrax has no notion of dosing: its event handling stops a solve at a root and leaves
restarting to the caller, and its `jump_ts` only stops the step-size controller at known
discontinuities of the vector field, not of the state. This module is that caller.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import describe

#: the key under which a segment's infusion rates reach the wrapped vector field
RATE = "_probde_infusion_rate"


@dataclasses.dataclass(frozen=True)
class Dose:
    """A dose given to one state: a bolus (the state jumps by `amount` at `time`), or, with
    `duration > 0`, an infusion (`amount / duration` per unit time is added to the state's
    rate of change from `time` to `time + duration`).

    An observation at the very time of a bolus sees the state *before* the dose (a trough
    level), as in NONMEM's record order when the sample is listed first.

    **Arguments:**

    - `time`: when the dose starts (not before the experiment's initial time).
    - `amount`: how much is given (in the state's units); may be negative (a withdrawal).
    - `state`: the name of the state that receives it.
    - `duration`: 0 for a bolus (default), else the infusion's length.

    **Example:**

    ```python
    >>> import probde
    >>> daily = [probde.Dose(time=24.0 * k, amount=4.0, state="gut") for k in range(3)]
    >>> daily[2]
    Dose(time=48.0, amount=4.0, state='gut', duration=0.0)

    ```
    """

    time: float
    amount: float
    state: str
    duration: float = 0.0

    def __post_init__(self):
        for name in ("time", "amount", "duration"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise TypeError(f"Dose {name} must be a number; got {describe(value)}")
            if not math.isfinite(value):
                raise ValueError(f"Dose {name} must be finite; got {value}")
            object.__setattr__(self, name, float(value))
        if self.duration < 0:
            raise ValueError(f"Dose duration must be >= 0 (0 for a bolus); got {self.duration}")
        if not isinstance(self.state, str) or not self.state:
            raise TypeError(f"Dose state must be a state name; got {describe(self.state)}")


def check_doses(doses, state_names, start, where: str = "doses") -> tuple[Dose, ...]:
    """Validate a sequence of doses against the states and the initial time `start` (either
    `None`: not checked)."""
    if doses is None:
        return ()
    if isinstance(doses, Dose) or not isinstance(doses, (list, tuple)):
        raise TypeError(f"{where} must be a list of probde.Dose; got {describe(doses)}")
    for i, d in enumerate(doses):
        if not isinstance(d, Dose):
            raise TypeError(f"{where}[{i}] must be a probde.Dose; got {describe(d)}")
        if state_names is not None and d.state not in state_names:
            raise ValueError(
                f"{where}[{i}] doses state {d.state!r}, which the model does not have; its "
                f"states are {tuple(state_names)}"
            )
        if start is not None and d.time < start:
            raise ValueError(
                f"{where}[{i}] is at time {d.time}, before the initial time {start}; a dose "
                "must not come before the solve starts (put an earlier dose into the "
                "initial state)"
            )
    return tuple(doses)


def event_arrays(doses, state_names) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(times (K,), jumps (K, S), rate_changes (K, S))` of the doses' events, sorted by time
    (an infusion is two events: its rate switched on, then off)."""
    S = len(state_names)
    events = []
    for d in doses:
        unit = np.zeros(S)
        unit[state_names.index(d.state)] = 1.0
        if d.duration == 0:
            events.append((d.time, d.amount * unit, 0 * unit))
        else:
            rate = d.amount / d.duration * unit
            events.append((d.time, 0 * unit, rate))
            events.append((d.time + d.duration, 0 * unit, -rate))
    events.sort(key=lambda e: e[0])
    times = np.array([e[0] for e in events], dtype=float)
    jumps = np.array([e[1] for e in events], dtype=float).reshape(len(events), S)
    rates = np.array([e[2] for e in events], dtype=float).reshape(len(events), S)
    return times, jumps, rates


def pad_events(arrays, S: int):
    """Stack experiments' `event_arrays` to `(E, K)`, `(E, K, S)`, `(E, K, S)`: events past
    the last are at time +inf with no jump and no rate change (empty segments)."""
    K = max(1, max(len(t) for t, _, _ in arrays))
    E = len(arrays)
    times = np.full((E, K), np.inf)
    jumps = np.zeros((E, K, S))
    rates = np.zeros((E, K, S))
    for e, (t, j, r) in enumerate(arrays):
        times[e, : len(t)], jumps[e, : len(t)], rates[e, : len(t)] = t, j, r
    return times, jumps, rates


def with_rate(vector_field):
    """The vector field plus the infusion rate carried in `theta[RATE]` (which the user's
    function does not see)."""

    def field(t, y, theta):
        user = {k: v for k, v in theta.items() if k != RATE}
        return vector_field(t, y, user) + theta[RATE]

    return field


def solve_segments(solve_one, y0, t0, times, event_times, jumps, rates, num_stats=3,
                   which=None, after=None):
    """Solve across events: `solve_one(y, s, e, ts, rate) -> (ys (len(ts), S), ok, stats)`
    solves one segment from `s` to `e` saved at `ts` (in `[s, e]`); `stats` is a tuple of
    `num_stats` integer counts (solver steps), summed over the segments.

    `event_times (K,)` sorted (+inf for padding), `jumps (K, S)` applied at each event,
    `rates (K, S)` the change of the infusion rate there (None: no infusions). A time
    equal to an event time is reported before the event. With `which (K,)` and `after`
    (`probde.dynamics.events.merge` and `resetter`), event k also sets the state to
    `after(which[k], t, y)` after its jump. Returns `(ys (T, S), ok, stats)`.
    """
    end = times[-1]
    bounds = jnp.minimum(event_times, end)
    starts = jnp.concatenate([jnp.reshape(t0, (1,)), bounds])
    ends = jnp.maximum(jnp.concatenate([bounds, jnp.reshape(end, (1,))]), starts)
    # segment of each time: the number of events strictly before it
    segment = jnp.searchsorted(event_times, times, side="left")
    zero = jnp.zeros((1,) + jumps.shape[1:], jumps.dtype)
    jumps_after = jnp.concatenate([jumps, zero])  # applied at the end of segment k
    if rates is None:
        rate_in = jnp.zeros((starts.shape[0],) + jumps.shape[1:], jumps.dtype)
    else:
        rate_in = jnp.cumsum(jnp.concatenate([zero, rates]), axis=0)
    if which is not None:
        which_after = jnp.concatenate([which, jnp.full((1,), -1, which.dtype)])

    def segment_solve(k, y):
        s, e = starts[k], ends[k]
        ts = jnp.concatenate([jnp.clip(times, s, e), e[None]])
        return solve_one(y, s, e, ts, rate_in[k])

    def body(carry, k):
        y, ys, ok, stats = carry
        seg_ys, seg_ok, seg_stats = segment_solve(k, y)
        ys = jnp.where((segment == k)[:, None], seg_ys[:-1], ys)
        stats = tuple(a + b.astype(a.dtype) for a, b in zip(stats, seg_stats, strict=True))
        y_next = seg_ys[-1] + jumps_after[k]
        if which is not None:
            y_next = after(which_after[k], ends[k], y_next)
        return (y_next, ys, ok & seg_ok, stats), None

    init = (y0, jnp.zeros((times.shape[0], y0.shape[0]), y0.dtype), jnp.asarray(True),
            (jnp.asarray(0, jnp.int32),) * num_stats)
    (_, ys, ok, stats), _ = jax.lax.scan(body, init, jnp.arange(starts.shape[0]))
    return ys, ok, stats
