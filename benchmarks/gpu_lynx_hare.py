"""Many chains on one accelerator: lynx-hare NUTS with 1, 64 and 1024 vectorised chains.

    python benchmarks/gpu_lynx_hare.py [--chains 1 64 1024] [--warmup 500] [--samples 500]
                                       [--out benchmarks/results_gpu_lynx_hare.json]

The lynx-hare model of `case_studies/lynx_hare/model.py` (float64, Tsit5, rtol = atol =
1e-6), sampled by numpyro's NUTS through numpyro's `MCMC(chain_method="vectorized")`: all
chains advance in one vmapped program, so one device runs them together. For each number
of chains C the script reports

- **compile + first**: wall time of a `num_warmup=1, num_samples=1` run (trace, compile,
  one iteration);
- **run**: wall time of the full run (warmup + sampling in one `MCMC.run`, compiled
  again by numpyro); **run - first** estimates its execution time;
- **gradients per chain**: mean over chains of the leapfrog steps in the sampling phase;
  **us per gradient step (all chains)**: execution time / the number of lockstep
  leapfrog steps (vectorised chains wait for the longest tree at every iteration: the sum
  over iterations of the longest tree, scaled to warmup + sampling, assuming warmup trees
  as long as sampling ones), i.e. the cost of one batched value-and-grad of all C chains;
- **min bulk ESS** over all components of alpha, beta, gamma, delta, z_init, sigma, and
  **min bulk ESS per second** of execution time; **max R-hat**.

Run it on any JAX backend; `benchmarks/gpu_lynx_hare.sh` is the one-command wrapper for a
GPU machine. Figures in `benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)

import arviz as az  # noqa: E402
import numpy as np  # noqa: E402
from numpyro.infer import MCMC  # noqa: E402
from numpyro.infer import NUTS as NumpyroNUTS  # noqa: E402
from numpyro.infer import init_to_uniform  # noqa: E402

import probde  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
PARAMETERS = ("alpha", "beta", "gamma", "delta", "z_init", "sigma")


def build():
    spec = importlib.util.spec_from_file_location("lynx_model", ROOT / "case_studies/lynx_hare/model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build_model()
    data = probde.datasets.lynx_hare()
    return model.numpyro_model(model.prepare(data))


def components(samples):
    out = []
    for name in PARAMETERS:
        v = np.asarray(samples[name])
        out.extend(v.reshape(v.shape[0], v.shape[1], -1)[..., i] for i in range(
            int(np.prod(v.shape[2:])) if v.ndim > 2 else 1))
    return out


def run(fn, chains, warmup, samples, seed, max_tree_depth=10):
    def kernel():  # a fresh one per MCMC object: numpyro kernels keep per-run state
        return NumpyroNUTS(fn, init_strategy=init_to_uniform(radius=2.0),
                           max_tree_depth=max_tree_depth)

    def mcmc_run(num_warmup, num_samples):
        mcmc = MCMC(kernel(), num_warmup=num_warmup, num_samples=num_samples,
                    num_chains=chains, chain_method="vectorized", progress_bar=False)
        t0 = time.perf_counter()
        mcmc.run(jax.random.PRNGKey(seed), observed=True, extra_fields=("num_steps",))
        draws = mcmc.get_samples(group_by_chain=True)
        jax.block_until_ready(draws)
        return mcmc, draws, time.perf_counter() - t0

    _, _, t_first = mcmc_run(1, 1)  # trace + compile + one iteration
    mcmc, draws, t_full = mcmc_run(warmup, samples)
    t_exec = max(t_full - t_first, 1e-9)
    steps = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["num_steps"])  # (C, S)
    comps = components({k: np.asarray(v) for k, v in draws.items()})
    ess = min(float(az.ess(c, method="bulk")) for c in comps)
    rhat = max(float(az.rhat(c)) for c in comps) if chains > 1 else float("nan")
    # Vectorised chains wait for the longest tree at every iteration; warmup trees are
    # taken to be as long as sampling ones (numpyro reports sampling steps only).
    lockstep = float(steps.max(axis=0).sum()) * (warmup + samples) / samples
    means = {k: np.asarray(draws[k]).mean(axis=(0, 1)).tolist()
             for k in ("alpha", "beta", "gamma", "delta")}
    return {
        "chains": chains, "warmup": warmup, "samples": samples,
        "max_tree_depth": max_tree_depth,
        "compile_and_first_iteration_s": t_first, "full_run_s": t_full,
        "execution_s": t_exec,
        "gradients_per_chain_sampling": float(steps.sum(axis=1).mean()),
        "us_per_gradient_step_all_chains": 1e6 * t_exec / lockstep,
        "min_bulk_ess": ess, "min_bulk_ess_per_s": ess / t_exec,
        "max_rhat": rhat, "means": means,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, nargs="+", default=[1, 64, 1024])
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tree-depth", type=int, default=10,
                        help="NUTS tree depth limit; vectorised chains all wait for the "
                        "deepest tree, so a short budget run may lower it")
    parser.add_argument("--out", type=pathlib.Path,
                        default=ROOT / "benchmarks" / "results_gpu_lynx_hare.json")
    args = parser.parse_args()
    fn = build()
    results = {"devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
               "runs": []}
    print(f"devices: {results['devices']}", flush=True)
    print("| chains | compile+first (s) | run (s) | run - first (s) | grads/chain | "
          "us/grad step (all chains) | min bulk ESS | ESS/s | max R-hat |", flush=True)
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for c in args.chains:
        r = run(fn, c, args.warmup, args.samples, args.seed, args.max_tree_depth)
        results["runs"].append(r)
        print(f"| {c} | {r['compile_and_first_iteration_s']:.1f} | {r['full_run_s']:.1f} | "
              f"{r['execution_s']:.1f} | {r['gradients_per_chain_sampling']:.0f} | "
              f"{r['us_per_gradient_step_all_chains']:.0f} | {r['min_bulk_ess']:.0f} | "
              f"{r['min_bulk_ess_per_s']:.1f} | {r['max_rhat']:.3f} |", flush=True)
        args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
