"""Simple machine: why a GP discrepancy, and a constrained one, recovers the physics.

Reproduces the example of Brynjarsdottir & O'Hagan (2014), "Learning about physical
parameters: the importance of model discrepancy", Inverse Problems 30: a simulator without
friction fitted to a machine with friction, with no discrepancy, with a GP discrepancy, and
with a GP discrepancy constrained by delta(0) = 0 and delta'(0) = 0; and the constrained
model again with the simulator replaced by a GP emulator trained on 12 runs.

    python case_studies/simple_machine/run.py --out results/simple_machine [--quick]

Writes idata.nc / summary.csv / fit.png for the constrained model, idata_<variant>.nc for
all three, comparison.csv (theta, LOO) and comparison.png.
"""

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import _common  # noqa: E402


def main():
    args = _common.parse_args(__doc__.splitlines()[0])
    _common.setup_jax(num_chains=4)
    import arviz as az
    import numpy as np
    import pandas as pd

    import probde

    sys.path.insert(0, str(HERE))
    from model import THETA_TRUE, VARIANTS, build_model, load_data, reality

    steps = 200 if args.quick else 1000
    method = probde.NUTS(num_chains=4, num_warmup=steps, num_samples=steps, target_accept=0.95)
    data = load_data()
    grid = np.linspace(0.0, 4.0, 41)
    results, rows = {}, []
    for variant in VARIANTS:
        print(f"--- {variant} ---")
        model = build_model(variant)
        if model.emulator is not None:
            print(model.emulator.summary())
            model.emulator.plot_diagnostics(args.out / "emulator.png")
        result = probde.infer(model, data, method, seed=args.seed)
        result.predict(grid)
        result.to_netcdf(args.out / f"idata_{variant}.nc")
        results[variant] = result
        theta = result.idata["posterior"]["theta"]
        lo, hi = np.quantile(theta.values, [0.05, 0.95])
        loo = az.loo(result.idata)
        rows.append({"variant": variant, "theta_mean": float(theta.mean()),
                     "theta_sd": float(theta.std()), "theta_5%": lo, "theta_95%": hi,
                     "covers_0.65": bool(lo <= THETA_TRUE <= hi), "elpd_loo": loo.elpd,
                     "elpd_loo_se": loo.se})
        print(result.summary().to_string())
    table = pd.DataFrame(rows).set_index("variant")
    print(table.to_string())
    table.to_csv(args.out / "comparison.csv")
    main_result = results["constrained"]
    _common.write_outputs(main_result, args.out, plot=lambda r, path: r.plot_discrepancy(path))
    plot_comparison(results, data, reality, THETA_TRUE, args.out / "comparison.png")
    print(f"wrote {args.out / 'comparison.csv'}, {args.out / 'comparison.png'}")


def plot_comparison(results, data, reality, theta_true, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (variant, result) in enumerate(results.items()):
        theta = result.idata["posterior"]["theta"].values.ravel()
        left.hist(theta, bins=60, range=(0.3, 0.8), density=True, alpha=0.5, color=f"C{i}",
                  label=variant)
        pred = result.idata["predictions"]
        x = pred["time"].values
        # The simulator at the posterior theta: what each variant learned about the physics.
        eta = pred["mu"].stack(s=("chain", "draw")).transpose("s", ...).values[..., 0]
        q = np.quantile(eta, [0.05, 0.5, 0.95], axis=0)
        right.fill_between(x, q[0], q[2], color=f"C{i}", alpha=0.2)
        right.plot(x, q[1], color=f"C{i}", label=f"{variant}: simulator theta x")
    left.axvline(theta_true, color="k", ls="--", label="true theta")
    left.set_xlabel("theta")
    left.set_ylabel("posterior density")
    left.legend(fontsize="small")
    x = np.linspace(0.0, 4.0, 200)
    right.plot(x, reality(x), "k--", lw=1, label="reality zeta(x)")
    right.plot(x, theta_true * x, "k:", lw=1, label="true physics 0.65 x")
    right.set_title("simulator at the posterior theta (90% bands)", fontsize="medium")
    right.plot(data.times, data.values[:, 0], "ko", ms=4, label="data")
    right.set_xlabel("x")
    right.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
