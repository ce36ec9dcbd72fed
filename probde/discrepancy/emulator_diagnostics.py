"""`EmulatorDiagnostics`: how well an emulator predicts the simulator runs held out of
its fit (errors, standardised errors, coverage of predictive intervals), as numbers, a
text table and a figure.
"""

from __future__ import annotations

import dataclasses
from statistics import NormalDist

import numpy as np

__all__ = ["COVERAGE_LEVELS", "EmulatorDiagnostics", "plot_diagnostics"]

# Nominal levels of the central predictive intervals whose held-out coverage is reported.
COVERAGE_LEVELS = (0.5, 0.9, 0.95)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class EmulatorDiagnostics:
    """How well the emulator predicts simulator runs it was not trained on.

    Computed at fit time from the runs held out (whole runs, all their times): the
    hyperparameters and the conditioning use only the other runs. Predictive intervals
    include the nugget (`noise`), so they are the intervals of a new simulator output.

    **Fields:**

    - `held_out_runs`: indices of the held-out runs in the design, shape `(m,)`.
    - `simulated`, `mean`, `sd`: simulator outputs, predictive means and predictive
      standard deviations at the held-out runs, each `(m, T, O)`, original units.
    - `rmse`: root-mean-square prediction error per observable `(O,)`, original units.
    - `mean_standardised_error`: mean of `(simulated - mean) / sd` per observable (about 0
      when the emulator is unbiased); `rms_standardised_error`: its root mean square (about
      1 when the predictive variances are right, above 1 when over-confident).
    - `coverage`: dict nominal level -> `(O,)` fraction of held-out points inside the
      central predictive interval of that level, for the levels 0.5, 0.9 and 0.95.

    !!! note
        Points of one run are strongly correlated, so the coverage is about as precise as
        a binomial proportion over the number of held-out *runs*, not points.
    """

    held_out_runs: np.ndarray
    simulated: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    observables: tuple[str, ...]

    @property
    def standardised_errors(self) -> np.ndarray:
        """`(simulated - mean) / sd`, shape `(m, T, O)`."""
        return (self.simulated - self.mean) / self.sd

    @property
    def rmse(self) -> np.ndarray:
        return np.sqrt(np.mean((self.simulated - self.mean) ** 2, axis=(0, 1)))

    @property
    def mean_standardised_error(self) -> np.ndarray:
        return np.mean(self.standardised_errors, axis=(0, 1))

    @property
    def rms_standardised_error(self) -> np.ndarray:
        return np.sqrt(np.mean(self.standardised_errors**2, axis=(0, 1)))

    @property
    def coverage(self) -> dict[float, np.ndarray]:
        z = np.abs(self.standardised_errors)
        return {
            level: np.mean(z <= NormalDist().inv_cdf(0.5 + level / 2), axis=(0, 1))
            for level in COVERAGE_LEVELS
        }

    def table(self) -> str:
        """The diagnostics as a text table, one row per observable."""
        cov = self.coverage
        head = f"{'observable':<12}{'RMSE':>12}{'mean z':>9}{'rms z':>8}" + "".join(
            f"{f'cov{round(100 * lv)}':>8}" for lv in COVERAGE_LEVELS
        )
        rows = [head]
        for o, name in enumerate(self.observables):
            row = (
                f"{name:<12}{self.rmse[o]:>12.4g}{self.mean_standardised_error[o]:>9.3f}"
                f"{self.rms_standardised_error[o]:>8.3f}"
            )
            rows.append(row + "".join(f"{cov[lv][o]:>8.3f}" for lv in COVERAGE_LEVELS))
        return "\n".join(rows)

    def __repr__(self):
        m, T, _ = self.simulated.shape
        return f"EmulatorDiagnostics({m} held-out runs x {T} times)\n{self.table()}"


def plot_diagnostics(d: EmulatorDiagnostics, path=None):
    """Held-out diagnostics `d` as a figure: predicted vs simulated with 95% error bars, one
    panel per observable, and empirical vs nominal coverage. Returns the matplotlib figure;
    saves it to `path` when given."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n_obs = len(d.observables)
    fig, axes = plt.subplots(1, n_obs + 1, figsize=(3.6 * (n_obs + 1), 3.4), squeeze=False)
    z95 = NormalDist().inv_cdf(0.975)
    for o, name in enumerate(d.observables):
        ax = axes[0, o]
        sim, mu, sd = (a[..., o].ravel() for a in (d.simulated, d.mean, d.sd))
        ax.errorbar(sim, mu, yerr=z95 * sd, fmt="o", ms=3, lw=0.8, alpha=0.8)
        lims = [min(sim.min(), mu.min()), max(sim.max(), mu.max())]
        ax.plot(lims, lims, "k--", lw=0.8)
        ax.set(xlabel="simulated", ylabel="emulator (95% interval)", title=name)
    ax = axes[0, n_obs]
    levels = np.asarray(COVERAGE_LEVELS)
    for o, name in enumerate(d.observables):
        ax.plot(levels, [d.coverage[lv][o] for lv in COVERAGE_LEVELS], "o-", label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(
        xlabel="nominal coverage",
        ylabel="held-out coverage",
        xlim=(0.4, 1.0),
        ylim=(0.0, 1.02),
        title="coverage",
    )
    ax.legend()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig
