"""When is the EKF good enough? `probde.check_filter` on SDEs observed more and more sparsely.

    python benchmarks/filter_check.py [--out PATH] [--quick]

For each problem: a Laplace fit of the SDE with `probde.EKF()` (its 1000 draws stand in for
a posterior; a NUTS fit is judged the same way), then `probde.check_filter(result)` at 40 of its
draws against a particle filter (4 seeds per draw), timing both:

- **double well** `dx = theta (x - x^3) dt + s dW`, theta = 1, s = 0.7, x(0) ~ N(1, 0.1^2),
  20 observations with Normal noise of sd 0.1, every `gap` = 0.5, 1, 2 and 4 time units
  (the drift's time scale at a well is 1 / (2 theta) = 0.5); particle filter with 1000
  particles and Euler-Maruyama steps of 0.025;
- **FitzHugh-Nagumo, case study**: `case_studies/fitzhugh_nagumo` (60 irregular observations
  of v, gaps 0.2 to 1.8); 1000 particles, 20 steps per interval as in the case study;
- **FitzHugh-Nagumo, every 2**: the same model observed every 2 time units (50 values, data
  of `benchmarks/fhn_data.py`); 1000 particles, 40 steps per interval.

Wall times include compilation. The table: verdict, the sd of the EKF's log-likelihood
error over the draws with its 90% interval (it bounds every posterior mean's shift in
posterior sds), the particle estimate's sd, the Pareto k of the weights, the largest
weighted shift of a mean, and the two wall times.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != HERE]

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402

import probde  # noqa: E402

WELL = probde.SDE(lambda t, x, th: th["theta"] * (x - x**3),
                  lambda t, x, th: jnp.array([th["s"]]), state_names=("x",))


def well(gap):
    times = gap * np.arange(1, 21)
    path = probde.simulate(WELL, jnp.array([1.0]), {"theta": jnp.asarray(1.0),
                                                    "s": jnp.asarray(0.7)},
                           jnp.asarray(times), jax.random.PRNGKey(3), t0=0.0,
                           num_steps=int(math.ceil(gap / 1e-3)))
    values = np.asarray(path.ys)[:, 0] + 0.1 * np.random.default_rng(0).normal(size=times.size)
    model = probde.Model(WELL, {"theta": dist.LogNormal(0.0, 0.5),
                                "s": dist.LogNormal(jnp.log(0.7), 0.3)},
                         dist.Normal(jnp.array([1.0]), 0.1), probde.noise.Normal(sigma=0.1),
                         likelihood=probde.EKF())
    pf = probde.ParticleFilter(num_particles=1000, num_steps=int(round(gap / 0.025)))
    return model, probde.TimeSeries(times, values, observables=("x",)), pf


def fhn(every2):
    root = HERE.parent
    sys.path.insert(0, str(root / "case_studies" / "fitzhugh_nagumo"))
    sys.path.insert(0, str(HERE))
    from model import build_model, load_data

    model = build_model(probde.EKF())
    if not every2:
        return model, load_data(), probde.ParticleFilter(num_particles=1000, num_steps=20)
    from fhn_data import simulate_data

    times, values = simulate_data(50, seed=0)[:2]
    data = probde.TimeSeries(times, values, observables=("v",))
    return model, data, probde.ParticleFilter(num_particles=1000, num_steps=40)


def run(name, model, data, pf, laplace):
    start = time.perf_counter()
    result = probde.infer(model, data, laplace, seed=0)
    fit = time.perf_counter() - start
    start = time.perf_counter()
    check = probde.check_filter(result, num_draws=40, particle_filter=pf, warn=False)
    seconds = time.perf_counter() - start
    print(f"\n{name}: fit {fit:.1f} s, check {seconds:.1f} s\n{check}", flush=True)
    worst = max(check.shifts.items(), key=lambda kv: abs(kv[1]))
    return dict(problem=name, verdict=check.verdict, error_sd=check.error_sd,
                error_sd_interval=list(check.error_sd_interval), mean_error=check.mean_error,
                particle_sd=check.particle_sd, pareto_k=check.pareto_k,
                largest_shift=[worst[0], worst[1]], fit_seconds=fit, check_seconds=seconds,
                num_particles=pf.num_particles, num_steps=pf.num_steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results_filter_check.json"))
    parser.add_argument("--quick", action="store_true", help="the double well only")
    args = parser.parse_args()
    laplace = probde.Laplace(num_draws=1000)
    rows = [run(f"double well, gap {gap:g}", *well(gap), laplace) for gap in (0.5, 1, 2, 4)]
    if not args.quick:
        rows.append(run("FitzHugh-Nagumo, case study (gaps 0.2-1.8)", *fhn(False), laplace))
        rows.append(run("FitzHugh-Nagumo, every 2", *fhn(True), laplace))
    print("\n| problem | verdict | error sd (90%) | particle sd | Pareto k | largest shift "
          "| fit s | check s |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["error_sd_interval"]
        print(f"| {r['problem']} | {r['verdict']} | {r['error_sd']:.2g} ({lo:.2g}-{hi:.2g}) "
              f"| {r['particle_sd']:.2g} | {r['pareto_k']:.2f} | {r['largest_shift'][0]} "
              f"{r['largest_shift'][1]:+.2f} sd | {r['fit_seconds']:.0f} | "
              f"{r['check_seconds']:.0f} |")
    pathlib.Path(args.out).write_text(json.dumps(dict(
        command="python benchmarks/filter_check.py", rows=rows), indent=1))


if __name__ == "__main__":
    main()
