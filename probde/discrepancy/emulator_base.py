"""`_EmulatorBase`: what `GPEmulator` and `DeepGPEmulator` share: the fields of the
training runs and the diagnostics, their read-only views and the frame of the text report.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .emulator_diagnostics import EmulatorDiagnostics


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class _EmulatorBase:
    """What `GPEmulator` and `probde.DeepGPEmulator` share: the fields of the training runs
    (`_TrainingRuns.fields`) and the diagnostics, their read-only views and the frame of
    the text report."""

    _parameter_names: tuple[str, ...]
    _observables: tuple[str, ...]
    _times: np.ndarray  # (T,)
    _lows: np.ndarray  # (P,)
    _highs: np.ndarray  # (P,)
    _design: np.ndarray  # (n, P)
    _outputs: np.ndarray  # (n, T, O)
    _loc: np.ndarray  # (O,)
    _scale: np.ndarray  # (O,)
    diagnostics: EmulatorDiagnostics | None

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """Names of the simulator's parameters, in the order of `theta` arrays."""
        return self._parameter_names

    @property
    def observables(self) -> tuple[str, ...]:
        """Names of the simulator's outputs (the columns of `predict`'s mean)."""
        return self._observables

    @property
    def state_names(self) -> tuple[str, ...]:
        """The emulated outputs play the role of states in a `probde.Model`."""
        return self.observables

    @property
    def num_states(self) -> int:
        return len(self.observables)

    @property
    def times(self) -> np.ndarray:
        """The training times `(T,)`: every run's output times."""
        return self._times

    @property
    def bounds(self) -> dict[str, tuple[float, float]]:
        """The box mapped to the unit cube: parameter name -> `(low, high)`."""
        return {
            name: (float(lo), float(hi))
            for name, lo, hi in zip(self._parameter_names, self._lows, self._highs, strict=True)
        }

    @property
    def design(self) -> np.ndarray:
        """The design points `(n, P)`, columns in `parameter_names` order."""
        return self._design

    @property
    def outputs(self) -> np.ndarray:
        """The simulator outputs `(n, T, O)` of the design's runs."""
        return self._outputs

    @property
    def output_loc(self) -> np.ndarray:
        """Per-observable mean `(O,)` subtracted in the standardisation."""
        return self._loc

    @property
    def output_scale(self) -> np.ndarray:
        """Per-observable standard deviation `(O,)` divided out in the standardisation."""
        return self._scale

    @property
    def _times_range(self) -> tuple[float, float]:
        return float(self._times[0]), float(self._times[-1])

    def summary(self) -> str:
        raise NotImplementedError

    def __repr__(self):
        return self.summary()

    def _summary_head(self) -> str:
        """The report's first line: the runs, parameters and observables."""
        n, T, _ = self._outputs.shape
        return (
            f"{type(self).__name__}: {n} runs x {T} times, parameters {self._parameter_names}, "
            f"observables {self._observables}"
        )

    def _summary_diagnostics(self, split: str) -> list[str]:
        """The report's diagnostics lines; `split` describes the held-out runs, formatted
        with `m` (held out), `fit` (the others) and `n` (all runs)."""
        if self.diagnostics is None:
            return ["  no held-out runs (held_out=0): no diagnostics"]
        n = self._outputs.shape[0]
        m = self.diagnostics.held_out_runs.shape[0]
        head = f"  held-out diagnostics ({split.format(m=m, fit=n - m, n=n)}):"
        return [head] + ["    " + row for row in self.diagnostics.table().splitlines()]
