"""The SBC figure: per parameter, the ECDF difference of the PIT values with a
simultaneous 95% band (ArviZ's statistics) over a rank histogram with a 99% band."""

from __future__ import annotations

import numpy as np
from scipy import stats


def plot_sbc(result, path=None, *, bins=None):
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from arviz_stats.ecdf_utils import ecdf_pit

    names = list(result.pvalues)
    n = len(names)
    ncol = min(n, 4)
    nrow = 2 * int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.4 * nrow), squeeze=False)
    S, L = result.num_simulations, result.num_draws
    bins = bins or int(np.clip(S // 10, 5, 20))
    for i, name in enumerate(names):
        row, col = 2 * (i // ncol), i % ncol
        u = (result.ranks[name] + 0.5) / (L + 1)
        x, ecdf, lower, upper = ecdf_pit(u, 0.95, 1000, rng=np.random.default_rng(0))
        ax = axes[row, col]
        ax.fill_between(x, lower - x, upper - x, step="post", color="0.85",
                        label="simultaneous 95%")
        ax.step(x, ecdf - x, where="post", color="C0")
        ax.axhline(0.0, color="0.4", lw=0.8)
        ax.set_title(f"{name}  (p = {result.pvalues[name]:.2g})", fontsize=9)
        ax.set_xlabel("fractional rank")
        if col == 0:
            ax.set_ylabel("ECDF difference")
        ax = axes[row + 1, col]
        edges = np.linspace(0, L + 1, bins + 1)
        ax.hist(result.ranks[name], bins=edges, color="C0", alpha=0.8)
        p = np.diff(np.ceil(edges)) / (L + 1)  # the share of the L + 1 ranks in each bin
        lo, hi = stats.binom.ppf(0.005, S, p), stats.binom.ppf(0.995, S, p)
        ax.fill_between(edges, np.append(lo, lo[-1]), np.append(hi, hi[-1]), step="post",
                        color="0.5", alpha=0.25,
                        label="99% if uniform")
        ax.set_xlabel(f"rank among {L} draws")
        if col == 0:
            ax.set_ylabel("simulations")
    for j in range(n, (nrow // 2) * ncol):
        axes[2 * (j // ncol), j % ncol].set_visible(False)
        axes[2 * (j // ncol) + 1, j % ncol].set_visible(False)
    axes[0, 0].legend(fontsize=7, loc="lower left")
    axes[1, 0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Simulation-based calibration: {S} simulations", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
