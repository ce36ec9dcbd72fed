"""Validated observed data: `probde.TimeSeries`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ._checks import describe
from .dynamics.doses import check_doses


class TimeSeries:
    """Observations of one experiment at a set of times. NaN marks a missing value.

    Missing values are masked out of the likelihood, never silently dropped: the
    posterior predictive still covers them.

    **Main arguments:**

    - `times`: strictly increasing, finite, shape `(T,)`.
    - `values`: shape `(T, O)` (or `(T,)` for one observable); finite or NaN.
    - `observables`: `O` names, one per column of `values`; with `observe=(state names)`
      in the model they must be state names.

    **Other arguments:**

    - `name`: a label for the experiment (the `experiment` coordinate when a list of
      TimeSeries is passed to `probde.infer`).
    - `inputs`: dict of the experiment's known inputs, name -> number (a dose, a body
      weight, a temperature); the model declares their names (`Model(inputs=...)`) and
      its functions read them from `theta`.
    - `doses`: a list of `probde.Dose`: bolus doses or infusions given during the
      experiment; the solve restarts at each of them.

    **Example:**

    ```python
    >>> import numpy as np, probde
    >>> data = probde.TimeSeries([0.0, 1.0, 2.0], [[1.0, 2.0], [np.nan, 1.5], [0.7, 1.1]],
    ...                          observables=("prey", "predator"))
    >>> data.num_observed
    5

    ```
    """

    def __init__(self, times, values, observables: Sequence[str], *, name: str | None = None,
                 inputs=None, doses=None):
        try:
            t = np.asarray(times, dtype=float)
        except (TypeError, ValueError) as err:
            raise TypeError(f"times must be an array of numbers; got {describe(times)}") from err
        if t.ndim != 1 or t.shape[0] == 0:
            raise ValueError(f"times must be a non-empty 1-D array; got shape {t.shape}")
        if not np.all(np.isfinite(t)):
            i = int(np.nonzero(~np.isfinite(t))[0][0])
            raise ValueError(f"times must be finite; got {t[i]} at index {i}")
        d = np.diff(t)
        if np.any(d <= 0):
            i = int(np.nonzero(d <= 0)[0][0]) + 1
            kind = "duplicate time" if d[i - 1] == 0 else "unsorted times"
            raise ValueError(
                f"times must be strictly increasing ({kind}); got {t[i]} after {t[i - 1]} "
                f"at index {i}"
            )
        try:
            v = np.asarray(values, dtype=float)
        except (TypeError, ValueError) as err:
            raise TypeError(f"values must be an array of numbers; got {describe(values)}") from err
        if v.ndim == 1:
            v = v[:, None]
        if v.ndim != 2:
            raise ValueError(f"values must have shape (T, O) or (T,); got shape {v.shape}")
        if v.shape[0] != t.shape[0]:
            raise ValueError(
                f"values must have one row per time: {t.shape[0]} times but {v.shape[0]} rows"
            )
        if isinstance(observables, str) or not isinstance(observables, Sequence):
            raise TypeError(
                f"observables must be a sequence of names; got {describe(observables)}"
            )
        observables = tuple(observables)
        if not all(isinstance(o, str) and o for o in observables):
            raise TypeError(f"observables must be non-empty strings; got {observables!r}")
        if len(set(observables)) != len(observables):
            raise ValueError(f"observables must be unique; got {observables!r}")
        if len(observables) != v.shape[1]:
            raise ValueError(
                f"values must have one column per observable: {len(observables)} observables "
                f"{observables} but {v.shape[1]} columns"
            )
        if np.any(np.isinf(v)):
            i, j = (int(k[0]) for k in np.nonzero(np.isinf(v)))
            raise ValueError(
                f"values must be finite or NaN (missing); got {v[i, j]} at time {t[i]} "
                f"for {observables[j]!r}"
            )
        if np.all(np.isnan(v)):
            raise ValueError("values are all missing (NaN); a TimeSeries needs at least one value")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string or None; got {describe(name)}")
        self.inputs = _check_inputs(inputs)
        self.doses = check_doses(doses, None, None)
        self.times = t
        self.values = v
        self.observables = observables
        self.name = name
        self.times.setflags(write=False)
        self.values.setflags(write=False)

    @property
    def mask(self) -> np.ndarray:
        """`True` where a value was observed, shape `(T, O)`."""
        return ~np.isnan(self.values)

    @property
    def num_observed(self) -> int:
        """The number of observed (non-missing) values."""
        return int(self.mask.sum())

    def __repr__(self):
        return (
            f"TimeSeries({len(self.times)} times in [{self.times[0]}, {self.times[-1]}], "
            f"observables={self.observables}, missing={self.values.size - self.num_observed})"
        )


def _check_inputs(inputs) -> dict:
    if inputs is None:
        return {}
    if not isinstance(inputs, Mapping):
        raise TypeError(f"inputs must be a dict mapping input names to numbers; got "
                        f"{describe(inputs)}")
    out = {}
    for name, value in inputs.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"inputs keys must be identifiers; got {name!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise TypeError(f"inputs[{name!r}] must be a number; got {describe(value)}")
        if not np.isfinite(value):
            raise ValueError(f"inputs[{name!r}] must be finite; got {value}")
        out[name] = float(value)
    return out
