"""Lynx-hare benchmark: probde against a hand-written numpyro + diffrax model of the same problem.

    python benchmarks/lynx_hare.py [--repeats 3] [--quick] [--out benchmarks/results_lynx_hare.json]

The problem is the lynx-hare Lotka-Volterra calibration of `case_studies/lynx_hare/model.py`
(Carpenter's Stan case study): 21 yearly observations of two species, LogNormal noise,
parameters alpha, beta, gamma, delta, z_init (2) and sigma (2); Tsit5 with
rtol = atol = 1e-6 and max_steps = 4096; NUTS with 4 chains x (1000 warmup + 1000 draws).
The two implementations are

- **probde**: `build_model()` of the case study, sampled as `probde.infer` samples it;
- **hand-written**: a plain numpyro model function (`handwritten_model` below) calling
  `diffrax.diffeqsolve` with `throw=False`, diffrax's default `RecursiveCheckpointAdjoint`,
  and a `numpyro.factor` of -inf when the solve fails; sampled by numpyro's
  `MCMC(NUTS(model), chain_method=...)`.

Both use numpyro's NUTS with the same settings (target acceptance 0.8, diagonal mass matrix,
tree depth 10, initial points drawn uniformly in (-2, 2) in the unconstrained space), x64,
and one host device per chain (`numpyro.set_host_device_count(4)` before JAX starts). Both
sample the same sites in the same order, so with the same seed their chains start from the
same points: the comparison is paired.

How each figure is measured
---------------------------

Every figure is the median over `--repeats` runs with seeds `--seed`, `--seed + 1`, ...

- **Time to first draw** is the wall time of a run with `num_warmup=1, num_samples=1`, done in
  a fresh `MCMC` object. **Trace + compile** is the part of it that JAX spends tracing,
  lowering and compiling: the union of the time spans JAX reports through
  `jax.monitoring` (`/jax/core/compile/*` events). The usual "first run minus second
  identical run" does not work here: numpyro builds a new `pmap` for every `MCMC.run`, so a
  second run, even of the same `MCMC` object, traces and compiles again as long as the first.
- **Warmup** and **sampling** time: the same model is run with `MCMC.warmup` and then
  `MCMC.run` (which skips the warmup and samples from the adapted state). Each call compiles
  its own program; the figures are the wall time of each call **minus** its trace + compile
  spans, i.e. execution time. For probde this calls numpyro directly on
  `model.numpyro_model(model.prepare(data), on_failure=...)`, the very function
  `probde.infer` hands to `MCMC` (`probde.infer` runs warmup and sampling in one call and
  does not report them separately), with the kernel options of `probde.NUTS`.
- **Gradient evaluations**: the sum of numpyro's `num_steps` (leapfrog steps, one
  value-and-grad of the potential each) over all chains, for warmup and sampling.
- **us per gradient (run)**: sampling execution time / sampling gradient evaluations. With C
  chains running in parallel on at least C cores this is about 1/C of the cost of one
  gradient; it includes the NUTS bookkeeping and waiting for the slowest chain.
- **us per value-and-grad (one call)** / **us per forward solve (one call)**: median over many
  calls of one jitted `jax.value_and_grad` of the potential energy
  (`numpyro.infer.util.initialize_model(...).potential_fn`) and of one jitted forward solve,
  at a fixed point near the posterior mode (alpha 0.55, beta 0.028, gamma 0.80,
  delta 0.024, z_init (33.9, 5.9), sigma (0.25, 0.25)), on one device.
- **min bulk ESS**: the smallest `arviz.ess(..., method="bulk")` over all components of
  alpha, beta, gamma, delta, z_init and sigma, from the post-warmup draws of the
  warmup + sampling run; **min bulk ESS / s** divides it by warmup + sampling execution time.
  **max R-hat** (rank-normalised, same components) flags chains that did not mix; the JSON
  also has each chain's posterior means.
- **End-to-end**: wall time of one `probde.infer(...)` call with the full settings (compile,
  warmup, sampling, and probde's post-processing: posterior predictive, log-likelihood,
  500 prior draws, the DataTree) against one `MCMC.run` + `get_samples` of the
  hand-written model. The ratio includes work the hand-written baseline does not do.
  `--skip-end-to-end` leaves these runs out.
- **Adjoint**: us per value-and-grad of probde's potential with the default
  `Solver(adjoint="auto")` (which picks `probde.ForwardSensitivity()` for these 8 inputs) and
  with `Solver(adjoint=diffrax.RecursiveCheckpointAdjoint())`.

Chain method: both implementations use `--chain-method` (default `parallel`). Before
measuring, the script traces (without compiling) a `pmap` of each potential's
value-and-grad. With some versions (seen with jax 0.10.2, equinox 0.13.8, diffrax 0.7.2)
diffrax's `RecursiveCheckpointAdjoint` cannot be differentiated under `pmap` (which JAX
implements with `shard_map`; see https://github.com/patrick-kidger/diffrax/issues/765), so
the hand-written model cannot run parallel chains (nor can probde with that adjoint; its
default here, `ForwardSensitivity`, can). The script then records the error, still measures
probde with parallel chains, and measures both implementations with `sequential` chains, so
that the ratios always compare the same chain method.

The script prints Markdown tables and writes every raw number to `--out` (JSON).
`--quick` is a smoke test (2 chains x (50 + 50), 1 repeat); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import platform
import statistics
import subprocess
import threading
import time
import warnings

NUM_DEVICES = 4

# One host device per chain and float64 must be set before JAX creates its backend, so these
# come before anything that could touch it (probde, diffrax and numpyro's models do).
import numpyro  # noqa: E402

numpyro.set_host_device_count(NUM_DEVICES)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import arviz as az  # noqa: E402
import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from numpyro.infer import MCMC, NUTS, init_to_uniform, init_to_value  # noqa: E402
from numpyro.infer.util import initialize_model  # noqa: E402

import probde  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
CASE_STUDY = ROOT / "case_studies" / "lynx_hare" / "model.py"

PARAMETERS = ("alpha", "beta", "gamma", "delta", "z_init", "sigma")
MEANS = ("alpha", "beta", "gamma", "delta", "sigma")
OBSERVABLES = ("hare", "lynx")
# A point near the posterior mode (Carpenter's estimates), where the micro-benchmarks run.
REFERENCE = {
    "alpha": 0.55,
    "beta": 0.028,
    "gamma": 0.80,
    "delta": 0.024,
    "z_init": (33.9, 5.9),
    "sigma": (0.25, 0.25),
}
# numpyro's default fields are z and diverging; these are what the benchmark needs.
EXTRA_FIELDS = ("num_steps", "accept_prob", "potential_energy")
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
IMPLEMENTATIONS = ("probde", "handwritten")
LABELS = {"probde": "probde", "handwritten": "hand-written"}


@dataclasses.dataclass(frozen=True)
class Settings:
    num_chains: int
    num_warmup: int
    num_samples: int
    repeats: int
    micro_calls: int


# ----------------------------------------------------------------------------- the models
def load_case_study():
    """`build_model` of case_studies/lynx_hare/model.py (loaded by path: it is no package)."""
    spec = importlib.util.spec_from_file_location("lynx_hare_case_study", CASE_STUDY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_model


def lotka_volterra_rhs(t, z, theta):
    alpha, beta, gamma, delta = theta
    u, v = z
    return jnp.stack([(alpha - beta * v) * u, (-gamma + delta * u) * v])


def solve_handwritten(z_init, theta, times, adjoint=None):
    """`adjoint=None`: diffrax's default (`RecursiveCheckpointAdjoint`, reverse mode)."""
    return diffrax.diffeqsolve(
        diffrax.ODETerm(lotka_volterra_rhs),
        diffrax.Tsit5(),
        t0=times[0],
        t1=times[-1],
        dt0=None,
        y0=z_init,
        args=theta,
        saveat=diffrax.SaveAt(ts=times),
        stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-6),
        max_steps=4096,
        throw=False,
        adjoint=diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint,
    )


def handwritten_model(times, y=None, adjoint=None):
    """The lynx-hare model as a numpyro user writes it by hand; the first time is t0.
    `adjoint` goes to `diffrax.diffeqsolve` (None: diffrax's default)."""
    alpha = numpyro.sample("alpha", dist.TruncatedNormal(1.0, 0.5, low=0.0))
    beta = numpyro.sample("beta", dist.TruncatedNormal(0.05, 0.05, low=0.0))
    gamma = numpyro.sample("gamma", dist.TruncatedNormal(1.0, 0.5, low=0.0))
    delta = numpyro.sample("delta", dist.TruncatedNormal(0.05, 0.05, low=0.0))
    z_init = numpyro.sample("z_init", dist.LogNormal(jnp.log(10.0), 1.0).expand([2]))
    sol = solve_handwritten(z_init, (alpha, beta, gamma, delta), times, adjoint)
    # A careful user also rejects non-positive populations: log(z) would be NaN there (and
    # numpyro raises on it while searching for a starting point).
    ok = (sol.result == diffrax.RESULTS.successful) & jnp.all(sol.ys > 0)
    numpyro.factor("solve_failed", jnp.where(ok, 0.0, -jnp.inf))
    z = jnp.where(ok, sol.ys, 1.0)  # keep the log finite where the solve failed
    sigma = numpyro.sample("sigma", dist.LogNormal(-1.0, 1.0).expand([2]))
    numpyro.sample("y", dist.LogNormal(jnp.log(z), sigma), obs=y)


class Problem:
    """Everything both implementations need, built once."""

    def __init__(self):
        self.build_model = load_case_study()
        self.data = probde.datasets.lynx_hare()
        self.model = self.build_model()
        self.prepared = self.model.prepare(self.data)
        self._failures = 0
        self._lock = threading.Lock()
        # The function probde.infer samples: the model with its failure callback.
        self.probde_fn = self.model.numpyro_model(self.prepared, on_failure=self._count)
        self.times = jnp.asarray(self.data.times)
        self.values = jnp.asarray(self.data.values)

    def _count(self, rejected):
        with self._lock:
            self._failures += int(np.sum(np.asarray(rejected)))

    def reset_failures(self) -> int:
        """Proposals probde rejected (failed solve, non-positive mean) since the last reset."""
        with self._lock:
            n, self._failures = self._failures, 0
        return n

    def model_fn(self, impl):
        if impl == "probde":
            return self.probde_fn, {"observed": True}
        return handwritten_model, {"times": self.times, "y": self.values}

    def kernel(self, impl):
        if impl == "probde":
            opts = probde.NUTS()  # probde.NUTS.run builds numpyro's NUTS from these options
            return NUTS(
                self.probde_fn,
                target_accept_prob=opts.target_accept,
                dense_mass=opts.dense_mass,
                max_tree_depth=opts.max_tree_depth,
                init_strategy=init_to_uniform(radius=opts.init_radius),
            )
        return NUTS(handwritten_model)  # numpyro's defaults: 0.8, diagonal, depth 10, radius 2


# ------------------------------------------------------------------------------ timing
class CompileClock:
    """The time JAX spends tracing, lowering and compiling, from `jax.monitoring` spans.

    Nested spans (a jit traced inside another) overlap; `within` returns the length of their
    union inside a window, so nothing is counted twice.
    """

    def __init__(self):
        self.spans: list[tuple[float, float]] = []
        jax.monitoring.register_event_time_span_listener(self._on_span)

    def _on_span(self, event, start, end, **kwargs):
        if event in COMPILE_EVENTS:
            self.spans.append((start, end))

    def within(self, t0: float, t1: float) -> float:
        clipped = sorted((max(s, t0), min(e, t1)) for s, e in self.spans if e > t0 and s < t1)
        total, cur_s, cur_e = 0.0, None, None
        for s, e in clipped:
            if cur_e is None or s > cur_e:
                if cur_e is not None:
                    total += cur_e - cur_s
                cur_s, cur_e = s, e
            else:
                cur_e = max(cur_e, e)
        if cur_e is not None:
            total += cur_e - cur_s
        return total


def timed(clock, fn):
    """Run `fn`, wait for its arrays; return (result, wall seconds, trace+compile seconds)."""
    t0 = time.time()
    out = jax.block_until_ready(fn())
    t1 = time.time()
    return out, t1 - t0, clock.within(t0, t1)


def _components(samples):
    """Every scalar component of the parameters, as (chain, draw) arrays."""
    for name in PARAMETERS:
        arr = np.asarray(samples[name])
        flat = arr.reshape(arr.shape[:2] + (-1,))
        for i in range(flat.shape[2]):
            yield flat[:, :, i]


def min_bulk_ess(samples) -> float:
    """Smallest bulk ESS over every component of the parameters; samples are (chain, draw, ...)."""
    return min(float(az.ess(x, method="bulk")) for x in _components(samples))


def max_rhat(samples) -> float:
    """Largest rank-normalised R-hat over every component: a chain stuck elsewhere shows here."""
    return max(float(az.rhat(x)) for x in _components(samples))


def posterior_means(samples, axis=(0, 1)) -> dict:
    """Means of alpha..delta and sigma (one per observable); `axis=1` gives one per chain."""
    out = {}
    for name in MEANS:
        arr = np.asarray(samples[name])
        m = arr.mean(axis=axis)
        if arr.ndim == 2:  # a scalar parameter: (chain, draw)
            out[name] = m.tolist() if np.ndim(m) else float(m)
        else:
            for k, o in enumerate(OBSERVABLES):
                v = m[..., k]
                out[f"{name}[{o}]"] = v.tolist() if np.ndim(v) else float(v)
    return out


# ------------------------------------------------------------------------- measurements
def measure_run(problem, clock, impl, chain_method, s: Settings, seed: int,
                end_to_end: bool = True) -> dict:
    """Time to first draw, warmup and sampling, gradients, ESS, means and end-to-end."""
    _, kwargs = problem.model_fn(impl)
    key = jax.random.PRNGKey(seed)

    def mcmc(num_warmup, num_samples):
        return MCMC(problem.kernel(impl), num_warmup=num_warmup, num_samples=num_samples,
                    num_chains=s.num_chains, chain_method=chain_method, progress_bar=False)

    res = {"impl": impl, "chain_method": chain_method, "seed": seed}
    tiny = mcmc(1, 1)
    run = mcmc(s.num_warmup, s.num_samples)

    def first_draw():
        tiny.run(key, **kwargs)
        return tiny.get_samples()

    def warmup():
        run.warmup(key, extra_fields=EXTRA_FIELDS, collect_warmup=True, **kwargs)
        return run.get_extra_fields(group_by_chain=True)

    def sampling():
        run.run(jax.random.fold_in(key, 1), extra_fields=EXTRA_FIELDS, **kwargs)
        return run.get_samples(group_by_chain=True), run.get_extra_fields(group_by_chain=True)

    _, res["first_draw_wall_s"], res["first_draw_compile_s"] = timed(clock, first_draw)
    problem.reset_failures()
    warm, wall, comp = timed(clock, warmup)
    res.update(warmup_wall_s=wall, warmup_compile_s=comp, warmup_s=wall - comp)
    (samples, extra), wall, comp = timed(clock, sampling)
    res.update(sampling_wall_s=wall, sampling_compile_s=comp, sampling_s=wall - comp)
    res["grads_warmup"] = int(np.asarray(warm["num_steps"]).sum())
    res["grads_sampling"] = int(np.asarray(extra["num_steps"]).sum())
    res["grads_total"] = res["grads_warmup"] + res["grads_sampling"]
    res["us_per_grad_run"] = 1e6 * res["sampling_s"] / res["grads_sampling"]
    res["divergences"] = int(np.asarray(extra["diverging"]).sum())
    res["mean_accept_prob"] = float(np.asarray(extra["accept_prob"]).mean())
    res["rejected_proposals"] = problem.reset_failures() if impl == "probde" else None
    res["min_bulk_ess"] = min_bulk_ess(samples)
    res["min_bulk_ess_per_s"] = res["min_bulk_ess"] / (res["warmup_s"] + res["sampling_s"])
    res["max_rhat"] = max_rhat(samples)
    res["posterior_mean"] = posterior_means(samples)
    res["posterior_mean_by_chain"] = posterior_means(samples, axis=1)

    if not end_to_end:
        res.update(end_to_end_wall_s=None, end_to_end_compile_s=None)
        return res
    if impl == "probde":
        method = probde.NUTS(num_chains=s.num_chains, num_warmup=s.num_warmup,
                             num_samples=s.num_samples, chain_method=chain_method)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # divergence warnings are counted above
            result, wall, comp = timed(clock, lambda: probde.infer(
                problem.build_model(), problem.data, method, seed=seed, progress_bar=False))
        post = result.idata["posterior"]
        res["end_to_end_posterior_mean"] = posterior_means(
            {k: post[k].values for k in MEANS})
    else:
        full = mcmc(s.num_warmup, s.num_samples)

        def end_to_end():
            full.run(key, **kwargs)
            return full.get_samples()

        _, wall, comp = timed(clock, end_to_end)
    res.update(end_to_end_wall_s=wall, end_to_end_compile_s=comp)
    return res


def reference_point(model_fn, kwargs):
    """Potential function and the unconstrained REFERENCE point of a model."""
    values = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in REFERENCE.items()}
    info = initialize_model(jax.random.PRNGKey(0), model_fn, model_kwargs=kwargs,
                            init_strategy=init_to_value(values=values))
    return info.potential_fn, info.param_info.z


def median_call_us(fn, args, n: int) -> float:
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


class Micro:
    """Jitted value-and-grad and forward solves, compiled once, timed once per repeat."""

    def __init__(self, problem):
        model = problem.model
        y0 = jnp.asarray(REFERENCE["z_init"])
        theta = {k: jnp.asarray(v) for k, v in REFERENCE.items() if k in model.params}
        # What probde.solve differentiates, and so what adjoint="auto" decides on: the initial
        # state and every parameter the vector field receives (z_init among them).
        self.num_inputs = int(ravel_pytree((y0, theta))[0].size)
        self.auto_adjoint = type(model.solver.resolve_adjoint(self.num_inputs)).__name__
        self.fns = {}
        for impl in IMPLEMENTATIONS:
            pot, z = reference_point(*problem.model_fn(impl))
            self.fns[f"vg_{impl}"] = (jax.jit(jax.value_and_grad(pot)), (z,))
        # probde with diffrax's reverse adjoint instead of the "auto" choice. Model has no way
        # to swap its solver, so a shallow copy gets a new one (numpyro_model reads it).
        rev = _with_solver(model, dataclasses.replace(
            model.solver, adjoint=diffrax.RecursiveCheckpointAdjoint()))
        pot, z = reference_point(rev.numpyro_model(problem.prepared), {"observed": True})
        self.fns["vg_probde_reverse"] = (jax.jit(jax.value_and_grad(pot)), (z,))

        times = jnp.asarray(problem.prepared.times)
        solve_p = jax.jit(lambda y0, th: probde.solve(
            model.dynamics, y0, th, times, solver=model.solver, t0=model.t0).ys)
        args_h = tuple(jnp.asarray(REFERENCE[k]) for k in ("alpha", "beta", "gamma", "delta"))
        solve_h = jax.jit(lambda y0, th: solve_handwritten(y0, th, times).ys)
        self.fns["solve_probde"] = (solve_p, (y0, theta))
        self.fns["solve_handwritten"] = (solve_h, (y0, args_h))
        ys_p, ys_h = solve_p(y0, theta), solve_h(y0, args_h)
        self.solve_max_abs_diff = float(jnp.max(jnp.abs(ys_p - ys_h)))

    def measure(self, n: int) -> dict:
        return {name: median_call_us(fn, args, n) for name, (fn, args) in self.fns.items()}


def _with_solver(model, solver):
    clone = copy.copy(model)
    clone.solver = solver
    return clone


def probe_parallel(problem, impl, num_chains) -> str | None:
    """Trace (no compile) a pmap of the potential's value-and-grad; the error, if any."""
    pot, z = reference_point(*problem.model_fn(impl))
    zs = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_chains,) + x.shape), z)
    try:
        jax.eval_shape(jax.pmap(jax.value_and_grad(pot)), zs)
    except Exception as err:  # noqa: BLE001 - any failure means: no parallel chains
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0].rstrip(':')}"
    return None


# ---------------------------------------------------------------------------- reporting
def median(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else None


def summarize(runs: list[dict]) -> dict:
    keys = [k for k, v in runs[0].items()
            if (v is None or isinstance(v, (int, float))) and k != "seed"]
    out = {k: median([r[k] for r in runs]) for k in keys}
    for group in ("posterior_mean", "end_to_end_posterior_mean"):
        if group in runs[0]:
            out[group] = {k: median([r[group][k] for r in runs]) for k in runs[0][group]}
    return out


def fmt(v, digits=3):
    if v is None:
        return "n/a"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 100):
        return f"{int(v):,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}"


ROWS = [
    ("time to first draw (1 warmup + 1 draw), s", "first_draw_wall_s"),
    ("  of which trace + compile, s", "first_draw_compile_s"),
    ("warmup, s (execution)", "warmup_s"),
    ("sampling, s (execution)", "sampling_s"),
    ("trace + compile of the warmup and sampling calls, s", None),
    ("gradient evaluations, warmup", "grads_warmup"),
    ("gradient evaluations, sampling", "grads_sampling"),
    ("gradient evaluations, total", "grads_total"),
    ("us per gradient in the run (sampling s / sampling gradients)", "us_per_grad_run"),
    ("us per value-and-grad, one jitted call", "vg_us"),
    ("us per forward solve, one jitted call", "solve_us"),
    ("min bulk ESS", "min_bulk_ess"),
    ("min bulk ESS / s (warmup + sampling)", "min_bulk_ess_per_s"),
    ("max R-hat", "max_rhat", 4),
    ("divergences (sampling, all chains)", "divergences"),
    ("proposals rejected by probde (failed solve or mean <= 0)", "rejected_proposals"),
    ("end-to-end: probde.infer vs MCMC.run, s", "end_to_end_wall_s"),
]


def row_value(summary, key):
    if key is None:
        return summary["warmup_compile_s"] + summary["sampling_compile_s"]
    return summary.get(key)


def table(columns: list[tuple[str, dict]], ratio_of: tuple[int, int]) -> str:
    head = ["quantity"] + [name for name, _ in columns] + ["probde / hand-written"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    i, j = ratio_of
    for label, key, *digits in ROWS:
        vals = [row_value(s, key) for _, s in columns]
        lines.append("| " + " | ".join([label] + [fmt(v, *digits) for v in vals]
                                       + [ratio(vals[i], vals[j])]) + " |")
    for name in columns[0][1]["posterior_mean"]:
        vals = [s["posterior_mean"][name] for _, s in columns]
        lines.append("| " + " | ".join([f"posterior mean {name}"] + [fmt(v, 4) for v in vals]
                                       + [ratio(vals[i], vals[j])]) + " |")
    return "\n".join(lines)


def environment() -> dict:
    import equinox

    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "jax_devices": [str(d) for d in jax.devices()],
        "versions": {
            "probde": probde.__version__, "jax": jax.__version__, "numpyro": numpyro.__version__,
            "diffrax": diffrax.__version__, "equinox": equinox.__version__,
            "arviz": az.__version__, "numpy": np.__version__,
        },
        "git_commit": commit,
        "git_dirty": dirty,
    }


# --------------------------------------------------------------------------------- main
def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs per measurement, each with its own seed "
                             "(default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 2 chains x (50 + 50), 1 repeat; the numbers mean nothing")
    parser.add_argument("--out", type=pathlib.Path,
                        default=ROOT / "benchmarks" / "results_lynx_hare.json",
                        help="JSON file for the raw numbers")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first repeat")
    parser.add_argument("--skip-end-to-end", action="store_true",
                        help="skip the end-to-end probde.infer / MCMC.run runs (saves a third "
                             "of the time)")
    parser.add_argument("--chain-method", default="parallel",
                        choices=("parallel", "sequential", "vectorized"),
                        help="numpyro chain method of both implementations (default parallel)")
    args = parser.parse_args()
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main():
    args = parse_args()
    if args.quick:
        s = Settings(num_chains=2, num_warmup=50, num_samples=50,
                     repeats=args.repeats or 1, micro_calls=50)
    else:
        s = Settings(num_chains=4, num_warmup=1000, num_samples=1000,
                     repeats=args.repeats or 3, micro_calls=500)
    print(f"lynx-hare benchmark: {s.num_chains} chains x ({s.num_warmup} warmup + "
          f"{s.num_samples} draws), {s.repeats} repeat(s), {jax.device_count()} host devices, "
          f"{os.cpu_count()} cores", flush=True)

    clock = CompileClock()
    problem = Problem()
    notes = []
    configs = [("probde", args.chain_method), ("handwritten", args.chain_method)]
    probes = {}
    if args.chain_method == "parallel":
        for impl in IMPLEMENTATIONS:
            probes[impl] = probe_parallel(problem, impl, s.num_chains)
        if probes["probde"] is not None:
            raise SystemExit(f"probde cannot run parallel chains here: {probes['probde']}")
        if probes["handwritten"] is not None:
            notes.append(
                "The hand-written model cannot run parallel chains with this JAX/diffrax: "
                f"{probes['handwritten']} (diffrax's RecursiveCheckpointAdjoint under pmap, "
                "https://github.com/patrick-kidger/diffrax/issues/765). probde is measured "
                "with parallel chains, and both with sequential chains for the ratios.")
            configs = [("probde", "parallel"), ("probde", "sequential"),
                       ("handwritten", "sequential")]
            print("note:", notes[-1], flush=True)

    print("compiling the micro-benchmarks ...", flush=True)
    micro = Micro(problem)
    runs: dict[str, list] = {f"{impl}[{cm}]": [] for impl, cm in configs}
    micro_runs = []
    for r in range(s.repeats):
        seed = args.seed + r
        for impl, cm in configs:
            print(f"repeat {r + 1}/{s.repeats}: {LABELS[impl]} ({cm} chains), seed {seed} ...",
                  flush=True)
            res = measure_run(problem, clock, impl, cm, s, seed,
                              end_to_end=not args.skip_end_to_end)
            runs[f"{impl}[{cm}]"].append(res)
            print(f"  first draw {res['first_draw_wall_s']:.1f} s, warmup {res['warmup_s']:.2f} s, "
                  f"sampling {res['sampling_s']:.2f} s, min bulk ESS {res['min_bulk_ess']:.0f}",
                  flush=True)
        micro_runs.append(micro.measure(s.micro_calls))

    micro_med = {k: median([m[k] for m in micro_runs]) for k in micro_runs[0]}
    summaries = {}
    for name, rs in runs.items():
        summ = summarize(rs)
        impl = rs[0]["impl"]
        summ["vg_us"] = micro_med[f"vg_{impl}"]
        summ["solve_us"] = micro_med[f"solve_{impl}"]
        summaries[name] = summ

    matched = next(cm for impl, cm in configs if impl == "handwritten")
    columns = [(f"{LABELS[impl]} ({cm})", summaries[f"{impl}[{cm}]"]) for impl, cm in configs]
    names = [n for n, _ in columns]
    ratio_of = (names.index(f"probde ({matched})"), names.index(f"hand-written ({matched})"))

    print()
    print(f"## Lynx-hare: probde vs hand-written numpyro + diffrax "
          f"({s.num_chains} chains x ({s.num_warmup} + {s.num_samples}), "
          f"median of {s.repeats})")
    print()
    print(table(columns, ratio_of))
    print()
    print(f"Ratios compare the two implementations with {matched} chains.")
    for note in notes:
        print(f"Note: {note}")
    print()
    print("## probde's adjoint (us per value-and-grad of the potential, one jitted call)")
    print()
    auto, rev = micro_med["vg_probde"], micro_med["vg_probde_reverse"]
    print("| adjoint | us per value-and-grad | / default |")
    print("|---|---|---|")
    print(f"| default `adjoint=\"auto\"` -> {micro.auto_adjoint} ({micro.num_inputs} inputs) "
          f"| {fmt(auto)} | 1.00 |")
    print(f"| `diffrax.RecursiveCheckpointAdjoint()` | {fmt(rev)} | {ratio(rev, auto)} |")
    print(f"| hand-written (diffrax default, RecursiveCheckpointAdjoint) "
          f"| {fmt(micro_med['vg_handwritten'])} | {ratio(micro_med['vg_handwritten'], auto)} |")
    print()
    if args.quick:
        print("(--quick: smoke-test settings; these numbers are not a benchmark)")

    report = {
        "settings": dataclasses.asdict(s) | {"chain_method": args.chain_method,
                                             "seed": args.seed, "quick": args.quick},
        "environment": environment(),
        "notes": notes,
        "parallel_probe_errors": probes,
        "configurations": [f"{impl}[{cm}]" for impl, cm in configs],
        "ratio_chain_method": matched,
        "runs": runs,
        "micro_us": micro_runs,
        "micro_forward_solve_max_abs_diff": micro.solve_max_abs_diff,
        "auto_adjoint": micro.auto_adjoint,
        "median": summaries | {"micro_us": micro_med},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
