"""Lynx-hare end to end, as users run it: probde against Stan and a hand-written numpyro +
diffrax model that uses the same forward-mode sensitivities, seed by seed, in one session.

    python benchmarks/end_to_end.py [--seeds 0 1 2 3 4] [--handwritten-seeds 0 1 2]
                                    [--skip-stan] [--skip-run-py]
                                    [--out benchmarks/results_end_to_end.json]

Stan needs `pip install -r benchmarks/requirements-stan.txt` (PyStan 3); without it, or
with `--skip-stan`, its rows are left out.

For each seed, one after the other (so that all four see the same machine load; the load
average is recorded before each):

- **probde**: a fresh Python process that runs `probde.infer(model, data,
  probde.NUTS(num_chains=4, num_warmup=1000, num_samples=1000), seed=seed)` on the model of
  `case_studies/lynx_hare/model.py`, with probde's defaults (persistent compilation cache
  on: programs compiled by an earlier seed's process are loaded from it, as in a user's
  second session).
- **hand-written**: a fresh process that runs numpyro's `MCMC(NUTS(model,
  forward_mode_differentiation=True), num_warmup=1000, num_samples=1000, num_chains=4,
  chain_method="parallel")` on `benchmarks/lynx_hare.py`'s `handwritten_model` with
  `adjoint=diffrax.ForwardMode()`: gradients by forward-mode differentiation through the
  solver, the same kind of sensitivities as probde's default `ForwardSensitivity` (8
  inputs), so the ratio measures probde, not the adjoint. JAX's persistent cache is off,
  as in a plain numpyro user's process. It is four times slower per gradient than probde,
  so by default it runs the first three seeds only (`--handwritten-seeds`).
- **Stan**: `benchmarks/stan_lynx_hare.py` in a fresh process (the same model, rk45 at
  rtol = atol = 1e-6; the C++ build loaded from httpstan's cache, its time excluded).
- **run.py**: `case_studies/lynx_hare/run.py --seed SEED` (the main job: sampling, the
  ArviZ summary, the netCDF file and the figure), whole process.

Figures per seed and implementation:

- **process s**: the user's process, from its start (measured from outside) to the end
  of the inference call (interpreter start, imports, compile or cache loads, inference,
  post-processing); for Stan the whole script, for run.py the whole main job (sampling,
  summary, netCDF file, figure).
- **call s**: the wall time of the inference call (`probde.infer`, which includes the
  posterior predictive, pointwise log-likelihood, prior draws and the DataTree; numpyro's
  `MCMC.run` + `get_samples`; Stan's `posterior.sample`). **min bulk ESS / s** divides
  the smallest bulk ESS over every parameter component (ArviZ) by this time.
- **us per gradient, core time, over identical windows**: each JAX process then re-runs
  the same seed's warmup (same key: the same 4 x 1000 iterations as the call; numpyro's
  `MCMC.warmup`, and for probde `NUTS._warmup` on the driver `NUTS.run` uses, its
  best-of-8 starts and 75-iteration screening warmup included; checked by comparing the
  adapted step sizes) and 1000 draws from the adapted state (`MCMC.run`; probde's sampling
  phase with its postprocessing), each timed with `time.process_time` (CPU time of all
  the process's threads) minus the time JAX spent tracing and compiling in it
  (`jax.monitoring` spans); divided by the window's gradients (leapfrog steps). Stan's is
  each chain's own "Elapsed Time" (warmup, sampling; one thread a chain) summed over
  chains, over the same windows.
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
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
NUM_CHAINS, NUM_WARMUP, NUM_SAMPLES = 4, 1000, 1000
IMPLEMENTATIONS = ("probde", "handwritten")


# ------------------------------------------------------------------- one process, one seed
def _timed(clock, fn):
    """`fn()` with its wall and CPU seconds and the seconds JAX spent tracing/compiling."""
    import jax

    w0, c0 = time.time(), time.process_time()
    out = jax.block_until_ready(fn())
    w1, c1 = time.time(), time.process_time()
    return out, {"wall_s": w1 - w0, "cpu_s": c1 - c0, "compile_s": clock.within(w0, w1)}


def _window(timing, gradients):
    core = timing["cpu_s"] - timing["compile_s"]
    return dict(timing, gradients=gradients, core_s=core, us_per_gradient=1e6 * core / gradients)


def worker(impl: str, seed: int) -> dict:
    """The user's call, then the warmup and sampling windows, in this (fresh) process."""
    import lynx_hare as lh  # 4 host devices and x64, before JAX starts

    import diffrax
    import jax
    import numpy as np
    import numpyro
    from numpyro.infer import MCMC, NUTS

    import probde
    from probde.inference import chunks

    clock = lh.CompileClock()
    problem = lh.Problem()
    fields = ("num_steps", "adapt_state.step_size")
    if impl == "probde":
        method = probde.NUTS(num_chains=NUM_CHAINS, num_warmup=NUM_WARMUP,
                             num_samples=NUM_SAMPLES)
        result, call = _timed(clock, lambda: probde.infer(problem.model, problem.data, method,
                                                          seed=seed))
        stats = result.idata["sample_stats"]
        post = result.idata["posterior"]
        samples = {k: post[k].values for k in lh.PARAMETERS}
        call_gradients = int(stats["n_steps"].sum())
        step_sizes = stats["step_size"].values[:, -1]
        divergences = int(stats["diverging"].sum())
        fn, kwargs = problem.model.numpyro_model(problem.prepared), {"observed": True}
        key = jax.random.split(jax.random.PRNGKey(seed), 3)[0]  # probde.infer's key_run
        # NUTS.run's warmup: the best-of-8 starts, the screen (its first 75 iterations),
        # then the rest of the warmup, resuming the screened chains' states, on the driver
        # NUTS.run uses (chunks of one compiled program)
        runner = chunks.Chunks(method.kernel(fn), NUM_CHAINS, NUM_WARMUP, "parallel", kwargs)
    else:
        jax.config.update("jax_enable_compilation_cache", False)  # a plain numpyro process
        fn = lambda times, y=None: lh.handwritten_model(  # noqa: E731
            times, y, adjoint=diffrax.ForwardMode())
        kwargs = {"times": problem.times, "y": problem.values}

        def new_mcmc():
            return MCMC(NUTS(fn, forward_mode_differentiation=True), num_warmup=NUM_WARMUP,
                        num_samples=NUM_SAMPLES, num_chains=NUM_CHAINS,
                        chain_method="parallel", progress_bar=False)

        key = jax.random.PRNGKey(seed)
        user = new_mcmc()

        def run():
            user.run(key, extra_fields=fields, **kwargs)
            return user.get_samples(group_by_chain=True)

        samples, call = _timed(clock, run)
        extra = user.get_extra_fields(group_by_chain=True)
        call_gradients = int(np.asarray(extra["num_steps"]).sum())
        step_sizes = np.asarray(extra["adapt_state.step_size"])[:, -1]
        divergences = int(np.asarray(user.get_extra_fields()["diverging"]).sum())
        mcmc = new_mcmc()

    call_end = time.time()  # the user's process would end about here

    if impl == "probde":
        def warmup():
            _, init = method._starts(fn, key, kwargs)
            run, state, records = method._warmup(
                runner, chunks.Progress(False, 0, NUM_CHAINS), key, init, {})
            return (run, state), {f: np.concatenate([r[f] for r in records], axis=1)
                                  for f in ("num_steps", "adapt_state.step_size")}

        ((run, state), warm), warm_t = _timed(clock, warmup)
        sampled, samp_t = _timed(clock, lambda: run.phase(state, NUM_SAMPLES, "sample",
                                                          keep=True)[1])
    else:
        def warmup():
            mcmc.warmup(key, extra_fields=fields, collect_warmup=True, **kwargs)
            return mcmc.get_extra_fields(group_by_chain=True)

        warm, warm_t = _timed(clock, warmup)
        _, samp_t = _timed(clock, lambda: (
            mcmc.run(jax.random.fold_in(key, 1), extra_fields=fields, **kwargs),
            mcmc.get_extra_fields(group_by_chain=True))[1])
        sampled = mcmc.get_extra_fields(group_by_chain=True)
    warm_steps = np.asarray(warm["adapt_state.step_size"])[:, -1]
    return {
        "impl": impl, "seed": seed,
        "call": dict(call, gradients_sampling=call_gradients, end=call_end),
        "min_bulk_ess": lh.min_bulk_ess(samples),
        "max_rhat": lh.max_rhat(samples),
        "divergences": divergences,
        "posterior_mean": lh.posterior_means(samples),
        "warmup_window": _window(warm_t, int(np.asarray(warm["num_steps"]).sum())),
        "sampling_window": _window(samp_t, int(np.asarray(sampled["num_steps"]).sum())),
        # the re-run warmup is the call's own: its adapted step sizes are the call's
        "warmup_is_the_calls": bool(np.allclose(warm_steps, step_sizes, rtol=1e-12)),
        "versions": {"jax": jax.__version__, "numpyro": numpyro.__version__,
                     "diffrax": diffrax.__version__, "probde": probde.__version__},
    }


# ------------------------------------------------------------------------------ the driver
def _env():
    return dict(os.environ, OPENBLAS_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))


def _process(cmd) -> tuple[float, float]:
    """Run `cmd`; its start (wall clock) and wall seconds."""
    start, t0 = time.time(), time.perf_counter()
    subprocess.run(cmd, check=True, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL)
    return start, time.perf_counter() - t0


def run_jax(impl: str, seed: int, tmp: pathlib.Path) -> dict:
    out = tmp / f"{impl}_{seed}.json"
    start, wall = _process([sys.executable, "-W", "ignore", str(pathlib.Path(__file__).resolve()),
                            "--worker", impl, "--seeds", str(seed), "--out", str(out)])
    res = json.loads(out.read_text())
    # the user's process: from its start to the end of the inference call (the windows
    # measured after it are the benchmark's, not the user's)
    res["process_s"] = res["call"]["end"] - start
    res["process_with_windows_s"] = wall
    return res


def run_stan(seed: int, tmp: pathlib.Path) -> dict:
    out = tmp / f"stan_{seed}.json"
    _, wall = _process([sys.executable, str(HERE / "stan_lynx_hare.py"), "--seed", str(seed),
                     "--out", str(out), "--quiet"])
    s = json.loads(out.read_text())
    logs = s["chain_logs"]
    warm = sum(c["warmup_s"] for c in logs)
    samp = sum(c["sampling_s"] for c in logs)
    return {
        "impl": "stan", "seed": seed, "process_s": wall,
        "call": {"wall_s": s["sample_s"], "gradients_sampling": s["gradients_sampling"]},
        "min_bulk_ess": s["min_bulk_ess"], "max_rhat": s["max_rhat"],
        "divergences": s["divergences"], "posterior_mean": s["posterior_mean"],
        "warmup_window": {"gradients": s["gradients_warmup"], "core_s": warm,
                          "us_per_gradient": 1e6 * warm / s["gradients_warmup"]},
        "sampling_window": {"gradients": s["gradients_sampling"], "core_s": samp,
                            "us_per_gradient": 1e6 * samp / s["gradients_sampling"]},
        "versions": s["versions"],
    }


def run_main_job(seed: int, tmp: pathlib.Path) -> dict:
    _, wall = _process([sys.executable, str(ROOT / "case_studies" / "lynx_hare" / "run.py"),
                     "--seed", str(seed), "--out", str(tmp / f"run_py_{seed}")])
    return {"impl": "run.py", "seed": seed, "process_s": wall}


def _stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return " / ".join(f"{v:.3g}" for v in (min(values), statistics.median(values), max(values)))


def report(runs: list[dict]) -> str:
    """Markdown: min / median / max over the seeds, per implementation."""
    rows = [
        ("process s", lambda r: r.get("process_s")),
        ("call s", lambda r: r.get("call", {}).get("wall_s")),
        ("min bulk ESS", lambda r: r.get("min_bulk_ess")),
        ("min bulk ESS / s (call)", lambda r: r["min_bulk_ess"] / r["call"]["wall_s"]
         if "min_bulk_ess" in r else None),
        ("max R-hat", lambda r: r.get("max_rhat")),
        ("gradients, warmup", lambda r: r.get("warmup_window", {}).get("gradients")),
        ("gradients, sampling", lambda r: r.get("sampling_window", {}).get("gradients")),
        ("us / gradient, core, warmup", lambda r: r.get("warmup_window", {})
         .get("us_per_gradient")),
        ("us / gradient, core, sampling", lambda r: r.get("sampling_window", {})
         .get("us_per_gradient")),
    ]
    impls = [i for i in ("probde", "handwritten", "stan", "run.py")
             if any(r["impl"] == i for r in runs)]
    lines = ["| min / median / max | " + " | ".join(impls) + " |",
             "|---" * (len(impls) + 1) + "|"]
    for name, get in rows:
        cells = [_stats([get(r) for r in runs if r["impl"] == i]) for i in impls]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--handwritten-seeds", type=int, nargs="*", default=None,
                        help="seeds for the hand-written model (default: the first three)")
    parser.add_argument("--skip-stan", action="store_true")
    parser.add_argument("--skip-run-py", action="store_true")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results_end_to_end.json")
    args = parser.parse_args()
    if args.worker:
        args.out.write_text(json.dumps(worker(args.worker, args.seeds[0])))
        return
    if args.handwritten_seeds is None:
        args.handwritten_seeds = args.seeds[:3]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for seed in args.seeds:
            jobs = [lambda s=seed, i=i: run_jax(i, s, tmp) for i in IMPLEMENTATIONS
                    if i == "probde" or seed in args.handwritten_seeds]
            if not args.skip_stan:
                jobs.append(lambda s=seed: run_stan(s, tmp))
            if not args.skip_run_py:
                jobs.append(lambda s=seed: run_main_job(s, tmp))
            for job in jobs:
                load = os.getloadavg()
                res = job()
                res["load_average_before"] = load
                runs.append(res)
                print(f"seed {seed} {res['impl']}: process {res['process_s']:.1f} s"
                      + (f", call {res['call']['wall_s']:.1f} s, min ESS "
                         f"{res['min_bulk_ess']:.0f}, R-hat {res['max_rhat']:.3f}"
                         if "call" in res else ""), flush=True)
                args.out.write_text(json.dumps({"runs": runs}, indent=1))
    print(report(runs))


if __name__ == "__main__":
    main()
