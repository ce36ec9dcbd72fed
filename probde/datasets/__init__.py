"""Small real data sets that ship with probde.

- `lynx_hare()`: Hudson's Bay Company hare and lynx pelts (thousands), 1900-1920, as
  used in Carpenter's Stan case study "Predator-Prey Population Dynamics".
- `boarding_school_influenza()`: pupils confined to bed in an English boarding school
  (763 pupils), January 1978 (BMJ 1978;1:587), as in Grinsztajn et al. (2021).
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from ..observations import TimeSeries

__all__ = ["lynx_hare", "boarding_school_influenza", "load_csv"]


def load_csv(filename: str) -> tuple[list[str], np.ndarray]:
    """The column names and values of one of the shipped CSV files (`#` lines are comments)."""
    text = resources.files(__name__).joinpath(filename).read_text()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    header = lines[0].split(",")
    rows = [ln.split(",") for ln in lines[1:]]
    return header, rows


def lynx_hare() -> TimeSeries:
    """Hare and lynx pelts (thousands) by year, 1900-1920; observables `("hare", "lynx")`.

    ```python
    >>> import probde
    >>> data = probde.datasets.lynx_hare()
    >>> data.times[0], data.values[0].tolist()
    (np.float64(1900.0), [30.0, 4.0])

    ```
    """
    header, rows = load_csv("hudson_bay_lynx_hare.csv")
    arr = np.array(rows, dtype=float)
    return TimeSeries(arr[:, 0], arr[:, 1:], observables=tuple(header[1:]), name="hudson_bay")


def boarding_school_influenza() -> TimeSeries:
    """Pupils in bed by day (day 1 = 22 January 1978); observable `("in_bed",)`.

    ```python
    >>> import probde
    >>> data = probde.datasets.boarding_school_influenza()
    >>> int(data.values.max())
    298

    ```
    """
    header, rows = load_csv("boarding_school_influenza_1978.csv")
    day = np.array([r[0] for r in rows], dtype=float)
    in_bed = np.array([r[2] for r in rows], dtype=float)
    return TimeSeries(day, in_bed[:, None], observables=("in_bed",), name="boarding_school")
