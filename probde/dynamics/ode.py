"""Ordinary differential equations: `probde.ODE`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from .events import check_events


@dataclasses.dataclass(frozen=True, eq=False)
class ODE:
    r"""An ordinary differential equation $\dot y = f(t, y, \theta)$.

    **Arguments:**

    - `vector_field`: `f(t, y, theta) -> dy/dt`, where `y` is a 1-D array of states and
      `theta` a dict mapping parameter names to values. It must be written with
      `jax.numpy` so that it can be traced, vectorised and differentiated.
    - `state_names`: one name per state, in the order of `y`. They become the `state`
      coordinate of results and are what `Model(observe=...)` refers to.
    - `events`: optional `probde.Event`s, resets of the state at known times (an SBML
      time-triggered event, a harvest). The solve restarts at each.

    **Example:**

    ```python
    >>> import jax.numpy as jnp, probde
    >>> def lotka_volterra(t, y, theta):
    ...     u, v = y
    ...     return jnp.stack([(theta["alpha"] - theta["beta"] * v) * u,
    ...                       (-theta["gamma"] + theta["delta"] * u) * v])
    >>> ode = probde.ODE(lotka_volterra, state_names=("hare", "lynx"))
    >>> ode.num_states
    2

    ```
    """

    vector_field: Callable
    state_names: tuple[str, ...]
    events: tuple = ()

    def __post_init__(self):
        if not callable(self.vector_field):
            raise TypeError(
                "vector_field must be a callable f(t, y, theta) -> dy/dt; "
                f"got {self.vector_field!r} of type {type(self.vector_field).__name__}"
            )
        names = self.state_names
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise TypeError(
                "state_names must be a sequence of strings, one per state; "
                f"got {names!r} of type {type(names).__name__}"
            )
        names = tuple(names)
        if len(names) == 0:
            raise ValueError("state_names must name at least one state; got an empty sequence")
        for name in names:
            if not isinstance(name, str) or not name:
                raise TypeError(
                    f"state_names must contain non-empty strings; got {name!r} in {names!r}"
                )
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"state_names must be unique; got {names!r} (repeated: {dup})")
        object.__setattr__(self, "state_names", names)
        object.__setattr__(self, "events", check_events(self.events))

    @property
    def num_states(self) -> int:
        """The number of states, `len(state_names)`."""
        return len(self.state_names)

    def __hash__(self):
        return hash((id(self.vector_field), self.state_names, tuple(map(id, self.events))))

    def __eq__(self, other):
        return (
            isinstance(other, ODE)
            and other.vector_field is self.vector_field
            and other.state_names == self.state_names
            and len(other.events) == len(self.events)
            and all(a is b for a, b in zip(other.events, self.events, strict=True))
        )
