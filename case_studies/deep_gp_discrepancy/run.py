"""Predator-prey: a plain GP and a deep-GP discrepancy for a Lotka-Volterra model.

A Lotka-Volterra model is calibrated to synthetic prey and predator densities from a
Rosenzweig-MacArthur limit cycle (see model.py), with no discrepancy, with an additive GP
discrepancy in time, and with a deep-GP discrepancy (`probde.DeepGPDiscrepancy`) whose
inputs are time and the simulator's own output (`deep_gp`) or time only (`deep_gp_time`),
on 24 of 40 times; the other 16 are held out, 8 inside the training range
(interpolation) and the last 8 beyond it (extrapolation over most of a cycle). For each
variant it reports the wall time of the fit, on the held-out points (both species
together) the empirical coverage of the central 50% and 90% posterior predictive
intervals of new observations y and the mean log predictive density (lpd: the log of the
average over posterior draws of the Normal density of the held-out log value given
log `corrected` and the noise sd), on a fine grid the coverage of the *true* curves by the
90% band of the model's estimate of reality (`mu` without discrepancy, `corrected` with),
and the posterior of alpha and gamma against their true counterparts r and m.

    python case_studies/deep_gp_discrepancy/run.py --out results/deep_gp_discrepancy [--quick]

What to look at (comparison.csv, comparison.png); the numbers are those of the full run,
seed 0, on two shared CPU cores:

- `none`: the Lotka-Volterra fit follows the period of the cycle but not its shape, and
  its parameters are those of the wrong model: alpha about 1.08 [0.90, 1.28] and gamma
  0.51 [0.42, 0.60] (90% intervals) for true counterparts r = 2 and m = 1.2. The noise
  sd is pulled up from 0.1 to 0.17 to absorb the error, and since the error is only
  about 1.5 noise sd, held-out observations are covered about as often as they should be
  (expected 0.47 / 0.91 between training points). Yet the true curves lie inside the
  simulator's 90% band on only 39% of the grid within the data and 60% beyond.
- `gp`: the best log predictive density between training points (0.52 against 0.36 per
  value), the noise sd learned correctly (0.12), the true curves inside the band of
  `corrected` on 97% (within) and 100% (beyond) of the grid. alpha and gamma barely move:
  the GP absorbs the error without telling the rates apart. Beyond the data the
  discrepancy reverts to its prior, the band widens, the intervals over-cover (expected
  0.62 / 0.98) and the lpd (0.21) is below that of `none` (0.30).
- `deep_gp`, `deep_gp_time` (mean-field SVI): the deep GP corrects little. Its output
  variance shrinks to 0.005 (`deep_gp`) and 0.003 (`deep_gp_time`; prior mean 0.05, the
  GP's posterior 0.033) and the noise sd stays near that of `none` (0.17-0.18). On time
  alone the held-out scores are those of `none` (lpd 0.36 / 0.27); with the simulator's
  output as an input they are better (0.43 / 0.32, the best beyond the data) and the
  true curves are covered on 72% / 77% of the grid. The mean-field guide makes the
  posterior of alpha and gamma about ten times narrower than NUTS does under `none`.
  With a thousand weights each paying its own KL term, the ELBO prefers the prior to most
  of a correction of 1.5 noise sd: what the deep GP could do here is not measured by
  this fit, only what mean-field SVI makes of it.

Each coverage comes from 16 held-out values (8 times x 2 species), so each value moves it
by 0.06; the `_exp` columns give the coverage expected over the noise of the held-out
values (the truth is known), which is less noisy.

Writes idata_<variant>.nc and summary_<variant>.csv for every variant, comparison.csv and
comparison.png. `--quick` fits `none`, `gp` and `deep_gp` with fewer draws and steps.
"""

import pathlib
import sys
import time
import warnings

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import _common  # noqa: E402


# --8<-- [start:methods]
def methods(probde, quick: bool):
    """The inference method of each variant: NUTS where the parameters are few (`none`,
    and `gp`, whose GP is integrated out), SVI with a mean-field guide for the deep GPs
    (a thousand weights)."""
    steps = 75 if quick else 500
    # Chains and starts begin within 0.5 of the prior medians (model.natural): the flat
    # solution at equilibrium attracts starts from further away.
    nuts = probde.NUTS(num_chains=4, num_warmup=steps, num_samples=steps, target_accept=0.9,
                       init_radius=0.5)
    # learning_rate 0.01: at 0.05 three of seeds 0-4 (at 0.02 one) took a step out of the
    # good basin and ended with the noise sd at 0.42-0.48 and a loss 60-80 nats worse (SVI
    # warns: "ended at a worse loss than it had reached", and since 997946c returns its
    # best window instead, noise sd 0.18-0.19); at 0.01 none of seeds 0, 1, 3, 4.
    svi = probde.SVI(guide="normal", num_steps=1000 if quick else 4000, learning_rate=0.01,
                     num_particles=1, num_starts=4 if quick else 6,
                     start_steps=300 if quick else 400, num_draws=1000, init_radius=0.5)
    return {"none": nuts, "gp": nuts, "deep_gp": svi, "deep_gp_time": svi}
# --8<-- [end:methods]


def main():
    args = _common.parse_args(__doc__.splitlines()[0])
    _common.setup_jax(num_chains=4)
    import numpy as np
    import pandas as pd

    import probde

    sys.path.insert(0, str(HERE))
    from model import (COMPARABLE, EXTRAPOLATION_START, NOISE_SD, build_model, load_data,
                       reality, split, training_data, variants)

    method_of = methods(probde, args.quick)
    data = training_data()
    times, values = load_data()
    _, interp, extrap = split()
    held = interp | extrap
    grid = np.linspace(0.0, times[-1], 81 if args.quick else 161)
    results, rows = {}, []
    run = ("none", "gp", "deep_gp") if args.quick else variants()
    for variant in run:
        print(f"--- {variant} ---", flush=True)
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = probde.infer(build_model(variant), data, method_of[variant],
                                  seed=args.seed)
        for w in caught:
            print(f"warning: {w.message}")
        fitted = time.perf_counter()
        summary = result.summary()
        print(summary.to_string())
        summary.to_csv(args.out / f"summary_{variant}.csv")
        held_pred = result.predict(times[held], seed=args.seed, group="held_out")
        grid_pred = result.predict(grid, seed=args.seed)  # the `predictions` group
        print(f"inference {fitted - start:.0f} s, predictions {time.perf_counter() - fitted:.0f} s",
              flush=True)
        result.to_netcdf(args.out / f"idata_{variant}.nc")
        results[variant] = result
        row = {"variant": variant, "method": type(method_of[variant]).__name__,
               "wall_s": round(fitted - start, 1)}
        sigma = result.idata["posterior"]["sigma"].values.ravel()
        for part, sel in (("interp", interp[held]), ("extrap", extrap[held])):
            scores = held_out_scores(draws(held_pred["y"])[:, sel],
                                     draws(held_pred["corrected"])[:, sel], sigma,
                                     values[held][sel], reality(times[held][sel]), NOISE_SD)
            row.update({f"{part}_{k}": v for k, v in scores.items()})
        # coverage of the true curves by the 90% band of the estimate of reality
        truth = reality(grid)
        lo, hi = np.quantile(draws(grid_pred["corrected"]), [0.05, 0.95], axis=0)
        inside = (lo <= truth) & (truth <= hi)
        within = (grid >= times[0]) & (grid <= EXTRAPOLATION_START)
        row["truth_cov90_interp"] = float(inside[within].mean())
        row["truth_cov90_extrap"] = float(inside[grid > EXTRAPOLATION_START].mean())
        for name, true in COMPARABLE.items():
            x = result.idata["posterior"][name].values.ravel()
            q = np.quantile(x, [0.05, 0.95])
            row[f"{name}_mean"] = float(x.mean())
            row[f"{name}_5%"], row[f"{name}_95%"] = float(q[0]), float(q[1])
            row[f"{name}_covered"] = bool(q[0] <= true <= q[1])
        row["sigma_mean"] = float(sigma.mean())
        rows.append(row)
    table = pd.DataFrame(rows).set_index("variant")
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(f"true counterparts {COMPARABLE}; nominal coverage 0.50 / 0.90")
        print(table.T.to_string(float_format=lambda v: f"{v:.3g}"))
    table.to_csv(args.out / "comparison.csv")
    plot_comparison(results, times, values, interp, extrap, grid, reality,
                    args.out / "comparison.png")
    print(f"wrote {args.out / 'comparison.csv'}, {args.out / 'comparison.png'}")


def draws(da):
    """(chain, draw, time, observable) -> (draws, time, observable)."""
    return da.stack(s=("chain", "draw")).transpose("s", ...).values


# --8<-- [start:scores]
def held_out_scores(y, corrected, sigma, y_obs, truth, noise_sd):
    """Scores of the posterior predictive distribution at held-out times, on the log scale
    of the LogNormal noise, pooled over times and species.

    `y`, `corrected`: (draws, times, species) from `result.predict`; `sigma`: (draws,) noise
    sd; `y_obs`: the held-out values; `truth`, `noise_sd`: the true curves and noise sd.

    - `cov50`, `cov90`: fraction of held-out values inside the central 50% / 90% interval;
    - `cov50_exp`, `cov90_exp`: the same, expected over the noise of the held-out values
      (P(lo <= truth exp(noise) <= hi), known in a synthetic study);
    - `lpd`: mean over values of log (1/S) sum_s Normal(log y_obs | log corrected_s, sigma_s).
    """
    import numpy as np
    from scipy.special import logsumexp
    from scipy.stats import norm

    out = {}
    for level in (50, 90):
        lo, hi = np.quantile(y, [0.5 - level / 200, 0.5 + level / 200], axis=0)
        out[f"cov{level}"] = float(np.mean((lo <= y_obs) & (y_obs <= hi)))
        out[f"cov{level}_exp"] = float(np.mean(
            norm.cdf(np.log(hi), np.log(truth), noise_sd)
            - norm.cdf(np.log(lo), np.log(truth), noise_sd)))
    logp = norm.logpdf(np.log(y_obs)[None], np.log(corrected), sigma[:, None, None])
    out["lpd"] = float(np.mean(logsumexp(logp, axis=0) - np.log(logp.shape[0])))
    return out
# --8<-- [end:scores]


def plot_comparison(results, times, values, interp, extrap, grid, reality, path):
    """Prey (top) and predators (bottom), one column per variant, on a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    train = ~(interp | extrap)
    n = len(results)
    fig, axes = plt.subplots(2, n, figsize=(4.4 * n, 6.4), sharex=True, sharey="row",
                             squeeze=False)
    truth = reality(grid)
    for j, (variant, result) in enumerate(results.items()):
        pred = result.idata["predictions"]
        for i, species in enumerate(("prey", "predator")):
            ax = axes[i, j]
            bands = [("mu", "C1", "simulator")]
            if result.model.discrepancy is not None:
                bands.append(("corrected", "C2", "simulator + discrepancy"))
            for var, colour, label in bands:
                q = np.quantile(draws(pred[var])[..., i], [0.05, 0.5, 0.95], axis=0)
                ax.fill_between(grid, q[0], q[2], color=colour, alpha=0.25)
                ax.plot(grid, q[1], color=colour, lw=1.2, label=f"{label} (90%)")
            q = np.quantile(draws(pred["y"])[..., i], [0.05, 0.95], axis=0)
            ax.plot(grid, q[0], color="C0", lw=0.8, ls=":")
            ax.plot(grid, q[1], color="C0", lw=0.8, ls=":", label="new y (90%)")
            ax.plot(grid, truth[:, i], "k--", lw=1, label="truth")
            ax.plot(times[train], values[train, i], "ko", ms=3.5, label="training data")
            ax.plot(times[interp], values[interp, i], "o", mfc="none", mec="C3", ms=6,
                    mew=1.5, label="held out (interpolation)")
            ax.plot(times[extrap], values[extrap, i], "s", mfc="none", mec="C4", ms=6,
                    mew=1.5, label="held out (extrapolation)")
            ax.axvline(times[~extrap][-1] + 0.5, color="grey", lw=0.8, ls="--")
            ax.set_yscale("log")
            if j == 0:
                ax.set_ylabel(species)
        axes[0, j].set_title(variant)
        axes[1, j].set_xlabel("time")
    axes[0, 0].legend(fontsize="x-small", loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
