"""Events at known times that reset the state: `probde.Event`.

A dose adds a fixed amount to one state; an event sets the state to any function of the
state and the parameters at a time known before the solve (an SBML time-triggered event,
a harvest that removes a fraction of a population, a medium change that resets
concentrations). The solve restarts there, as at doses (`probde.dynamics.doses`), so the
adaptive solver never steps across the jump and gradients flow through the reset.

Event times are treated as known: no derivative is taken with respect to them, and a
model whose event time reads an estimated parameter is refused (that derivative would need
the jump's sensitivity to the time, which the segment solves do not give).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import describe


@dataclasses.dataclass(frozen=True, eq=False)
class Event:
    """At `time`, the state becomes `reset(t, y, theta)`.

    **Arguments:**

    - `time`: a number, or a function `time(theta) -> scalar` of the parameters, which may
      read per-experiment inputs (`Model(inputs=...)`) but no estimated parameter.
    - `reset`: `reset(t, y, theta) -> y_new`, written with `jax.numpy`, returning the state
      just after the event (same shape as `y`).
    - `name`: for messages.

    An event at a time before the solve's initial time does not happen; at the initial
    time it does (after any bolus dose at that time). An observation at the event's time
    sees the state *before* it, as for a bolus dose. Events at the same time happen in
    the order given.

    **Example:** half of `x` is removed at t = 1.

    ```python
    >>> import jax.numpy as jnp, probde
    >>> harvest = probde.Event(time=1.0, reset=lambda t, y, th: y * th["keep"])
    >>> ode = probde.ODE(lambda t, y, th: -th["k"] * y, ("x",), events=(harvest,))
    >>> traj = probde.solve(ode, jnp.array([1.0]), {"k": 0.5, "keep": 0.5},
    ...                     jnp.array([1.0, 2.0]), t0=0.0)
    >>> [round(float(v), 4) for v in traj.ys[:, 0]]   # exp(-0.5), then exp(-1) / 2
    [0.6065, 0.1839]

    ```
    """

    time: float | Callable
    reset: Callable
    name: str = "event"

    def __post_init__(self):
        t = self.time
        if callable(t):
            pass
        elif isinstance(t, bool) or not isinstance(t, (int, float, np.number)):
            raise TypeError(f"Event time must be a number or a function of theta; got "
                            f"{describe(t)}")
        elif not math.isfinite(t):
            raise ValueError(f"Event time must be finite; got {t}")
        else:
            object.__setattr__(self, "time", float(t))
        if not callable(self.reset):
            raise TypeError("Event reset must be a function reset(t, y, theta) -> y; got "
                            f"{describe(self.reset)}")
        if not isinstance(self.name, str):
            raise TypeError(f"Event name must be a string; got {describe(self.name)}")

    def time_of(self, theta, dtype):
        """The event's time for these parameters, as a scalar of `dtype`, with no
        derivative."""
        t = self.time(theta) if callable(self.time) else self.time
        t = jnp.asarray(t, dtype)
        if t.shape != ():
            raise ValueError(f"Event {self.name!r}: time(theta) must return a scalar; got "
                             f"shape {t.shape}")
        return jax.lax.stop_gradient(t)


def check_events(events) -> tuple[Event, ...]:
    """`events` as a tuple of `Event`, or a clear error."""
    if events is None:
        return ()
    if isinstance(events, Event) or not isinstance(events, (list, tuple)):
        raise TypeError(f"events must be a list of probde.Event; got {describe(events)}")
    for i, e in enumerate(events):
        if not isinstance(e, Event):
            raise TypeError(f"events[{i}] must be a probde.Event; got {describe(e)}")
    return tuple(events)


def merge(events: tuple[Event, ...], theta, t0, event_times, jumps, rates):
    """Dose events `(event_times (K,), jumps (K, S), rates (K, S) or None)` and the ODE's
    `events` as one time-sorted sequence: `(times, jumps, rates, which)` where `which[k]`
    is -1 for a dose event and m for `events[m]`. An ODE event before `t0` gets time
    +inf (it does not happen). Doses come before ODE events at the same time."""
    dtype = event_times.dtype
    S = jumps.shape[-1]
    own = jnp.stack([e.time_of(theta, dtype) for e in events])
    own = jnp.where(own >= t0, own, jnp.inf)
    times = jnp.concatenate([event_times, own])
    order = jnp.argsort(times, stable=True)
    M = len(events)
    which = jnp.concatenate([jnp.full(event_times.shape, -1), jnp.arange(M)])[order]
    jumps = jnp.concatenate([jumps, jnp.zeros((M, S), jumps.dtype)])[order]
    if rates is not None:
        rates = jnp.concatenate([rates, jnp.zeros((M, S), rates.dtype)])[order]
    return times[order], jumps, rates, which


def resetter(events: tuple[Event, ...], theta):
    """`after(which, t, y)`: the state after event `which` (-1: unchanged)."""
    def branch(e):
        def reset(t, y):
            out = jnp.asarray(e.reset(t, y, theta))
            if out.shape != y.shape:
                raise ValueError(f"Event {e.name!r}: reset(t, y, theta) must return the "
                                 f"state's shape {y.shape}; got shape {out.shape}")
            return out.astype(y.dtype)
        return reset

    branches = [lambda t, y: y] + [branch(e) for e in events]

    def after(which, t, y):
        return jax.lax.switch(which + 1, branches, t, y)

    return after
