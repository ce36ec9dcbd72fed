"""Sparse FitzHugh-Nagumo: particle MCMC with independent against correlated estimates.

    python benchmarks/pmmh.py [--out PATH] [--particles 300] [--steps 200]
                              [--warmup 1000] [--samples 2000] [--seeds 0]
                              [--correlations 0 0.99] [--target-accept 0.1]

The data: the case study's sparse variant (`case_studies/fitzhugh_nagumo/model.py`,
`load_data(sparse=True)`): v observed with noise of sd 0.1 at 40 uniformly random times
over [0, 200], gaps up to 25 time units. The likelihood: `probde.ParticleFilter` with
`--particles` particles and `--steps` Euler-Maruyama steps in every gap (fixed, as common
random numbers need).

First, at the true parameters over 16 sets of random numbers: the log-likelihood estimate's
sd, and for each correlation rho the sd of the difference between the estimate and one
from the random numbers moved by a Crank-Nicolson step `rho u + sqrt(1 - rho^2) eps`, at
the same parameters and at parameters 2% away (what the acceptance ratio of a small move
sees; rho = 0 is an independent estimate).

Then `probde.infer` as users run it (compilation included), for each seed and correlation:
`probde.RandomWalkMetropolis(num_chains=4, chain_method="vectorized", correlation=rho)`.
Per run: wall time; per parameter posterior mean, sd, 90% interval, whether it covers the
truth, R-hat, bulk ESS and bulk ESS per second; mean acceptance. Writes
`benchmarks/results_pmmh.json` after every run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent / "case_studies" / "fitzhugh_nagumo"))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from model import TRUE, build_model, load_data, parameter_summary, print_run, timed_fit  # noqa: E402

import probde  # noqa: E402
from probde.model import auxiliary  # noqa: E402


def noise_at_truth(model, data, correlations, num_sets=16):
    """sd of the estimate, and of its change under a Crank-Nicolson move of the random
    numbers (same parameters, and parameters 2% away), at the truth."""
    params = {k: jnp.asarray(v) for k, v in TRUE.items()}
    near = {k: jnp.asarray(1.02 * v) for k, v in TRUE.items()}
    record = auxiliary.supply_normals()

    def probe(k):
        with record:
            return probde.log_likelihood(model, data, params, seed=k)

    jax.eval_shape(probe, jax.random.PRNGKey(0))

    @jax.jit
    def estimate(u, k, p):
        with auxiliary.supply_normals(values=u):
            return probde.log_likelihood(model, data, p, seed=k)

    keys = jax.random.split(jax.random.PRNGKey(2018), 2 * num_sets)
    base, moved = [], {rho: ([], []) for rho in correlations}
    for i in range(num_sets):
        u = auxiliary.standard_normals(keys[i], record.spec)
        eps = auxiliary.standard_normals(keys[num_sets + i], record.spec)
        a = float(estimate(u, keys[i], params))
        base.append(a)
        for rho in correlations:
            v = jax.tree.map(lambda x, e: rho * x + math.sqrt(1 - rho**2) * e, u, eps)
            moved[rho][0].append(float(estimate(v, keys[i], params)) - a)
            moved[rho][1].append(float(estimate(v, keys[i], near)) - a)
    out = {"log_lik_mean": float(np.mean(base)), "log_lik_sd": float(np.std(base, ddof=1)),
           "num_sets": num_sets, "difference_sd": {
               str(rho): {"same": float(np.std(s, ddof=1)), "near": float(np.std(n, ddof=1))}
               for rho, (s, n) in moved.items()}}
    print("at the truth:", json.dumps(out), flush=True)
    return out


def run(model, data, method, seed, rho):
    result, wall, warned = timed_fit(model, data, method, seed)
    out = {"correlation": rho, "seed": seed, "wall_s": wall,
           "params": parameter_summary(result.idata.posterior, TRUE, wall),
           "acceptance": float(result.idata.sample_stats["acceptance_rate"].mean()),
           "convergence_warning": warned}
    print_run(out)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results_pmmh.json")
    parser.add_argument("--particles", type=int, default=300)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--correlations", type=float, nargs="+", default=[0.0, 0.99])
    parser.add_argument("--target-accept", type=float, default=0.1)
    args = parser.parse_args()
    data = load_data(sparse=True)
    model = build_model(probde.ParticleFilter(num_particles=args.particles,
                                              num_steps=args.steps))
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    noise = noise_at_truth(model, data, [r for r in args.correlations if r > 0] or [0.99])
    runs = []

    def save():  # after every run: a long run cut short keeps what it measured
        args.out.write_text(json.dumps({"settings": settings, "at_truth": noise, "runs": runs,
                                        "load_average": list(os.getloadavg())}, indent=1))

    save()
    for seed in args.seeds:
        for rho in args.correlations:
            method = probde.RandomWalkMetropolis(
                num_chains=4, num_warmup=args.warmup, num_samples=args.samples,
                target_accept=args.target_accept, chain_method="vectorized", correlation=rho)
            runs.append(run(model, data, method, seed, rho))
            save()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
