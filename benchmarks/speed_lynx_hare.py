"""Speed on lynx-hare: per-gradient cost, compile time (cold and warm cache), ESS per second,
against a hand-written numpyro + diffrax model and Stan (PyStan 3), measured in one run.

    python benchmarks/speed_lynx_hare.py [--repeats 2] [--handwritten-repeats 1]
                                         [--only micro|compile|runs]
                                         [--out benchmarks/results_speed_lynx_hare.json]

Stan needs `pip install -r benchmarks/requirements-stan.txt` (PyStan 3, whose httpstan
wheel bundles Stan, and a C++ compiler); without it the Stan columns are left out.

The problem and the two JAX implementations are those of `benchmarks/lynx_hare.py` (its
docstring says what each is); Stan fits the same model (`benchmarks/stan_lynx_hare.py`:
same priors, likelihood, data, rk45 at rtol = atol = 1e-6). What is measured:

- **us per forward solve** / **us per value-and-grad**: in a fresh process pinned to one
  core (`taskset -c 0`; see `micro`), the median over 7 blocks (each about
  0.3 s of back-to-back calls, divided by the number of calls) of one jitted call at a
  point near the posterior mode: the hand-written diffrax solve (the "one forward solve"
  of the targets), probde's solve, and the value-and-grad of each implementation's
  potential (probde with its default adjoint, forward sensitivities, and with diffrax's
  reverse adjoint; the hand-written model with diffrax's default reverse adjoint). Stan's
  own "Gradient evaluation took" message is reported beside them (median over chains;
  it times a single evaluation and is noisy).
- **compile to first draw**: in a fresh Python process, the wall time of a
  `num_warmup=1, num_samples=1` run of 4 parallel chains (what precedes the first draw:
  tracing, compiling, initialisation), with an empty persistent compilation cache
  (**cold**) and again in a second process with the cache the first one filled
  (**warm**). Four variants: probde as `probde.infer` runs it (failure count on), probde
  without the failure count and with `EQX_ON_ERROR=nan` (no host callbacks: JAX does not
  cache programs with them; equinox's runtime checks inside diffrax are callbacks unless
  set to `nan`), and the hand-written model (sequential chains: it cannot run under pmap).
  Stan's compile (`stan.build`, C++) is reported beside them.
- **ESS per second**: 4 chains x (1000 warmup + 1000 draws), default NUTS settings in all
  three. The JAX runs as in `benchmarks/lynx_hare.py` (`measure_run`: warmup and sampling
  execution time, compile excluded; probde with parallel chains, the hand-written model
  sequential); Stan's sampling wall time (its chains run as processes, as many at once as
  there are cores; compile excluded). **min bulk ESS / s** = the smallest bulk ESS over
  all parameter components / that time. Repeats use seeds `--seed`, `--seed + 1`, ...;
  every figure is the median over repeats.

Ratios are against the hand-written model and against Stan, from the same run.
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

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import lynx_hare as lh  # noqa: E402  (sets 4 host devices and x64 before JAX starts)

import jax  # noqa: E402

ROOT = lh.ROOT

FIRST_DRAW = textwrap.dedent(
    """
    import json, os, sys, time
    import numpyro
    numpyro.set_host_device_count(4)
    import jax
    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, os.path.join({root!r}, "benchmarks"))
    import lynx_hare as lh
    impl, count = sys.argv[1], sys.argv[2] == "1"
    problem = lh.Problem()
    if impl == "probde":
        fn = problem.probde_fn if count else problem.model.numpyro_model(problem.prepared)
        kernel = lh.NUTS(fn, init_strategy=lh.init_to_uniform(radius=2.0))
        kwargs, chain_method = {{"observed": True}}, "parallel"
    else:
        kernel, chain_method = problem.kernel(impl), "sequential"
        kwargs = problem.model_fn(impl)[1]
    mcmc = lh.MCMC(kernel, num_warmup=1, num_samples=1, num_chains=4,
                   chain_method=chain_method, progress_bar=False)
    t0 = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(0), **kwargs)
    jax.block_until_ready(mcmc.get_samples())
    print("RESULT", json.dumps({{"first_draw_s": time.perf_counter() - t0}}))
    """
)


def median_block_us(fn, args, blocks: int = 7, block_s: float = 0.3) -> float:
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(blocks):
        n, t0 = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - t0 < block_s:
            jax.block_until_ready(fn(*args))
            n += 1
        times.append((time.perf_counter() - t0) / n)
    return 1e6 * statistics.median(times)


MICRO = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, os.path.join({root!r}, "benchmarks"))
    import speed_lynx_hare as sp
    m = sp.lh.Micro(sp.lh.Problem())
    out = {{name: sp.median_block_us(fn, args) for name, (fn, args) in m.fns.items()}}
    print("RESULT", json.dumps(out))
    """
)


def micro() -> dict:
    """The micro-benchmarks in a fresh process pinned to one core (`taskset -c 0`): on a
    small shared machine, unpinned single calls wait on XLA's thread hand-offs and take up
    to twice as long, erratically; one core per chain is also what parallel chains get."""
    cmd = [sys.executable, "-c", MICRO.format(root=str(ROOT))]
    if subprocess.run(["which", "taskset"], capture_output=True).returncode == 0:
        cmd = ["taskset", "-c", "0"] + cmd
    proc = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def first_draw(impl: str, count: bool, cache: str, eqx_nan: bool) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_COMPILATION_CACHE_DIR=cache,
               PROBDE_COMPILATION_CACHE=cache)
    if eqx_nan:
        env["EQX_ON_ERROR"] = "nan"
    proc = subprocess.run([sys.executable, "-c", FIRST_DRAW.format(root=str(ROOT)), impl,
                           "1" if count else "0"], env=env, capture_output=True, text=True,
                          cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])["first_draw_s"]


def compile_times() -> dict:
    out = {}
    variants = {"probde": ("probde", True, False),
                "probde_no_callbacks": ("probde", False, True),
                "handwritten": ("handwritten", False, False)}
    for name, (impl, count, eqx_nan) in variants.items():
        with tempfile.TemporaryDirectory() as cache:
            cold = first_draw(impl, count, cache, eqx_nan)
            warm = first_draw(impl, count, cache, eqx_nan)
        out[name] = {"cold_s": cold, "warm_s": warm}
        print(f"  first draw {name}: cold {cold:.1f} s, warm {warm:.1f} s", flush=True)
    return out


def stan_available() -> bool:
    try:
        import stan  # noqa: F401
    except ImportError:
        return False
    return True


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--handwritten-repeats", type=int, default=1,
                        help="full runs of the hand-written model (sequential chains, slow)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("micro", "compile", "runs"), default=None,
                        help="measure only this part")
    parser.add_argument("--out", type=pathlib.Path,
                        default=ROOT / "benchmarks" / "results_speed_lynx_hare.json")
    args = parser.parse_args()
    import stan_lynx_hare as sl

    res = {"environment": lh.environment(), "settings": vars(args) | {"out": str(args.out)}}
    problem = lh.Problem()
    clock = lh.CompileClock()
    if args.only in (None, "micro"):
        print("micro-benchmarks (one core) ...", flush=True)
        res["micro_us"] = micro()
        print(json.dumps(res["micro_us"], indent=1), flush=True)
    if args.only in (None, "compile"):
        print("compile to first draw (fresh processes) ...", flush=True)
        res["first_draw"] = compile_times()
    if args.only in ("micro", "compile"):
        args.out.write_text(json.dumps(res, indent=2, default=float))
        print(f"wrote {args.out}")
        return
    have_stan = stan_available()
    s = lh.Settings(num_chains=4, num_warmup=1000, num_samples=1000, repeats=args.repeats,
                    micro_calls=0)
    runs = {"probde": [], "handwritten": [], "stan": []}
    for r in range(args.repeats):
        seed = args.seed + r
        print(f"repeat {r + 1}/{args.repeats} (seed {seed}) ...", flush=True)
        runs["probde"].append(lh.measure_run(problem, clock, "probde", "parallel", s, seed,
                                             end_to_end=False))
        print("  probde", {k: runs["probde"][-1][k] for k in
                           ("warmup_s", "sampling_s", "min_bulk_ess", "min_bulk_ess_per_s")},
              flush=True)
        if have_stan:
            runs["stan"].append(sl.run_stan_subprocess(seed=seed, fresh_build=(r == 0)))
            print("  stan", {k: runs["stan"][-1][k] for k in
                             ("build_s", "sample_s", "min_bulk_ess", "min_bulk_ess_per_s")},
                  flush=True)
        if r < args.handwritten_repeats:
            runs["handwritten"].append(lh.measure_run(problem, clock, "handwritten",
                                                      "sequential", s, seed, end_to_end=False))
            print("  handwritten", {k: runs["handwritten"][-1][k] for k in
                                    ("warmup_s", "sampling_s", "min_bulk_ess")}, flush=True)
    res["runs"] = runs

    def jax_summary(rs):
        return {k: med([x[k] for x in rs]) for k in (
            "warmup_s", "sampling_s", "grads_total", "us_per_grad_run", "min_bulk_ess",
            "min_bulk_ess_per_s", "max_rhat", "divergences")} | {
            "posterior_mean": {k: med([x["posterior_mean"][k] for x in rs])
                               for k in rs[0]["posterior_mean"]}} if rs else None

    summary = {"probde": jax_summary(runs["probde"]),
               "handwritten": jax_summary(runs["handwritten"])}
    if runs["stan"]:
        st = runs["stan"]
        summary["stan"] = {
            "sample_s": med([x["sample_s"] for x in st]),
            "build_s_cold": st[0]["build_s"],
            "gradients": med([x["gradients_warmup"] + x["gradients_sampling"] for x in st]),
            "us_per_gradient_chain": med([x["us_per_gradient_chain"] for x in st]),
            "stan_gradient_us": med([x["stan_gradient_us"] for x in st]),
            "min_bulk_ess": med([x["min_bulk_ess"] for x in st]),
            "min_bulk_ess_per_s": med([x["min_bulk_ess_per_s"] for x in st]),
            "max_rhat": med([x["max_rhat"] for x in st]),
            "divergences": med([x["divergences"] for x in st]),
            "posterior_mean": {k: med([x["posterior_mean"][k] for x in st])
                               for k in st[0]["posterior_mean"]},
        }
    res["summary"] = summary
    args.out.write_text(json.dumps(res, indent=2, default=float))
    print(json.dumps(summary, indent=1, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
