"""Space-filling designs of computer experiments: where to run an expensive simulator.

Both designs fill the box given by `bounds` (a dict of parameter name -> `(low, high)`) and
return one numpy array of `n` values per parameter, ready for `probde.GPEmulator.fit`:

- `latin_hypercube`: one point in each of the `n` equal-width strata of every parameter
  (McKay, Beckman & Conover 1979); any `n >= 2`.
- `sobol`: the first `n` points of a scrambled Sobol' sequence (Owen 1998); its balance
  properties (every dyadic stratum of each parameter, and of the first two parameters
  jointly, holds the same number of points) hold when `n` is a power of two. Another `n`
  gives a valid but unbalanced design and a warning.

Both are thin wrappers around `scipy.stats.qmc`, with validation and named outputs.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping

import numpy as np
from scipy.stats import qmc

from ._checks import describe

__all__ = ["latin_hypercube", "sobol"]


def _check_bounds(bounds) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Names, lows and highs of a dict name -> (low, high); raises in words."""
    if not isinstance(bounds, Mapping):
        raise TypeError(
            f"bounds must be a dict mapping parameter names to (low, high); got {describe(bounds)}"
        )
    if len(bounds) == 0:
        raise ValueError("bounds must name at least one parameter; got an empty dict")
    names, lows, highs = [], [], []
    for name, pair in bounds.items():
        if not isinstance(name, str):
            raise TypeError(f"bounds keys must be parameter names (str); got {describe(name)}")
        try:
            low, high = (float(v) for v in pair)
        except (TypeError, ValueError):
            raise TypeError(
                f"bounds[{name!r}] must be a pair of numbers (low, high); got {describe(pair)}"
            ) from None
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError(f"bounds[{name!r}] must be finite; got ({low}, {high})")
        if not low < high:
            raise ValueError(f"bounds[{name!r}] must have low < high; got ({low}, {high})")
        names.append(name)
        lows.append(low)
        highs.append(high)
    return tuple(names), np.asarray(lows), np.asarray(highs)


def _check_n(n) -> int:
    if not isinstance(n, numbers.Integral) or isinstance(n, bool):
        raise TypeError(f"n must be an integer number of design points; got {describe(n)}")
    if n < 2:
        raise ValueError(f"n must be at least 2 design points; got {n}")
    return int(n)


def _check_seed(seed) -> int:
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise TypeError(f"seed must be a non-negative integer; got {describe(seed)}")
    return int(seed)


def _named(names, unit, lows, highs) -> dict[str, np.ndarray]:
    points = qmc.scale(unit, lows, highs)
    return {name: np.ascontiguousarray(points[:, i]) for i, name in enumerate(names)}


def latin_hypercube(bounds: Mapping[str, tuple[float, float]], n: int, *, seed: int = 0):
    """A Latin hypercube design of `n` points in the box `bounds`.

    Each parameter's range is cut into `n` strata of equal width and every stratum holds
    exactly one point, placed uniformly at random within it (scrambled LHS).

    **Arguments:**

    - `bounds`: dict of parameter name -> `(low, high)` with `low < high`, both finite.
    - `n`: number of points, at least 2.
    - `seed`: seed of the random permutation and jitter (same seed, same design).

    **Returns:**

    A dict of parameter name -> numpy array of shape `(n,)`, in the order of `bounds`.

    **Example:**

    ```python
    >>> from probde.design import latin_hypercube
    >>> d = latin_hypercube({"r": (0.1, 1.0), "K": (5.0, 20.0)}, 8, seed=1)
    >>> sorted(d), d["r"].shape
    (['K', 'r'], (8,))

    ```
    """
    names, lows, highs = _check_bounds(bounds)
    n, seed = _check_n(n), _check_seed(seed)
    sampler = qmc.LatinHypercube(d=len(names), rng=np.random.default_rng(seed))
    return _named(names, sampler.random(n), lows, highs)


def sobol(bounds: Mapping[str, tuple[float, float]], n: int, *, seed: int = 0):
    """The first `n` points of a scrambled Sobol' sequence in the box `bounds`.

    With `n = 2**m`, each parameter's range cut into `n` equal strata holds one point per
    stratum, and so does every dyadic box of volume `1/n` of the first two parameters.

    **Arguments:**

    - `bounds`: dict of parameter name -> `(low, high)` with `low < high`, both finite.
    - `n`: number of points, at least 2; a power of two keeps the balance properties.
    - `seed`: seed of the scrambling (same seed, same design).

    **Returns:**

    A dict of parameter name -> numpy array of shape `(n,)`, in the order of `bounds`.

    !!! note
        An `n` that is not a power of two is allowed (the points are still low-discrepancy)
        but warns, since the strata are then unevenly filled; round `n` to a power of two or
        use `latin_hypercube` for an arbitrary `n`.

    **Example:**

    ```python
    >>> from probde.design import sobol
    >>> d = sobol({"r": (0.1, 1.0), "K": (5.0, 20.0)}, 16, seed=1)
    >>> d["K"].shape
    (16,)

    ```
    """
    names, lows, highs = _check_bounds(bounds)
    n, seed = _check_n(n), _check_seed(seed)
    sampler = qmc.Sobol(d=len(names), scramble=True, rng=np.random.default_rng(seed))
    m = math.ceil(math.log2(n))
    if 2**m != n:
        warnings.warn(
            f"sobol: n={n} is not a power of two, so the Sobol' design loses its balance "
            f"properties; use n={2 ** (m - 1)} or n={2**m}, or latin_hypercube for any n",
            UserWarning,
            stacklevel=2,
        )
    # Draw the enclosing power of two and keep the first n points (what scipy does for
    # `random(n)`, without scipy's own warning on top of ours).
    unit = sampler.random_base2(m)[:n]
    return _named(names, unit, lows, highs)
