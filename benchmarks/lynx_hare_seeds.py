"""Lynx-hare as users run it, over many seeds: does every run converge?

    python benchmarks/lynx_hare_seeds.py [--seeds 0 1 ... 9] [--out PATH]

For each seed, in one process (the compiled programs are reused from the second seed on,
as in a user's session or from the persistent cache): `probde.infer(model, data,
probde.NUTS(num_chains=4, num_warmup=1000, num_samples=1000), seed=seed)` on the model of
`case_studies/lynx_hare/model.py`, 4 chains in parallel on 4 CPU devices (as `run.py`);
`--init` picks `probde.NUTS(init=...)` (default "uniform", probde's default) and
`--init-candidates` `probde.NUTS(init_candidates=...)` (default probde's, 8).
Per seed: wall time of the call, max R-hat and min bulk ESS over the parameters (ArviZ),
min bulk ESS per second of the call, divergences, and whether a chain sat apart (probde's
stuck-chain check), whether NUTS's screening warmup moved a chain and whether NUTS
restarted the run (`restart_stuck`, on by default; `--no-restart` turns both off).
Writes `benchmarks/results_lynx_hare_seeds.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
import warnings

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent / "case_studies"))
sys.path.insert(0, str(HERE.parent / "case_studies" / "lynx_hare"))

import _common  # noqa: E402

_common.setup_jax(4)

import arviz as az  # noqa: E402
import numpy as np  # noqa: E402
from model import build_model  # noqa: E402

import probde  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--init", default="uniform", choices=["uniform", "median", "map"],
                        help="probde.NUTS(init=...)")
    parser.add_argument("--init-candidates", type=int, default=None,
                        help="probde.NUTS(init_candidates=...); default probde's")
    parser.add_argument("--no-restart", action="store_true",
                        help="probde.NUTS(restart_stuck=False)")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="default benchmarks/results_lynx_hare_seeds[_INIT][_candidatesK][_norestart].json")
    args = parser.parse_args()
    if args.out is None:
        suffix = ("" if args.init == "uniform" else f"_{args.init}") + (
            "" if args.init_candidates is None else f"_candidates{args.init_candidates}") + (
            "_norestart" if args.no_restart else "")
        args.out = HERE / f"results_lynx_hare_seeds{suffix}.json"
    model, data = build_model(), probde.datasets.lynx_hare()
    runs = []
    for seed in args.seeds:
        options = {} if args.init_candidates is None else {
            "init_candidates": args.init_candidates}
        method = probde.NUTS(num_chains=4, num_warmup=1000, num_samples=1000, init=args.init,
                             restart_stuck=not args.no_restart, **options)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = probde.infer(model, data, method, seed=seed)
        wall = time.perf_counter() - t0
        names = result.parameter_names
        post = result.idata["posterior"].to_dataset()[names]
        rhat = float(np.nanmax(az.rhat(post).to_array().values))
        ess = float(np.nanmin(az.ess(post, method="bulk").to_array().values))
        stats = result.idata["sample_stats"]
        run = {"seed": seed, "infer_s": wall, "max_rhat": rhat, "min_bulk_ess": ess,
               "min_bulk_ess_per_s": ess / wall,
               "divergences": int(stats["diverging"].sum()),
               "gradients": int(stats["n_steps"].sum()),
               "solver_failures": result.solver_failures,
               "screened": stats.attrs.get("screened"),  # NUTS(restart_stuck=True)
               "restarted": stats.attrs.get("restarted"),
               "warnings": [str(w.message).splitlines()[0][:200] for w in caught]}
        runs.append(run)
        print(f"seed {seed}: {wall:.1f} s, max R-hat {rhat:.3f}, min bulk ESS {ess:.0f}, "
              f"ESS/s {ess / wall:.1f}, divergences {run['divergences']}", flush=True)
        args.out.write_text(json.dumps({"init": args.init,
                                        "init_candidates": method.init_candidates,
                                        "restart_stuck": not args.no_restart,
                                        "load_average": os.getloadavg(),
                                        "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
