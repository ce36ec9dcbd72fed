"""The simulator runs an emulator is trained on (`_TrainingRuns`): running the simulator
over the design, checking the runs, holding some out, and scaling inputs to the unit cube
and outputs to standard units; also the scaling of new inputs at prediction time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from .._checks import describe
from .emulator_checks import (
    _check_bounds,
    _check_design,
    _check_observables,
    _check_outputs,
    _check_times,
)
from .emulator_diagnostics import EmulatorDiagnostics


@dataclasses.dataclass(frozen=True, eq=False)
class _TrainingRuns:
    """Checked simulator runs (`_check_runs`), then (`split`) split into training and
    held-out runs, with the scalings of both emulators: inputs to the unit cube (times by
    their range, parameters by the bounds), outputs standardised by the training runs."""

    times: np.ndarray  # (T,)
    design: np.ndarray  # (n, P)
    names: tuple[str, ...]
    outputs: np.ndarray  # (n, T, O)
    observables: tuple[str, ...]
    lows: np.ndarray  # (P,)
    highs: np.ndarray  # (P,)
    held_idx: np.ndarray | None = None  # (m,) sorted
    fit_idx: np.ndarray | None = None  # (n - m,) sorted
    loc: np.ndarray | None = None  # (O,)
    scale: np.ndarray | None = None  # (O,)

    def split(self, held: int, seed: int) -> _TrainingRuns:
        """Hold out `held` runs chosen at random with `seed`; standardise by the others."""
        perm = np.random.default_rng(int(seed)).permutation(self.outputs.shape[0])
        held_idx, fit_idx = np.sort(perm[:held]), np.sort(perm[held:])
        loc = self.outputs[fit_idx].mean(axis=(0, 1))
        scale = self.outputs[fit_idx].std(axis=(0, 1))
        scale = np.where(scale > 0, scale, 1.0)
        return dataclasses.replace(self, held_idx=held_idx, fit_idx=fit_idx, loc=loc, scale=scale)

    def inputs(self, runs: np.ndarray | None = None) -> np.ndarray:
        """Scaled run-major inputs `(len(runs) * T, 1 + P)` of `runs` (default: all)."""
        span = self.times[-1] - self.times[0]
        t_scaled = (self.times - self.times[0]) / (span if span > 0 else 1.0)
        theta_scaled = (self.design - self.lows) / (self.highs - self.lows)
        return _inputs(t_scaled, theta_scaled if runs is None else theta_scaled[runs])

    def standardised(self, runs: np.ndarray | None = None) -> np.ndarray:
        """Standardised outputs `(len(runs), T, O)` of `runs` (default: all)."""
        out = self.outputs if runs is None else self.outputs[runs]
        return (out - self.loc) / self.scale

    def diagnostics(self, mean, sd) -> EmulatorDiagnostics | None:
        """Diagnostics from standardised predictive means and sds `(m, T, O)` at the
        held-out runs (`None` when none is held out)."""
        if not self.held_idx.size:
            return None
        return EmulatorDiagnostics(
            held_out_runs=self.held_idx,
            simulated=self.outputs[self.held_idx],
            mean=np.asarray(mean) * self.scale + self.loc,
            sd=np.asarray(sd) * self.scale,
            observables=self.observables,
        )

    def fields(self) -> dict:
        """The `_EmulatorBase` fields of an emulator fitted to these runs (read-only)."""
        return {
            "_parameter_names": self.names,
            "_observables": self.observables,
            "_times": _readonly(self.times),
            "_lows": _readonly(self.lows),
            "_highs": _readonly(self.highs),
            "_design": _readonly(self.design),
            "_outputs": _readonly(self.outputs),
            "_loc": _readonly(self.loc),
            "_scale": _readonly(self.scale),
        }


def _check_runs(times, design, outputs, parameter_names, observables, bounds) -> _TrainingRuns:
    """Check the runs' times, design, outputs, observables' names and bounds."""
    times = _check_times(times)
    design, names = _check_design(design, parameter_names)
    outputs = _check_outputs(outputs, design.shape[0], times)
    observables = _check_observables(observables, outputs.shape[2])
    lows, highs = _check_bounds(bounds, names, design)
    return _TrainingRuns(times, design, names, outputs, observables, lows, highs)


def _check_fit_inputs(simulator, times, design, parameter_names):
    """`fit`'s checks before any simulator run: `(times, design, names)`."""
    times = _check_times(times)
    design, names = _check_design(design, parameter_names)
    if not callable(simulator):
        raise TypeError(
            f"simulator must be a function theta -> outputs (T, O); got {describe(simulator)}"
        )
    return times, design, names


# ------------------------------------------------------------------------ helpers
def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only copy of `a` (the emulators' arrays are immutable)."""
    a = np.array(a)
    a.flags.writeable = False
    return a


def _inputs(t_scaled: np.ndarray, theta_scaled: np.ndarray) -> np.ndarray:
    """Run-major inputs `(n * T, 1 + P)`: row `i * T + j` is `(t_j, theta_i)`."""
    n, T = theta_scaled.shape[0], t_scaled.shape[0]
    t = np.tile(t_scaled, n)[:, None]
    th = np.repeat(theta_scaled, T, axis=0)
    return np.concatenate([t, th], axis=1).astype(jnp.zeros(()).dtype)


def _run_simulator(simulator, times, design, names, progress_bar) -> np.ndarray:
    """Run `simulator` at every design point (a plain loop, never traced); the outputs
    `(n, T, O)`, checked run by run."""
    runs = []
    width = None
    for i in tqdm(range(design.shape[0]), desc="simulator runs", disable=not progress_bar):
        theta = {name: float(design[i, p]) for p, name in enumerate(names)}
        out = _check_run_output(simulator(theta), i, theta, times, width)
        width = out.shape[1]
        runs.append(out)
    return np.stack(runs)


def _check_run_output(raw, i, theta, times, width) -> np.ndarray:
    """The output `raw` of simulator run `i` at `theta` as a finite `(T, O)` float array;
    `width` is the number of observables of the earlier runs (`None` for the first)."""
    try:
        out = np.asarray(raw, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(
            f"simulator run {i} (theta={theta}) returned {describe(raw)}; expected an "
            "array of numbers (T, O)"
        ) from None
    if out.ndim == 1:
        out = out[:, None]
    where = f"simulator run {i} (theta={theta})"
    if out.ndim != 2 or out.shape[0] != times.shape[0]:
        raise ValueError(
            f"{where} returned outputs of shape {np.shape(raw)}; expected "
            f"(T, O) or (T,) with T = {times.shape[0]} times"
        )
    if width is not None and out.shape[1] != width:
        raise ValueError(
            f"{where} returned {out.shape[1]} observables, but run 0 returned {width}; "
            "every run must return the same (T, O) shape"
        )
    if not np.all(np.isfinite(out)):
        j, o = np.argwhere(~np.isfinite(out))[0]
        raise ValueError(
            f"{where} returned a non-finite output {out[j, o]} at time {times[j]} "
            f"(observable {o}); the emulator needs finite outputs"
        )
    return out


# ---------------------------------------------------------- new inputs, at prediction
def _new_inputs(names, dtype, times, theta):
    """`times (T,)` and `theta (P,)` (a dict with the keys `names`, or an array) as arrays
    of `dtype` (shape checks only, so that it works on traced values)."""
    times = jnp.asarray(times)
    if times.ndim != 1:
        raise ValueError(f"times must be a 1-D array (T,); got shape {times.shape}")
    if isinstance(theta, Mapping):
        missing = [n for n in names if n not in theta]
        if missing:
            raise ValueError(
                f"theta is missing the emulator's parameters {missing}; the emulator takes {names}"
            )
        values = [jnp.asarray(theta[n]) for n in names]
        for n, v in zip(names, values, strict=True):
            if v.shape != ():
                raise ValueError(f"theta[{n!r}] must be a scalar; got shape {v.shape}")
        theta = jnp.stack(values)
    else:
        theta = jnp.asarray(theta)
        if theta.shape != (len(names),):
            raise ValueError(
                f"theta must be a dict of {names} or an array of shape ({len(names)},); "
                f"got shape {theta.shape}"
            )
    return times.astype(dtype), theta.astype(dtype)


def _new_x(lows, highs, t_range, times, theta):
    """Scaled inputs `(T, 1 + P)` of one parameter set at `times`."""
    lo, hi = t_range
    t = (times - lo) / (hi - lo if hi > lo else 1.0)
    th = (theta - lows) / (highs - lows)
    return jnp.concatenate(
        [t[:, None], jnp.broadcast_to(th[None, :], (t.shape[0], th.shape[0]))], axis=1
    )
