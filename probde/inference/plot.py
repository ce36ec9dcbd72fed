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
    observables = list(obs["observable"].values)
    experiments = list(obs["experiment"].values) if "experiment" in obs.dims else [None]
    n_panels = len(observables) * len(experiments)
    if ax is None:
        fig, axes = plt.subplots(n_panels, 1, figsize=(7, 2.6 * n_panels), squeeze=False, sharex=True)
        axes = axes[:, 0]
    else:
        axes = np.atleast_1d(ax)
        fig = axes[0].figure
    lo, hi = (1 - interval) / 2, 1 - (1 - interval) / 2
    times = obs["time"].values
    i = 0
    for exp in experiments:
        for name in observables:
            sel = {"observable": name}
            if exp is not None:
                sel["experiment"] = exp
            draws = pred.sel(sel).stack(sample=("chain", "draw")).transpose("sample", "time").values
            q = np.nanquantile(draws, [lo, 0.5, hi], axis=0)
            a = axes[i]
            a.fill_between(times, q[0], q[2], alpha=0.3, color="C0",
                           label=f"{int(interval * 100)}% posterior predictive")
            a.plot(times, q[1], color="C0", lw=1.5, label="posterior predictive median")
            if "mu" in idata["posterior_predictive"]:
                mu = idata["posterior_predictive"]["mu"].sel(sel)
                mu = mu.stack(sample=("chain", "draw")).transpose("sample", "time").values
                a.plot(times, np.nanmedian(mu, axis=0), color="C1", lw=1, ls="--",
                       label="model (noise-free) median")
            a.plot(times, obs.sel(sel).values, "o", color="k", ms=4, label="data")
            a.set_ylabel(name if exp is None else f"{name} ({exp})")
            i += 1
    axes[0].legend(loc="upper right", fontsize="small")
    axes[-1].set_xlabel("time")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
