"""Lynx-hare benchmark: probde.SVI (full-rank guide, several starts) against probde.NUTS.

    python benchmarks/svi_lynx_hare.py [--repeats 3] [--seed 0] [--quick]
                                       [--out benchmarks/results_svi_lynx_hare.json]

The problem is the lynx-hare Lotka-Volterra calibration of `case_studies/lynx_hare/model.py`
(`build_model()`, data `probde.datasets.lynx_hare()`, as `case_studies/lynx_hare/run.py`
loads them). Each repeat, with seed `--seed + r`, fits it twice with `probde.infer`:

- **NUTS**: `probde.NUTS(num_chains=4, num_warmup=1000, num_samples=1000)`;
- **SVI**: `probde.SVI(**SVI_OPTIONS)` with `SVI_OPTIONS` of `case_studies/_common.py`
  (full-rank Gaussian guide started at the Laplace approximation of the best of 8 mode
  searches, default 5000 steps, 4000 draws);
- **SVI, prior start**: the settings this benchmark used before the Laplace start
  (`PRIOR_START_OPTIONS`: `init="prior"`, 8 starts of 1500 steps, 10000 steps in all,
  learning rate 0.1, 4000 draws), for comparison.

Both in float64 with one host device per chain (`numpyro.set_host_device_count(4)` through
`case_studies/_common.setup_jax`, before JAX starts) and `OPENBLAS_NUM_THREADS=1`.

What is measured per run
------------------------

- **wall time** of the whole `probde.infer` call (tracing and compiling, the fit or the
  sampling, and probde's post-processing: posterior predictive, pointwise log-likelihood,
  500 prior draws, the DataTree);
- **posterior mean and sd** of alpha, beta, gamma, delta, sigma (hare, lynx) and z_init
  (hare, lynx), over all draws (all chains for NUTS);
- NUTS: **min bulk ESS** and **max R-hat** (rank-normalised) over those 8 components, and
  the divergences;
- SVI: the **final loss** (mean of the finite losses over the last 10% of
  `idata["svi_trace"]["loss"]`, the negative ELBO estimate), the number of **skipped
  steps** (`idata["svi_trace"].attrs["skipped_steps"]`), whether `probde.SVI` warned that
  it "has not converged", and the statistics of its convergence rule (mean over the last
  10% of the steps, over the preceding 10%, and the standard error of their difference
  from the two windows' sample variances). Each run's whole loss trace is saved as
  `/tmp/svi_loss_{init}_seed{s}.npy`.

- SVI: **steps to converge**, the first step from which the mean loss over the next
  100 steps stays within 1 nat of the final loss (the mean over the last 10%), and the
  largest location and scale offsets of the gradient rule (`svi_trace.loc_offset`,
  `scale_offset`).

Reported: medians over the repeats, the ratio NUTS wall / SVI wall per repeat and its median,
and per parameter component the standardised difference (SVI mean - NUTS mean) / NUTS sd and
the ratio SVI sd / NUTS sd. For those the NUTS reference is the draws **pooled over all
repeats** (runs whose max R-hat is below 1.05; all chains target the same posterior, so
pooling only shrinks its Monte Carlo error); the SVI side is each run on its own, and the
table gives the median over runs (the JSON has every run's values).

`--quick` is a smoke test (NUTS 2 chains x (50 + 50); SVI 2 starts of 50 steps, 300 steps,
200 draws; 1 repeat); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "case_studies"))
import _common  # noqa: E402

# One host device per chain and float64, before anything starts JAX.
NUM_CHAINS = 4
_common.setup_jax(NUM_CHAINS)

import arviz as az  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402

import probde  # noqa: E402

SVI_OPTIONS = _common.SVI_OPTIONS
PRIOR_START_OPTIONS = dict(guide="multivariate_normal", init="prior", num_steps=10000,
                           learning_rate=0.1, num_starts=8, start_steps=1500, num_draws=4000)
CASE_STUDY = ROOT / "case_studies" / "lynx_hare" / "model.py"
PARAMETERS = ("alpha", "beta", "gamma", "delta", "sigma", "z_init")
OBSERVABLES = ("hare", "lynx")
RHAT_POOL_MAX = 1.05
WINDOW = 0.1  # share of the steps in each window of the loss statistics
LOSS_PATH = "/tmp/svi_loss_{init}_seed{seed}.npy"


def load_build_model():
    """`build_model` of case_studies/lynx_hare/model.py (loaded by path: it is no package)."""
    spec = importlib.util.spec_from_file_location("lynx_hare_case_study", CASE_STUDY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_model


# ----------------------------------------------------------------------------- helpers
def components(posterior) -> dict[str, np.ndarray]:
    """Every scalar component of the parameters, as (chain, draw) arrays, named
    `alpha`, ..., `sigma[hare]`, `z_init[lynx]`."""
    out = {}
    for name in PARAMETERS:
        arr = np.asarray(posterior[name].values)
        if arr.ndim == 2:
            out[name] = arr
        else:
            for k, obs in enumerate(OBSERVABLES):
                out[f"{name}[{obs}]"] = arr[..., k]
    return out


def moments(comps) -> tuple[dict, dict]:
    mean = {k: float(v.mean()) for k, v in comps.items()}
    sd = {k: float(v.std(ddof=1)) for k, v in comps.items()}
    return mean, sd


def window_stats(losses, share=WINDOW) -> dict:
    """Mean of the finite losses over the last `share` of the steps and over the preceding
    as many, and the standard error of their difference from the two windows' sample
    variances."""
    losses = np.asarray(losses, dtype=float)
    n = losses.shape[0]
    w = max(1, int(n * share))
    last, prev = losses[-w:], losses[-2 * w:-w]
    last, prev = last[np.isfinite(last)], prev[np.isfinite(prev)]
    se = math.sqrt(last.var(ddof=1) / last.size + prev.var(ddof=1) / prev.size)
    return {
        "num_steps": int(n),
        "window": int(w),
        "last_mean": float(last.mean()),
        "prev_mean": float(prev.mean()),
        "drop": float(prev.mean() - last.mean()),
        "se_diff": se,
        "drop_over_se": float((prev.mean() - last.mean()) / se) if se > 0 else None,
        "last_sd": float(last.std(ddof=1)),
        "prev_sd": float(prev.std(ddof=1)),
    }


def steps_to_converge(losses, final, tol=1.0, span=100) -> int | None:
    """The first step from which the mean of the finite losses over every later stretch
    of `span` steps is within `tol` of `final`; `None` if there is none."""
    losses = np.asarray(losses, dtype=float)
    n = losses.shape[0]
    if n < span:
        return None
    finite = np.isfinite(losses)
    sums = np.convolve(np.where(finite, losses, 0.0), np.ones(span), "valid")
    counts = np.convolve(finite.astype(float), np.ones(span), "valid")
    means = np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)
    bad = np.flatnonzero(np.abs(means - final) > tol)
    if bad.size == 0:
        return 0
    first = int(bad[-1]) + 1
    return first if first < means.shape[0] else None


def timed_infer(build_model, data, method, seed):
    """`probde.infer` with its wall time and the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        result = probde.infer(build_model(), data, method, seed=seed, progress_bar=False)
        wall = time.perf_counter() - t0
    messages = [f"{w.category.__name__}: {w.message}" for w in caught]
    return result, wall, messages


def run_nuts(build_model, data, settings, seed) -> tuple[dict, dict]:
    method = probde.NUTS(num_chains=settings["num_chains"], num_warmup=settings["num_warmup"],
                         num_samples=settings["num_samples"])
    result, wall, messages = timed_infer(build_model, data, method, seed)
    idata = result.idata
    comps = components(idata["posterior"])
    mean, sd = moments(comps)
    res = {
        "seed": seed,
        "wall_s": wall,
        "mean": mean,
        "sd": sd,
        "min_bulk_ess": min(float(az.ess(v, method="bulk")) for v in comps.values()),
        "max_rhat": max(float(az.rhat(v)) for v in comps.values()),
        "divergences": int(np.asarray(idata["sample_stats"]["diverging"].values).sum()),
        "solver_failures": _int_or_none(getattr(result, "solver_failures", None)),
        "warnings": messages,
    }
    return res, comps


def run_svi(build_model, data, options, seed) -> dict:
    result, wall, messages = timed_infer(build_model, data, probde.SVI(**options), seed)
    idata = result.idata
    trace = idata["svi_trace"]
    losses = np.asarray(trace["loss"].values, dtype=float)
    path = LOSS_PATH.format(init=options.get("init", "laplace"), seed=seed)
    np.save(path, losses)
    comps = components(idata["posterior"])
    mean, sd = moments(comps)
    stats = window_stats(losses)
    offsets = {k: float(np.abs(trace[k].values).max()) for k in ("loc_offset", "scale_offset")
               if k in trace}
    return {
        "seed": seed,
        "wall_s": wall,
        "mean": mean,
        "sd": sd,
        "final_loss": stats["last_mean"],
        "steps_to_converge": steps_to_converge(losses, stats["last_mean"]),
        "max_abs_offset": offsets,
        "init": trace.attrs.get("init"),
        "skipped_steps": int(trace.attrs["skipped_steps"]),
        "not_converged_warning": any("has not converged" in m for m in messages),
        "loss_window_stats": stats,
        "start_loss": (np.asarray(trace["start_loss"].values).tolist()
                       if "start_loss" in trace else None),
        "loss_trace_path": path,
        "warnings": messages,
    }


def _int_or_none(x):
    try:
        return int(x)
    except (TypeError, ValueError):
        return None


def median(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else None


def fmt(v, digits=3):
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def environment() -> dict:
    import diffrax
    import equinox

    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax_devices": [str(d) for d in jax.devices()],
        "versions": {
            "probde": probde.__version__, "jax": jax.__version__,
            "numpyro": numpyro.__version__, "diffrax": diffrax.__version__,
            "equinox": equinox.__version__, "arviz": az.__version__, "numpy": np.__version__,
        },
        "git_commit": commit,
        "git_dirty": dirty,
    }


# ----------------------------------------------------------------------------- reporting
def comparison(nuts_runs, nuts_comps, svi_runs) -> dict:
    """NUTS pooled over the runs with max R-hat < RHAT_POOL_MAX; SVI per run."""
    keep = [i for i, r in enumerate(nuts_runs) if r["max_rhat"] < RHAT_POOL_MAX]
    if not keep:  # nothing mixed: pool everything, and say so in the JSON
        keep = list(range(len(nuts_runs)))
    pooled = {k: np.concatenate([nuts_comps[i][k].reshape(-1) for i in keep])
              for k in nuts_comps[0]}
    ref_mean = {k: float(v.mean()) for k, v in pooled.items()}
    ref_sd = {k: float(v.std(ddof=1)) for k, v in pooled.items()}
    per_run = []
    for r in svi_runs:
        per_run.append({
            "seed": r["seed"],
            "z_mean": {k: (r["mean"][k] - ref_mean[k]) / ref_sd[k] for k in ref_mean},
            "sd_ratio": {k: r["sd"][k] / ref_sd[k] for k in ref_mean},
        })
    names = list(ref_mean)
    return {
        "nuts_reference": "pooled draws of NUTS runs " + ", ".join(
            f"seed {nuts_runs[i]['seed']}" for i in keep),
        "nuts_pooled_runs": [nuts_runs[i]["seed"] for i in keep],
        "nuts_pooled_mean": ref_mean,
        "nuts_pooled_sd": ref_sd,
        "svi_per_run": per_run,
        "median_z_mean": {k: median([p["z_mean"][k] for p in per_run]) for k in names},
        "median_sd_ratio": {k: median([p["sd_ratio"][k] for p in per_run]) for k in names},
        "svi_median_mean": {k: median([r["mean"][k] for r in svi_runs]) for k in names},
        "svi_median_sd": {k: median([r["sd"][k] for r in svi_runs]) for k in names},
    }


def medians_table(nuts_runs, svi_runs, ratios) -> str:
    def per_run(vals, digits=3):
        return ", ".join(fmt(v, digits) for v in vals)

    rows = [
        ("wall time of probde.infer, s", [r["wall_s"] for r in nuts_runs],
         [r["wall_s"] for r in svi_runs], 3),
        ("NUTS wall / SVI wall", ratios, None, 3),
        ("min bulk ESS (NUTS)", [r["min_bulk_ess"] for r in nuts_runs], None, 4),
        ("max R-hat (NUTS)", [r["max_rhat"] for r in nuts_runs], None, 4),
        ("divergences (NUTS)", [r["divergences"] for r in nuts_runs], None, 3),
        ("final loss (SVI, mean of last 10% of steps)", None,
         [r["final_loss"] for r in svi_runs], 5),
        ("skipped steps (SVI)", None, [r["skipped_steps"] for r in svi_runs], 3),
        ("steps to converge (SVI)", None, [r["steps_to_converge"] for r in svi_runs], 4),
        ("largest location offset, sd (SVI gradient rule)", None,
         [r["max_abs_offset"].get("loc_offset") for r in svi_runs], 2),
        ("largest scale offset, relative (SVI gradient rule)", None,
         [r["max_abs_offset"].get("scale_offset") for r in svi_runs], 2),
    ]
    lines = ["| quantity | NUTS (median) | SVI (median) | per repeat |", "|---|---|---|---|"]
    for label, nv, sv, digits in rows:
        vals = nv if nv is not None else sv
        lines.append(f"| {label} | {fmt(median(nv), digits) if nv else '-'} | "
                     f"{fmt(median(sv), digits) if sv else '-'} | {per_run(vals, digits)} |")
    warned = [r["not_converged_warning"] for r in svi_runs]
    lines.append(f"| SVI \"has not converged\" warning | - | {sum(warned)} of {len(warned)} | "
                 f"{', '.join(fmt(w) for w in warned)} |")
    return "\n".join(lines)


def means_table(comp) -> str:
    lines = ["| parameter | NUTS mean | NUTS sd | SVI mean | SVI sd | (SVI - NUTS mean) / NUTS sd "
             "| SVI sd / NUTS sd |", "|---|---|---|---|---|---|---|"]
    for k in comp["nuts_pooled_mean"]:
        zs = [p["z_mean"][k] for p in comp["svi_per_run"]]
        rs = [p["sd_ratio"][k] for p in comp["svi_per_run"]]
        zr = f" ({min(zs):+.2f} to {max(zs):+.2f})" if len(zs) > 1 else ""
        rr = f" ({min(rs):.2f} to {max(rs):.2f})" if len(rs) > 1 else ""
        lines.append(
            f"| {k} | {fmt(comp['nuts_pooled_mean'][k], 4)} | {fmt(comp['nuts_pooled_sd'][k], 3)} "
            f"| {fmt(comp['svi_median_mean'][k], 4)} | {fmt(comp['svi_median_sd'][k], 3)} "
            f"| {comp['median_z_mean'][k]:+.2f}{zr} | {comp['median_sd_ratio'][k]:.2f}{rr} |")
    return "\n".join(lines)


def loss_table(svi_runs) -> str:
    lines = ["| seed | steps | mean last 10% | mean preceding 10% | drop | SE of difference "
             "| drop / SE | skipped | warned |", "|---|---|---|---|---|---|---|---|---|"]
    for r in svi_runs:
        s = r["loss_window_stats"]
        ratio = "n/a" if s["drop_over_se"] is None else f"{s['drop_over_se']:.2f}"
        lines.append(f"| {r['seed']} | {s['num_steps']} | {s['last_mean']:.4f} | "
                     f"{s['prev_mean']:.4f} | {s['drop']:.4f} | {s['se_diff']:.4f} | {ratio} "
                     f"| {r['skipped_steps']} | {fmt(r['not_converged_warning'])} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------- main
def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs of each method, each with its own seed "
                             "(default 3; 1 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first repeat")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test with tiny settings; the numbers mean nothing")
    parser.add_argument("--out", type=pathlib.Path,
                        default=ROOT / "benchmarks" / "results_svi_lynx_hare.json",
                        help="JSON file for the raw numbers")
    args = parser.parse_args()
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def _run_repeats(nuts, variants, repeats, first_seed):
    """Each repeat: NUTS, then every SVI variant, with seed `first_seed + r`. Returns the
    NUTS runs and their components, and per variant its runs and NUTS wall / its wall."""
    build_model = load_build_model()
    data = probde.datasets.lynx_hare()
    nuts_runs, nuts_comps = [], []
    svi_runs = {name: [] for name in variants}
    ratios = {name: [] for name in variants}
    for r in range(repeats):
        seed = first_seed + r
        print(f"repeat {r + 1}/{repeats}, seed {seed}: NUTS ...", flush=True)
        res, comps = run_nuts(build_model, data, nuts, seed)
        nuts_runs.append(res)
        nuts_comps.append(comps)
        print(f"  {res['wall_s']:.1f} s, min bulk ESS {res['min_bulk_ess']:.0f}, "
              f"max R-hat {res['max_rhat']:.4f}, divergences {res['divergences']}", flush=True)
        for name, options in variants.items():
            print(f"repeat {r + 1}/{repeats}, seed {seed}: {name} ...", flush=True)
            res = run_svi(build_model, data, options, seed)
            svi_runs[name].append(res)
            print(f"  {res['wall_s']:.1f} s, final loss {res['final_loss']:.4f}, steps to "
                  f"converge {res['steps_to_converge']}, skipped {res['skipped_steps']}, "
                  f"'not converged' warning {fmt(res['not_converged_warning'])}", flush=True)
            ratios[name].append(nuts_runs[-1]["wall_s"] / res["wall_s"])
    return nuts_runs, nuts_comps, svi_runs, ratios


def _report_variant(name, options, nuts_runs, nuts_comps, runs, ratios, repeats):
    """Print the tables of one SVI variant against NUTS; `(comparison, summary)`."""
    comp = comparison(nuts_runs, nuts_comps, runs)
    names = list(comp["nuts_pooled_mean"])
    summary = {
        "nuts_wall_s": median([r["wall_s"] for r in nuts_runs]),
        "svi_wall_s": median([r["wall_s"] for r in runs]),
        "wall_ratio_nuts_over_svi": median(ratios),
        "nuts_min_bulk_ess": median([r["min_bulk_ess"] for r in nuts_runs]),
        "nuts_max_rhat": median([r["max_rhat"] for r in nuts_runs]),
        "svi_final_loss": median([r["final_loss"] for r in runs]),
        "svi_steps_to_converge": median([r["steps_to_converge"] for r in runs]),
        "svi_skipped_steps": median([r["skipped_steps"] for r in runs]),
        "svi_not_converged_warnings": sum(r["not_converged_warning"] for r in runs),
        "svi_mean": {k: median([r["mean"][k] for r in runs]) for k in names},
        "svi_sd": {k: median([r["sd"][k] for r in runs]) for k in names},
    }
    print()
    print(f"## Lynx-hare: {name} ({options}) vs NUTS (median of {repeats})")
    print()
    print(medians_table(nuts_runs, runs, ratios))
    print()
    print(f"NUTS reference: {comp['nuts_reference']} (max R-hat < {RHAT_POOL_MAX}); "
          "SVI: median over runs of each run's value (range over runs in brackets).")
    print()
    print(means_table(comp))
    print()
    print("SVI loss traces (windows of 10% of the steps; finite losses only):")
    print()
    print(loss_table(runs))
    print()
    return comp, summary


def main():
    args = parse_args()
    if args.quick:
        nuts = dict(num_chains=2, num_warmup=50, num_samples=50)
        variants = {"svi": dict(SVI_OPTIONS, num_steps=300, num_starts=2, num_draws=200),
                    "svi_prior_start": dict(PRIOR_START_OPTIONS, num_steps=300, num_starts=2,
                                            start_steps=50, num_draws=200)}
        repeats = args.repeats or 1
    else:
        nuts = dict(num_chains=NUM_CHAINS, num_warmup=1000, num_samples=1000)
        variants = {"svi": dict(SVI_OPTIONS), "svi_prior_start": dict(PRIOR_START_OPTIONS)}
        repeats = args.repeats or 3
    print(f"lynx-hare SVI vs NUTS: NUTS {nuts}, SVI variants {variants}, {repeats} "
          f"repeat(s), {jax.device_count()} host devices, {os.cpu_count()} cores", flush=True)

    nuts_runs, nuts_comps, svi_runs, ratios = _run_repeats(nuts, variants, repeats, args.seed)
    report_runs = {"nuts": nuts_runs, **svi_runs}
    comparisons, summaries = {}, {}
    for name in variants:
        comparisons[name], summaries[name] = _report_variant(
            name, variants[name], nuts_runs, nuts_comps, svi_runs[name], ratios[name], repeats)
    if args.quick:
        print("(--quick: smoke-test settings; these numbers are not a benchmark)")

    report = {
        "settings": {"nuts": nuts, "svi": variants, "repeats": repeats, "seed": args.seed,
                     "quick": args.quick, "host_devices": jax.device_count(),
                     "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS")},
        "environment": environment(),
        "runs": report_runs,
        "wall_ratio_nuts_over_svi": ratios,
        "comparison": comparisons,
        "median": summaries,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
