"""Lynx-hare with Stan: the reference fit that probde's lynx-hare benchmarks compare against.

    python benchmarks/stan_lynx_hare.py [--seed 0] [--out benchmarks/results_stan_lynx_hare.json]
                                        [--chains 4] [--warmup 1000] [--samples 1000]
                                        [--fresh-build]

Needs PyStan 3 (`pip install -r benchmarks/requirements-stan.txt`); its `httpstan` wheel
bundles Stan and compiles the model with the system C++ compiler (g++, `-O3 -std=c++17`,
no `-march=native`). Measured with pystan 3.14.0, httpstan 4.17.0, Stan 2.39.0
(`result["versions"]` records what actually ran).

The model
---------

The same posterior as `case_studies/lynx_hare/model.py` (Carpenter's Stan case study
"Predator-Prey Population Dynamics: the Lotka-Volterra model in Stan", in today's syntax:
`array[] real`, `ode_rk45_tol`):

- alpha, gamma ~ Normal(1, 0.5) and beta, delta ~ Normal(0.05, 0.05), all truncated at 0
  (`<lower=0>`; the truncation constants do not depend on the parameters, so Stan drops them
  and probde's `TruncatedNormal` keeps them: the same posterior);
- z_init ~ LogNormal(log 10, 1) (2), sigma ~ LogNormal(-1, 1) (2, one per species);
- log y ~ Normal(log z(t), sigma) for both species in all 21 years 1900-1920. The 1900 pelts
  observe z_init itself (probde: t0 = 1900 and the solution saved at 1900 is z_init); the
  other 20 years are solved from t0 = 1900 with `ode_rk45_tol(..., 1e-6, 1e-6, 4096)`.
  Stan's `lognormal` includes the -log y Jacobian term, as numpyro's LogNormal does.

Differences from probde that are not the posterior's: Stan's RK45 is Dormand-Prince
(boost odeint), probde's solver Tsit5 (diffrax); Stan's `max_num_steps` bounds the steps
between two output times, diffrax's `max_steps` the whole solve. The data are read from
probde's csv (`probde/datasets/hudson_bay_lynx_hare.csv`) without importing probde, so this
module never loads JAX (see "Process model" below).

Sampler: Stan's NUTS (`hmc_nuts_diag_e_adapt`): diagonal mass matrix, target acceptance
0.8, tree depth 10, inits uniform(-2, 2) on the unconstrained scale (as probde), 4 chains x
(1000 warmup + 1000 draws), `random_seed=seed`.

What is measured
----------------

- `build_s`: wall time of `stan.build` (stanc + C++ compile + the data/params call).
  httpstan caches compiled models on disk (`~/.cache/httpstan/<version>/models/<id>`):
  `build_cached` says whether the model was already there (then `build_s` is ~1 s or less).
  `--fresh-build` deletes this model's cache directory first, to time a cold compile.
- `sample_s`: wall time of `posterior.sample(...)`, warmup + sampling of all chains,
  including httpstan's HTTP/JSON overhead and parsing the draws into the `Fit`. httpstan
  runs each chain in a worker of a `ProcessPoolExecutor` with `os.cpu_count()` workers, so
  `chains_concurrent` = min(chains, workers) chains run at once.
  httpstan also caches *fits* when a random seed is given: a second identical call would
  return the stored draws without sampling (seen: 0.08 s instead of 8 s for 4 x 200
  iterations). This module deletes this model's cached fits before each `sample` (and
  after it) so that `sample_s` always times real sampling (`fit_cache_cleared`: how many
  stale fits were found).
- `chain_elapsed_s`: per chain, Stan's own "Elapsed Time" (warmup + sampling), i.e. time on
  the core the chain ran on.
- `gradients_warmup`, `gradients_sampling`: sums over chains of `n_leapfrog__` (one gradient
  per leapfrog step; the warmup draws are kept with `save_warmup=True` to count them).
- `us_per_gradient_run` = `sample_s` * 1e6 / all gradients: wall time with chains in
  parallel, the figure comparable to probde's run-level figures on the same machine.
  `us_per_gradient_chain` = sum of `chain_elapsed_s` * 1e6 / all gradients: time per gradient
  on one core (includes the sampler's own bookkeeping, which is small here).
- `stan_gradient_us`: median over chains of Stan's "Gradient evaluation took X seconds",
  printed once per chain before sampling (one gradient at the initial point; noisy).
- `min_bulk_ess`: smallest `arviz.ess(x, method="bulk")` over every scalar component of
  alpha, beta, gamma, delta, z_init, sigma, each a (chain, draw) array (as
  `benchmarks/lynx_hare.py` does); `min_bulk_ess_per_s` = `min_bulk_ess` / `sample_s`;
  `max_rhat`: largest `arviz.rhat` over the same components.
- `divergences`: divergent transitions after warmup; posterior means of the parameters.

Process model
-------------

`stan.build` and `posterior.sample` each start an in-process aiohttp server (httpstan) on a
random localhost port and talk to it over HTTP. Chains run in processes *forked* from the
calling Python process (multiprocessing "fork" context). Forking a process that has already
started JAX (which is multithreaded) can deadlock, and JAX warns about it; so a benchmark
that has imported JAX should use `run_stan_subprocess` (a fresh interpreter running this
file) rather than `run_stan`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
DATA_CSV = ROOT / "probde" / "datasets" / "hudson_bay_lynx_hare.csv"

PARAMETERS = ("alpha", "beta", "gamma", "delta", "z_init", "sigma")

STAN_PROGRAM = """
functions {
  vector dz_dt(real t, vector z, real alpha, real beta, real gamma, real delta) {
    vector[2] dzdt;
    dzdt[1] = (alpha - beta * z[2]) * z[1];   // hares
    dzdt[2] = (-gamma + delta * z[1]) * z[2]; // lynx
    return dzdt;
  }
}
data {
  int<lower=0> N;                 // number of years after the initial one
  real t0;                        // initial year
  array[N] real ts;               // years after the initial one
  array[2] real<lower=0> y_init;  // pelts in the initial year (hare, lynx)
  array[N, 2] real<lower=0> y;    // pelts in the later years
  real rel_tol;
  real abs_tol;
  int<lower=1> max_num_steps;
}
parameters {
  real<lower=0> alpha;
  real<lower=0> beta;
  real<lower=0> gamma;
  real<lower=0> delta;
  vector<lower=0>[2] z_init;
  array[2] real<lower=0> sigma;
}
transformed parameters {
  array[N] vector[2] z = ode_rk45_tol(dz_dt, z_init, t0, ts, rel_tol, abs_tol,
                                      max_num_steps, alpha, beta, gamma, delta);
}
model {
  alpha ~ normal(1, 0.5);
  gamma ~ normal(1, 0.5);
  beta ~ normal(0.05, 0.05);
  delta ~ normal(0.05, 0.05);
  z_init ~ lognormal(log(10), 1);
  sigma ~ lognormal(-1, 1);
  for (k in 1:2) {
    y_init[k] ~ lognormal(log(z_init[k]), sigma[k]);
    y[ : , k] ~ lognormal(log(z[ : , k]), sigma[k]);
  }
}
"""


def load_data() -> dict:
    """Stan data from probde's csv (parsed as `probde.datasets.load_csv` does): the first
    year is t0 and observes the initial state, the other years are solved from it."""
    text = DATA_CSV.read_text()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    header = lines[0].split(",")
    assert header == ["year", "hare", "lynx"], header
    arr = np.array([ln.split(",") for ln in lines[1:]], dtype=float)
    return {
        "N": int(arr.shape[0] - 1),
        "t0": float(arr[0, 0]),
        "ts": arr[1:, 0].tolist(),
        "y_init": arr[0, 1:].tolist(),
        "y": arr[1:, 1:].tolist(),
        "rel_tol": 1e-6,
        "abs_tol": 1e-6,
        "max_num_steps": 4096,
    }


def versions() -> dict:
    import importlib.metadata as md

    import httpstan

    version_hpp = pathlib.Path(httpstan.__file__).parent / "include" / "stan" / "version.hpp"
    text = version_hpp.read_text()
    stan = ".".join(re.search(rf"#define STAN_{p} (\d+)", text).group(1)
                    for p in ("MAJOR", "MINOR", "PATCH"))
    import arviz

    return {"pystan": md.version("pystan"), "httpstan": httpstan.__version__, "stan": stan,
            "arviz": arviz.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _model_dir(model_name: str) -> pathlib.Path:
    import httpstan.cache

    return httpstan.cache.model_directory(model_name)


def build(seed: int, fresh: bool = False):
    """`stan.build` the model with the data and `random_seed=seed`.

    Returns `(posterior, info)` with `info = {"build_s", "build_cached", "model_name"}`.
    `fresh=True` deletes this model's httpstan cache directory first (a cold compile)."""
    import httpstan.cache
    import httpstan.models
    import stan

    model_name = httpstan.models.calculate_model_name(STAN_PROGRAM)
    if fresh:
        httpstan.cache.delete_model_directory(model_name)
    cached = model_name in httpstan.cache.list_model_names()
    # httpstan compiles with setuptools' build_ext, which leaves its object files in
    # ./build/temp.*: build from a scratch directory so none land in the caller's tree.
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="stan_lynx_hare_") as scratch:
        os.chdir(scratch)
        try:
            t0 = time.perf_counter()
            posterior = stan.build(STAN_PROGRAM, data=load_data(), random_seed=seed)
            build_s = time.perf_counter() - t0
        finally:
            os.chdir(cwd)
    return posterior, {"build_s": build_s, "build_cached": cached, "model_name": model_name}


def _clear_fit_cache(model_name: str) -> int:
    """Delete this model's cached fits (httpstan reuses a fit with the same seed and
    arguments instead of sampling); returns how many there were."""
    fits = _model_dir(model_name) / "fits"
    n = len(list(fits.glob("*.jsonlines.gz"))) if fits.is_dir() else 0
    shutil.rmtree(fits, ignore_errors=True)
    return n


def _logger_lines(stan_output: bytes) -> list[str]:
    out = []
    for line in stan_output.splitlines():
        if b'"logger"' not in line:
            continue
        msg = json.loads(line)
        if msg.get("topic") == "logger":
            out.extend(str(v) for v in msg["values"])
    return out


def _parse_chain_log(lines: list[str]) -> dict:
    """Stan's per-chain messages: gradient time at the initial point and elapsed times."""
    grad = warm = samp = None
    for text in lines:
        if m := re.search(r"Gradient evaluation took ([0-9.eE+-]+) seconds", text):
            grad = float(m.group(1))
        elif m := re.search(r"([0-9.eE+-]+) seconds \(Warm-up\)", text):
            warm = float(m.group(1))
        elif m := re.search(r"([0-9.eE+-]+) seconds \(Sampling\)", text):
            samp = float(m.group(1))
    return {"gradient_s": grad, "warmup_s": warm, "sampling_s": samp}


def run_stan(seed: int = 0, num_chains: int = 4, num_warmup: int = 1000,
             num_samples: int = 1000, fresh_build: bool = False) -> dict:
    """Build (or load from httpstan's cache) and sample the model; the figures as a
    JSON-serialisable dict (see the module docstring)."""
    import arviz as az
    import httpstan.services_stub

    posterior, info = build(seed, fresh=fresh_build)
    cleared = _clear_fit_cache(info["model_name"])
    workers = httpstan.services_stub.executor._max_workers

    t0 = time.perf_counter()
    fit = posterior.sample(num_chains=num_chains, num_warmup=num_warmup,
                           num_samples=num_samples, save_warmup=True)
    sample_s = time.perf_counter() - t0
    _clear_fit_cache(info["model_name"])  # leave no stale fits behind

    # fit._draws: (sampler params + constrained params, warmup + draws, chains)
    names = list(fit.sample_and_sampler_param_names) + list(fit.constrained_param_names)
    draws = fit._draws

    def rows(name):  # (chain, draw) over the post-warmup draws; scalar or flattened component
        return draws[names.index(name), num_warmup:, :].T

    def rows_warmup(name):
        return draws[names.index(name), :num_warmup, :].T

    components = [n for n in fit.constrained_param_names if n.split(".")[0] in PARAMETERS]
    ess = {c: float(az.ess(np.ascontiguousarray(rows(c)), method="bulk")) for c in components}
    rhat = {c: float(az.rhat(np.ascontiguousarray(rows(c)))) for c in components}

    grads_warmup = int(rows_warmup("n_leapfrog__").sum())
    grads_sampling = int(rows("n_leapfrog__").sum())
    total_grads = grads_warmup + grads_sampling

    logs = [_parse_chain_log(_logger_lines(out)) for out in fit.stan_outputs]
    grad_times = [c["gradient_s"] for c in logs if c["gradient_s"] is not None]
    elapsed = [c["warmup_s"] + c["sampling_s"] for c in logs
               if c["warmup_s"] is not None and c["sampling_s"] is not None]

    min_ess = min(ess.values())
    res = {
        "seed": seed,
        "num_chains": num_chains,
        "num_warmup": num_warmup,
        "num_samples": num_samples,
        "build_s": info["build_s"],
        "build_cached": info["build_cached"],
        "model_name": info["model_name"],
        "sample_s": sample_s,
        "chains_concurrent": min(num_chains, workers),
        "httpstan_workers": workers,
        "fit_cache_cleared": cleared,
        "chain_elapsed_s": elapsed if len(elapsed) == num_chains else None,
        "chain_logs": logs,  # per chain: its own warmup and sampling seconds
        "gradients_warmup": grads_warmup,
        "gradients_sampling": grads_sampling,
        "us_per_gradient_run": sample_s * 1e6 / total_grads,
        "us_per_gradient_chain": (sum(elapsed) * 1e6 / total_grads
                                  if len(elapsed) == num_chains else None),
        "stan_gradient_us": statistics.median(grad_times) * 1e6 if grad_times else None,
        "min_bulk_ess": min_ess,
        "min_bulk_ess_param": min(ess, key=ess.get),
        "min_bulk_ess_per_s": min_ess / sample_s,
        "max_rhat": max(rhat.values()),
        "divergences": int(rows("divergent__").sum()),
        "mean_stepsize": float(rows("stepsize__")[:, 0].mean()),
        "mean_treedepth": float(rows("treedepth__").mean()),
        "posterior_mean": {c.replace(".1", "[0]").replace(".2", "[1]"): float(rows(c).mean())
                           for c in components},
        "bulk_ess": ess,
        "versions": versions(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
    return res


def run_stan_subprocess(seed: int = 0, num_chains: int = 4, num_warmup: int = 1000,
                        num_samples: int = 1000, fresh_build: bool = False,
                        python: str | None = None) -> dict:
    """`run_stan` in a fresh interpreter (this file's CLI): safe to call from a process
    that has already started JAX (httpstan forks its chain workers)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "stan.json"
        cmd = [python or sys.executable, str(pathlib.Path(__file__).resolve()),
               "--seed", str(seed), "--chains", str(num_chains), "--warmup", str(num_warmup),
               "--samples", str(num_samples), "--out", str(out), "--quiet"]
        if fresh_build:
            cmd.append("--fresh-build")
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--fresh-build", action="store_true",
                        help="delete this model's httpstan cache first (time a cold compile)")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="write the dict as JSON")
    parser.add_argument("--quiet", action="store_true", help="do not print the dict")
    args = parser.parse_args()
    res = run_stan(args.seed, args.chains, args.warmup, args.samples, args.fresh_build)
    text = json.dumps(res, indent=2)
    if not args.quiet:
        print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
