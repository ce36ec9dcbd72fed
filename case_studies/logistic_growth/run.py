"""Logistic growth: a GP discrepancy restores the coverage of held-out predictions.

A logistic model is calibrated to synthetic counts of a theta-logistic population (see
model.py), with no discrepancy and with a Kennedy-O'Hagan GP discrepancy, on 13 of 25
points; the other 12 are held out, 7 inside the training range (interpolation) and the last
5 beyond it (extrapolation of the plateau). For each variant it reports, on the held-out
points, the empirical coverage of the central 50% and 90% posterior predictive intervals of
new observations y, the mean log predictive density (lpd: the log of the average over
posterior draws of the Normal density of the held-out value given `corrected` and the
noise sd), and on a fine grid the coverage of the *true* curve by the 90% band of the
model's estimate of reality (`mu` without discrepancy, `corrected = mu + delta` with), as
well as the posterior of r and K against their true values.

    python case_studies/logistic_growth/run.py --out results/logistic_growth [--quick]

What to look at (comparison.csv, comparison.png):

- `none`: the logistic fit is confidently wrong. r is about 0.8 with a narrow posterior
  (truth 0.5) and K overshoots 100; the true curve lies outside the simulator's 90% band
  about half the time within the data and always beyond it. Held-out observations are
  under-covered, mildly between training points (the noise sd is pulled up to absorb part
  of the error) and badly on the plateau, which the fit overshoots.
- `none_wide_noise`: with a vague noise prior the noise sd is inflated (about 3.7 for a
  true 2) and the 90% intervals of interpolated points over-cover: too wide where the model
  is right, too narrow where it is wrong. The lpd is the worst of all variants.
- `gp`: the coverage of interpolated points is close to nominal, the lpd is better by
  about 0.45 per point and the band of `corrected` covers the true curve. K is covered but
  r is not: the discrepancy and r are confounded, and the GP prior prefers a small, smooth
  discrepancy (Brynjarsdottir & O'Hagan 2014). Beyond the data (extrapolation) the
  discrepancy reverts to its prior over about a lengthscale: the band widens and the
  intervals over-cover. A discrepancy learned from data says little where there are none;
  the gain in lpd there is a quarter of the gain between data points.
- `markov_gp` (where available): the same GP in state-space form, the same numbers.

Each coverage comes from 7 (interpolation) or 5 (extrapolation) held-out points, so each
point moves it by 0.14 or 0.2; the `_exp` columns give the coverage expected over the noise
of the held-out values (the truth is known), which is less noisy.

Writes idata.nc / summary.csv / fit.png for the GP model, idata_<variant>.nc for every
variant, comparison.csv and comparison.png. `--quick` (200 + 200 draws per chain) fits the
variants `none` and `gp` only.
"""

import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import _common  # noqa: E402


def main():
    args = _common.parse_args(__doc__.splitlines()[0])
    _common.setup_jax(num_chains=4)
    import numpy as np
    import pandas as pd

    import probde

    sys.path.insert(0, str(HERE))
    from model import (EXTRAPOLATION_START, K_TRUE, NOISE_SD, R_TRUE, build_model,
                       load_data, reality, split, training_data, variants)

    steps = 200 if args.quick else 1000
    method = probde.NUTS(num_chains=4, num_warmup=steps, num_samples=steps, target_accept=0.9)
    data = training_data()
    times, values = load_data()
    _, interp, extrap = split()
    held = interp | extrap
    grid = np.linspace(0.0, times[-1], 51 if args.quick else 101)
    results, rows = {}, []
    # the smoke run (--quick) fits the two main variants only
    for variant in ("none", "gp") if args.quick else variants():
        print(f"--- {variant} ---", flush=True)
        start = time.perf_counter()
        result = probde.infer(build_model(variant), data, method, seed=args.seed)
        fitted = time.perf_counter()
        print(result.summary().to_string())
        held_pred = result.predict(times[held], seed=args.seed, group="held_out")
        grid_pred = result.predict(grid, seed=args.seed)  # the `predictions` group
        print(f"inference {fitted - start:.0f} s, predictions {time.perf_counter() - fitted:.0f} s",
              flush=True)
        result.to_netcdf(args.out / f"idata_{variant}.nc")
        results[variant] = result
        row = {"variant": variant}
        sigma = result.idata["posterior"]["sigma"].values.ravel()
        for part, sel in (("interp", interp[held]), ("extrap", extrap[held])):
            scores = held_out_scores(draws(held_pred["y"])[:, sel],
                                     draws(held_pred["corrected"])[:, sel], sigma,
                                     values[held][sel], reality(times[held][sel]), NOISE_SD)
            row.update({f"{part}_{k}": v for k, v in scores.items()})
        # coverage of the true curve by the 90% band of the estimate of reality
        truth = reality(grid)
        lo, hi = np.quantile(draws(grid_pred["corrected"]), [0.05, 0.95], axis=0)
        inside = (lo <= truth) & (truth <= hi)
        within = (grid >= times[0]) & (grid <= EXTRAPOLATION_START)
        row["truth_cov90_interp"] = float(inside[within].mean())
        row["truth_cov90_extrap"] = float(inside[grid > EXTRAPOLATION_START].mean())
        for name, true in (("r", R_TRUE), ("K", K_TRUE)):
            x = result.idata["posterior"][name].values.ravel()
            q = np.quantile(x, [0.05, 0.95])
            row[f"{name}_mean"] = float(x.mean())
            row[f"{name}_5%"], row[f"{name}_95%"] = float(q[0]), float(q[1])
            row[f"{name}_covered"] = bool(q[0] <= true <= q[1])
        row["sigma_mean"] = float(sigma.mean())
        rows.append(row)
    table = pd.DataFrame(rows).set_index("variant")
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(f"true r = {R_TRUE}, K = {K_TRUE}; nominal coverage 0.50 / 0.90")
        print(table.T.to_string(float_format=lambda v: f"{v:.3g}"))
    table.to_csv(args.out / "comparison.csv")

    main_result = results["gp"]
    _common.write_outputs(main_result, args.out,
                          plot=lambda r, path: plot_fit(r, times, values, held, reality, path))
    plot_comparison(results, times, values, interp, extrap, grid, reality,
                    args.out / "comparison.png")
    print(f"wrote {args.out / 'comparison.csv'}, {args.out / 'comparison.png'}")


def draws(da):
    """(chain, draw, time, observable) -> (draws, time) for the one observable."""
    return da.stack(s=("chain", "draw")).transpose("s", ...).values[..., 0]


# --8<-- [start:scores]
def held_out_scores(y, corrected, sigma, y_obs, truth, noise_sd):
    """Scores of the posterior predictive distribution at held-out times.

    `y`, `corrected`: (draws, times) from `result.predict`; `sigma`: (draws,) noise sd;
    `y_obs`: the held-out values; `truth`, `noise_sd`: the true curve and noise there.

    - `cov50`, `cov90`: fraction of held-out values inside the central 50% / 90% interval;
    - `cov50_exp`, `cov90_exp`: the same, expected over the noise of the held-out values
      (P(lo <= truth + noise <= hi), known in a synthetic study): less noisy than the
      fraction of a handful of points;
    - `lpd`: mean over points of log (1/S) sum_s Normal(y_obs | corrected_s, sigma_s).
    """
    import numpy as np
    from scipy.special import logsumexp
    from scipy.stats import norm

    out = {}
    for level in (50, 90):
        lo, hi = np.quantile(y, [0.5 - level / 200, 0.5 + level / 200], axis=0)
        out[f"cov{level}"] = float(np.mean((lo <= y_obs) & (y_obs <= hi)))
        out[f"cov{level}_exp"] = float(np.mean(norm.cdf(hi, truth, noise_sd)
                                               - norm.cdf(lo, truth, noise_sd)))
    logp = norm.logpdf(y_obs[None, :], corrected, sigma[:, None])
    out["lpd"] = float(np.mean(logsumexp(logp, axis=0) - np.log(logp.shape[0])))
    return out
# --8<-- [end:scores]


def plot_fit(result, times, values, held, reality, path):
    """`result.plot_discrepancy()` with the held-out points and the truth added."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np

    fig = result.plot_discrepancy()
    top = fig.axes[0]
    grid = result.idata["predictions"]["time"].values
    top.plot(grid, reality(grid), "k--", lw=1, label="truth (theta-logistic)")
    top.plot(times[held], values[held], "o", mfc="none", mec="k", ms=5, label="held out")
    top.legend(fontsize="small")
    bottom = fig.axes[1]
    mu = np.median(draws(result.idata["predictions"]["mu"]), axis=0)
    bottom.plot(grid, reality(grid) - mu, "k--", lw=1,
                label="truth - median simulator")
    bottom.legend(fontsize="small")
    fig.savefig(path, dpi=120)


def plot_comparison(results, times, values, interp, extrap, grid, reality, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    train = ~(interp | extrap)
    n = len(results)
    fig, axes = plt.subplots(2, n, figsize=(4.6 * n, 6.4), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [2, 1]})
    truth = reality(grid)
    for j, (variant, result) in enumerate(results.items()):
        pred = result.idata["predictions"]
        top, bottom = axes[0, j], axes[1, j]
        for ax, offset in ((top, 0.0), (bottom, truth)):
            bands = [("mu", "C1", "simulator")]
            if result.model.discrepancy is not None:
                bands.append(("corrected", "C2", "simulator + discrepancy"))
            for var, colour, label in bands:
                q = np.quantile(draws(pred[var]), [0.05, 0.5, 0.95], axis=0) - offset
                ax.fill_between(grid, q[0], q[2], color=colour, alpha=0.25)
                ax.plot(grid, q[1], color=colour, lw=1.3, label=f"{label} (90%)")
            q = np.quantile(draws(pred["y"]), [0.05, 0.95], axis=0) - offset
            ax.plot(grid, q[0], color="C0", lw=0.8, ls=":")
            ax.plot(grid, q[1], color="C0", lw=0.8, ls=":", label="new y (90%)")
            off = 0.0 if np.ndim(offset) == 0 else reality(times)
            ax.plot(times[train], (values - off)[train], "ko", ms=4, label="training data")
            ax.plot(times[interp], (values - off)[interp], "o", mfc="none", mec="C3", ms=6,
                    mew=1.5, label="held out (interpolation)")
            ax.plot(times[extrap], (values - off)[extrap], "s", mfc="none", mec="C4", ms=6,
                    mew=1.5, label="held out (extrapolation)")
            ax.axvline(times[~extrap][-1] + 0.25, color="grey", lw=0.8, ls="--")
        top.plot(grid, truth, "k--", lw=1, label="truth")
        bottom.axhline(0.0, color="k", ls="--", lw=1)
        top.set_title(variant)
        bottom.set_xlabel("time (days)")
        bottom.set_ylim(-12, 12)
    axes[0, 0].set_ylabel("N")
    axes[1, 0].set_ylabel("minus the truth")
    axes[0, 0].legend(fontsize="x-small", loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
