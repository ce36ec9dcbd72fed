"""The loss trace of a fit by optax (`probde.SVI`, `probde.Laplace`, `NUTS(init="map")`):
the rules that judge whether it converged (the loss, `loss_converged`, and for the Gaussian
guides of SVI the guide's parameters, `ParameterWindows`), the checks run after a fit, and
the `svi_trace` DataTree group that stores it.

Why the parameters too: on a one-parameter linear-Gaussian calibration (exact posterior
sd 0.0047) a full-rank guide started at scale 0.1 ended 3000 steps with sd 0.0186, four
times too wide, and a loss flat by the loss rule: the loss is insensitive to the scale
near the optimum, while the scale was still shrinking by several percent per window.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import xarray as xr

TRACE_GROUP = "svi_trace"
SKIPPED_ATTR = "skipped_steps"
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
# Parameter rule: a coordinate still moves when the change of its window mean exceeds a
# tolerance (location: in units of its scale; scale: on the log scale, i.e. relative) plus
# `_DRIFT_Z` times its spread within the windows. A steady drift over the windows moves the
# mean by sqrt(12) = 3.5 times its within-window sd; jitter about a fixed point moves it
# by far less than its sd once the windows are longer than the jitter's memory.
_LOC_TOL = 0.02
_SCALE_TOL = 0.01
_DRIFT_Z = 2.0
# Warn when more than this share of the optimisation steps had to be skipped.
_SKIP_WARN_FRACTION = 0.1
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


@dataclasses.dataclass(frozen=True)
class ParameterWindows:
    """A Gaussian guide's parameters over the last two windows of a fit (`window` steps
    each), per unconstrained coordinate:

    - `loc`, `scale`: the fitted location and marginal sd at the end;
    - `loc_change`: the mean location over the last window minus that over the preceding
      one, in units of the last window's mean scale;
    - `scale_change`: the same for the log scale (a relative change);
    - `loc_spread`, `scale_spread`: the sd of the location (in units of the scale) and of
      the log scale within the windows (pooled): the optimiser's jitter.
    """

    loc: np.ndarray
    scale: np.ndarray
    loc_change: np.ndarray
    scale_change: np.ndarray
    loc_spread: np.ndarray
    scale_spread: np.ndarray
    window: int

    @classmethod
    def from_sums(cls, loc, scale, shift, s1, s2, count, window):
        """From the running sums of `guide_fit.fit`: `shift` (2, D) the starting location
        and log scale, `s1` and `s2` (window, 2, D) the sums of the shifted values and of
        their squares, `count` the steps in each window; `None` when a window is empty."""
        if np.any(count < 1):
            return None
        mean = s1 / count[:, None, None]
        var = np.clip(s2 / count[:, None, None] - mean**2, 0.0, None)
        unit = np.exp(shift[1] + mean[1, 1])
        return cls(
            loc=loc, scale=scale,
            loc_change=(mean[1, 0] - mean[0, 0]) / unit,
            scale_change=mean[1, 1] - mean[0, 1],
            loc_spread=np.sqrt(0.5 * (var[0, 0] + var[1, 0])) / unit,
            scale_spread=np.sqrt(0.5 * (var[0, 1] + var[1, 1])),
            window=int(window),
        )

    def moving(self):
        """Boolean masks `(loc, scale)`: the coordinates whose location or scale still
        moved between the windows (change above its tolerance plus twice its spread)."""
        loc = np.abs(self.loc_change) > _LOC_TOL + _DRIFT_Z * self.loc_spread
        scale = np.abs(self.scale_change) > _SCALE_TOL + _DRIFT_Z * self.scale_spread
        return loc, scale


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
    and what it returns is worse than what it had. Returns `(first step of the best
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
    if not earlier or last.size < 2:
        return None
    start, window = min(earlier, key=lambda item: np.median(item[1]))
    best, end = np.median(window), np.median(last)
    se = math.hypot(_se_of_median(window), _se_of_median(last))
    if end - best <= _RISE_Z * se + _RISE_RTOL * max(1.0, abs(best)):
        return None
    return start, float(best), float(end)


def check_fit(name, losses, skipped, num_steps, windows=None, labels=(), gradient=None):
    """After a fit named `name` (for the messages): raise when every step was skipped,
    warn when more than 10% were, warn when the loss ended higher than it had been
    (`loss_rose`; then nothing more is said), and warn when the fit had not converged: the
    loss was still falling (`loss_converged`) or, with `windows` (a Gaussian guide's
    `ParameterWindows`, coordinates named by `labels`), its location or scale still moved,
    or, with `gradient` (a Gaussian guide's `stationarity.Stationarity`), the ELBO's
    gradient says its location or scale is off the optimum.
    Called by `guide_fit.fit_and_draw` under a method's `run`, the warnings point at the
    caller of `probde.infer` (stacklevel 7)."""
    n_skip = int(skipped.sum())
    if n_skip == num_steps:
        raise RuntimeError(
            f"{name}: every one of the {num_steps} optimisation steps had a non-finite loss "
            "or update (failed solves or impossible predictions at the guide's draws), so "
            "nothing was fitted; check the priors and initial_state against the data's scale, "
            "lower init_radius or learning_rate, or raise Solver(max_steps=...)"
        )
    if n_skip > _SKIP_WARN_FRACTION * num_steps:
        warnings.warn(
            f"{name}: {n_skip} of {num_steps} optimisation steps were skipped because the "
            "loss or the update was not finite (failed solves or impossible predictions at "
            "the guide's draws); the fit used the rest. Lower learning_rate, tighten the "
            "priors or raise Solver(max_steps=...)",
            stacklevel=7,
        )
    if _warn_if_rose(name, losses):
        return
    why = []
    if not loss_converged(losses):
        why.append(
            f"{num_steps} steps are too few to tell (at least {_MIN_STEPS} are needed)"
            if num_steps < _MIN_STEPS
            else f"the loss was still falling at the end of the {num_steps} steps "
            f"(see idata['{TRACE_GROUP}'].loss)"
        )
    else:
        if windows is not None:
            moved = _moving_message(windows, labels)
            if moved:
                why.append(moved)
        if gradient is not None:
            off = _off_message(gradient, labels)
            if off:
                why.append(off)
    if why:
        warnings.warn(
            f"{name} has not converged: {'; '.join(why)}; raise num_steps or learning_rate",
            stacklevel=7,
        )


def _warn_if_rose(name, losses) -> bool:
    """Warn (and return `True`) when the fit ended at a worse loss than it had reached
    (`loss_rose`)."""
    rose = loss_rose(losses)
    if rose is None:
        return False
    start, best, last = rose
    w = rise_window(len(losses))
    warnings.warn(
        f"{name} ended at a worse loss than it had reached: a median of {last:.4g} "
        f"over the last {w} steps against {best:.4g} over steps {start}-{start + w - 1} (see "
        f"idata['{TRACE_GROUP}'].loss). Steps under a large learning rate or a noisy "
        "gradient moved the fit out of the basin it was in, and the result is where it "
        f"ended; lower learning_rate{' or raise num_particles' if name == 'SVI' else ''}"
        ", and compare fits from other seeds",
        stacklevel=8,  # the caller of probde.infer, through check_fit
    )
    return True


def _largest_first(mask, values):
    """The indices where `mask` holds, by decreasing |values|."""
    idx = np.flatnonzero(mask)
    return idx[np.argsort(-np.abs(values[idx]))]


def _names(labels, idx, most):
    """'a, b, c' for the first `most` of `idx`, then ' and N more'."""
    more = f" and {idx.size - most} more" if idx.size > most else ""
    return ", ".join(labels[i] for i in idx[:most]) + more


def _moving_message(windows, labels, most=5):
    """'the guide's location of a, b and scale of c were still moving ...' or ''."""
    loc, scale = windows.moving()
    parts = []
    for what, mask, change, unit in (
        ("location", loc, windows.loc_change, " of its scale"),
        ("scale", scale, windows.scale_change, " (relative)"),
    ):
        idx = _largest_first(mask, change)
        if idx.size:
            parts.append(f"{what} of {_names(labels, idx, most)} (by up to "
                         f"{np.abs(change[idx[0]]):.2g}{unit})")
    if not parts:
        return ""
    return (f"the guide's {' and '.join(parts)} still moved between the last two windows of "
            f"{windows.window} steps (see idata['{TRACE_GROUP}'].loc_change and "
            "scale_change)")


def _off_message(gradient, labels, most=5):
    """'the ELBO's gradient ... puts the guide's location of a (...) and scale of b (...)
    off the optimum ...' or ''. The scale's offset d (half the derivative along a
    stretch, `stationarity`) is shown as the ratio sqrt(1 + 2 d) of the fitted sd to the
    optimum's, exact for a Gaussian posterior."""
    loc, scale = gradient.off()
    parts = []
    for what, mask, offset in (("location", loc, gradient.loc_offset),
                               ("scale", scale, gradient.scale_offset)):
        idx = _largest_first(mask, offset)
        if idx.size:
            worst = offset[idx[0]]
            size = (f"by about {worst:+.2g} sd" if what == "location" else
                    f"about {math.sqrt(max(1.0 + 2.0 * worst, 0.0)):.2g} times the optimum's")
            parts.append(f"{what} of {_names(labels, idx, most)} ({size})")
    if not parts:
        return ""
    return (f"the ELBO's gradient at {gradient.used} draws of the guide puts its "
            f"{' and '.join(parts)} off the optimum (see idata['{TRACE_GROUP}'].loc_offset "
            "and scale_offset)")


def trace_group(losses, skipped, start_losses=None, windows=None, labels=(), init=None,
                gradient=None):
    """The `svi_trace` DataTree group: `loss` and `skipped` per `step`, the number of
    skipped steps as the attribute `skipped_steps`, and with several starts `start_loss`
    per `start` (the mean loss over the last fifth of each start's first phase). With
    `windows` (a Gaussian guide), per `latent` coordinate (named by `labels`, in the
    unconstrained space): `loc` and `scale`, the fitted guide's location and marginal sd,
    and `loc_change`, `scale_change`, `loc_spread`, `scale_spread` (see
    `ParameterWindows`). With `gradient` (`stationarity.Stationarity`), per `latent`:
    `loc_offset`, `scale_offset` and their standard errors `loc_offset_se`,
    `scale_offset_se`. With `init`, the attribute `init`: how the guide started."""
    data = {"loss": ("step", losses), "skipped": ("step", skipped.astype(bool))}
    coords = {"step": np.arange(losses.shape[0])}
    if start_losses is not None and start_losses.size:
        data["start_loss"] = ("start", start_losses)
        coords["start"] = np.arange(start_losses.shape[0])
    if windows is not None:
        for field in ("loc", "scale", "loc_change", "scale_change", "loc_spread",
                      "scale_spread"):
            data[field] = ("latent", np.asarray(getattr(windows, field), dtype=float))
        coords["latent"] = list(labels)
    if gradient is not None:
        for field in ("loc_offset", "scale_offset", "loc_offset_se", "scale_offset_se"):
            data[field] = ("latent", np.asarray(getattr(gradient, field), dtype=float))
        coords["latent"] = list(labels)
    ds = xr.Dataset(data, coords=coords)
    ds.attrs[SKIPPED_ATTR] = int(skipped.sum())
    if windows is not None:
        ds.attrs["window"] = windows.window
    if init is not None:
        ds.attrs["init"] = init
    return ds
