"""Boehm's value-and-gradient with the solvers a sampling run might use, against the
default (reference-accuracy) solver, measured in the same process.

For each solver: `jax.jit(jax.value_and_grad(problem.log_likelihood))` on the log scale of
the parameters, at the collection's nominal parameters (the maximum-likelihood fit) and at
a point of the posterior's second mode (fast nuclear export; the case study's chains 0
and 2: rate constants up to 1e4, a stiffer solve). Each point: one compiling call, then
`--repeats` timed calls (`jax.block_until_ready`), every repeat kept. Reports min / median
/ max in ms, the median's ratio to the default solver's at the same point, and the
log-likelihood's difference from the default solver's (the accuracy given up).

    taskset -c 1 python benchmarks/petab_solvers.py [--repeats 20] [--out JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
# this folder's petab.py would shadow the petab package
sys.path = [str(ROOT)] + [p for p in sys.path
                          if pathlib.Path(p or ".").resolve() != ROOT / "benchmarks"]

import diffrax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

import probde  # noqa: E402
import probde.petab  # noqa: E402

SOLVERS = {
    "Kvaerno5 rtol 1e-8 (default)": probde.petab.default_solver(),
    "Kvaerno5 rtol 1e-6": probde.Solver(diffrax.Kvaerno5(), rtol=1e-6, atol=1e-8,
                                        max_steps=100_000),
    "Kvaerno3 rtol 1e-5 (case study)": probde.Solver(diffrax.Kvaerno3(), rtol=1e-5,
                                                     atol=1e-7, max_steps=100_000),
}
# a draw of the case study's second mode (chain 0 of results/petab_boehm), rounded
SECOND_MODE = {"Epo_degradation_BaF3": 0.027, "k_exp_hetero": 260.0, "k_exp_homo": 3600.0,
               "k_imp_hetero": 0.019, "k_imp_homo": 105.0, "k_phos": 11000.0,
               "sd_pSTAT5A_rel": 9.8, "sd_pSTAT5B_rel": 5.4, "sd_rSTAT5A_rel": 4.1}


def measure(problem, point: dict, repeats: int) -> dict:
    keys = list(problem.estimated)
    f = jax.jit(jax.value_and_grad(lambda z: problem.log_likelihood(
        {k: jnp.exp(z[i]) for i, k in enumerate(keys)})))
    z = jnp.log(jnp.array([point[k] for k in keys]))
    start = time.perf_counter()
    value, grad = jax.block_until_ready(f(z))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f(z))
        times.append(time.perf_counter() - start)
    return {"value": float(value), "grad_finite": bool(np.all(np.isfinite(grad))),
            "first_call_s": first, "times_s": times}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=pathlib.Path,
                        default=ROOT / "benchmarks" / "results_petab_solvers.json")
    args = parser.parse_args()
    path = probde.datasets.petab_problem("Boehm_JProteomeRes2014")
    points = {}
    results = {"machine": {"cpus": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
                           "load_start": os.getloadavg(), "python": platform.python_version(),
                           "jax": jax.__version__, "diffrax": diffrax.__version__,
                           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                                    cwd=ROOT, capture_output=True,
                                                    text=True).stdout.strip()},
               "solvers": {}}
    for name, solver in SOLVERS.items():
        problem = probde.petab.load(path, solver=solver)
        points = {"nominal": problem.nominal, "second mode": SECOND_MODE}
        results["solvers"][name] = {p: measure(problem, x, args.repeats)
                                    for p, x in points.items()}
    results["machine"]["load_end"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=1))
    base = results["solvers"]["Kvaerno5 rtol 1e-8 (default)"]
    print("| solver | point | ms per value-and-gradient (min / median / max) | ratio to "
          "default | llh - default's | compile + first call (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, by_point in results["solvers"].items():
        for p, r in by_point.items():
            t = np.array(r["times_s"]) * 1e3
            ratio = np.median(t) / (np.median(base[p]["times_s"]) * 1e3)
            print(f"| {name} | {p} | {t.min():.1f} / {np.median(t):.1f} / {t.max():.1f} | "
                  f"{ratio:.2f} | {r['value'] - base[p]['value']:.1e} | "
                  f"{r['first_call_s']:.1f} |")
    print(f"load average {results['machine']['load_start']} -> {results['machine']['load_end']}")


if __name__ == "__main__":
    main()
