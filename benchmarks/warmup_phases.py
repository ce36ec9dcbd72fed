"""Where NUTS warmup spends its gradients on lynx-hare, window by window.

    python benchmarks/warmup_phases.py [--seeds 0 1 2 3 4] [--out PATH]

For each seed: `probde.NUTS()`'s kernel (default settings: 4 chains in parallel, 1000
warmup iterations) on the lynx-hare model of `case_studies/lynx_hare/model.py`, with
numpyro's `MCMC.warmup(collect_warmup=True)`. Per chain and per adaptation window of
numpyro's schedule (the same as Stan's: a fast window of 75 iterations, slow windows of
25, 50, 100, 200 and 500, a fast window of 50): the gradients (leapfrog steps), the mean
tree depth, the share of iterations at the maximum depth, the step size at the window's
end, divergences, and the mean log density (a chain far below the others sits in another
mode). Also the whole warmup's gradients per chain, against Stan's 138,420 for 4 chains in
`benchmarks/RESULTS.md` (about 34,600 a chain). Writes `benchmarks/results_warmup_phases.json`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent / "case_studies"))
sys.path.insert(0, str(HERE.parent / "case_studies" / "lynx_hare"))

import _common  # noqa: E402

_common.setup_jax(4)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from model import build_model  # noqa: E402
from numpyro.infer.hmc_util import build_adaptation_schedule  # noqa: E402

import probde  # noqa: E402

FIELDS = ("num_steps", "adapt_state.step_size", "potential_energy", "diverging")


def windows(num_warmup):
    """`(name, start, end)` of numpyro's adaptation windows (end inclusive)."""
    out = []
    for i, w in enumerate(build_adaptation_schedule(num_warmup)):
        kind = "fast" if i in (0, len(build_adaptation_schedule(num_warmup)) - 1) else "slow"
        out.append((f"{kind} {w.start}-{w.end}", w.start, w.end))
    return out


def one_seed(seed: int, num_warmup: int, max_depth: int) -> dict:
    model = build_model()
    data = probde.datasets.lynx_hare()
    method = probde.NUTS(num_chains=4, num_warmup=num_warmup, num_samples=1)
    fn = model.numpyro_model(model.prepare(data))
    mcmc = method.mcmc(fn)
    key = jax.random.split(jax.random.PRNGKey(seed), 3)[0]  # probde.infer's key_run
    mcmc.warmup(key, extra_fields=FIELDS, collect_warmup=True, observed=True)
    extra = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    steps = extra["num_steps"]
    depth = np.ceil(np.log2(steps + 1))
    logdens = -extra["potential_energy"]
    out = {"seed": seed, "gradients_per_chain": steps.sum(axis=1).tolist(),
           "gradients": int(steps.sum()), "windows": []}
    for name, start, end in windows(num_warmup):
        sl = slice(start, end + 1)
        out["windows"].append({
            "window": name,
            "gradients_per_chain": steps[:, sl].sum(axis=1).tolist(),
            "mean_depth_per_chain": depth[:, sl].mean(axis=1).round(2).tolist(),
            "share_at_max_depth_per_chain": (depth[:, sl] >= max_depth).mean(axis=1)
                                            .round(3).tolist(),
            "step_size_end_per_chain": extra["adapt_state.step_size"][:, end].tolist(),
            "divergences_per_chain": extra["diverging"][:, sl].sum(axis=1).tolist(),
            "mean_log_density_per_chain": logdens[:, sl].mean(axis=1).round(1).tolist(),
        })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--out", type=pathlib.Path,
                        default=HERE / "results_warmup_phases.json")
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        run = one_seed(seed, args.warmup, probde.NUTS().max_tree_depth)
        runs.append(run)
        print(f"seed {seed}: warmup gradients {run['gradients']} "
              f"(per chain {run['gradients_per_chain']})", flush=True)
        for w in run["windows"]:
            print(f"  {w['window']:>14s}: grads {w['gradients_per_chain']}, depth "
                  f"{w['mean_depth_per_chain']}, at max {w['share_at_max_depth_per_chain']}, "
                  f"step {np.round(w['step_size_end_per_chain'], 4).tolist()}, "
                  f"log dens {w['mean_log_density_per_chain']}", flush=True)
        args.out.write_text(json.dumps({"runs": runs}, indent=1))


if __name__ == "__main__":
    main()
