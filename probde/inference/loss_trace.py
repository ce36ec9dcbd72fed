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

from .._loss_rules import (
    _MIN_STEPS,
    SKIP_WARN_FRACTION,
    describe_rise,
    loss_converged,
    loss_rose,
    rise_window,
    window_size,  # noqa: F401 (re-exported)
)

TRACE_GROUP = "svi_trace"
SKIPPED_ATTR = "skipped_steps"
# Parameter rule: a coordinate still moves when the change of its window mean exceeds a
# tolerance (location: in units of its scale; scale: on the log scale, i.e. relative) plus
# `_DRIFT_Z` times its spread within the windows. A steady drift over the windows moves the
# mean by sqrt(12) = 3.5 times its within-window sd; jitter about a fixed point moves it
# by far less than its sd once the windows are longer than the jitter's memory.
_LOC_TOL = 0.02
_SCALE_TOL = 0.01
_DRIFT_Z = 2.0


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




def check_fit(name, losses, skipped, num_steps, windows=None, labels=(), gradient=None,
              returned=None):
    """After a fit named `name` (for the messages): raise when every step was skipped,
    warn when more than 10% were, warn when the loss ended higher than it had been
    (`loss_rose`; then nothing more is said; `returned`, the first step of the window
    whose parameters the fit returned instead of its last ones, `guide_fit.fit`), and
    warn when the fit had not converged: the
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
    if n_skip > SKIP_WARN_FRACTION * num_steps:
        warnings.warn(
            f"{name}: {n_skip} of {num_steps} optimisation steps were skipped because the "
            "loss or the update was not finite (failed solves or impossible predictions at "
            "the guide's draws); the fit used the rest. Lower learning_rate, tighten the "
            "priors or raise Solver(max_steps=...)",
            stacklevel=7,
        )
    if _warn_if_rose(name, np.where(skipped, np.nan, losses), returned):
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


def _warn_if_rose(name, losses, returned=None) -> bool:
    """Warn (and return `True`) when the fit ended at a worse loss than it had reached
    (`loss_rose`), saying which parameters the fit returned: those averaged over the
    window starting at step `returned`, or (`None`) the last ones."""
    rose = loss_rose(losses)
    if rose is None:
        return False
    start, best, last = rose
    w = rise_window(len(losses))
    if returned is None:
        result = "the result is where it ended"
    else:
        result = (f"the result is the guide averaged over steps {returned}-{returned + w - 1}"
                  ", not where it ended, but it had not converged there")
    warnings.warn(
        f"{name} ended at a worse loss than it had reached: "
        f"{describe_rise(start, best, last, w)} (see idata['{TRACE_GROUP}'].loss). "
        "Steps under a large learning rate or a noisy "
        f"gradient moved the fit out of the basin it was in; {result}. Lower "
        f"learning_rate{' or raise num_particles' if name == 'SVI' else ''}"
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
                gradient=None, returned=None):
    """The `svi_trace` DataTree group: `loss` and `skipped` per `step`, the number of
    skipped steps as the attribute `skipped_steps`, and with several starts `start_loss`
    per `start` (the mean loss over the last fifth of each start's first phase). With
    `windows` (a Gaussian guide), per `latent` coordinate (named by `labels`, in the
    unconstrained space): `loc` and `scale`, the fitted guide's location and marginal sd,
    and `loc_change`, `scale_change`, `loc_spread`, `scale_spread` (see
    `ParameterWindows`). With `gradient` (`stationarity.Stationarity`), per `latent`:
    `loc_offset`, `scale_offset` and their standard errors `loc_offset_se`,
    `scale_offset_se`. With `init`, the attribute `init`: how the guide started. With
    `returned` (the loss rose and the fit returned an earlier window's parameters,
    `guide_fit.fit`), the attribute `returned_steps`: that window's first and last step."""
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
    if returned is not None:
        ds.attrs["returned_steps"] = [int(returned),
                                      int(returned) + rise_window(losses.shape[0]) - 1]
    return ds
