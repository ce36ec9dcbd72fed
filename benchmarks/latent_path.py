"""Sparse FitzHugh-Nagumo: the EKF against the latent path (`probde.LatentPath`), both with NUTS.

    python benchmarks/latent_path.py [--out PATH] [--seeds 0 1 2] [--ekf-samples 300]
                                     [--skip-ekf] [--dense] [--init median|uniform]
                                     [--chains 2] [--no-screen]

The data: the case study's sparse variant (`case_studies/fitzhugh_nagumo/model.py`,
`load_data(sparse=True)`): v observed with noise of sd 0.1 at 40 uniformly random times
over [0, 200], gaps up to 25 time units (the spikes come about every 35). First the
log-likelihood at the true parameters: EKF, and a particle filter with 1000 particles
(8 seeds; 100 Euler-Maruyama steps per time scale, the default rule), the reference.

`--dense`: the case study's own data instead (60 irregular times over [0, 60], gaps 0.2
to 1.8), output `results_latent_path_dense.json` by default.

Then `probde.infer` as users run it (compilation included), each seed a separate call:

- `latent_path`: `probde.LatentPath(step=0.1)` (2,000 Euler-Maruyama steps, 4,000
  standardised increments sampled with the 6 parameters), NUTS 2 chains (`--chains`) of
  1000 + 1000, target_accept 0.9, the chains started at the prior medians (`--init`,
  default `median`; `uniform` is NUTS's default); the chains screened by the density of
  their parameters (`LatentPath(screen_particles=500)`, the default) unless
  `--no-screen`;
- `ekf`: `probde.EKF()`, NUTS 2 chains of `--ekf-samples` + `--ekf-samples` (its moment
  ODEs through the spikes over long gaps make every gradient expensive), seed 0 only.

Per run: wall time, per parameter posterior mean, sd, 90% interval, whether it covers the
truth, R-hat, bulk ESS and bulk ESS per second, divergences, mean tree depth, each
chain's means and the screen's notes (chains moved or restarted). Writes
`benchmarks/results_latent_path.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent / "case_studies" / "fitzhugh_nagumo"))

import numpyro  # noqa: E402

numpyro.set_host_device_count(4)  # parallel chains (NUTS's default 4 chains) on 2 cores

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from model import TRUE, build_model, load_data, parameter_summary, print_run, timed_fit  # noqa: E402

import probde  # noqa: E402


def at_truth(data):
    params = {k: jnp.asarray(v) for k, v in TRUE.items()}
    ekf = float(probde.log_likelihood(build_model(probde.EKF()), data, params))
    pf = build_model(probde.ParticleFilter(num_particles=1000))
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    est = np.asarray(jax.jit(jax.vmap(
        lambda k: probde.log_likelihood(pf, data, params, seed=k)))(keys))
    return {"ekf": ekf, "pf_mean": float(est.mean()), "pf_sd": float(est.std(ddof=1)),
            "pf_se": float(est.std(ddof=1) / np.sqrt(est.size))}


def run(name, likelihood, method, data, seed):
    result, wall, warned = timed_fit(build_model(likelihood), data, method, seed)
    stats = result.idata.sample_stats
    out = {"method": name, "seed": seed, "init": method.init, "wall_s": wall,
           "params": parameter_summary(result.idata.posterior, TRUE, wall),
           "divergences": int(stats["diverging"].sum()),
           "chain_means": {k: np.asarray(result.idata.posterior[k].mean("draw")).round(4).tolist()
                           for k in TRUE},
           "screened": stats.attrs.get("screened", ""),
           "restarted": stats.attrs.get("restarted", ""),
           "tree_depth": float(stats["tree_depth"].mean()),
           "convergence_warning": warned}
    print_run(out)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ekf-samples", type=int, default=300)
    parser.add_argument("--skip-ekf", action="store_true")
    parser.add_argument("--dense", action="store_true")
    parser.add_argument("--init", default="median", choices=["median", "uniform", "map"],
                        help="where the latent path's NUTS chains start")
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--no-screen", action="store_true",
                        help="LatentPath(screen_particles=None): no screen by the "
                             "parameters' density")
    args = parser.parse_args()
    if args.out is None:
        args.out = HERE / f"results_latent_path{'_dense' if args.dense else ''}.json"
    data = load_data(sparse=not args.dense)
    truth = at_truth(data)
    print("log-likelihood at the truth:", json.dumps(truth), flush=True)
    runs = []
    nuts = probde.NUTS(num_chains=args.chains, num_warmup=1000, num_samples=1000,
                       target_accept=0.9, init=args.init)
    screen = {"screen_particles": None} if args.no_screen else {}

    def save():  # after every run: a long run cut short keeps what it measured
        args.out.write_text(json.dumps({"at_truth": truth, "runs": runs,
                                        "load_average": list(os.getloadavg())}, indent=1))

    for seed in args.seeds:
        runs.append(run("latent_path", probde.LatentPath(step=0.1, **screen), nuts, data,
                        seed))
        save()
    if not args.skip_ekf:
        n = args.ekf_samples
        runs.append(run("ekf", probde.EKF(), probde.NUTS(num_chains=2, num_warmup=n,
                                                         num_samples=n), data, 0))
        save()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
