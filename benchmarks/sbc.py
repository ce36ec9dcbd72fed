"""Simulation-based calibration: throughput of `probde.sbc`, vectorised against a loop of
`probde.infer` calls, and the calibration of two case-study models.

    python benchmarks/sbc.py [--problems flu machine] [--simulations 100]
                             [--loop-simulations 5] [--strategies map vmap loop]
                             [--repeats 3] [--steps 500] [--quick]
                             [--out benchmarks/results_sbc.json] [--figures docs/images]

Problems (the case studies' models and data layouts; the data values are not used):

- `flu`: the boarding-school SIR model (`case_studies/boarding_school_flu/model.py`):
  beta, gamma, negative-binomial dispersion phi_inv, and the derived R0 and recovery time;
  14 daily counts.
- `machine`: the simple machine with a GP discrepancy
  (`case_studies/simple_machine/model.py`, variant `gp`): theta, the discrepancy's
  lengthscale and variance, Normal noise of known scale, 11 points. The discrepancy is
  integrated out (a marginal GP), so every fit sees a dense 11 x 11 Gaussian.

Method: `probde.NUTS(num_chains=1, num_warmup=S, num_samples=S)` with S = `--steps`
(default 500; flu) and the same with `target_accept=0.95` (machine, as its case study). Per repeat:

- **map**: one `probde.sbc(model, data, method, num_simulations=S, seed=r,
  vectorize="map")` call (one compiled program, its lanes one after another; what
  `vectorize=True` picks on a CPU), wall time including compilation (what a user waits
  for);
- **vmap**: the same with `vectorize="vmap"` (the lanes vmapped; what a GPU gets);
- **loop**: `probde.sbc(..., vectorize=False, num_simulations=L)`, i.e. L fits with
  `probde.infer` one after the other (each compiles its own program unless JAX's
  persistent cache serves it), wall time.

`--strategies` picks which run. Each is reported as simulations per minute (S or L over
the wall time), with every repeat's value and the min / median / max, and the ratios
map / loop, vmap / loop and map / vmap per repeat. The last repeat's SBC of the first
strategy (p-values, ranks) is written to the JSON and, with `--figures`, its plot to
`sbc_<problem>.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

# benchmarks/petab.py would shadow the petab package: this folder off the path.
HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != HERE]
ROOT = HERE.parent
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpyro  # noqa: E402

# One CPU device per core: probde.sbc splits the simulations over the devices.
numpyro.set_host_device_count(len(os.sched_getaffinity(0)))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import probde  # noqa: E402


def _case_study(name):
    import importlib.util

    path = ROOT / "case_studies" / name / "model.py"
    spec = importlib.util.spec_from_file_location(f"{name}_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def problem(name, quick, steps=500):
    steps = 150 if quick else steps
    if name == "flu":
        flu = _case_study("boarding_school_flu")
        data = probde.datasets.boarding_school_influenza()
        method = probde.NUTS(num_chains=1, num_warmup=steps, num_samples=steps)
        return flu.build_model(), data, method
    if name == "machine":
        machine = _case_study("simple_machine")
        method = probde.NUTS(num_chains=1, num_warmup=steps, num_samples=steps,
                             target_accept=0.95)
        return machine.build_model("gp"), machine.load_data(), method
    raise ValueError(f"unknown problem {name!r}")


def _stats(values):
    values = np.asarray(values, dtype=float)
    return {"values": values.tolist(), "min": float(values.min()),
            "median": float(np.median(values)), "max": float(values.max())}


def run(name, args):
    model, data, method = problem(name, args.quick, args.steps)
    counts = {"map": args.simulations, "vmap": args.simulations,
              "loop": args.loop_simulations}
    out = {"method": repr(method), "strategies": args.strategies,
           "simulations": {s: counts[s] for s in args.strategies}, "repeats": []}
    results = {}
    for r in range(args.repeats):
        rep = {"seed": r}
        for strategy in args.strategies:
            start = time.perf_counter()
            results[strategy] = probde.sbc(
                model, data, method, num_simulations=counts[strategy], seed=r,
                vectorize=False if strategy == "loop" else strategy)
            seconds = time.perf_counter() - start
            rep[f"{strategy}_s"] = seconds
            rep[f"{strategy}_per_min"] = 60 * counts[strategy] / seconds
        for a, b in (("map", "loop"), ("vmap", "loop"), ("map", "vmap")):
            if a in args.strategies and b in args.strategies:
                rep[f"{a}_over_{b}"] = rep[f"{a}_per_min"] / rep[f"{b}_per_min"]
        out["repeats"].append(rep)
        print(f"{name} repeat {r}: " + ", ".join(
            f"{s} {counts[s]} in {rep[f'{s}_s']:.0f} s ({rep[f'{s}_per_min']:.2f}/min)"
            for s in args.strategies), flush=True)
    for key in out["repeats"][0]:
        if key != "seed":
            out[key] = _stats([rep[key] for rep in out["repeats"]])
    result = results[args.strategies[0]]
    out["pvalues"] = result.pvalues
    out["ranks"] = {k: v.tolist() for k, v in result.ranks.items()}
    out["num_draws"] = result.num_draws
    out["fits_with_ess_below_50"] = int(np.sum(result.min_ess < 50))
    out["fits_with_divergences"] = int(np.sum(result.divergences > 0))
    print(result, flush=True)
    if args.figures:
        args.figures.mkdir(parents=True, exist_ok=True)
        result.plot(args.figures / f"sbc_{name}.png")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", nargs="+", default=["flu", "machine"])
    parser.add_argument("--simulations", type=int, default=100)
    parser.add_argument("--loop-simulations", type=int, default=5)
    parser.add_argument("--strategies", nargs="+", default=["map", "vmap", "loop"],
                        choices=["map", "vmap", "loop"],
                        help="the first one's SBC is reported and plotted")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=500, help="warmup = draws per chain")
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results_sbc.json")
    parser.add_argument("--figures", type=pathlib.Path, default=None)
    args = parser.parse_args()
    results = {"command": " ".join(["python", "benchmarks/sbc.py"] + sys.argv[1:]),
               "cpus": len(os.sched_getaffinity(0)), "jax": jax.__version__,
               "devices": [str(d) for d in jax.devices()]}
    for name in args.problems:
        results[name] = run(name, args)
        args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
