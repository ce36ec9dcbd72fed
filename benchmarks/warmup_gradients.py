"""Warmup gradients on lynx-hare, seed by seed: probde's NUTS warmup as `probde.infer` runs it,
against Stan's.

    python benchmarks/warmup_gradients.py [--seeds 0 1 2 3 4] [--stan] [--out PATH]

For each seed, `probde.NUTS()`'s warmup with its defaults (4 chains in parallel, 1000
warmup iterations) on the model of `case_studies/lynx_hare/model.py`, in the order
`NUTS.run` takes (the best-of-8 starts, the 75-iteration screen, the rest of the warmup
resuming the screened chains' states: `NUTS._warmup`, on the driver `NUTS.run` uses),
with the key `probde.infer(..., seed=seed)` uses, then 1000 draws from the adapted state.
Recorded per seed: the gradients (numpyro's leapfrog steps) of the screen, of the rest of
the warmup and of sampling, the min bulk ESS and the max R-hat of the draws. These are counts, not times: they depend on the seed and the code,
not on the machine or its load, so a count from another session compares.

With `--stan` (or `--stan-from` an earlier output: Stan's counts depend on the seed only),
`benchmarks/stan_lynx_hare.py` runs the same seeds (fresh processes, PyStan
3: `pip install -r benchmarks/requirements-stan.txt`) and its warmup gradients (the sum of
`n_leapfrog__` over the warmup iterations of the 4 chains) are put beside probde's; the
table gives each seed's ratio and their median. Writes `--out` (default
`benchmarks/results_warmup_gradients.json`).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE))

import lynx_hare as lh  # noqa: E402 (4 host devices and x64, before JAX starts)

import jax  # noqa: E402

import probde  # noqa: E402
from probde.inference import chunks  # noqa: E402

NUM_CHAINS, NUM_WARMUP, NUM_SAMPLES = 4, 1000, 1000


def probde_seed(problem, seed: int) -> dict:
    fn, kwargs = problem.model.numpyro_model(problem.prepared), {"observed": True}
    method = probde.NUTS(num_chains=NUM_CHAINS, num_warmup=NUM_WARMUP, num_samples=NUM_SAMPLES)
    key = jax.random.split(jax.random.PRNGKey(seed), 3)[0]  # probde.infer's key for the run
    key, init = method._starts(fn, key, kwargs)
    runner = chunks.Chunks(method.kernel(fn), NUM_CHAINS, NUM_WARMUP, "parallel", kwargs)
    run, state, records = method._warmup(runner, chunks.Progress(False, 0, NUM_CHAINS), key,
                                         init, {})
    steps = [int(r["num_steps"].sum()) for r in records]
    screen_steps = steps[0] if len(steps) > 1 else 0
    state, sampled = run.phase(state, NUM_SAMPLES, "sample", keep=True)
    samples = run.samples(1)
    return {"seed": seed, "screen": screen_steps, "rest": steps[-1],
            "warmup": sum(steps), "sampling": int(sampled["num_steps"].sum()),
            "min_bulk_ess": lh.min_bulk_ess(samples), "max_rhat": lh.max_rhat(samples)}


def stan_seed(seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "stan.json"
        subprocess.run([sys.executable, str(HERE / "stan_lynx_hare.py"), "--seed", str(seed),
                        "--out", str(out), "--quiet"], check=True)
        run = json.loads(out.read_text())
    return {"seed": seed, "warmup": run["gradients_warmup"],
            "sampling": run["gradients_sampling"], "min_bulk_ess": run["min_bulk_ess"],
            "max_rhat": run["max_rhat"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--stan", action="store_true")
    parser.add_argument("--stan-from", type=pathlib.Path, default=None,
                        help="take Stan's counts from this earlier output (they depend on the "
                             "seed only) instead of running Stan")
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results_warmup_gradients.json")
    args = parser.parse_args()
    problem = lh.Problem()
    results = {"command": " ".join(["python", "benchmarks/warmup_gradients.py"] + sys.argv[1:]),
               "probde": [], "stan": []}
    earlier = ({r["seed"]: r for r in json.loads(args.stan_from.read_text())["stan"]}
               if args.stan_from else {})
    for seed in args.seeds:
        results["probde"].append(probde_seed(problem, seed))
        if args.stan:
            results["stan"].append(stan_seed(seed))
        elif seed in earlier:
            results["stan"].append(dict(earlier[seed], source=str(args.stan_from)))
        print(json.dumps([r[-1] for r in (results["probde"], results["stan"]) if r]), flush=True)
        args.out.write_text(json.dumps(results, indent=1))
    print("| seed | probde screen | probde rest | probde warmup | Stan warmup | probde / Stan |")
    print("|---|---|---|---|---|---|")
    ratios = []
    stan = {r["seed"]: r for r in results["stan"]}
    for r in results["probde"]:
        s = stan.get(r["seed"])
        ratio = r["warmup"] / s["warmup"] if s else None
        if ratio is not None:
            ratios.append(ratio)
        print(f"| {r['seed']} | {r['screen']:,} | {r['rest']:,} | {r['warmup']:,} | "
              f"{s['warmup']:,} | {ratio:.3f} |" if s else
              f"| {r['seed']} | {r['screen']:,} | {r['rest']:,} | {r['warmup']:,} | | |")
    warm = [r["warmup"] for r in results["probde"]]
    print(f"probde warmup gradients min / median / max: {min(warm):,} / "
          f"{statistics.median(warm):,} / {max(warm):,}")
    if ratios:
        swarm = [r["warmup"] for r in results["stan"]]
        print(f"Stan: {min(swarm):,} / {statistics.median(swarm):,} / {max(swarm):,}; "
              f"ratio min / median / max {min(ratios):.3f} / {statistics.median(ratios):.3f} / "
              f"{max(ratios):.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
