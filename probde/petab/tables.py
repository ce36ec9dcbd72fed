"""The PEtab tables of a problem, read with the petab library and checked: bad input is
named by file and row before any model is built."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

INPUT = "petab_"  # prefix of the inputs made from the condition table and events


class PEtabError(ValueError):
    """A PEtab problem that cannot be read, naming the file and row."""


def petab_module():
    try:
        import petab.v1 as petab
    except ImportError as err:  # pragma: no cover - an install problem
        raise ImportError("reading PEtab problems needs the petab package: "
                          "pip install 'probde[petab]'") from err
    return petab


def is_number(value) -> bool:
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def split_overrides(value) -> list[str]:
    """A `;`-separated override list of the measurement table (numbers or ids)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return []
    if is_number(value):
        return [str(float(value))]
    return [v.strip() for v in str(value).split(";")]


class Tables:
    """The PEtab tables, read with the petab library and checked."""

    def __init__(self, yaml_path):
        petab = petab_module()
        self.path = Path(yaml_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"PEtab problem file not found: {self.path}")
        try:
            problem = petab.Problem.from_yaml(str(self.path))
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{self.path} names a file that does not exist: "
                                    f"{err.filename or err}") from None
        self.problem = problem
        self.model_file = self._model_file()
        self.parameters = problem.parameter_df
        self.conditions = problem.condition_df
        self.observables = problem.observable_df
        self.measurements = problem.measurement_df.copy()
        self._check()

    def _model_file(self) -> Path:
        import yaml

        spec = yaml.safe_load(self.path.read_text())
        files = spec["problems"][0].get("sbml_files") or []
        if len(files) != 1:
            raise PEtabError(f"{self.path}: one SBML model file expected; got {files}")
        return (self.path.parent / files[0]).resolve()

    def _check(self):
        m = self.measurements
        for col in ("preequilibrationConditionId", "observableParameters", "noiseParameters"):
            if col not in m:
                m[col] = np.nan
        values = pd.to_numeric(m["measurement"], errors="coerce")
        bad = np.nonzero(~np.isfinite(values.to_numpy()))[0]
        if bad.size:
            i = int(bad[0])
            raise PEtabError(f"measurement table row {i + 1}: measurement must be a finite "
                             f"number; got {m['measurement'].iloc[i]!r}")
        unknown = sorted(set(m["observableId"]) - set(self.observables.index))
        if unknown:
            row = int(np.nonzero(m["observableId"].isin(unknown).to_numpy())[0][0])
            raise PEtabError(f"measurement table row {row + 1}: unknown observableId "
                             f"{unknown[0]!r}; the observable table has "
                             f"{sorted(self.observables.index)}")
        conds = set(self.conditions.index)
        for col in ("simulationConditionId", "preequilibrationConditionId"):
            used = set(m[col].dropna()) - {""}
            missing = sorted(used - conds)
            if missing:
                row = int(np.nonzero(m[col].isin(missing).to_numpy())[0][0])
                raise PEtabError(f"measurement table row {row + 1}: {col} {missing[0]!r} is "
                                 "not in the condition table")
        times = pd.to_numeric(m["time"], errors="coerce").to_numpy()
        if np.any(np.isnan(times)):
            row = int(np.nonzero(np.isnan(times))[0][0])
            raise PEtabError(f"measurement table row {row + 1}: time must be a number; got "
                             f"{m['time'].iloc[row]!r}")
        m["time"] = times
        m["measurement"] = values

    def estimated(self) -> list[str]:
        p = self.parameters
        return [pid for pid in p.index if int(p.loc[pid, "estimate"]) == 1]

    def nominal(self, pid: str) -> float:
        return float(self.parameters.loc[pid, "nominalValue"])


