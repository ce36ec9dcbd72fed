"""Theophylline: a hierarchical one-compartment model of 12 subjects, and a once-daily regimen.

Serum theophylline of 12 subjects after one oral dose (mg/kg) at time 0, 11 samples each
(Boeckmann, Sheiner & Beal 1994; R's `Theoph`). Each subject has its own absorption rate
and clearance, drawn from log-normal populations whose means and spreads are inferred with
the shared elimination rate and the noise sd (model.py). NUTS, 4 chains x (1000 + 1000),
started around the posterior mode (`init="map"`: see `main`).

The posterior is compared with the published maximum-likelihood fit of the same model by
`nlme` (Pinheiro & Bates 2000, the `Theoph` example: fixed effects lKe, lKa, lCl,
independent random effects on lKa and lCl). The second part answers a clinician's
question: what does a once-daily regimen of 4 mg/kg for a week give, for an observed
subject and for a new subject of the population?

    python case_studies/theophylline/run.py --out results/theophylline [--quick]

Writes idata.nc, summary.csv, comparison.csv (posterior against nlme), fit.png (one
panel per subject: data, model curve with its credible band and the predictive band on a
fine grid), population.png (per-subject intervals with the population distribution),
regimen.png and regimen.csv (the regimen's predicted concentrations: median and 90%
intervals, with the troughs and peaks of the last day). `--quick`: 2 chains x (300 + 300).
"""

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import _common  # noqa: E402

# nlme's estimates for this model (Pinheiro & Bates 2000, ch. 8, Theoph: fixed effects and
# the standard deviations of the random effects and of the residual; quoted, not re-run)
NLME = {"lKe": -2.4546, "mu_lKa": 0.4659, "mu_lCl": -3.2272,
        "tau_lKa": 0.6407, "tau_lCl": 0.1679, "sigma": 0.7060}
# --8<-- [start:regimen]
DAILY_DOSE = 4.0  # mg/kg by mouth, once a day for a week
REGIMEN_DAYS = 7
# --8<-- [end:regimen]


def regimen(probde):
    """Doses into the gut at 0, 24, ..., 144 h; the initial state is empty (input 0)."""
    return [probde.Dose(time=24.0 * day, amount=DAILY_DOSE, state="gut")
            for day in range(REGIMEN_DAYS)]


def main():
    args = _common.parse_args(__doc__.splitlines()[0])
    num_chains = 2 if args.quick else 4
    _common.setup_jax(num_chains)
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np

    import probde

    sys.path.insert(0, str(HERE))
    from model import build_model

    data = probde.datasets.theophylline()
    steps = 300 if args.quick else 1000
    # --8<-- [start:method]
    # The oral one-compartment model has a "flip-flop" mode: absorption slower than
    # elimination (ka < ke) fits the curves almost as well. Here it is about 60 nats below
    # the main mode (negligible mass), but a chain started uniformly at random can fall into
    # it and stay (R-hat then flags it). init="map" runs one mode search per chain and
    # starts every chain around the best mode found.
    method = probde.NUTS(num_chains=num_chains, num_warmup=steps, num_samples=steps,
                         init="map")
    # --8<-- [end:method]
    result = probde.infer(build_model(), data, method, seed=args.seed)
    # model curves on a fine grid for the fit plot
    result.predict(np.linspace(0.0, 25.0, 126))
    _common.write_outputs(result, args.out)
    result.plot_population(args.out / "population.png")

    compare_with_nlme(result, args.out)
    predict_regimen(result, args.out)


def compare_with_nlme(result, out):
    """comparison.csv: posterior mean and sd against nlme's estimates."""
    import pandas as pd

    summary = result.summary()
    rows = []
    for name, value in NLME.items():
        row = summary.loc[name]
        rows.append({"parameter": name, "posterior_mean": row["mean"], "posterior_sd": row["sd"],
                     "nlme": value, "difference_in_sd": (row["mean"] - value) / row["sd"]})
    comparison = pd.DataFrame(rows).set_index("parameter")
    print("\nPosterior against nlme (Pinheiro & Bates 2000):")
    print(comparison.round(3).to_string())
    comparison.to_csv(out / "comparison.csv")


def predict_regimen(result, out):
    """regimen.png and regimen.csv: the once-daily regimen for subject 1 and a new subject
    (`result` needs its model and data: a fitted result, or `probde.load(path,
    model=build_model(), data=probde.datasets.theophylline())`)."""
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    import probde

    # --8<-- [start:predict]
    week = np.linspace(0.0, 24.0 * REGIMEN_DAYS, 24 * REGIMEN_DAYS * 4 + 1)
    doses = regimen(probde)
    no_initial_dose = {"dose_mg_per_kg": 0.0}
    prediction = result.predict(week, group="regimen", experiments=[
        {"name": "1", "inputs": no_initial_dose, "doses": doses},  # an observed subject
        {"name": "new subject", "inputs": no_initial_dose, "doses": doses},
    ])
    # --8<-- [end:predict]
    mu = prediction["mu"].sel(observable="conc")
    draws = mu.stack(sample=("chain", "draw"))
    quantiles = draws.quantile([0.05, 0.5, 0.95], dim="sample")
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, exp in enumerate(mu["experiment"].values):
        q = quantiles.sel(experiment=exp)
        who = f"subject {exp}" if exp != "new subject" else "a new subject"
        ax.fill_between(week, q.sel(quantile=0.05), q.sel(quantile=0.95), alpha=0.25,
                        color=f"C{i}", label=f"{who}: 90% interval")
        ax.plot(week, q.sel(quantile=0.5), color=f"C{i}", label=f"{who}: median")
    ax.axhspan(10, 20, color="0.9", zorder=-1, label="usual target range 10-20 mg/L")
    ax.set_xlabel("time (h)")
    ax.set_ylabel("theophylline (mg/L)")
    ax.set_title(f"{DAILY_DOSE:g} mg/kg once a day: predicted concentration (noise-free)")
    ax.legend(fontsize=8, ncols=2)
    fig.tight_layout()
    fig.savefig(out / "regimen.png", dpi=120)

    last_day = (week >= 24.0 * (REGIMEN_DAYS - 1)) & (week <= 24.0 * REGIMEN_DAYS)
    day = draws.isel(time=np.nonzero(last_day)[0])
    table = []
    for exp in mu["experiment"].values:
        peak = day.sel(experiment=exp).max("time")
        trough = day.sel(experiment=exp).isel(time=-1)
        in_range = ((day.sel(experiment=exp) >= 10) & (day.sel(experiment=exp) <= 20)).mean()
        for label, v in (("peak", peak), ("trough", trough)):
            q = np.quantile(v.values, [0.05, 0.5, 0.95])
            table.append({"subject": exp, "last day": label, "median": q[1], "q05": q[0],
                          "q95": q[2]})
        table.append({"subject": exp, "last day": "fraction of time in 10-20 mg/L",
                      "median": float(in_range), "q05": np.nan, "q95": np.nan})
    regimen_table = pd.DataFrame(table)
    print(f"\nOnce-daily {DAILY_DOSE:g} mg/kg, day {REGIMEN_DAYS} (mg/L):")
    print(regimen_table.round(2).to_string(index=False))
    regimen_table.to_csv(out / "regimen.csv", index=False)
    print(f"wrote {out / 'population.png'}, {out / 'regimen.png'}, "
          f"{out / 'comparison.csv'}, {out / 'regimen.csv'}")




if __name__ == "__main__":
    main()
