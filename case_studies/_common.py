"""Shared command line of the case studies: `run.py --out DIR [--quick]`."""

import argparse
import os
import pathlib


def parse_args(description: str, methods: tuple[str, ...] = ()) -> argparse.Namespace:
    """`--out DIR [--quick] [--seed N]`, and `--method M` when `methods` are offered (the
    first is the default)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True, type=pathlib.Path, help="output folder")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run (about a minute on two cores)"
    )
    parser.add_argument("--seed", type=int, default=0)
    if methods:
        parser.add_argument("--method", choices=methods, default=methods[0],
                            help=f"inference method (default {methods[0]})")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def setup_jax(num_chains: int) -> None:
    """One CPU device per chain (before JAX starts), and float64 for the ODE numerics."""
    # Chains already run one per core. A multithreaded BLAS on top (JAX's CPU linear algebra
    # calls LAPACK through OpenBLAS) makes the small GP solves of a discrepancy or emulator
    # wait on each other's threads: milliseconds instead of microseconds per gradient.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import numpyro

    numpyro.set_host_device_count(max(num_chains, os.cpu_count() or 1))
    import jax

    jax.config.update("jax_enable_x64", True)


# --8<-- [start:svi]
# A full-rank Gaussian guide started at the Laplace approximation of the best of eight
# modes: on lynx-hare a single mode search often ends at a local mode that fits the data
# with 2.5 times the noise (see probde.SVI, num_starts).
SVI_OPTIONS = dict(guide="multivariate_normal", num_starts=8, num_draws=4000)
# --8<-- [end:svi]


def write_outputs(result, out: pathlib.Path, plot=None) -> None:
    """Print the ArviZ summary; write idata.nc, summary.csv and fit.png, drawn by
    `plot(result, path)` (default `result.plot_fit`)."""
    summary = result.summary()
    print(summary.to_string())
    summary.to_csv(out / "summary.csv")
    result.to_netcdf(out / "idata.nc")
    if plot is None:
        result.plot_fit(out / "fit.png")
    else:
        plot(result, out / "fit.png")
    print(f"solver failures (rejected proposals): {result.solver_failures}")
    print(f"divergences: {int(result.idata['sample_stats']['diverging'].sum())}")
    print(f"wrote {out / 'idata.nc'}, {out / 'summary.csv'}, {out / 'fit.png'}")


def main(doc: str, case_dir: pathlib.Path, load_data, num_chains: int = 4,
         methods: tuple[str, ...] = ()) -> None:
    """Run one case study: `load_data(probde)` gives its data, `case_dir/model.py` its
    `build_model()`; NUTS with `num_chains` x (1000 + 1000), or x (300 + 300) with --quick.
    `methods` offers `--method`: `"nuts"`, or `"svi"` (`SVI_OPTIONS`; fewer steps with
    --quick)."""
    import sys

    args = parse_args(doc.splitlines()[0], methods)
    setup_jax(num_chains)
    import probde

    sys.path.insert(0, str(case_dir))
    from model import build_model

    steps = 300 if args.quick else 1000
    if getattr(args, "method", "nuts") == "svi":
        options = dict(SVI_OPTIONS, num_steps=3000) if args.quick else SVI_OPTIONS
        method = probde.SVI(**options)
    else:
        method = probde.NUTS(num_chains=num_chains, num_warmup=steps, num_samples=steps)
    result = probde.infer(build_model(), load_data(probde), method, seed=args.seed)
    write_outputs(result, args.out)
