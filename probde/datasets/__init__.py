"""Small real data sets that ship with probde.

- `lynx_hare()`: Hudson's Bay Company hare and lynx pelts (thousands), 1900-1920, as
  used in Carpenter's Stan case study "Predator-Prey Population Dynamics".
- `boarding_school_influenza()`: pupils confined to bed in an English boarding school
  (763 pupils), January 1978 (BMJ 1978;1:587), as in Grinsztajn et al. (2021).
- `theophylline()`: serum theophylline concentrations of 12 subjects after one oral dose
  (Boeckmann, Sheiner & Beal 1994; R's `datasets::Theoph`), one experiment per subject.
- `petab_problem(name)`: the YAML file of a PEtab problem that ships with probde
  (`"Boehm_JProteomeRes2014"`, STAT5 dimerisation, from the PEtab benchmark collection,
  BSD-3 licence in `probde/datasets/petab/LICENSE`), for `probde.petab.load`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from ..observations import TimeSeries

__all__ = ["lynx_hare", "boarding_school_influenza", "theophylline", "petab_problem",
           "load_csv"]

#: the PEtab problems that ship with probde
PETAB_PROBLEMS = ("Boehm_JProteomeRes2014",)


def petab_problem(name: str = "Boehm_JProteomeRes2014"):
    """The path of a shipped PEtab problem's YAML file.

    ```python
    >>> import probde
    >>> probde.datasets.petab_problem().name
    'Boehm_JProteomeRes2014.yaml'

    ```
    """
    if name not in PETAB_PROBLEMS:
        raise ValueError(f"name must be one of {PETAB_PROBLEMS}; got {name!r}")
    return Path(str(resources.files(__name__).joinpath("petab", name, f"{name}.yaml")))


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


def theophylline(weight: bool = False) -> list[TimeSeries]:
    """One `TimeSeries` per subject (named "1" to "12"): serum concentration `conc` (mg/L)
    at 11 times (hours after an oral dose at time 0, the time-0 sample included), with
    input `dose_mg_per_kg`, and `weight_kg` too when `weight=True` (a model must declare
    every input its data carry).

    ```python
    >>> import probde
    >>> subjects = probde.datasets.theophylline()
    >>> len(subjects), subjects[0].name, subjects[0].inputs["dose_mg_per_kg"]
    (12, '1', 4.02)

    ```
    """
    header, rows = load_csv("theophylline.csv")
    col = {name: i for i, name in enumerate(header)}
    series = []
    for subject in dict.fromkeys(r[col["subject"]] for r in rows):
        mine = [r for r in rows if r[col["subject"]] == subject]
        arr = np.array(mine, dtype=float)
        series.append(TimeSeries(
            arr[:, col["time_h"]], arr[:, col["conc_mg_per_L"]], observables=("conc",),
            name=subject,
            inputs={"dose_mg_per_kg": float(arr[0, col["dose_mg_per_kg"]])}
            | ({"weight_kg": float(arr[0, col["weight_kg"]])} if weight else {})))
    return series
