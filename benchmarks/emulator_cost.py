"""Cost of one log-density gradient with a GP emulator in place of the ODE simulator.

The simple-machine case study (`case_studies/simple_machine/model.py`): the constrained
GP-discrepancy model with the ODE simulator (`constrained`) against the same model with a
GP emulator trained on 12 simulator runs (`emulated`). Figure: microseconds per jitted
value-and-gradient of the potential numpyro's NUTS differentiates, median over repeats,
and the ratio emulated / ODE from the same run.

    taskset -c 1 .venv/bin/python benchmarks/emulator_cost.py [--repeats 7] [--quick]
"""

import argparse
import json
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=pathlib.Path,
                        default=ROOT / "benchmarks" / "results_emulator_cost.json")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.calls = 2, 20
    import os

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import jax

    jax.config.update("jax_enable_x64", True)
    from numpyro.infer.util import initialize_model

    sys.path.insert(0, str(ROOT / "case_studies" / "simple_machine"))
    from model import build_model, load_data

    results = {}
    for variant in ("constrained", "emulated"):
        start = time.perf_counter()
        model = build_model(variant)
        built = time.perf_counter() - start
        fn = model.numpyro_model(model.prepare(load_data()))
        info = initialize_model(jax.random.PRNGKey(0), fn, model_kwargs={"observed": True})
        grad = jax.jit(jax.value_and_grad(info.potential_fn))
        z = info.param_info.z
        start = time.perf_counter()
        jax.block_until_ready(grad(z))
        compile_s = time.perf_counter() - start
        per_call = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _ in range(args.calls):
                out = grad(z)
            jax.block_until_ready(out)
            per_call.append((time.perf_counter() - start) / args.calls * 1e6)
        results[variant] = {"us_per_grad": statistics.median(per_call), "all_us": per_call,
                            "compile_s": compile_s, "build_s": built}
    ratio = results["emulated"]["us_per_grad"] / results["constrained"]["us_per_grad"]
    print("| model | us per value-and-grad | compile s | model build s |")
    print("|---|---|---|---|")
    for variant, r in results.items():
        print(f"| {variant} | {r['us_per_grad']:.0f} | {r['compile_s']:.1f} | {r['build_s']:.1f} |")
    print(f"\nemulated / ODE: {ratio:.2f}")
    args.out.write_text(json.dumps({"results": results, "ratio": ratio,
                                    "repeats": args.repeats, "calls": args.calls,
                                    "jax": jax.__version__}, indent=2))


if __name__ == "__main__":
    main()
