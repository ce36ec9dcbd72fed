"""`plot_fit`: observed data with posterior predictive bands."""

from __future__ import annotations

import numpy as np


def plot_fit(idata, *, path=None, interval=0.9, ax=None):
    import matplotlib

    if path is not None and ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not 0 < interval < 1:
        raise ValueError(f"interval must be in (0, 1); got {interval}")
    if "posterior_predictive" not in idata.children or "observed_data" not in idata.children:
        raise ValueError("plot_fit needs the posterior_predictive and observed_data groups")
    pred = idata["posterior_predictive"]["y"]
    obs = idata["observed_data"]["y"]
    panels = _panels(obs)
    group = idata["posterior_predictive"]
    # SDE models: the unobserved states' smoothed posterior gets panels of its own.
    hidden = []
    if "smoothed_states" in idata.children and "trajectory" in group:
        observables = set(obs["observable"].values.tolist())
        hidden = [s for s in group["trajectory"]["state"].values.tolist() if s not in observables]
    n_panels = len(panels) + len(hidden) * (len(panels) // max(len(obs["observable"]), 1))
    if ax is None:
        fig, axes = plt.subplots(n_panels, 1, figsize=(7, 2.6 * n_panels), squeeze=False, sharex=True)
        axes = axes[:, 0]
    else:
        axes = np.atleast_1d(ax)
        fig = axes[0].figure
    lo, hi = (1 - interval) / 2, 1 - (1 - interval) / 2
    times = obs["time"].values
    corrected = "corrected" in group
    sde = "smoothed_states" in idata.children
    for a, (label, sel) in zip(axes, panels):
        _observable_panel(a, group, pred, obs, sel, times, (lo, hi), interval, sde, corrected)
        a.set_ylabel(label)
    experiments = list(obs["experiment"].values) if "experiment" in obs.dims else [None]
    extra = [(s, e) for e in experiments for s in hidden]
    for a, (state, exp) in zip(axes[len(panels):], extra):
        sel = {"state": state} if exp is None else {"state": state, "experiment": exp}
        q = np.nanquantile(_draws(group["trajectory"], sel), [lo, 0.5, hi], axis=0)
        a.fill_between(times, q[0], q[2], alpha=0.3, color="C1",
                       label=f"{int(interval * 100)}% latent state (smoothed)")
        a.plot(times, q[1], color="C1", lw=1.2)
        a.set_ylabel(f"{state} (unobserved)" if exp is None else f"{state} ({exp}, unobserved)")
    axes[0].legend(loc="upper right", fontsize="small")
    axes[-1].set_xlabel("time")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def _observable_panel(a, group, pred, obs, sel, times, bounds, interval, sde, corrected):
    """One observable's panel: predictive band, model (or smoothed state) and data."""
    lo, hi = bounds
    q = np.nanquantile(_draws(pred, sel), [lo, 0.5, hi], axis=0)
    a.fill_between(times, q[0], q[2], alpha=0.3, color="C0",
                   label=f"{int(interval * 100)}% posterior predictive")
    a.plot(times, q[1], color="C0", lw=1.5, label="posterior predictive median")
    if sde and "mu" in group:
        m = np.nanquantile(_draws(group["mu"], sel), [lo, 0.5, hi], axis=0)
        a.fill_between(times, m[0], m[2], alpha=0.3, color="C1",
                       label=f"{int(interval * 100)}% latent state (smoothed)")
        a.plot(times, m[1], color="C1", lw=1.2)
    elif "mu" in group:
        mu = _draws(group["mu"], sel)
        a.plot(times, np.nanmedian(mu, axis=0), color="C1", lw=1, ls="--",
               label="simulator median" if corrected else "model (noise-free) median")
    if corrected:
        c = np.nanquantile(_draws(group["corrected"], sel), [lo, 0.5, hi], axis=0)
        a.plot(times, c[1], color="C2", lw=1.2, label="simulator + discrepancy median")
        a.fill_between(times, c[0], c[2], alpha=0.25, color="C2")
    a.plot(times, obs.sel(sel).values, "o", color="k", ms=4, label="data")


def _panels(obs):
    """One `(label, selection)` per observable and experiment of the observed data."""
    observables = list(obs["observable"].values)
    experiments = list(obs["experiment"].values) if "experiment" in obs.dims else [None]
    return [
        (name if exp is None else f"{name} ({exp})",
         {"observable": name} if exp is None else {"observable": name, "experiment": exp})
        for exp in experiments
        for name in observables
    ]


def _draws(da, sel):
    """`(samples, time)` draws of one observable or state (and experiment)."""
    return da.sel(sel).stack(sample=("chain", "draw")).transpose("sample", "time").values


def plot_discrepancy(idata, *, path=None, interval=0.9, group=None):
    """Data, simulator, discrepancy and corrected process with bands, per observable.

    Uses the `predictions` group (from `result.predict(times)`, usually a fine grid) when
    present, else the posterior predictive at the data times. Top panel: data, simulator
    `mu`, `corrected = mu + delta` (on the data scale); bottom panel: `delta`.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if group is None:
        group = "predictions" if "predictions" in idata.children else "posterior_predictive"
    pred = idata[group]
    if "discrepancy" not in pred:
        raise ValueError(f"plot_discrepancy needs a model with a discrepancy; {group} has no discrepancy")
    obs = idata["observed_data"]["y"]
    panels = _panels(obs)
    n = len(panels)
    fig, axes = plt.subplots(2, n, figsize=(5.5 * n, 5.5), squeeze=False, sharex="col",
                             gridspec_kw={"height_ratios": [2, 1]})
    lo, hi = (1 - interval) / 2, 1 - (1 - interval) / 2
    times = pred["time"].values
    for j, (label, sel) in enumerate(panels):
        top, bottom = axes[0, j], axes[1, j]
        for var, colour, legend in (("mu", "C1", "simulator"),
                                    ("corrected", "C2", "simulator + discrepancy")):
            q = np.nanquantile(_draws(pred[var], sel), [lo, 0.5, hi], axis=0)
            top.fill_between(times, q[0], q[2], alpha=0.25, color=colour)
            top.plot(times, q[1], color=colour, lw=1.5, label=f"{legend} ({int(interval * 100)}%)")
        top.plot(obs["time"].values, obs.sel(sel).values, "o", color="k", ms=4, label="data")
        top.set_ylabel(label)
        q = np.nanquantile(_draws(pred["discrepancy"], sel), [lo, 0.5, hi], axis=0)
        bottom.fill_between(times, q[0], q[2], alpha=0.3, color="C3")
        bottom.plot(times, q[1], color="C3", lw=1.5, label="discrepancy delta")
        bottom.axhline(0.0, color="grey", lw=0.8)
        bottom.set_xlabel("time")
        bottom.set_ylabel("delta")
    axes[0, 0].legend(fontsize="small")
    axes[1, 0].legend(fontsize="small")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_loss(idata, *, path=None, ax=None):
    """The optimisation trace of a variational or Laplace fit (group `svi_trace`)."""
    import matplotlib

    if path is not None and ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if "svi_trace" not in idata.children:
        raise ValueError(
            "plot_loss needs the svi_trace group of a probde.SVI or probde.Laplace fit; this "
            f"result has groups {list(idata.children)}"
        )
    trace = idata["svi_trace"]
    loss = np.asarray(trace["loss"].values, dtype=float)
    steps = np.asarray(trace["step"].values)
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.2))
    else:
        fig = ax.figure
    finite = np.isfinite(loss)
    ax.plot(steps[finite], loss[finite], color="C0", lw=0.5, alpha=0.35, label="loss per step")
    # a running median over 1% of the run shows the trend under the step-to-step noise
    width = max(1, loss.size // 100)
    if finite.sum() > width:
        smooth = np.array([np.median(loss[max(0, i - width):i + 1][finite[max(0, i - width):i + 1]])
                           if finite[max(0, i - width):i + 1].any() else np.nan
                           for i in range(loss.size)])
        ax.plot(steps, smooth, color="C0", lw=1.5, label=f"running median ({width} steps)")
    skipped = np.asarray(trace["skipped"].values, dtype=bool)
    if skipped.any():
        lo = np.nanmin(loss[finite]) if finite.any() else 0.0
        ax.plot(steps[skipped], np.full(skipped.sum(), lo), "|", color="C3",
                label=f"skipped steps ({int(skipped.sum())})")
    if finite.any():
        # the first steps from a random start are far above the rest; keep them on the
        # axes without letting them flatten the end of the run
        tail = loss[finite][loss[finite].size // 10:]
        lo, hi = np.min(tail), np.quantile(tail, 0.99)
        pad = 0.1 * (hi - lo) if hi > lo else 1.0
        ax.set_ylim(lo - pad, hi + 4 * pad)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (negative ELBO)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
