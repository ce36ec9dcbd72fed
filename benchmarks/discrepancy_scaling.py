"""Discrepancy scaling benchmark: dense O(N^3) against Markovian O(N) GP log marginal likelihood.

    python benchmarks/discrepancy_scaling.py [--repeats 7] [--quick] [--out PATH]
    taskset -c 1 python benchmarks/discrepancy_scaling.py     # one core: see "Shared machines"

What is timed: one jitted `jax.value_and_grad` of the log marginal likelihood of a Matern-3/2
GP discrepancy, log N(r | 0, K(lengthscale, variance) + noise_var I), with respect to the
lengthscale, the variance, the noise variance and the N residuals (what NUTS needs per
leapfrog step), for one series of N irregularly spaced times, in float64 on the CPU:

- **dense**: `probde.discrepancy.dense.gram` + `dense.log_marginal` (Cholesky, with its
  default jitter), O(N^3) time and O(N^2) memory;
- **Markov**: `probde.discrepancy.markov.log_marginal` with a scalar noise variance (a
  covariance-form Kalman filter on gpjax's discretisation of the Matern-3/2 SDE, every
  interval's transition computed before the scan), O(N) time and memory;
- **Markov, per-point noise**: the same with a `(N,)` noise variance (the same filter; before
  it replaced gpjax's square-root filter, this row measured a different one).

How each figure is measured

- **us per call** is the median over `--repeats` repeats (at least 5) of the wall time of a
  block of calls divided by the number of calls in the block, after one call that compiles.
  A block has as many calls as fit in about 0.2 s (at least one), so short calls are not
  dominated by timer and dispatch overhead. At each N the methods' repeats are interleaved
  (dense, Markov, Markov per-point, dense, ...), so that load from other processes on a
  shared machine falls on all of them alike; the JSON keeps every repeat.
- **compile s** is the wall time of the first call (trace, compile and one run).
- Dense stops at the first N whose cost, extrapolated as N^3 from the previous N, would
  exceed `--dense-limit-s` (default 10 s) per call, or whose N x N matrices (about ten of
  them alive under reverse mode) would not fit in half the available memory; the table says
  "skipped" there.
- **Markov / dense** below 1 means the Markov algebra is faster. The **crossover** is the
  first N of the grid where Markov is faster, and the N where the two curves cross when
  interpolated linearly in log N / log time between grid points.

Shared machines: XLA runs the dense linear algebra on several threads, and when another
process takes a core from one of them the others wait for it; on a 2-core machine shared with
other work this made dense calls 20 times slower (0.9 ms becoming 16-28 ms, in multiples of
the 4 ms scheduler slice), while the sequential Markov filter barely changed. Pinning the
process to one core (`taskset -c 1`) removes that effect and measures both on one core,
which is also what each chain gets when NUTS runs one chain per core. The JSON records the
load average and the CPU affinity.

The script prints a Markdown table and writes every number to `--out` (JSON).
`--quick` runs N up to 1,000 (Markov up to 3,000) with 5 short repeats: a smoke test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import statistics
import subprocess
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import probde  # noqa: E402  (before gpjax, which starts JAX's backend: probde/_xla.py)
import gpjax  # noqa: E402, I001
from probde.discrepancy import dense, markov  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
DENSE_SIZES = (100, 300, 1_000, 3_000, 10_000)
MARKOV_SIZES = DENSE_SIZES + (30_000, 100_000)
QUICK_DENSE_SIZES = (100, 300, 1_000)
QUICK_MARKOV_SIZES = (100, 300, 1_000, 3_000)
# The point where the gradient is taken.
LENGTHSCALE, VARIANCE, NOISE_VAR = 1.0, 1.0, 0.1
BLOCK_S = 0.2


def problem(n: int):
    """N irregular times (mean spacing 0.1, so a lengthscale spans about 10 points), and
    residuals from a smooth signal plus noise."""
    rng = np.random.default_rng(n)
    times = np.cumsum(rng.uniform(0.05, 0.15, n)) + 3.0
    residuals = np.sin(times) + 0.3 * np.sqrt(NOISE_VAR) * rng.normal(size=n)
    return jnp.asarray(times), jnp.asarray(residuals)


def _kernel(lengthscale, variance):
    return gpjax.kernels.Matern32(lengthscale=lengthscale, variance=variance)


def make(method: str, times):
    """The jitted value-and-grad in (lengthscale, variance, noise_var, residuals)."""

    def dense_fn(lengthscale, variance, noise_var, residuals):
        K = dense.gram(_kernel(lengthscale, variance), times)
        return dense.log_marginal(K, residuals, noise_var)

    def markov_fn(lengthscale, variance, noise_var, residuals):
        return markov.log_marginal(_kernel(lengthscale, variance), times, residuals, noise_var)

    fn = dense_fn if method == "dense" else markov_fn
    return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))


def arguments(method: str, residuals):
    noise = jnp.asarray(NOISE_VAR)
    if method == "markov_per_point":
        noise = jnp.full(residuals.shape, NOISE_VAR)
    return jnp.asarray(LENGTHSCALE), jnp.asarray(VARIANCE), noise, residuals


def measure(methods: list[str], n: int, repeats: int) -> dict[str, dict]:
    """Time each method at one N. The repeats are interleaved (method a, b, c, a, b, c,
    ...) so that load from other processes on a shared machine hits all methods alike."""
    times, residuals = problem(n)
    calls, out = {}, {}
    for method in methods:
        f = make(method, times)
        args = arguments(method, residuals)
        start = time.perf_counter()
        value, grads = jax.block_until_ready(f(*args))
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        one = time.perf_counter() - start
        finite = bool(np.isfinite(float(value))) and all(
            bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads)
        )
        calls[method] = (f, args, max(1, int(BLOCK_S / max(one, 1e-9))))
        out[method] = {"n": n, "us_repeats": [], "calls_per_repeat": calls[method][2],
                       "compile_s": compile_s, "value": float(value), "finite": finite}
    for _ in range(repeats):
        for method in methods:
            f, args, k = calls[method]
            start = time.perf_counter()
            for _ in range(k):
                # wait for each call: queued asynchronous calls would compete for the cores
                jax.block_until_ready(f(*args))
            out[method]["us_repeats"].append((time.perf_counter() - start) / k * 1e6)
    for res in out.values():
        res["us"] = statistics.median(res["us_repeats"])
    return out


def available_bytes() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def dense_skip_reason(n: int, previous: dict | None, limit_s: float) -> str | None:
    need = 10 * 8 * n * n
    avail = available_bytes()
    if avail is not None and need > avail / 2:
        return f"~{need / 2**30:.1f} GiB of N x N matrices, {avail / 2**30:.1f} GiB available"
    if previous is not None:
        predicted = previous["us"] * 1e-6 * (n / previous["n"]) ** 3
        if predicted > limit_s:
            return f"predicted {predicted:.0f} s per call (N^3 from N={previous['n']:,})"
    return None


def crossover(rows: list[dict]) -> tuple[int | None, float | None]:
    """First grid N where Markov is faster, and the log-log interpolated crossing."""
    pairs = [(r["n"], r["dense_us"], r["markov_us"]) for r in rows if r["dense_us"] is not None]
    first = next((n for n, d, m in pairs if m < d), None)
    interpolated = None
    for (n0, d0, m0), (n1, d1, m1) in zip(pairs, pairs[1:], strict=False):
        g0, g1 = math.log(m0 / d0), math.log(m1 / d1)
        if g0 >= 0 > g1:
            w = g0 / (g0 - g1)
            interpolated = math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0)))
            break
    if pairs and pairs[0][2] < pairs[0][1]:
        interpolated = None  # Markov is faster already at the smallest N
    return first, interpolated


def fmt(v):
    if v is None:
        return "skipped"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def table(rows: list[dict]) -> str:
    lines = [
        "| N | dense us | Markov us | Markov / dense | Markov, per-point noise, us |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "n/a" if r["dense_us"] is None else f"{r['markov_us'] / r['dense_us']:.3g}"
        lines.append(
            f"| {r['n']:,} | {fmt(r['dense_us'])} | {fmt(r['markov_us'])} | {ratio} "
            f"| {fmt(r['markov_per_point_us'])} |"
        )
    return "\n".join(lines)


def environment() -> dict:
    import equinox

    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "memory_available_gib": (available_bytes() or 0) / 2**30,
        "load_average_1_5_15_min": os.getloadavg(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "jax_devices": [str(d) for d in jax.devices()],
        "versions": {
            "probde": probde.__version__, "jax": jax.__version__, "gpjax": gpjax.__version__,
            "equinox": equinox.__version__, "numpy": np.__version__,
        },
        "git_commit": commit,
        "git_dirty": dirty,
    }


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7,
                        help="timed repeats per measurement after compiling (default 7, min 5)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: N up to 1,000 (Markov 3,000); numbers mean little")
    parser.add_argument("--dense-limit-s", type=float, default=10.0,
                        help="skip dense sizes predicted to take longer per call (default 10)")
    parser.add_argument("--out", type=pathlib.Path,
                        default=ROOT / "benchmarks" / "results_discrepancy_scaling.json",
                        help="JSON file for the raw numbers")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    return args


def main():
    args = parse_args()
    dense_sizes = QUICK_DENSE_SIZES if args.quick else DENSE_SIZES
    markov_sizes = QUICK_MARKOV_SIZES if args.quick else MARKOV_SIZES
    print(f"discrepancy scaling: Matern-3/2 value-and-grad, {args.repeats} repeats, "
          f"{os.cpu_count()} cores, jax {jax.__version__}, gpjax {gpjax.__version__}", flush=True)

    env_start = environment()
    print(f"load average at start: {env_start['load_average_1_5_15_min'][0]:.2f}", flush=True)
    results = {"dense": [], "markov": [], "markov_per_point": []}
    skipped = {}
    previous, dense_on = None, True
    for n in markov_sizes:
        methods = ["markov", "markov_per_point"]
        if dense_on and n in dense_sizes:
            reason = dense_skip_reason(n, previous, args.dense_limit_s)
            if reason is None:
                methods.insert(0, "dense")
            else:
                dense_on = False
                skipped[n] = reason
                print(f"dense N={n:,}: skipped ({reason})", flush=True)
        measured = measure(methods, n, args.repeats)
        for method, res in measured.items():
            results[method].append(res)
            print(f"{method} N={n:,}: {res['us']:,.0f} us (repeats {min(res['us_repeats']):,.0f}"
                  f" to {max(res['us_repeats']):,.0f}), compile {res['compile_s']:.1f} s",
                  flush=True)
        previous = measured.get("dense", previous)

    def at(method, n):
        return next((r["us"] for r in results[method] if r["n"] == n), None)

    rows = [
        {"n": n, "dense_us": at("dense", n), "markov_us": at("markov", n),
         "markov_per_point_us": at("markov_per_point", n)}
        for n in markov_sizes
    ]
    # Where both ran, the two log marginals must agree (a check that the timing compares
    # like with like; dense has its 1e-8 jitter, so agreement is to about 1e-7).
    agreement = {
        r["n"]: abs(r["value"] - at_value) / abs(at_value)
        for r in results["markov"]
        for at_value in [next((d["value"] for d in results["dense"] if d["n"] == r["n"]), None)]
        if at_value is not None
    }
    first, interpolated = crossover(rows)

    print()
    print(f"## Matern-3/2 log marginal value-and-grad, median of {args.repeats} (us per call)")
    print()
    print(table(rows))
    print()
    if first is None:
        print("Crossover: Markov is not faster at any N where dense ran.")
    elif interpolated is None:
        print(f"Crossover: Markov is faster at every N from {first:,}.")
    else:
        print(f"Crossover: Markov is faster from N = {first:,} on the grid; the curves cross "
              f"at N = {interpolated:,.0f} (log-log interpolation).")
    for n, reason in skipped.items():
        print(f"Dense skipped from N = {n:,}: {reason}.")
    print("Max relative difference of the two log marginals: "
          f"{max(agreement.values()):.1e}" if agreement else "")
    load = os.getloadavg()
    print(f"Load average (1, 5, 15 min) at the end: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} "
          f"on {os.cpu_count()} cores; this process ran on cores "
          f"{sorted(os.sched_getaffinity(0))}.")
    if args.quick:
        print("(--quick: smoke-test settings)")

    report = {
        "settings": {"repeats": args.repeats, "quick": args.quick,
                     "dense_limit_s": args.dense_limit_s, "block_s": BLOCK_S,
                     "lengthscale": LENGTHSCALE, "variance": VARIANCE, "noise_var": NOISE_VAR,
                     "kernel": "Matern32", "dtype": "float64"},
        "environment": env_start,
        "load_average_at_end": os.getloadavg(),
        "results": results,
        "dense_skipped": {str(n): reason for n, reason in skipped.items()},
        "table": rows,
        "crossover_first_grid_n": first,
        "crossover_interpolated_n": interpolated,
        "log_marginal_relative_difference": {str(n): v for n, v in agreement.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
