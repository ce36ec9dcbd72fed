"""Validation of what the user states in `probde.Model(...)`: eager, in words (invariant 2).

Each check names the argument, what was expected and what came. The user's functions
(vector field, observation function, initial state, derived quantities) are traced once
with a prior draw of theta, abstractly (`jax.eval_shape`, no FLOPs), which finds missing
parameters, wrong shapes, and parameters that nothing reads.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
import numpyro.distributions as dist

from .._checks import describe
from ..dynamics import Solver
from ..noise import AbstractObservation
from .population import PerExperiment


def params(value) -> dict:
    if not isinstance(value, Mapping):
        raise TypeError(
            f"params must be a dict mapping names to numpyro distributions; got {describe(value)}"
        )
    for name, prior in value.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"params keys must be identifiers; got {name!r}")
        if name.startswith("_"):
            raise ValueError(
                f"params name {name!r} starts with '_', which is kept for probde's own "
                "bookkeeping sites; choose another name"
            )
        if not isinstance(prior, (dist.Distribution, PerExperiment)):
            raise TypeError(
                f"params[{name!r}] must be a numpyro distribution (the prior) or a "
                f"probde.PerExperiment(...); got {describe(prior)}"
            )
    return dict(value)


def inputs(value, params: Mapping) -> tuple[str, ...]:
    """The names of the experiments' known inputs (carried by each `TimeSeries`)."""
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(f"inputs must be a sequence of input names; got {describe(value)}")
    value = tuple(value)
    for name in value:
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise ValueError(
                f"inputs must be identifiers not starting with '_'; got {name!r}")
        if name in params:
            raise ValueError(
                f"input {name!r} is also a parameter in params; an input is known data "
                "(given by each TimeSeries), a parameter is inferred: rename one of them")
    if len(set(value)) != len(value):
        raise ValueError(f"inputs must not repeat a name; got {value}")
    return value


def observation(value) -> AbstractObservation:
    if not isinstance(value, AbstractObservation):
        raise TypeError(
            "observation must be a probde.noise model such as probde.noise.Normal(sigma=...); "
            f"got {describe(value)}"
        )
    return value


def observe(value, state_names: tuple[str, ...]):
    if value is None:
        return state_names
    if callable(value):
        return value
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, Sequence):
        raise TypeError(
            f"observe must be state names or a function h(y, theta); got {describe(value)}"
        )
    value = tuple(value)
    for name in value:
        if name not in state_names:
            raise ValueError(
                f"observe names {name!r}, which is not a state; states are {state_names}"
            )
    if len(set(value)) != len(value):
        raise ValueError(f"observe must not repeat a state; got {value}")
    return value


def solver(value) -> Solver:
    value = Solver() if value is None else value
    if not isinstance(value, Solver):
        raise TypeError(f"solver must be a probde.Solver; got {describe(value)}")
    return value


def t0(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"t0 must be a number or None; got {describe(value)}")
    if not np.isfinite(value):
        raise ValueError(f"t0 must be finite; got {value}")
    return float(value)


def derived(value) -> dict[str, Callable]:
    value = {} if value is None else dict(value)
    for name, fn in value.items():
        if not isinstance(name, str) or not callable(fn):
            raise TypeError(
                f"derived must map names to functions fn(theta); got {name!r}: {describe(fn)}"
            )
    return value


def emulation(value: str) -> str:
    if value not in ("modular", "joint"):
        raise ValueError(f"emulation must be 'modular' or 'joint'; got {value!r}")
    return value


def observation_function_shape(observe_fn, state, theta) -> None:
    if callable(observe_fn):
        h = jax.eval_shape(observe_fn, state, theta)
        if len(h.shape) != 1:
            raise ValueError(f"observe(y, theta) must return a 1-D array; got shape {h.shape}")


class Reads(dict):
    """theta as a dict that records which keys the user's functions read."""

    def __init__(self, values, record: set):
        super().__init__(values)
        self._record = record

    def __getitem__(self, key):
        self._record.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._record.add(key)
        return super().get(key, default)

    def _all(self):
        self._record.update(self.keys())

    def __iter__(self):
        self._all()
        return super().__iter__()

    def items(self):
        self._all()
        return super().items()

    def values(self):
        self._all()
        return super().values()


def trace_reads(fn: Callable[[dict], object], theta: dict) -> set[str]:
    """Run `fn(theta)` abstractly; return the parameter names it read."""
    read: set[str] = set()
    jax.eval_shape(lambda th: fn(Reads(th, read)), theta)
    return read


def traced(trace: Callable[[dict], set[str]], theta: dict) -> set[str]:
    """`trace(theta)`, with a `KeyError` for a name without a prior turned into a
    `ValueError` that says so."""
    try:
        return trace(theta)
    except KeyError as err:
        missing = err.args[0]
        raise ValueError(
            f"the model reads parameter {missing!r} (in vector_field, observe, derived or "
            f"initial_state) but params defines no prior for it; params has "
            f"{sorted(theta)}"
        ) from None


def warn_unused(params: Mapping, read: set[str]) -> None:
    unused = sorted(set(params) - set(read))
    if unused:
        warnings.warn(
            f"params {unused} have priors but nothing in the model reads them (the vector "
            "field, observe, initial_state, derived quantities or the emulator); their "
            "posterior will equal their prior. Remove them, or use them in the model",
            UserWarning,
            stacklevel=4,
        )
