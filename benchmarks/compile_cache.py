"""A second process against the first: the persistent compilation cache, as users run probde.

    python benchmarks/compile_cache.py [--repeats 3] [--baseline PATH] [--out PATH]

What is timed, in fresh Python processes (default settings: probde's cache on in a new,
empty folder per repeat; stderr not a terminal, so no progress bar):

- `run.py`: `case_studies/lynx_hare/run.py --out DIR`, the main job (4 chains x (1000 +
  1000) in parallel, one per CPU device, then the summary, `idata.nc` and the plot): the
  process's wall time, measured from the parent, and the `probde.infer` call inside it
  (the script's own timing line is not used; a small driver below runs the same steps).
- `first draw`: `probde.infer(model, data, probde.NUTS(num_chains=4, num_warmup=1,
  num_samples=1), num_prior_samples=0)` on the same model: what precedes sampling
  (tracing, compiling or loading, initialisation) and little else.

Each repeat runs a **cold** process (empty cache) and then a **warm** one (the cache the
cold one filled); the figure is the ratio warm / cold of each repeat. `--baseline PATH`
runs the same with the probde at PATH (another checkout, e.g. the commit before this
change) in the same session, interleaved, as the reference. Writes every repeat to
`benchmarks/results_compile_cache.json` (and prints min / median / max).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The steps of case_studies/lynx_hare/run.py (case_studies/_common.py's main), with the
# probde.infer call timed; `first` runs the one-draw call instead.
DRIVER = textwrap.dedent(
    """
    import json, pathlib, sys, time
    t_start = time.perf_counter()
    sys.path.insert(0, str(pathlib.Path({root!r}) / "case_studies"))
    import _common
    _common.setup_jax(4)
    import jax
    import probde
    # the probde of the version asked for (the working folder), chains on 4 devices
    assert pathlib.Path(probde.__file__).resolve().parents[1] == pathlib.Path.cwd().resolve()
    assert jax.local_device_count() == 4
    sys.path.insert(0, str(pathlib.Path({root!r}) / "case_studies" / "lynx_hare"))
    from model import build_model
    what, out = sys.argv[1], pathlib.Path(sys.argv[2])
    model, data = build_model(), probde.datasets.lynx_hare()
    t_import = time.perf_counter()
    if what == "first":
        method = probde.NUTS(num_chains=4, num_warmup=1, num_samples=1)
        result = probde.infer(model, data, method, seed=0, num_prior_samples=0)
    else:
        method = probde.NUTS(num_chains=4, num_warmup=1000, num_samples=1000)
        result = probde.infer(model, data, method, seed=0)
    t_infer = time.perf_counter()
    if what != "first":
        _common.write_outputs(result, out)
    print("RESULT", json.dumps({{"import_s": t_import - t_start, "infer_s": t_infer - t_import,
                                 "failures": result.solver_failures}}))
    """
)


def one_process(probde_root: pathlib.Path, what: str, cache: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PROBDE_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR",
                        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "EQX_ON_ERROR",
                        "XLA_FLAGS")}
    env.update(PYTHONPATH=str(probde_root), XDG_CACHE_HOME=cache)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", DRIVER.format(root=str(ROOT)), what, out],
            env=env, capture_output=True, text=True, cwd=probde_root)  # cwd: first on sys.path
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT "):]), process_s=wall)


def summary(values) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", type=pathlib.Path, default=None,
                        help="a checkout of probde to run as the reference")
    parser.add_argument("--what", nargs="+", default=["first", "run"],
                        choices=["first", "run"])
    parser.add_argument("--out", type=pathlib.Path,
                        default=ROOT / "benchmarks" / "results_compile_cache.json")
    args = parser.parse_args()
    versions = {"probde": ROOT}
    if args.baseline is not None:
        versions["baseline"] = args.baseline.resolve()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    results = {"commit": commit, "load_average_start": os.getloadavg(),
               "versions": {k: str(v) for k, v in versions.items()}, "runs": []}
    for repeat in range(args.repeats):
        for what in args.what:
            for name, root in versions.items():
                with tempfile.TemporaryDirectory() as cache:
                    cold = one_process(root, what, cache)
                    warm = one_process(root, what, cache)
                run = {"repeat": repeat, "what": what, "version": name, "cold": cold,
                       "warm": warm, "load_average": os.getloadavg()}
                results["runs"].append(run)
                print(f"{what:5s} {name:8s} repeat {repeat}: process {cold['process_s']:.1f} -> "
                      f"{warm['process_s']:.1f} s, infer {cold['infer_s']:.1f} -> "
                      f"{warm['infer_s']:.1f} s", flush=True)
                args.out.write_text(json.dumps(results, indent=1))
    results["summary"] = {}
    for what in args.what:
        for name in versions:
            runs = [r for r in results["runs"] if r["what"] == what and r["version"] == name]
            entry = {}
            for key in ("process_s", "infer_s"):
                entry[key] = {
                    "cold": summary([r["cold"][key] for r in runs]),
                    "warm": summary([r["warm"][key] for r in runs]),
                    "warm_over_cold": summary([r["warm"][key] / r["cold"][key] for r in runs]),
                }
            results["summary"][f"{what}/{name}"] = entry
            print(what, name, json.dumps(entry))
    results["load_average_end"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
