"""Validation of the emulators' inputs at the boundary (times, design, outputs, names,
bounds, kernel, noise, seed, held-out fraction): each check raises a `TypeError` or
`ValueError` that names the argument, what was expected and what came.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import numpy as np
from gpjax.kernels import AbstractKernel, Matern52
from gpjax.kernels.stationary import StationaryKernel

from .._checks import describe


def _check_times(times) -> np.ndarray:
    try:
        times = np.asarray(times, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"times must be a 1-D array of numbers; got {describe(times)}") from None
    if times.ndim != 1 or times.shape[0] < 1:
        raise ValueError(f"times must be a non-empty 1-D array (T,); got shape {times.shape}")
    if not np.all(np.isfinite(times)):
        raise ValueError(f"times must be finite; got {times[~np.isfinite(times)][0]}")
    bad = np.flatnonzero(np.diff(times) <= 0)
    if bad.size:
        i = bad[0] + 1
        raise ValueError(
            f"times must be strictly increasing; got {times[i]} after {times[i - 1]} at index {i}"
        )
    return times


def _check_design(design, parameter_names) -> tuple[np.ndarray, tuple[str, ...]]:
    """The design as an `(n, P)` float array and its parameter names."""
    parameter_names = _check_parameter_names(parameter_names)
    if isinstance(design, Mapping):
        array, names = _design_from_dict(design, parameter_names)
    else:
        array, names = _design_from_array(design, parameter_names)
    return _check_design_values(array, names), names


def _check_parameter_names(parameter_names) -> tuple[str, ...] | None:
    """`parameter_names` as a tuple of distinct strings (or `None`)."""
    if parameter_names is None:
        return None
    if isinstance(parameter_names, str) or not isinstance(parameter_names, Sequence):
        raise TypeError(
            f"parameter_names must be a sequence of names; got {describe(parameter_names)}"
        )
    parameter_names = tuple(parameter_names)
    if not all(isinstance(n, str) for n in parameter_names) or len(set(parameter_names)) != len(
        parameter_names
    ):
        raise ValueError(f"parameter_names must be distinct strings; got {parameter_names}")
    return parameter_names


def _design_from_dict(design, parameter_names) -> tuple[np.ndarray, tuple[str, ...]]:
    """A dict design name -> `(n,)` values as an `(n, P)` array and its names."""
    keys = tuple(design)
    if parameter_names is not None and set(parameter_names) != set(keys):
        raise ValueError(f"design names {keys} do not match parameter_names {parameter_names}")
    names = parameter_names if parameter_names is not None else keys
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"design keys must be parameter names (str); got {keys}")
    columns = []
    for name in names:
        col = np.asarray(design[name])
        if col.ndim != 1:
            raise ValueError(
                f"design[{name!r}] must be a 1-D array (n,) of values; got shape {col.shape}"
            )
        columns.append(col)
    lengths = {c.shape[0] for c in columns}
    if len(lengths) > 1:
        raise ValueError(
            "design arrays must all have the same length n; got lengths "
            + ", ".join(f"{n}: {c.shape[0]}" for n, c in zip(names, columns, strict=True))
        )
    array = np.stack(columns, axis=1) if columns else np.zeros((0, 0))
    return array, names


def _design_from_array(design, parameter_names) -> tuple[np.ndarray, tuple[str, ...]]:
    """An `(n, P)` array design and its names (`parameter_names`, required)."""
    try:
        array = np.asarray(design)
    except (TypeError, ValueError):
        array = None
    if array is None or array.ndim != 2:
        raise TypeError(
            "design must be a dict of parameter name -> (n,) values or an (n, P) array with "
            f"parameter_names; got {describe(design)}"
        )
    if parameter_names is None:
        raise ValueError(
            f"an array design of shape {array.shape} needs parameter_names= naming its "
            f"{array.shape[1]} columns"
        )
    if array.shape[1] != len(parameter_names):
        raise ValueError(
            f"design has {array.shape[1]} columns (shape {array.shape}) but "
            f"parameter_names has {len(parameter_names)} names {parameter_names}"
        )
    return array, parameter_names


def _check_design_values(array, names) -> np.ndarray:
    """The design's values as floats: at least one parameter and 3 runs, finite, distinct."""
    if len(names) == 0:
        raise ValueError("design must have at least one parameter; got none")
    if not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"design values must be numbers; got dtype {array.dtype}")
    array = array.astype(float)
    if array.shape[0] < 3:
        raise ValueError(
            f"the emulator needs at least 3 simulator runs (design points); got {array.shape[0]}"
        )
    if not np.all(np.isfinite(array)):
        i, p = np.argwhere(~np.isfinite(array))[0]
        raise ValueError(f"design must be finite; got {array[i, p]} for {names[p]!r} at run {i}")
    _, first, counts = np.unique(array, axis=0, return_index=True, return_counts=True)
    if np.any(counts > 1):
        i = int(first[np.argmax(counts > 1)])
        raise ValueError(
            f"design has repeated points (run {i} appears {int(counts.max())} times); "
            "a deterministic simulator gives nothing new at a repeated point, remove duplicates"
        )
    return array


def _check_outputs(outputs, n, times) -> np.ndarray:
    try:
        outputs = np.asarray(outputs, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"outputs must be an array (n, T, O); got {describe(outputs)}") from None
    if outputs.ndim == 2:
        outputs = outputs[:, :, None]
    T = times.shape[0]
    if outputs.ndim != 3 or outputs.shape[:2] != (n, T):
        raise ValueError(
            f"outputs must have shape (n, T, O) = ({n}, {T}, O) for {n} runs at {T} times; "
            f"got shape {outputs.shape}"
        )
    if not np.all(np.isfinite(outputs)):
        i, j, o = np.argwhere(~np.isfinite(outputs))[0]
        raise ValueError(
            f"outputs must be finite; run {i} has {outputs[i, j, o]} at time {times[j]} "
            f"(observable {o})"
        )
    return outputs


def _check_observables(observables, n_obs) -> tuple[str, ...]:
    if observables is None:
        return tuple(f"y{o}" for o in range(n_obs))
    if isinstance(observables, str) or not isinstance(observables, Sequence):
        raise TypeError(f"observables must be a sequence of names; got {describe(observables)}")
    observables = tuple(observables)
    if len(observables) != n_obs:
        raise ValueError(
            f"observables names {len(observables)} outputs {observables}, but the simulator "
            f"returns {n_obs} per time"
        )
    if not all(isinstance(n, str) for n in observables) or len(set(observables)) != n_obs:
        raise ValueError(f"observables must be distinct strings; got {observables}")
    return observables


def _check_bounds(bounds, names, design) -> tuple[np.ndarray, np.ndarray]:
    if bounds is None:
        lows, highs = design.min(axis=0), design.max(axis=0)
        flat = np.flatnonzero(highs <= lows)
        if flat.size:
            raise ValueError(
                f"parameter {names[flat[0]]!r} takes a single value in the design "
                f"({lows[flat[0]]}); vary it or leave it out of the emulator"
            )
        return lows, highs
    if not isinstance(bounds, Mapping):
        raise TypeError(
            f"bounds must be a dict of parameter name -> (low, high); got {describe(bounds)}"
        )
    if set(bounds) != set(names):
        raise ValueError(
            f"bounds names {tuple(bounds)} do not match the design's parameters {names}"
        )
    lows, highs = np.empty(len(names)), np.empty(len(names))
    for p, name in enumerate(names):
        try:
            lows[p], highs[p] = (float(v) for v in bounds[name])
        except (TypeError, ValueError):
            raise TypeError(
                f"bounds[{name!r}] must be a pair of numbers (low, high); "
                f"got {describe(bounds[name])}"
            ) from None
        if not (np.isfinite(lows[p]) and np.isfinite(highs[p]) and lows[p] < highs[p]):
            raise ValueError(
                f"bounds[{name!r}] must be finite with low < high; got ({lows[p]}, {highs[p]})"
            )
        outside = (design[:, p] < lows[p]) | (design[:, p] > highs[p])
        if np.any(outside):
            i = int(np.flatnonzero(outside)[0])
            raise ValueError(
                f"design point {i} has {name}={design[i, p]}, outside bounds[{name!r}] = "
                f"({lows[p]}, {highs[p]})"
            )
    return lows, highs


def _check_kernel(kernel, D) -> AbstractKernel:
    if kernel is None:
        return Matern52()
    if not isinstance(kernel, AbstractKernel):
        raise TypeError(
            "kernel must be a gpjax kernel such as gpjax.kernels.Matern52(); "
            f"got {describe(kernel)}"
        )
    if not (
        isinstance(kernel, StationaryKernel)
        and hasattr(kernel, "lengthscale")
        and hasattr(kernel, "variance")
    ):
        raise TypeError(
            "kernel must be a stationary gpjax kernel with a lengthscale and a variance "
            "(RBF, Matern12, Matern32, Matern52, RationalQuadratic, PoweredExponential); "
            f"got {describe(kernel)}"
        )
    if kernel.active_dims not in (slice(None), None) or kernel.n_dims not in (None, D):
        raise ValueError(
            f"kernel must act on all {D} inputs (time and each parameter), with one "
            f"lengthscale each; got active_dims={kernel.active_dims}, n_dims={kernel.n_dims}"
        )
    return kernel


def _check_noise(noise) -> tuple[bool, float]:
    if isinstance(noise, str):
        if noise != "fit":
            raise ValueError(f'noise must be a number >= 0 or "fit"; got {noise!r}')
        return True, float("nan")
    if isinstance(noise, numbers.Real) and not isinstance(noise, bool):
        if not (np.isfinite(noise) and noise >= 0):
            raise ValueError(f'noise must be a finite number >= 0 or "fit"; got {noise!r}')
        return False, float(noise)
    raise TypeError(f'noise must be a number >= 0 or "fit"; got {describe(noise)}')


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(f"seed must be a non-negative integer; got {describe(seed)}")


def _check_held_out(held_out, n) -> int:
    if not isinstance(held_out, numbers.Real) or isinstance(held_out, bool):
        raise TypeError(f"held_out must be a fraction in [0, 1); got {describe(held_out)}")
    if not 0 <= held_out < 1:
        raise ValueError(f"held_out must be a fraction in [0, 1); got {held_out}")
    held = max(1, round(held_out * n)) if held_out > 0 else 0
    if n - held < 3:
        raise ValueError(
            f"held_out={held_out} holds out {held} of {n} runs, leaving {n - held} to fit; "
            "the emulator needs at least 3: lower held_out (0 for none) or add runs"
        )
    return held
