"""The rules that judge a loss trace of a stochastic optimisation, on the host (numpy):
did it converge (`loss_converged`), did it end worse than it had been (`loss_rose`), and
the best window so far kept while the compiled loop runs (`best_window_start`,
`track_best`). `probde.SVI` and `probde.Laplace` (`probde.inference.loss_trace`, which
re-exports them) and `DeepGPEmulator`'s own fit share them; a utility module so that the
discrepancy layer can use them without importing inference."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Convergence check: the last and the preceding `_WINDOW` share of the steps (at least
# `_MIN_WINDOW` steps), and a relative tolerance on the loss scale (floored at 1 nat).
_WINDOW = 0.1
_MIN_WINDOW = 10
# Shorter runs are never judged converged: over a few dozen steps the trend of a noisy
# one-draw ELBO is hidden by its noise (a 20-step fit from a random start is flagged only
# about half the time by the window rule), and Adam moves each parameter by at most about
# the learning rate per step.
_MIN_STEPS = 100
_CONVERGENCE_Z = 2.0
_CONVERGENCE_RTOL = 1e-3
# Warn when more than this share of the optimisation steps had to be skipped.
SKIP_WARN_FRACTION = 0.1
# Rise rule: the last window's median loss above the lowest earlier window's by more than
# `_RISE_Z` standard errors of the difference plus `_RISE_RTOL` of the loss scale (floored
# at 1 nat). Stricter than the convergence rule: the last window is compared with the best
# of about twenty, which a stationary trace beats by about two standard errors by chance,
# and the optimiser's jitter makes successive losses correlated, so the standard errors
# (from each window's spread, as if its losses were independent) are too small. The rises
# it is for are tens of nats (a deep-GP fit: 15-80, against standard errors of about 0.5).
_RISE_Z = 6.0
_RISE_RTOL = 1e-2


def window_size(n: int) -> int:
    """The window of the convergence rules for a run of `n` steps: 10% of the steps, at
    least 10, at most half of them."""
    return min(max(int(n * _WINDOW), _MIN_WINDOW), n // 2)



def loss_converged(losses) -> bool:
    """The convergence rule of `SVI` and `Laplace` on a loss trace.

    Windows of `w = max(10% of the steps, 10)` steps (at most half of them): the rule
    fails (`False`) when the mean loss over the last `w` steps is below the mean over the
    preceding `w` by more than two standard errors of that difference (from the two
    windows' sample variances) plus `1e-3 * max(1, |preceding mean|)`, i.e. the loss was
    still falling. Skipped steps (non-finite loss) are left out. The floor of 10 steps
    keeps the standard error meaningful on short runs: with two-step windows (10% of 20
    steps) the noise of a one-draw ELBO hides any trend. Runs of fewer than 100 steps
    are never judged converged: too short for the trend to show above the noise.

    Known false alarm: under a decaying learning rate the mean loss keeps falling slowly
    as the iterates' jitter shrinks, even once the guide sits at its optimum. On the
    lynx-hare fit (10,000 steps, default schedule; benchmarks/RESULTS.md) the last 10% lay
    0.35 nats (7 standard errors) below the preceding 10% with the posterior means already
    within 0.08 sd of NUTS's. Comparing 5% windows removes that alarm but flags short
    (600-step) fits that the 10% rule passes; the rule stays at 10% until a better one is
    found (e.g. judged at a fixed learning rate).

    **Example:**

    ```python
    >>> import numpy as np
    >>> from probde.inference.loss_trace import loss_converged
    >>> loss_converged(np.full(200, 3.0))
    True
    >>> loss_converged(np.linspace(10.0, 1.0, 200))
    False

    ```
    """
    losses = np.asarray(losses, dtype=float)
    if losses.shape[0] < _MIN_STEPS:
        return False
    w = window_size(losses.shape[0])
    last, prev = _finite(losses[-w:]), _finite(losses[-2 * w : -w])
    if last.size < 2 or prev.size < 2:
        return False
    se = _se_of_difference(last, prev)
    drop = prev.mean() - last.mean()
    return bool(drop <= _CONVERGENCE_Z * se + _CONVERGENCE_RTOL * max(1.0, abs(prev.mean())))


def _finite(x):
    return x[np.isfinite(x)]


def _se_of_difference(a, b):
    """Standard error of `a.mean() - b.mean()` for independent samples."""
    return math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)


def _se_of_median(x):
    """Standard error of the median of `x`, from its median absolute deviation (a
    one-draw ELBO has rare draws tens of times the typical loss, which would dominate a
    mean and a variance): 1.2533 sd / sqrt(n) for normal data, sd = 1.4826 MAD."""
    mad = np.median(np.abs(x - np.median(x)))
    return 1.2533 * 1.4826 * mad / math.sqrt(x.size)


def rise_window(n: int) -> int:
    """The window of the rise rule for a run of `n` steps: 5% of the steps, at least 10.
    Half the convergence rule's: the best stretch to compare with can be short, e.g. the
    end of the chosen start's first phase, whose window would otherwise be averaged with
    the fall from its starting point."""
    return max(window_size(n) // 2, _MIN_WINDOW)


def loss_rose(losses) -> tuple[int, float, float] | None:
    """The rise rule: did the loss end higher than it had been?

    The trace is cut into consecutive windows of `rise_window(n)` steps (the last one
    ends at the last step; skipped steps are left out), each summarised by its median
    loss (robust to the rare huge losses of a one-draw ELBO). Under a decaying learning
    rate the last window should have the lowest; when it lies above the lowest earlier
    window by more than six standard errors of the difference (from the windows' median
    absolute deviations) plus
    `0.01 * max(1, |lowest mean|)`, the fit left the basin it was in (a noisy gradient step
    under a large learning rate can throw a many-parameter guide into a worse optimum)
    and what it returns is worse than what it had. A last window with fewer than two
    finite losses, after earlier windows had them, counts as risen (its median is `inf`):
    the fit ended where the loss cannot be evaluated (every step skipped), and stays there,
    since a skipped step keeps the parameters. Returns `(first step of the best
    window, its median, the last window's median)`, or `None` when the loss did not rise.
    Runs of fewer than 100 steps are not judged.

    **Example:**

    ```python
    >>> import numpy as np
    >>> from probde.inference.loss_trace import loss_rose
    >>> down_then_up = np.concatenate([np.linspace(100.0, 50.0, 500), np.full(500, 80.0)])
    >>> start, best, last = loss_rose(down_then_up)
    >>> start, round(best, 2), last  # best window: steps 450-499
    (450, 52.45, 80.0)
    >>> loss_rose(np.linspace(100.0, 50.0, 1000)) is None
    True

    ```
    """
    losses = np.asarray(losses, dtype=float)
    n = losses.shape[0]
    if n < _MIN_STEPS:
        return None
    w = rise_window(n)
    last = _finite(losses[-w:])
    # the earlier windows, backwards from the last one: (first step, finite losses)
    earlier = [(end - w, _finite(losses[end - w : end])) for end in range(n - w, w - 1, -w)]
    earlier = [(start, x) for start, x in earlier if x.size >= 2]
    if not earlier:
        return None
    start, window = min(earlier, key=lambda item: np.median(item[1]))
    best = np.median(window)
    if last.size < 2:
        return start, float(best), math.inf
    end = np.median(last)
    se = math.hypot(_se_of_median(window), _se_of_median(last))
    if end - best <= _RISE_Z * se + _RISE_RTOL * max(1.0, abs(best)):
        return None
    return start, float(best), float(end)


def best_window_start(params, num_steps):
    """The tracker of `track_best` before the first step of a run of `num_steps` steps
    whose optimiser parameters look like `params` (a pytree)."""
    zeros = jax.tree.map(jnp.zeros_like, params)
    dtype = jnp.result_type(float)
    return (jnp.full((rise_window(num_steps),), jnp.nan, dtype), zeros,
            jnp.array(jnp.inf, dtype), zeros, jnp.array(-1))


def track_best(tracker, i, loss, params, num_steps):
    """Step `i` (of `num_steps`) added to the rise rule's windows (`loss_rose`:
    windows of `rise_window(num_steps)` steps counted back from the last step, the few
    steps before the first whole window left out, non-finite losses skipped, a window
    judged by its median loss). `tracker = (losses, sum, best median, best sum, best
    first step)`: the current window's losses and sum of the parameters after each of its
    steps, and those of the window with the lowest median so far (of two finite losses or
    more; the later of equal ones, as loss_rose takes them)."""
    buf, total, best, best_total, best_start = tracker
    w = buf.shape[0]
    head = num_steps % w
    pos = (i - head) % w
    buf = buf.at[pos].set(jnp.where(jnp.isfinite(loss), loss, jnp.nan).astype(buf.dtype))
    total = jax.tree.map(lambda s, p: jnp.where(pos == 0, p, s + p), total, params)
    ends = (pos == w - 1) & (i >= head) & (jnp.sum(jnp.isfinite(buf)) >= 2)
    median = lax.cond(ends, jnp.nanmedian, lambda b: jnp.array(jnp.inf, b.dtype), buf)
    better = ends & (median <= best)
    best_total = jax.tree.map(lambda b, s: jnp.where(better, s, b), best_total, total)
    return (buf, total, jnp.where(better, median, best), best_total,
            jnp.where(better, i - w + 1, best_start))


def best_window(tracker, losses, skipped, num_steps):
    """When the loss rose (`loss_rose`, skipped steps left out), `(the optimiser's
    parameters averaged over the best window, its first step)` from `track_best`'s
    `tracker` at the end of a run of `num_steps` steps; otherwise `None`."""
    if loss_rose(np.where(skipped, np.nan, losses)) is None or int(tracker[4]) < 0:
        return None
    count = rise_window(num_steps)
    return jax.tree.map(lambda t: t / count, tracker[3]), int(tracker[4])


def describe_rise(start, best, last, w):
    """The figures of a rise (`loss_rose`'s `start, best, last`, windows of `w` steps), in
    words for a warning."""
    now = (f"no finite loss over the last {w} steps (every step there was skipped)"
           if math.isinf(last) else f"a median of {last:.4g} over the last {w} steps")
    return f"{now} against {best:.4g} over steps {start}-{start + w - 1}"
