"""Markov-GP discrepancy after sampling: leave-one-out terms, smoothed moments, posterior draws.

    taskset -c 1 python benchmarks/markov_after_sampling.py [--repeats 5] [--baseline PATH]
        [--out PATH]

After NUTS, `probde.infer` computes for every posterior draw the pointwise leave-one-out
terms of a `MarkovGPDiscrepancy` (for LOO), and the posterior predictive draws the
discrepancy at the data (and `result.predict` at new times). These run the Kalman smoother
and a sampler over the whole series once per draw, so for a long series and thousands of
draws they can take longer than the sampling. What is timed, for one Matern-3/2 series of
N irregular times with per-point noise, float64, one jitted call each:

- `log_marginal`: `markov.log_marginal` (one filter: the floor the others are compared with);
- `loo`: `markov.loo_pointwise` (filter + smoother);
- `marginals`: `markov.conditional_marginals` at N/2 query times (filter + smoother on
  the merged grid);
- `draw`: `markov.sample_posterior` at N/2 query times (one joint draw).

Each figure is the median over `--repeats` repeats of a block of calls (as many as fit in
about 0.2 s) divided by the calls in the block; the JSON keeps every repeat. With
`--baseline PATH` the same functions of the probde at PATH (another checkout, e.g. the
commit before a change) are timed in the same run: each repeat runs one fresh process per
version, interleaved (version, baseline, version, ...), so that machine load falls on both.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZES = (100, 1_000, 10_000)
FUNCTIONS = ("log_marginal", "loo", "marginals", "draw")

# One process: every function at every N, one block-timed figure each (us per call).
WORKER = """
import json, sys, time
import probde  # before gpjax: probde's XLA option (probde/_xla.py)
import jax
jax.config.update("jax_enable_x64", True)
import gpjax as gpx
import jax.numpy as jnp
import numpy as np
from probde.discrepancy import markov

kernel = gpx.kernels.Matern32(lengthscale=0.7, variance=0.3)
out = {}
for n in json.loads(sys.argv[1]):
    rng = np.random.default_rng(0)
    t = jnp.asarray(np.sort(rng.uniform(0.0, n / 10.0, n)))
    r = jnp.asarray(rng.normal(size=n))
    nv = jnp.asarray(rng.uniform(0.05, 0.15, n))
    q = jnp.asarray(np.sort(rng.uniform(0.0, n / 10.0, n // 2)))
    key = jax.random.key(0)
    fns = {
        "log_marginal": jax.jit(lambda r: markov.log_marginal(kernel, t, r, nv)),
        "loo": jax.jit(lambda r: markov.loo_pointwise(kernel, t, r, nv)),
        "marginals": jax.jit(lambda r: markov.conditional_marginals(kernel, t, r, nv, None, q)),
        "draw": jax.jit(lambda r: markov.sample_posterior(key, kernel, t, r, nv, None, q)),
    }
    for name, fn in fns.items():
        jax.block_until_ready(fn(r))
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < 0.2 or calls == 0:
            jax.block_until_ready(fn(r))
            calls += 1
        out[f"{name}/{n}"] = (time.perf_counter() - start) / calls * 1e6
print("RESULT", json.dumps(out))
"""


def one_process(root: pathlib.Path, sizes) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(list(sizes))], env=env,
                          cwd=root, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"worker failed in {root}:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def summary(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "repeats": values}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", type=pathlib.Path, default=None,
                        help="another probde checkout, timed in the same run")
    parser.add_argument("--out", type=pathlib.Path,
                        default=ROOT / "benchmarks" / "results_markov_after_sampling.json")
    args = parser.parse_args()
    versions = {"this": ROOT} | ({"baseline": args.baseline} if args.baseline else {})
    runs = {v: [] for v in versions}
    for i in range(args.repeats):
        for v, root in versions.items():
            runs[v].append(one_process(root, SIZES))
            print(f"repeat {i + 1}/{args.repeats} {v} done", flush=True)
    result = {v: {k: summary([r[k] for r in rs]) for k in rs[0]} for v, rs in runs.items()}
    print("us per call, min / median / max over repeats")
    for n in SIZES:
        for f in FUNCTIONS:
            k = f"{f}/{n}"
            row = [f"{n:>6} {f:<13}"]
            for v in versions:
                s = result[v][k]
                row.append(f"{v}: {s['min']:9.1f} {s['median']:9.1f} {s['max']:9.1f}")
            floor = result["this"][f"log_marginal/{n}"]["median"]
            row.append(f"/ log_marginal {result['this'][k]['median'] / floor:5.2f}")
            if args.baseline:
                ratio = [a / b for a, b in zip(result["this"][k]["repeats"],
                                               result["baseline"][k]["repeats"], strict=True)]
                row.append("this / baseline " + " ".join(f"{x:.3f}" for x in sorted(ratio)))
            print("  ".join(row))
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "sizes": SIZES,
                                    "baseline": str(args.baseline), "results": result},
                                   indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
