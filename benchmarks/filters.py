"""Filter likelihoods: time per log-likelihood (+ gradient) against the number of observations.

The stochastic FitzHugh-Nagumo model of `fhn_data.py` (2 states, only v observed, N
observations 2 time units apart, prior at t = 0), for N in 25 ... 400:

- probde's EKF and UKF: `probde.log_likelihood` and its value-and-gradient with respect to
  (a, b, eps, s_v, s_w, sigma), jit-compiled, with the moment equations solved by Dopri5,
  `PIDController(rtol=1e-6, atol=1e-6)`, `dt0=0.01`, `max_steps=1000` (the settings of the
  reference run below);
- probde's particle filter (log-likelihood only: it is not differentiable), 500 particles,
  20 Euler-Maruyama steps per interval;
- cd-dynamax's EKF and UKF on the same model and data with the same solver settings, run by
  `filter_reference.py` in a separate environment (`--reference-python`), in the same
  invocation so that the ratios compare like with like.

Each figure is the median of repeated calls after one compiling call. The script prints a
Markdown table and writes JSON (`--out`).

    .venv/bin/python benchmarks/filters.py --reference-python /path/to/refenv/bin/python
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from fhn_data import M0, P0_SD, TRUE_PARAMS, simulate_data  # noqa: E402


def build_model(probde, jnp, dist, diffrax, likelihood):
    i_ext = TRUE_PARAMS["I"]

    def drift(t, x, th):
        v, w = x[0], x[1]
        return jnp.stack([v - v**3 / 3.0 - w + i_ext, th["eps"] * (v + th["a"] - th["b"] * w)])

    def diffusion(t, x, th):
        return jnp.stack([th["s_v"], th["s_w"]])

    sde = probde.SDE(drift, diffusion, state_names=("v", "w"))
    solver = probde.Solver(diffrax.Dopri5(), rtol=1e-6, atol=1e-6, dt0=0.01, max_steps=1000)
    return probde.Model(
        sde,
        params={name: dist.LogNormal(0.0, 1.0) for name in ("a", "b", "eps", "s_v", "s_w")},
        initial_state=dist.MultivariateNormal(jnp.asarray(M0), P0_SD**2 * jnp.eye(2)),
        observation=probde.noise.Normal(sigma=dist.HalfNormal(1.0)),
        observe=("v",),
        likelihood=likelihood,
        solver=solver,
        t0=0.0,
    )


def timed(fn, args, repeats, budget_s, jax):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - start
    times = []
    t_end = time.perf_counter() + budget_s
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
        if time.perf_counter() > t_end and len(times) >= 3:
            break
    return out, compile_s, statistics.median(times)


def run_probde(Ns, repeats, budget_s, particles):
    import diffrax
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as dist

    jax.config.update("jax_enable_x64", True)
    import probde

    theta = {k: TRUE_PARAMS[k] for k in ("a", "b", "eps", "s_v", "s_w")}
    theta["sigma"] = TRUE_PARAMS["obs_sd"]
    rows = []
    for N in Ns:
        times, v = simulate_data(N)
        data = probde.TimeSeries(times, v[:, None], observables=("v",))
        for name, lik in (("EKF", probde.EKF()), ("UKF", probde.UKF()),
                          ("PF", probde.ParticleFilter(num_particles=particles))):
            model = build_model(probde, jnp, dist, diffrax, lik)

            def ll(p, model=model):
                return probde.log_likelihood(model, data, p)

            row = {"library": "probde", "filter": name, "N": N}
            value, c, t = timed(jax.jit(ll), (theta,), repeats, budget_s, jax)
            row.update(loglik=float(value), ll_ms=t * 1e3, ll_compile_s=c)
            if name != "PF":
                (value, grad), c, t = timed(jax.jit(jax.value_and_grad(ll)), (theta,), repeats,
                                            budget_s, jax)
                row.update(vg_ms=t * 1e3, vg_compile_s=c,
                           grad={k: float(g) for k, g in grad.items()})
            rows.append(row)
            print(f"probde {name:3s} N={N:4d} loglik={row['loglik']:.6f} "
                  f"ll={row['ll_ms']:.2f} ms vg={row.get('vg_ms', float('nan')):.2f} ms",
                  flush=True)
    return rows, {"jax": jax.__version__, "probde": probde.__version__}


def run_reference(python, Ns, out_path):
    cmd = [python, str(HERE / "filter_reference.py"), "--Ns", *map(str, Ns),
           "--settings", "adaptive", "--filters", "EKF", "UKF", "--ukf-Ns", *map(str, Ns),
           "--out", str(out_path)]
    print("running", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads(out_path.read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--Ns", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=4.0,
                        help="stop repeating a call after this many seconds (min 3 calls)")
    parser.add_argument("--particles", type=int, default=500)
    parser.add_argument("--reference-python", default=None,
                        help="python of an environment with cd-dynamax installed")
    parser.add_argument("--quick", action="store_true", help="N 25 and 50, 3 repeats")
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results_filters.json")
    args = parser.parse_args()
    if args.quick:
        args.Ns, args.repeats = [25, 50], 3
    rows, versions = run_probde(args.Ns, args.repeats, args.budget_s, args.particles)
    reference = None
    if args.reference_python:
        ref_out = args.out.with_name(args.out.stem + "_reference.json")
        reference = run_reference(args.reference_python, args.Ns, ref_out)
    result = {"probde": rows, "versions": versions, "reference": reference,
              "settings": {"Ns": args.Ns, "repeats": args.repeats, "particles": args.particles}}
    args.out.write_text(json.dumps(result, indent=1))
    print(table(result))
    print(f"wrote {args.out}")


def _ref_rows(reference):
    """{(filter, N): {"loglik", "vg_ms"}} of the reference JSON (adaptive setting)."""
    if not reference:
        return {}
    out = {}
    for kind, rows in reference.get("results", {}).get("adaptive", {}).items():
        for N, r in rows.items():
            out[(kind, int(N))] = {"loglik": r["loglik"],
                                   "vg_ms": 1e3 * r["time_value_and_grad"]["median_s"],
                                   "ll_ms": 1e3 * r["time_loglik"]["median_s"]}
    return out


def table(result):
    ref = _ref_rows(result["reference"])
    lines = ["| filter | N | probde loglik | probde ll ms | probde vg ms | vg ms / N (us) "
             "| cd-dynamax loglik | cd-dynamax vg ms | cd-dynamax / probde (vg) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["probde"]:
        vg = r.get("vg_ms")
        ref_row = ref.get((r["filter"], r["N"]))
        ref_vg = ref_row.get("vg_ms") if ref_row else None
        ref_ll = ref_row.get("loglik") if ref_row else None
        lines.append(
            f"| {r['filter']} | {r['N']} | {r['loglik']:.5f} | {r['ll_ms']:.2f} | "
            + (f"{vg:.2f} | {1e3 * vg / r['N']:.0f} | " if vg else "- | - | ")
            + (f"{ref_ll:.5f} | {ref_vg:.2f} | {ref_vg / vg:.1f} |" if ref_vg and vg else "- | - | - |")
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
