"""Stochastic FitzHugh–Nagumo: EKF, UKF and particle filter against an ODE fit.

A stochastic FitzHugh–Nagumo neuron (see model.py) is observed through its voltage v only,
with noise, at 60 irregular times (3 values missing). The parameters (a, b, eps), the
process-noise scales (s_v, s_w) and the observation noise sd are inferred four ways:

- `ekf`: the SDE, latent path integrated out by the continuous-discrete extended Kalman
  filter (`probde.EKF()`), sampled by NUTS;
- `ukf`: the same with the unscented (cubature) filter (`probde.UKF()`), NUTS;
- `pf`: the same with a bootstrap particle filter (`probde.ParticleFilter`), whose random
  likelihood estimate needs pseudo-marginal random-walk Metropolis
  (`probde.RandomWalkMetropolis`); the number of particles is checked first: the standard
  deviation of the log-likelihood estimate at the true parameters over 20 seeds is printed;
- `ode`: the drift alone as an ODE (no process noise), initial state inferred, NUTS.

    python case_studies/fitzhugh_nagumo/run.py --out results/fitzhugh_nagumo [--quick]

Writes idata.nc / summary.csv / fit.png for the EKF model, idata_<method>.nc for every
method, comparison.csv (per method and parameter: posterior mean, sd, 90% interval, truth,
R-hat, bulk ESS, wall time of the whole `probde.infer` call, ESS per second; per method
the coverage of the true latent path by the 90% state bands and elpd_loo), comparison.png
(posterior intervals against the truth) and states.png (data, latent v and the unobserved
w with 90% bands against the true path). `--quick` fits `ekf` and `ode` only, 2 chains of 100
+ 100 iterations (3 to 5 minutes on two cores).
"""

import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import _common  # noqa: E402

METHOD_LABELS = {
    "ekf": "EKF + NUTS",
    "ukf": "UKF + NUTS",
    "pf": "particle filter + RWM",
    "ode": "ODE (no process noise) + NUTS",
}
# --8<-- [start:settings]
NUM_PARTICLES = 300  # log-likelihood estimate's sd about 1.7 at the truth (printed)
PF_STEPS = 20  # Euler–Maruyama steps between consecutive observations (dt < 0.09)
# --8<-- [end:settings]


def main():
    args = _common.parse_args(__doc__.splitlines()[0])
    _common.setup_jax(num_chains=4)
    import arviz as az
    import jax
    import jax.numpy as jnp
    import numpy as np
    import pandas as pd

    import probde

    sys.path.insert(0, str(HERE))
    from model import TRUE, build_model, build_ode_model, load_data, simulate_truth

    data = load_data()
    grid, path, times, values = simulate_truth()
    print(f"{data}; true path recorded at {grid.size} times")

    if args.quick:
        nuts = probde.NUTS(num_chains=2, num_warmup=100, num_samples=100)
        runs = {"ekf": (build_model(probde.EKF()), nuts),
                "ode": (build_ode_model(), nuts)}
    else:
        pf = probde.ParticleFilter(num_particles=NUM_PARTICLES, num_steps=PF_STEPS)
        report_particle_noise(build_model, data, TRUE, probde, jnp)
        nuts = probde.NUTS(num_chains=4, num_warmup=300, num_samples=300)
        # --8<-- [start:rwm]
        rwm = probde.RandomWalkMetropolis(num_chains=4, num_warmup=1000, num_samples=1000,
                                          target_accept=0.1)
        # --8<-- [end:rwm]
        runs = {"ekf": (build_model(probde.EKF()), nuts),
                "ukf": (build_model(probde.UKF()), nuts),
                "pf": (build_model(pf), rwm),
                "ode": (build_ode_model(), nuts)}

    results, rows, extra = {}, [], []
    for name, (model, method) in runs.items():
        print(f"--- {name}: {METHOD_LABELS[name]} ---", flush=True)
        start = time.perf_counter()
        result = probde.infer(model, data, method, seed=args.seed)
        wall = time.perf_counter() - start
        print(result.summary().to_string())
        stats = result.idata["sample_stats"]
        print(f"wall time {wall:.0f} s; mean acceptance {float(stats['acceptance_rate'].mean()):.2f}; "
              f"divergences {int(stats['diverging'].sum())}; "
              f"rejected proposals {result.solver_failures}", flush=True)
        result.to_netcdf(args.out / f"idata_{name}.nc")
        results[name] = result
        rows += parameter_rows(name, result, TRUE, wall)
        extra.append(method_row(name, result, grid, path, times, wall, az, np))

    table = pd.DataFrame(rows).set_index(["method", "parameter"])
    per_method = pd.DataFrame(extra).set_index("method")
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(table.to_string(float_format=lambda v: f"{v:.3g}"))
        print(per_method.to_string(float_format=lambda v: f"{v:.3g}"))
    table.join(per_method, on="method").to_csv(args.out / "comparison.csv")

    _common.write_outputs(results["ekf"], args.out)
    plot_comparison(table, TRUE, args.out / "comparison.png")
    plot_states(results, grid, path, times, values, args.out / "states.png")
    print(f"wrote {args.out / 'comparison.csv'}, {args.out / 'comparison.png'}, "
          f"{args.out / 'states.png'}")


# --8<-- [start:particles]
def report_particle_noise(build_model, data, truth, probde, jnp, num_seeds=20):
    """The sd of the particle filter's log-likelihood estimate at the true parameters, over
    `num_seeds` seeds, for a few particle numbers (pseudo-marginal MCMC mixes well when it
    is about 1-2 near the posterior mode: Doucet et al. 2015)."""
    params = {k: jnp.asarray(v) for k, v in truth.items()}
    for n in (NUM_PARTICLES // 2, NUM_PARTICLES, 2 * NUM_PARTICLES):
        pf = probde.ParticleFilter(num_particles=n, num_steps=PF_STEPS)
        check = pf.check_noise(build_model(pf), data, params, num_seeds=num_seeds, seed=2015)
        print(f"particle filter, {n} particles: log-likelihood at the truth "
              f"{check.log_lik.mean():.2f} +- {check.sd:.2f} (sd over {num_seeds} seeds; "
              f"{check.particles_for(1.2)} particles for an sd of 1.2)")
    ekf = float(probde.log_likelihood(build_model(probde.EKF()), data, params))
    ukf = float(probde.log_likelihood(build_model(probde.UKF()), data, params))
    print(f"EKF log-likelihood at the truth {ekf:.2f}, UKF {ukf:.2f}", flush=True)
# --8<-- [end:particles]


def parameter_rows(name, result, truth, wall):
    """One row per parameter: posterior mean, sd, 90% interval, truth, R-hat, ESS, ESS/s."""
    from model import parameter_summary

    summary = parameter_summary(result.idata["posterior"], truth, wall)
    return [{"method": name, "parameter": par, **row} for par, row in summary.items()]


def state_bands(result, times, np, interval=0.9):
    """`(lo, median, hi)`, each `(T, S)`, of the latent states at the data times.

    EKF / UKF: the posterior predictive `trajectory`, one draw per posterior draw from the
    smoothed marginals (x(t_k) | all data). Particle filter: there is no smoother; the
    `filtered_states` moments (x(t_k) | data up to t_k) are sampled the same way. ODE: the
    solution of each posterior draw (no process noise: the state given theta and x0).
    """
    idata = result.idata
    model = result.model
    if model.sde is not None and "smoothed_states" not in idata.children:
        g = idata["filtered_states"]
        mean = g["mean"].stack(s=("chain", "draw")).transpose("s", ...).values
        cov = g["cov"].stack(s=("chain", "draw")).transpose("s", ...).values
        sd = np.sqrt(np.clip(np.diagonal(cov, axis1=-2, axis2=-1), 0.0, None))
        draws = mean + sd * np.random.default_rng(0).standard_normal(mean.shape)
    else:
        traj = idata["posterior_predictive"]["trajectory"]
        draws = traj.stack(s=("chain", "draw")).transpose("s", ...).values
    lo, hi = (1 - interval) / 2, 1 - (1 - interval) / 2
    return np.nanquantile(draws, [lo, 0.5, hi], axis=0)


def method_row(name, result, grid, path, times, wall, az, np):
    """Per method: wall time, coverage of the true states by the 90% bands at the data
    times, RMSE of the band's median, elpd_loo (where a log_likelihood group exists)."""
    q = state_bands(result, times, np)
    true = path[np.searchsorted(grid, times)]
    inside = (q[0] <= true) & (true <= q[2])
    rmse = np.sqrt(np.mean((q[1] - true) ** 2, axis=0))
    row = {"method": name, "wall_s": wall,
           "cover90_v": float(inside[:, 0].mean()), "cover90_w": float(inside[:, 1].mean()),
           "rmse_v": float(rmse[0]), "rmse_w": float(rmse[1]),
           "elpd_loo": np.nan, "elpd_loo_se": np.nan}
    if "log_likelihood" in result.idata.children:
        loo = az.loo(result.idata)
        row["elpd_loo"], row["elpd_loo_se"] = float(loo.elpd), float(loo.se)
    stats = result.idata["sample_stats"]
    row["acceptance"] = float(stats["acceptance_rate"].mean())
    row["divergences"] = int(stats["diverging"].sum())
    return row


def plot_comparison(table, truth, path):
    """One panel per parameter: each method's 90% interval and mean, the truth dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(table.index.get_level_values("method")))
    pars = list(truth)
    fig, axes = plt.subplots(1, len(pars), figsize=(2.6 * len(pars), 0.45 * len(methods) + 1.6),
                             sharey=True)
    for ax, par in zip(axes, pars):
        for i, m in enumerate(methods):
            if (m, par) not in table.index:
                ax.text(0.5, i, "not in model", transform=ax.get_yaxis_transform(),
                        ha="center", va="center", fontsize="x-small", color="grey")
                continue
            r = table.loc[(m, par)]
            ax.plot([r["q5"], r["q95"]], [i, i], color=f"C{i}", lw=2.5)
            ax.plot(r["mean"], i, "o", color=f"C{i}", ms=5)
        ax.axvline(truth[par], color="k", ls="--", lw=1)
        ax.set_title(par)
    axes[0].set_yticks(range(len(methods)), [METHOD_LABELS[m] for m in methods])
    axes[0].set_ylim(len(methods) - 0.5, -0.5)
    fig.suptitle("posterior mean and 90% interval; dashed: truth", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_states(results, grid, path, times, values, out):
    """Rows: methods; columns: v (observed) and w (never observed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(results)
    fig, axes = plt.subplots(n, 2, figsize=(12, 2.3 * n + 0.6), sharex=True, squeeze=False)
    for i, (name, result) in enumerate(results.items()):
        q = state_bands(result, times, np)
        sde = result.model.sde is not None
        kind = ("smoothed" if "smoothed_states" in result.idata.children else "filtered") \
            if sde else "ODE solution"
        for j, state in enumerate(("v", "w")):
            ax = axes[i, j]
            ax.plot(grid, path[:, j], color="k", lw=0.8, label="true path")
            ax.fill_between(times, q[0][:, j], q[2][:, j], color=f"C{i}", alpha=0.3,
                            label=f"90% band ({kind})")
            ax.plot(times, q[1][:, j], color=f"C{i}", lw=1.2)
            if j == 0:
                ax.plot(times, values, "o", color="k", ms=3, mfc="none", label="data")
                ax.set_ylabel(METHOD_LABELS[name], fontsize="small")
            ax.legend(fontsize="x-small", loc="upper right", ncol=3)
        axes[0, 0].set_title("v (observed)")
        axes[0, 1].set_title("w (not observed)")
    for ax in axes[-1]:
        ax.set_xlabel("time")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
