"""The table and the figure of an `Identifiability` result."""

from __future__ import annotations

import math

import numpy as np

from .profiles import THRESHOLD


def _own_units(value, scale):
    """A value of the analysis scale in the parameter's own units."""
    return math.exp(value) if scale == "log" and np.isfinite(value) else (
        0.0 if scale == "log" and value == -np.inf else value)


def _number(value) -> str:
    if value == np.inf:
        return "inf"
    if value == -np.inf:
        return "-inf"
    return f"{value:.4g}"


def report(result) -> str:
    """Per coordinate: scale, estimate (the maximum-likelihood estimate, own units), Fisher
    standard error (on the analysis scale), profile classification and 95% interval (own
    units); then the eigenvalues and the sloppy combinations."""
    head = ("parameter", "scale", "MLE", "Fisher s.e.", "profile", "95% interval")
    rows = []
    mles = np.concatenate([np.ravel(v) for v in result.mle.values()])  # in label order
    for i, label in enumerate(result.labels):
        scale, mle = result.scales[i], float(mles[i])
        p = result.profiles.get(label)
        if p is None:
            kind, interval = "-", "-"
        else:
            lo, hi = (_own_units(v, scale) for v in p.interval)
            kind, interval = p.classification, f"({_number(lo)}, {_number(hi)})"
        rows.append((label, scale, _number(mle), _number(result.standard_errors[i]), kind,
                     interval))
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    lines = [f"Identifiability: Fisher information ({result.information}) at the "
             f"{result.at}; max log-likelihood {result.max_log_likelihood:.6g}",
             "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    top = result.eigenvalues[0] if len(result.eigenvalues) else 1.0
    lines.append("Fisher eigenvalues (largest first): "
                 + ", ".join(f"{v:.3g}" for v in result.eigenvalues)
                 + (f" (condition number {top / result.eigenvalues[-1]:.3g})"
                    if len(result.eigenvalues) and result.eigenvalues[-1] > 0 else ""))
    if result.information == "observed" and len(result.eigenvalues) and \
            result.eigenvalues[-1] < 0:
        lines.append("The observed information has a negative eigenvalue: the point is not a "
                     "maximum of the likelihood, and its standard errors mean little; take "
                     "it at result.mle")
    if result.sloppy:
        lines.append(f"Poorly determined combinations (eigenvalue < {result.sloppy_rtol:g} x "
                     "largest), least determined first:")
        lines += [f"  {d.relative:.3g} x largest: {d.combination}" for d in result.sloppy]
    else:
        lines.append(f"No eigenvalue below {result.sloppy_rtol:g} x the largest.")
    return "\n".join(lines)


def plot(result, path=None):
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    panels = len(result.profiles) + 1
    ncols = min(panels, 3)
    nrows = math.ceil(panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.2 * nrows), squeeze=False)
    axes = axes.ravel()
    for ax, p in zip(axes, result.profiles.values(), strict=False):
        drop = p.drop
        ok = np.isfinite(drop)
        ax.plot(p.grid[ok], drop[ok], "o-", ms=3, color="C0")
        ax.plot(p.grid[ok & ~p.converged], drop[ok & ~p.converged], "x", color="C3",
                label="not converged" if np.any(ok & ~p.converged) else None)
        ax.axhline(THRESHOLD, color="k", ls="--", lw=1, label="95% threshold")
        lo, hi = (np.clip(v, p.grid[0], p.grid[-1]) for v in p.interval)
        ax.axvspan(lo, hi, color="C0", alpha=0.12)
        ax.axvline(p.estimate, color="k", lw=0.8)
        ax.set_xlabel(f"log {p.label}" if p.scale == "log" else p.label)
        ax.set_ylabel("drop in log-likelihood")
        ax.set_ylim(bottom=-0.05 * max(THRESHOLD, 1.0),
                    top=max(2.5 * THRESHOLD, float(np.max(drop[ok], initial=0.0)) * 1.05))
        ax.set_title(p.classification, fontsize="medium")
        ax.legend(fontsize="x-small")
    ax = axes[len(result.profiles)]
    values = np.asarray(result.eigenvalues, dtype=float)
    top = values[0] if values.size and values[0] > 0 else 1.0
    rel = np.maximum(np.abs(values) / top, np.finfo(float).tiny)
    ax.semilogy(np.arange(1, values.size + 1), rel, "o", color="C1")
    ax.axhline(result.sloppy_rtol, color="k", ls="--", lw=1, label="sloppy_rtol")
    ax.set_xlabel("eigenvalue (largest first)")
    ax.set_ylabel("relative to the largest")
    ax.set_title(f"Fisher information ({result.information})", fontsize="medium")
    ax.legend(fontsize="x-small")
    for extra in axes[panels:]:
        extra.remove()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
