r"""Profile likelihoods: for one coordinate $z_i$ held at each value of a grid, the
log-likelihood maximised over all the other parameters,
$\mathrm{PL}(z_i) = \max_{z_{-i}} \log p(\text{data} \mid z)$, and what it says.

The likelihood, not the posterior, is profiled (the classical construction, free of the
priors): its drop from the maximum, compared with $\chi^2_1(0.95)/2 = 1.92$, gives the
95% likelihood-ratio confidence interval of $z_i$.

Each grid is walked outwards from the maximum-likelihood estimate, one side after the
other, each point's optimisation (optimistix's BFGS, in numpyro's unconstrained space)
starting where its neighbour's ended, so that the optimiser follows the ridge. All sweeps,
and the search for the maximum itself (a sweep with nothing held), are one compiled
function: the held coordinate is a mask, not a shape.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jax import lax
from scipy.stats import chi2

#: Half the 95% quantile of chi-squared with one degree of freedom: the drop of the
#: log-likelihood from its maximum at the ends of a 95% likelihood-ratio interval.
THRESHOLD = 0.5 * float(chi2.ppf(0.95, 1))

IDENTIFIED = "identified"
PRACTICAL = "practically non-identifiable"
FLAT = "flat"


@dataclasses.dataclass(frozen=True)
class Profile:
    """The profile likelihood of one coordinate.

    - `label`, `scale`: the coordinate (`"k"`, `"z_init[0]"`) and its analysis scale
      (`"log"` or `"natural"`); `grid`, `interval` and `estimate` are on that scale;
    - `grid`: the values at which the coordinate was held, ascending;
    - `values`: the profile log-likelihood there (the others optimised);
    - `converged`: whether each inner optimisation met its tolerance;
    - `maximum`: the maximum of the log-likelihood over all parameters (the reference
      level of the drops);
    - `estimate`: the coordinate at the maximum-likelihood estimate;
    - `classification`: `"identified"` (the drop exceeds `THRESHOLD` on both sides within
      the grid), `"practically non-identifiable"` (on one side only) or `"flat"` (on
      neither);
    - `interval`: the 95% likelihood-ratio interval `(low, high)`, `-inf`/`inf` on a side
      where the drop never reaches the threshold; its ends are the crossings of the
      threshold by the quadratic through the three grid points nearest each crossing
      (exact where the profile is quadratic), with the grid made finer around each
      crossing first (`identifiability(refine=True)`).
    """

    label: str
    scale: str
    grid: np.ndarray
    values: np.ndarray
    converged: np.ndarray
    maximum: float
    estimate: float
    classification: str
    interval: tuple

    @property
    def drop(self) -> np.ndarray:
        """`maximum - values`: how far below the maximum the profile lies."""
        return self.maximum - self.values


def sweeper(log_likelihood, dtype, max_steps):
    """The compiled sweep `(held, values, x0) -> (log-likelihoods, points, converged)`:
    for each row of `values` in turn, the coordinates where `held` is `True` are set to
    that row and the others optimised, starting from the previous point (from `x0` at
    first). A point whose log-likelihood is not finite does not become the next start."""
    tol = float(np.finfo(dtype).eps) ** 0.5
    solver = optx.BFGS(rtol=tol, atol=tol)

    def negative(free, args):
        held, value = args
        return -log_likelihood(jnp.where(held, value, free))

    def sweep(held, values, x0):
        def step(start, value):
            sol = optx.minimise(negative, solver, start, args=(held, value),
                                max_steps=max_steps, throw=False)
            x = jnp.where(held, value, sol.value)
            ll = log_likelihood(x)
            ok = jnp.isfinite(ll) & jnp.all(jnp.isfinite(x))
            converged = ok & (sol.result == optx.RESULTS.successful)
            start = jnp.where(ok, x, jnp.where(held, value, start))
            return start, (jnp.where(ok, ll, -jnp.inf), x, converged)

        return lax.scan(step, x0, values)[1]

    return jax.jit(sweep)


def maximise(sweep, x0, num):
    """The maximum-likelihood point from `x0`: a sweep of `num` steps with nothing held
    (the steps after the first start at the optimum; sharing the sweeps' compilation)."""
    held = jnp.zeros(x0.shape, bool)
    lls, xs, converged = sweep(held, jnp.broadcast_to(x0, (num, *x0.shape)), x0)
    best = int(np.argmax(np.asarray(lls)))
    return np.asarray(xs[best]), float(lls[best]), bool(converged[best])


def walk(sweep, i, values, start):
    """`(log-likelihoods, points, converged)` along coordinate `i` held at the
    unconstrained `values` in turn, warm-started from the point `start`."""
    held = jnp.arange(start.shape[0]) == i
    start = jnp.asarray(start)
    rows = jnp.broadcast_to(start, (len(values), start.shape[0]))
    rows = rows.at[:, i].set(jnp.asarray(values, start.dtype))
    lls, xs, ok = sweep(held, rows, start)
    return np.asarray(lls), np.asarray(xs), np.asarray(ok)


def profile(sweep, i, grid_x, centre, x_mle):
    """`(values, points, converged)` of the profile along coordinate `i` at the
    unconstrained values `grid_x` (ascending, odd length, `grid_x[centre]` the
    estimate), each side walked outwards from `x_mle`."""
    right = walk(sweep, i, grid_x[centre:], x_mle)
    left = walk(sweep, i, grid_x[centre::-1], x_mle)
    return tuple(np.concatenate([a[::-1], b[1:]]) for a, b in zip(left, right, strict=True))


def classify(grid, values, maximum):
    """`(classification, interval, maximum, brackets)` of a profile (see `Profile`);
    `maximum` is raised to the profile's own maximum where that is higher; `brackets`
    holds `(outer, inner)` grid indices of each crossing of the threshold, the drop
    above it at `outer` and below it at `inner`."""
    finite = np.isfinite(values)
    if not finite.any():
        return FLAT, (-np.inf, np.inf), maximum, []
    maximum = max(maximum, float(np.max(values[finite])))
    drop = np.where(finite, maximum - values, np.inf)
    peak = int(np.argmin(drop))
    above = drop > THRESHOLD
    left = np.nonzero(above[:peak])[0]
    right = np.nonzero(above[peak + 1:])[0] + peak + 1
    low = _crossing(grid, drop, left[-1], +1) if left.size else -np.inf
    high = _crossing(grid, drop, right[0], -1) if right.size else np.inf
    brackets = ([(int(left[-1]), int(left[-1]) + 1)] if left.size else []) + (
        [(int(right[0]), int(right[0]) - 1)] if right.size else [])
    kind = {2: IDENTIFIED, 1: PRACTICAL, 0: FLAT}[len(brackets)]
    return kind, (low, high), maximum, brackets


def _crossing(grid, drop, j, inward):
    """Where the drop falls through `THRESHOLD` between grid points `j` (above it) and
    `j + inward`: the root of the quadratic through `j`, `j + inward` and
    `j + 2 inward` (the line through the first two where there is no third point or the
    quadratic has no root there); `grid[j]` itself where the drop at `j` is not finite."""
    if not np.isfinite(drop[j]):
        return float(grid[j])
    a, b = grid[j], grid[j + inward]
    idx = [j, j + inward] + ([j + 2 * inward] if 0 <= j + 2 * inward < len(grid) else [])
    if len(idx) == 3 and np.all(np.isfinite(drop[idx])):
        coef = np.polyfit(grid[idx] - b, drop[idx] - THRESHOLD, 2)
        roots = np.roots(coef) + b
        lo, hi = min(a, b), max(a, b)
        span = hi - lo
        inside = [r.real for r in roots
                  if abs(r.imag) <= 1e-12 * max(span, 1.0)
                  and lo - 1e-9 * span <= r.real <= hi + 1e-9 * span]
        if inside:
            return float(np.clip(min(inside, key=lambda r: abs(r - b)), lo, hi))
    t = (THRESHOLD - drop[inward + j]) / (drop[j] - drop[j + inward])
    return float(b + t * (a - b))
