"""Shared command line of the case studies: `run.py --out DIR [--quick]`."""

import argparse
import os
import pathlib


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True, type=pathlib.Path, help="output folder")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run (about a minute on two cores)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def setup_jax(num_chains: int) -> None:
    """One CPU device per chain (before JAX starts), and float64 for the ODE numerics."""
    import numpyro

    numpyro.set_host_device_count(max(num_chains, os.cpu_count() or 1))
    import jax

    jax.config.update("jax_enable_x64", True)


def write_outputs(result, out: pathlib.Path) -> None:
    """Print the ArviZ summary; write idata.nc, summary.csv and fit.png."""
    summary = result.summary()
    print(summary.to_string())
    summary.to_csv(out / "summary.csv")
    result.to_netcdf(out / "idata.nc")
    result.plot_fit(out / "fit.png")
    print(f"solver failures (rejected proposals): {result.solver_failures}")
    print(f"divergences: {int(result.idata['sample_stats']['diverging'].sum())}")
    print(f"wrote {out / 'idata.nc'}, {out / 'summary.csv'}, {out / 'fit.png'}")
