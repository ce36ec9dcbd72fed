"""What keeping the best window costs SVI (lynx-hare): `probde.infer` with the case studies'
`SVI_OPTIONS` (full-rank guide, 8 starts, 5000 steps, 4000 draws), here against the probde
at `--baseline PATH` (e.g. a worktree of the commit before), interleaved.

    python benchmarks/svi_best_window_cost.py --baseline /tmp/base [--repeats 3]

Each repeat runs one fresh process per version, with a new compilation-cache folder, and
times two calls in it: the first (tracing and compiling included) and the second (the
same process, compiled). Prints one JSON line per process, with alpha's posterior mean to
show whether the optimisation itself changed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
DRIVER = textwrap.dedent(
    """
    import json, pathlib, sys, time, warnings
    sys.path.insert(0, {cases!r})
    import _common
    _common.setup_jax(4)
    import probde
    sys.path.insert(0, {cases!r} + "/lynx_hare")
    from model import build_model
    model, data = build_model(), probde.datasets.lynx_hare()
    times = []
    for _ in range(2):
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = probde.infer(model, data, probde.SVI(**_common.SVI_OPTIONS), seed=0,
                             num_prior_samples=0)
        times.append(time.perf_counter() - t)
    print("RESULT", json.dumps({{"probde": str(pathlib.Path(probde.__file__).parents[1]),
          "first_s": times[0], "second_s": times[1],
          "alpha": float(r.idata["posterior"]["alpha"].mean())}}))
    """
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the other probde checkout")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    code = DRIVER.format(cases=str(ROOT / "case_studies"))
    for _ in range(args.repeats):
        for root in (ROOT, pathlib.Path(args.baseline).resolve()):
            with tempfile.TemporaryDirectory() as cache:
                env = dict(os.environ, PYTHONPATH=str(root), XDG_CACHE_HOME=cache,
                           OPENBLAS_NUM_THREADS="1")
                out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root,
                                     capture_output=True, text=True, check=True).stdout
                print(next(line for line in out.splitlines() if line.startswith("RESULT")),
                      flush=True)


if __name__ == "__main__":
    main()
