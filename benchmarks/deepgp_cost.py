"""Cost of one SVI step with a deep-GP discrepancy, against the number of observations N.

Model: exponential decay `dx/dt = -k x` (`probde.ODE`, one state, x(0) = 2, Normal noise)
calibrated to N evenly spaced observations on (0, 10] of `2 exp(-0.7 t) + 0.3 sin(2 pi t /
5)` plus noise, with `probde.DeepGPDiscrepancy(layers=2, num_features=100)` (2 x 200
features, weights are latent sites). One step is what `numpyro.infer.SVI.update` does: a
jitted `jax.value_and_grad` of `Trace_ELBO` (one particle) for an `AutoNormal` guide, plus
an Adam update. Variants:

- `full`: all N points; `batch100`, `batch1000`: `batch_size` = 100 / 1000 (numpyro
  subsampling plate over the time points, so the ODE is solved at the batch times only);
- `no_discrepancy`: the same model without a discrepancy, full batch;
- `solve`: one jitted forward `probde.solve` at the N times (no gradient), for scale.

Figures: per-step (per-call) wall time, median over repeats after a warm-up; the time of
the first call (tracing + compilation + one run) is reported separately as `compile_s`.
Runs unchanged on CPU or GPU (one device); `jax.devices()` is recorded in the JSON.
Configurations that fail (e.g. out of memory) are recorded with their error, not raised.

    taskset -c 1 .venv/bin/python benchmarks/deepgp_cost.py [--sizes 1000 10000 100000]
        [--repeats 5] [--quick] [--out benchmarks/results_deepgp_cost.json]
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = ("full", "batch100", "batch1000", "no_discrepancy", "solve")
BATCH = {"full": None, "batch100": 100, "batch1000": 1000, "no_discrepancy": None}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed repeats per configuration (fewer for slow steps)")
    parser.add_argument("--target", type=float, default=0.3,
                        help="seconds of calls per timed repeat (calls are batched up to it)")
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: N = 1000, 10000")
    parser.add_argument("--out", type=pathlib.Path,
                        default=ROOT / "benchmarks" / "results_deepgp_cost.json")
    args = parser.parse_args()
    if args.quick:
        args.sizes = [n for n in args.sizes if n <= 10000] or [1000]
        args.repeats, args.target = 2, 0.1
    return args


def time_calls(step, state, repeats, target):
    """Time `state = step(state)`: first call (compile) separately, then one warm-up call
    and `repeats` timed repeats of as many calls as fit in about `target` seconds (at least
    one). Slow calls (> 2 s) get at most 3 repeats. Returns a dict of timings."""
    import jax

    start = time.perf_counter()
    state = jax.block_until_ready(step(state))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    state = jax.block_until_ready(step(state))
    warm_s = time.perf_counter() - start
    calls = max(1, min(1000, int(target / max(warm_s, 1e-7))))
    if warm_s > 2.0:
        repeats = min(repeats, 3)
    per_call = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            state = step(state)
        jax.block_until_ready(state)
        per_call.append((time.perf_counter() - start) / calls)
    return {"s_per_call": statistics.median(per_call), "all_s": per_call, "calls": calls,
            "repeats": repeats, "compile_s": compile_s, "warmup_s": warm_s}, state


def main():
    args = parse_args()
    # One BLAS thread (as case_studies/_common.setup_jax): must be set before JAX starts.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    import numpyro
    import numpyro.distributions as dist
    import optax
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal
    from numpyro.optim import optax_to_numpyro

    import probde

    devices = jax.devices()
    device = devices[0]
    kind = f"{device.platform}: {getattr(device, 'device_kind', '?')}"
    print(f"jax {jax.__version__}, numpyro {numpyro.__version__}, devices {devices} ({kind})",
          flush=True)

    ode = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    y0 = jnp.array([2.0])

    def build(discrepancy):
        noise = probde.noise.Normal(sigma=dist.HalfNormal(0.3))
        return probde.Model(ode, {"k": dist.LogNormal(0.0, 1.0)}, y0, noise,
                            discrepancy=discrepancy, t0=0.0)

    results = []
    for n in args.sizes:
        times = np.linspace(10.0 / n, 10.0, n)
        rng = np.random.default_rng(n)
        y = 2.0 * np.exp(-0.7 * times) + 0.3 * np.sin(2 * np.pi * times / 5.0)
        y = y + 0.05 * rng.normal(size=n)
        data = probde.TimeSeries(times, y[:, None], observables=("x",))
        for variant in VARIANTS:
            row = {"N": n, "variant": variant, "batch_size": BATCH.get(variant)}
            print(f"N={n:>7} {variant:<15}", end=" ", flush=True)
            try:
                if variant == "solve":
                    t = jnp.asarray(times)
                    solve = jax.jit(lambda th: probde.solve(ode, y0, th, t, t0=0.0).ys)
                    theta = {"k": jnp.array(0.7)}

                    def step(s, solve=solve, theta=theta):
                        return solve(theta)

                    timing, out = time_calls(step, None, args.repeats, args.target)
                    row["finite"] = bool(np.all(np.isfinite(np.asarray(out))))
                else:
                    disc = None if variant == "no_discrepancy" else probde.DeepGPDiscrepancy(
                        layers=args.layers, num_features=args.features)
                    model = build(disc)
                    fn = model.numpyro_model(model.prepare(data))
                    kwargs = {"observed": True, "batch_size": row["batch_size"]}
                    svi = SVI(fn, AutoNormal(fn), optax_to_numpyro(optax.adam(1e-3)),
                              Trace_ELBO())
                    start = time.perf_counter()
                    state = svi.init(jax.random.PRNGKey(0), **kwargs)
                    row["init_s"] = time.perf_counter() - start
                    update = jax.jit(lambda s, svi=svi, kw=kwargs: svi.update(s, **kw))

                    def step(carry, update=update):
                        return update(carry[0])

                    timing, (state, loss) = time_calls(step, (state, jnp.nan),
                                                       args.repeats, args.target)
                    row["last_loss"] = float(loss)
                    row["finite"] = bool(np.isfinite(float(loss)))
                row.update(timing)
                print(f"{timing['s_per_call'] * 1e3:10.3f} ms/step  compile "
                      f"{timing['compile_s']:6.1f} s  ({timing['repeats']} x "
                      f"{timing['calls']} calls)", flush=True)
            except Exception as err:  # noqa: BLE001 - record infeasible configurations
                row["error"] = f"{type(err).__name__}: {str(err)[:500]}"
                print(f"FAILED: {row['error'][:200]}", flush=True)
            results.append(row)

    # ---------------------------------------------------------------- report
    def fmt(r):
        if r is None:
            return "-"
        if "error" in r:
            return "failed"
        s = r["s_per_call"]
        return f"{s * 1e6:.0f} us" if s < 1e-3 else f"{s * 1e3:.1f} ms"

    lookup = {(r["N"], r["variant"]): r for r in results}
    print(f"\nper-step wall time, median ({kind}; {os.cpu_count()} CPUs visible)")
    print("| N | full batch | batch 100 | batch 1000 | no discrepancy | one forward solve |")
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        print(f"| {n:,} | " + " | ".join(fmt(lookup.get((n, v))) for v in VARIANTS) + " |")
    print("\ncompile time (first call, s)")
    print("| N | full batch | batch 100 | batch 1000 | no discrepancy | one forward solve |")
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        cells = []
        for v in VARIANTS:
            r = lookup.get((n, v))
            cells.append("-" if r is None or "error" in r else f"{r['compile_s']:.1f}")
        print(f"| {n:,} | " + " | ".join(cells) + " |")
    exponents = {}
    for v in VARIANTS:
        pts = [(n, lookup[(n, v)]["s_per_call"]) for n in args.sizes
               if (n, v) in lookup and "error" not in lookup[(n, v)]]
        if len(pts) >= 2:
            exponents[v] = float(np.polyfit(np.log([p[0] for p in pts]),
                                            np.log([p[1] for p in pts]), 1)[0])
    print("\nlog-log slope of time per step in N: "
          + ", ".join(f"{v} {e:.2f}" for v, e in exponents.items()))
    args.out.write_text(json.dumps({
        "results": results, "slope_in_N": exponents,
        "devices": [str(d) for d in devices], "device_kind": kind,
        "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "jax": jax.__version__, "numpyro": numpyro.__version__,
        "layers": args.layers, "num_features": args.features, "sizes": args.sizes,
        "repeats": args.repeats, "target_s_per_repeat": args.target, "quick": args.quick,
    }, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
