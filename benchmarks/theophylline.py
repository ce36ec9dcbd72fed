"""Theophylline population model: probde's ODE route against an analytic floor.

    python benchmarks/theophylline.py [--repeats 3] [--quick] [--skip-end-to-end]
                                      [--end-to-end-repeats N] [--chain-method parallel]
                                      [--out benchmarks/results_theophylline.json]

The problem is the population model of `case_studies/theophylline/model.py` on
`probde.datasets.theophylline()` (12 subjects, 132 concentrations, one oral dose per
subject at t = 0): a one-compartment model with first-order absorption, a shared
elimination rate ke = exp(lKe), per-subject absorption rate ka_i = exp(lKa_i) and clearance
Cl_i = exp(lCl_i) from Normal populations (non-centred), Normal noise. Two implementations
of the same posterior are sampled:

- **ODE route**: probde's numpyro program, `build_model().numpyro_model(prepared)` (the
  function `probde.infer` samples, without its failure-count callback), which solves the
  two-state ODE for every subject with the case study's solver (Tsit5, rtol = atol = 1e-6,
  probde's default adjoint), vmapped over the subjects;
- **analytic floor**: a hand-written numpyro model (`analytic_model` below) with the closed
  form C(t) = dose ka / (V (ka - ke)) (exp(-ke t) - exp(-ka t)), V = Cl / ke, vectorised
  over the 132 observations (each subject at its own times, no padding). It samples the
  same sites in the same order with the same shapes (`lKa_decentered`, `lCl_decentered`
  standard normals in a plate of 12, lKa = mu + tau z), so for a given seed both draw the
  same starting points: the comparison is paired, except for a chain whose start the ODE
  route rejects and draws again (a subject's ka so large that the solve fails); the script
  reports, per seed, which chains start at the same point.

Both are sampled by numpyro's `MCMC(NUTS(...))` with the kernel options of `probde.NUTS`
(target acceptance 0.8, diagonal mass matrix, tree depth 10, initial points uniform in
(-2, 2) in the unconstrained space; the ODE route's kernel is `probde.NUTS(...).kernel(fn)`
itself), 4 chains x (1000 warmup + 1000 draws), float64, the same `--chain-method` for both
(default `parallel`: one host device per chain, `numpyro.set_host_device_count(4)` via
`benchmarks/lynx_hare.py`, whose timing helpers this script uses).

What is measured, per repeat (seeds `--seed`, `--seed + 1`, ...):

- **warmup** and **sampling** time: `MCMC.warmup` then `MCMC.run` (which samples from the
  adapted state), each its wall time minus its own trace + compile time (the union of the
  `/jax/core/compile/*` spans `jax.monitoring` reports), i.e. execution time;
- **gradient evaluations**: the sum of numpyro's `num_steps` (leapfrog steps) over chains;
- **min bulk ESS**: the smallest `arviz.ess(..., method="bulk")` over every component of
  lKe, mu_lKa, mu_lCl, tau_lKa, tau_lCl, sigma, lKa (12) and lCl (12), post-warmup draws;
  **min bulk ESS / s** divides it by warmup + sampling execution time; **max R-hat** over
  the same components; **divergences** after warmup;
- **mixed**: max R-hat < 1.05. The posterior has a second, worse mode (the flip-flop of
  this model: the shared ke large, about 1.5 /h, and every ka_i small, about 0.09 /h, with
  a larger sigma), and a chain started from a uniform(-2, 2) point can stay there for the
  whole run. Such a run's min bulk ESS is that of the stuck chain, not a measure of
  sampling efficiency; the script flags it, judges the target on the repeats where both
  implementations mixed, and leaves it out of the posterior-mean comparison (the JSON has
  each chain's means);
- **ODE solver steps** per subject and per evaluation at the draws (warmup and sampling,
  from probde's `_probde/solver_steps` site), and those of the slowest subject: the
  subjects' solves are vmapped, so every evaluation runs as many steps as its slowest
  subject needs;
- **posterior means** (and MCSE) of the population parameters; the script prints both
  implementations side by side with their difference in combined MCSEs;
- **ratio** ODE / analytic of min bulk ESS / s per repeat (the target: the ODE route within
  3x of the analytic floor, i.e. ratio >= 1/3), split into its factors: ESS per run /
  (time per gradient in the run x gradients per run);
- **us per value-and-grad / per value, one jitted call**: median over many calls of
  `jax.jit(jax.value_and_grad(potential_fn))` (and of `potential_fn` alone), with
  `potential_fn` from `numpyro.infer.util.initialize_model`, at a fixed point near the
  posterior mode, on one device; for the ODE route also with probde's failure-count
  callback (`on_failure`, what `probde.infer` samples). A call this short is mostly
  dispatch for the analytic model, so the same value-and-grad is also timed **in a compiled
  loop** (`lax.scan` of 100 calls, each at a point moved slightly along the previous
  gradient, as a leapfrog step does), per gradient. The potentials of the two
  implementations at that point must agree to the solver's tolerance (printed);
- **end-to-end**: wall time of one `probde.infer(build_model(), data, probde.NUTS(4 chains,
  1000 + 1000), seed=seed)` call (compile, sampling, probde's post-processing), and of one
  `MCMC.run` + `get_samples` of the analytic model; `--skip-end-to-end` leaves them out,
  `--end-to-end-repeats N` keeps them in the first N repeats only.

The script prints Markdown tables (every repeat, min, median, max) and writes the raw
numbers to `--out` (JSON). `--quick` is a smoke test (2 chains x (100 + 100), 1 repeat);
its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import statistics
import sys
import warnings

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import lynx_hare as lh  # noqa: E402  (sets 4 host devices and x64 before JAX starts)

# isort: split

import arviz as az  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro import handlers  # noqa: E402
from numpyro.infer import MCMC, NUTS, init_to_uniform, init_to_value  # noqa: E402
from numpyro.infer.util import initialize_model  # noqa: E402

import probde  # noqa: E402

ROOT = lh.ROOT
CASE_STUDY = ROOT / "case_studies" / "theophylline" / "model.py"

POPULATION = ("lKe", "mu_lKa", "mu_lCl", "tau_lKa", "tau_lCl", "sigma")
PARAMETERS = POPULATION + ("lKa", "lCl")
IMPLEMENTATIONS = ("analytic", "ode")
SOLVER_STEPS = "_probde/solver_steps"
MIXED_RHAT = 1.05  # a run with max R-hat above this has a chain elsewhere (see below)
LOOP = 100  # value-and-grad calls per compiled loop in the micro-benchmark
LABELS = {"analytic": "analytic floor", "ode": "ODE route (probde)"}
# A point near the posterior mode (rounded estimates of the usual analyses of these data),
# where the micro-benchmarks run; the subjects sit at their population means.
REFERENCE = {"lKe": -2.45, "mu_lKa": 0.45, "mu_lCl": -3.2, "tau_lKa": 0.6, "tau_lCl": 0.2,
             "lKa_decentered": np.zeros(12), "lCl_decentered": np.zeros(12), "sigma": 0.7}


@dataclasses.dataclass(frozen=True)
class Settings:
    num_chains: int
    num_warmup: int
    num_samples: int
    repeats: int
    micro_calls: int


# ----------------------------------------------------------------------------- the models
def load_case_study():
    """`build_model` of case_studies/theophylline/model.py (loaded by path)."""
    spec = importlib.util.spec_from_file_location("theophylline_case_study", CASE_STUDY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_model


def analytic_model(subject, times, doses, conc=None):
    """The theophylline population model with the closed-form solution of the ODE.

    `subject` (N,) is each observation's subject index, `times` (N,) its time after the
    dose, `doses` (12,) the doses in mg/kg, `conc` (N,) the concentrations. Same priors,
    sites and site order as probde's program of the case study."""
    num_subjects = doses.shape[0]
    lke = numpyro.sample("lKe", dist.Normal(-2.5, 1.0))
    mu_lka = numpyro.sample("mu_lKa", dist.Normal(0.5, 1.0))
    mu_lcl = numpyro.sample("mu_lCl", dist.Normal(-3.0, 1.0))
    tau_lka = numpyro.sample("tau_lKa", dist.HalfNormal(1.0))
    tau_lcl = numpyro.sample("tau_lCl", dist.HalfNormal(1.0))
    with numpyro.plate("subjects", num_subjects):
        z_ka = numpyro.sample("lKa_decentered", dist.Normal(0.0, 1.0))
        lka = numpyro.deterministic("lKa", mu_lka + tau_lka * z_ka)
        z_cl = numpyro.sample("lCl_decentered", dist.Normal(0.0, 1.0))
        lcl = numpyro.deterministic("lCl", mu_lcl + tau_lcl * z_cl)
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    ke = jnp.exp(lke)
    ka = jnp.exp(lka)[subject]
    volume = jnp.exp(lcl - lke)[subject]  # V = Cl / ke
    mean = doses[subject] * ka / (volume * (ka - ke)) * (jnp.exp(-ke * times)
                                                         - jnp.exp(-ka * times))
    with numpyro.plate("observations", times.shape[0]):
        numpyro.sample("conc", dist.Normal(mean, sigma), obs=conc)


class Problem:
    """Data, both model functions and their kernels, built once."""

    def __init__(self):
        self.build_model = load_case_study()
        self.data = probde.datasets.theophylline()
        self.model = self.build_model()
        self.prepared = self.model.prepare(self.data)
        self.ode_fn = self.model.numpyro_model(self.prepared)
        self.ode_fn_counted = self.model.numpyro_model(self.prepared, on_failure=lambda r: None)
        subject, times, conc, doses = [], [], [], []
        for i, ts in enumerate(self.data):
            subject.append(np.full(len(ts.times), i))
            times.append(np.asarray(ts.times, float))
            conc.append(np.asarray(ts.values, float)[:, 0])
            doses.append(float(ts.inputs["dose_mg_per_kg"]))
        self.analytic_kwargs = {"subject": jnp.asarray(np.concatenate(subject)),
                                "times": jnp.asarray(np.concatenate(times)),
                                "doses": jnp.asarray(doses),
                                "conc": jnp.asarray(np.concatenate(conc))}
        self.num_obs = int(self.analytic_kwargs["times"].shape[0])
        self.options = probde.NUTS()

    def model_fn(self, impl):
        if impl == "ode":
            return self.ode_fn, {"observed": True}
        return analytic_model, self.analytic_kwargs

    def kernel(self, impl):
        opts = self.options
        if impl == "ode":
            return opts.kernel(self.ode_fn)  # what probde.NUTS.run builds
        return NUTS(analytic_model, target_accept_prob=opts.target_accept,
                    dense_mass=opts.dense_mass, max_tree_depth=opts.max_tree_depth,
                    init_strategy=init_to_uniform(radius=opts.init_radius))


# ------------------------------------------------------------------------- diagnostics
def _components(samples):
    for name in PARAMETERS:
        arr = np.asarray(samples[name])
        flat = arr.reshape(arr.shape[:2] + (-1,))
        for i in range(flat.shape[2]):
            yield flat[:, :, i]


def min_bulk_ess(samples) -> float:
    return min(float(az.ess(x, method="bulk")) for x in _components(samples))


def max_rhat(samples) -> float:
    return max(float(az.rhat(x)) for x in _components(samples))


def population_summary(samples) -> dict:
    """Mean and MCSE of each population parameter; samples are (chain, draw)."""
    return {name: {"mean": float(np.mean(samples[name])),
                   "mcse": float(az.mcse(np.asarray(samples[name])))}
            for name in POPULATION}


def initial_points(problem, seed: int, num_chains: int) -> dict:
    """The unconstrained starting point of each chain in each implementation, drawn with the
    keys numpyro's `MCMC.warmup(PRNGKey(seed))` gives the chains' initialisation (one key per
    chain, then HMC's split), and whether each chain's start is the same in both. A start is
    drawn again where the density or its gradient is not finite: the ODE route rejects
    points where a subject's ka is so large (lKa above roughly 8.5) that the non-stiff solver
    runs out of steps, so a chain can start elsewhere than the analytic model's."""
    keys = jax.random.split(jax.random.PRNGKey(seed), num_chains)
    init_keys = jax.vmap(lambda k: jax.random.split(k)[1])(keys)
    z = {}
    for impl in IMPLEMENTATIONS:
        fn, kwargs = problem.model_fn(impl)
        info = initialize_model(init_keys, fn, model_kwargs=kwargs,
                                init_strategy=init_to_uniform(radius=problem.options.init_radius))
        z[impl] = info.param_info.z
    same = [bool(all(np.allclose(np.asarray(z["analytic"][k])[c], np.asarray(z["ode"][k])[c])
                     for k in z["analytic"])) for c in range(num_chains)]
    return {"same_start_by_chain": same,
            "start_lKe": {impl: np.asarray(z[impl]["lKe"]).tolist() for impl in z}}


# ------------------------------------------------------------------------- measurements
def measure_run(problem, clock, impl, chain_method, s: Settings, seed: int,
                end_to_end: bool) -> dict:
    """Warmup and sampling execution time, gradients, ESS, R-hat, means, end-to-end."""
    _, kwargs = problem.model_fn(impl)
    key = jax.random.PRNGKey(seed)
    keep = PARAMETERS + ("lKa_decentered", "lCl_decentered")

    def mcmc(num_warmup, num_samples):
        return MCMC(problem.kernel(impl), num_warmup=num_warmup, num_samples=num_samples,
                    num_chains=s.num_chains, chain_method=chain_method, progress_bar=False)

    res = {"impl": impl, "chain_method": chain_method, "seed": seed}
    run = mcmc(s.num_warmup, s.num_samples)

    def warmup():
        run.warmup(key, extra_fields=lh.EXTRA_FIELDS, collect_warmup=True, **kwargs)
        samples = run.get_samples(group_by_chain=True)
        return ({k: samples[k] for k in (SOLVER_STEPS,) if k in samples},
                run.get_extra_fields(group_by_chain=True))

    def sampling():
        run.run(jax.random.fold_in(key, 1), extra_fields=lh.EXTRA_FIELDS, **kwargs)
        samples = run.get_samples(group_by_chain=True)
        return ({k: samples[k] for k in keep + (SOLVER_STEPS,) if k in samples},
                run.get_extra_fields(group_by_chain=True))

    (warm_samples, warm), wall, comp = lh.timed(clock, warmup)
    res.update(warmup_wall_s=wall, warmup_compile_s=comp, warmup_s=wall - comp)
    (samples, extra), wall, comp = lh.timed(clock, sampling)
    res.update(sampling_wall_s=wall, sampling_compile_s=comp, sampling_s=wall - comp)
    res["run_s"] = res["warmup_s"] + res["sampling_s"]
    res["compile_s"] = res["warmup_compile_s"] + res["sampling_compile_s"]
    res["grads_warmup"] = int(np.asarray(warm["num_steps"]).sum())
    res["grads_sampling"] = int(np.asarray(extra["num_steps"]).sum())
    res["grads_total"] = res["grads_warmup"] + res["grads_sampling"]
    res["us_per_grad_run"] = 1e6 * res["run_s"] / res["grads_total"]
    res["mean_tree_steps_sampling"] = float(np.asarray(extra["num_steps"]).mean())
    res["divergences"] = int(np.asarray(extra["diverging"]).sum())
    res["mean_accept_prob"] = float(np.asarray(extra["accept_prob"]).mean())
    for phase, smp in (("warmup", warm_samples), ("sampling", samples)):
        # the ODE route's solver steps per evaluation (chain, draw, subject) at the draws: the
        # vmapped solve runs as many steps as its slowest subject needs
        steps = np.asarray(smp[SOLVER_STEPS]) if SOLVER_STEPS in smp else None
        res[f"solver_steps_{phase}_mean"] = None if steps is None else float(steps.mean())
        res[f"solver_steps_{phase}_max_subject_mean"] = (
            None if steps is None else float(steps.max(axis=-1).mean()))
    res["min_bulk_ess"] = min_bulk_ess(samples)
    res["min_bulk_ess_per_s"] = res["min_bulk_ess"] / res["run_s"]
    res["max_rhat"] = max_rhat(samples)
    res["mixed"] = res["max_rhat"] < MIXED_RHAT
    res["population"] = population_summary(samples)
    res["population_by_chain"] = {name: np.asarray(samples[name]).mean(axis=1).tolist()
                                  for name in POPULATION}
    # the draws of the population parameters, for the pooled comparison of the means
    draws = {name: np.asarray(samples[name]) for name in POPULATION}

    res.update(end_to_end_wall_s=None, end_to_end_compile_s=None)
    if end_to_end:
        if impl == "ode":
            method = probde.NUTS(num_chains=s.num_chains, num_warmup=s.num_warmup,
                                 num_samples=s.num_samples, chain_method=chain_method)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # divergence warnings are counted above
                result, wall, comp = lh.timed(clock, lambda: probde.infer(
                    problem.build_model(), problem.data, method, seed=seed,
                    progress_bar=False))
            post = result.idata["posterior"]
            res["end_to_end_population_mean"] = {name: float(post[name].values.mean())
                                                 for name in POPULATION}
        else:
            full = mcmc(s.num_warmup, s.num_samples)

            def end_to_end():
                full.run(key, **kwargs)
                return full.get_samples()

            _, wall, comp = lh.timed(clock, end_to_end)
        res.update(end_to_end_wall_s=wall, end_to_end_compile_s=comp)
    return res, draws


class Micro:
    """Jitted potential (value, value-and-grad) of each implementation at REFERENCE."""

    def __init__(self, problem):
        values = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in REFERENCE.items()}
        fns = {"analytic": problem.model_fn("analytic"), "ode": problem.model_fn("ode"),
               "ode_counted": (problem.ode_fn_counted, {"observed": True})}
        self.fns, self.potential = {}, {}
        for name, (fn, kwargs) in fns.items():
            info = initialize_model(jax.random.PRNGKey(0), fn, model_kwargs=kwargs,
                                    init_strategy=init_to_value(values=values))
            pot, z = info.potential_fn, info.param_info.z
            self.fns[f"vg_{name}"] = (jax.jit(jax.value_and_grad(pot)), (z,))
            self.fns[f"value_{name}"] = (jax.jit(pot), (z,))
            if name != "ode_counted":
                self.fns[f"vg_loop_{name}"] = (_vg_loop(pot), (z,))
            self.potential[name] = float(pot(z))
        with handlers.seed(rng_seed=0), handlers.substitute(data=values):
            trace = handlers.trace(problem.ode_fn).get_trace(observed=True)
        self.solver_steps = np.asarray(trace[SOLVER_STEPS]["value"]).tolist()
        _, g_a = self.fns["vg_analytic"][0](*self.fns["vg_analytic"][1])
        _, g_o = self.fns["vg_ode"][0](*self.fns["vg_ode"][1])
        self.grad_max_abs_diff = float(max(jnp.max(jnp.abs(a - b)) for a, b in zip(
            jax.tree.leaves(g_a), jax.tree.leaves(g_o), strict=True)))

    def measure(self, n: int) -> dict:
        out = {}
        for name, (fn, args) in self.fns.items():
            if name.startswith("vg_loop_"):  # LOOP gradients per call
                out[name] = lh.median_call_us(fn, args, max(n // LOOP, 5) * 4) / LOOP
            else:
                out[name] = lh.median_call_us(fn, args, n)
        return out


def _vg_loop(pot):
    """LOOP value-and-grads in one compiled loop, each at a point moved a little along the
    previous gradient (as a leapfrog step does), so none can be hoisted: the cost of a
    gradient without the dispatch of a jitted call."""
    vg = jax.value_and_grad(pot)

    def body(z, _):
        v, g = vg(z)
        return jax.tree.map(lambda a, b: a - 1e-6 * b, z, g), v

    return jax.jit(lambda z: jax.lax.scan(body, z, None, length=LOOP)[1][-1])


def probe_parallel(problem, num_chains) -> dict:
    """Trace (no compile) a pmap of each potential's value-and-grad; errors, if any."""
    out = {}
    for impl in IMPLEMENTATIONS:
        fn, kwargs = problem.model_fn(impl)
        info = initialize_model(jax.random.PRNGKey(0), fn, model_kwargs=kwargs)
        z = info.param_info.z
        zs = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_chains,) + x.shape), z)
        try:
            jax.eval_shape(jax.pmap(jax.value_and_grad(info.potential_fn)), zs)
            out[impl] = None
        except Exception as err:  # noqa: BLE001 - any failure means: no parallel chains
            out[impl] = f"{type(err).__name__}: {str(err).strip().splitlines()[0]}"
    return out


# ---------------------------------------------------------------------------- reporting
def fmt(v, digits=3):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return lh.fmt(v, digits)


def spread(values):
    vals = [v for v in values if v is not None and not isinstance(v, bool)]
    if not vals:
        return {"min": None, "median": None, "max": None}
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}


ROWS = [
    ("warmup, s (execution)", "warmup_s", 3),
    ("sampling, s (execution)", "sampling_s", 3),
    ("warmup + sampling, s (execution)", "run_s", 3),
    ("trace + compile of those two calls, s", "compile_s", 3),
    ("gradient evaluations, warmup", "grads_warmup", 3),
    ("gradient evaluations, sampling", "grads_sampling", 3),
    ("mean leapfrog steps per draw (sampling)", "mean_tree_steps_sampling", 3),
    ("us per gradient in the run (run s / gradients)", "us_per_grad_run", 3),
    ("solver steps per subject and evaluation, warmup draws (mean)", "solver_steps_warmup_mean",
     3),
    ("solver steps of the slowest subject per evaluation, warmup draws (mean)",
     "solver_steps_warmup_max_subject_mean", 3),
    ("solver steps per subject and evaluation, sampling draws (mean)",
     "solver_steps_sampling_mean", 3),
    ("solver steps of the slowest subject per evaluation, sampling draws (mean)",
     "solver_steps_sampling_max_subject_mean", 3),
    ("min bulk ESS", "min_bulk_ess", 3),
    ("**min bulk ESS / s**", "min_bulk_ess_per_s", 3),
    ("max R-hat", "max_rhat", 4),
    (f"chains mixed (max R-hat < {MIXED_RHAT})", "mixed", 3),
    ("divergences (sampling, all chains)", "divergences", 3),
    ("mean acceptance probability", "mean_accept_prob", 3),
    ("end-to-end wall, s (probde.infer / MCMC.run)", "end_to_end_wall_s", 3),
]


def per_repeat_table(runs: dict, seeds: list[int]) -> str:
    head = ["quantity", "implementation"] + [f"seed {s}" for s in seeds] + ["min", "median",
                                                                           "max"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, key, digits in ROWS:
        for impl in IMPLEMENTATIONS:
            vals = [r[key] for r in runs[impl]]
            if all(v is None for v in vals):
                continue
            sp = spread(vals)
            lines.append("| " + " | ".join(
                [label, LABELS[impl]] + [fmt(v, digits) for v in vals]
                + [fmt(sp[k], digits) for k in ("min", "median", "max")]) + " |")
    return "\n".join(lines)


def ratios(runs: dict) -> list[dict]:
    """Per repeat: ODE / analytic of ESS/s and its factors (time per gradient, gradients,
    ESS): ess_per_s ratio = ess ratio / (us_per_grad ratio * grads ratio)."""
    out = []
    for a, o in zip(runs["analytic"], runs["ode"], strict=True):
        out.append({
            "seed": a["seed"],
            "both_mixed": a["mixed"] and o["mixed"],
            "min_bulk_ess_per_s": o["min_bulk_ess_per_s"] / a["min_bulk_ess_per_s"],
            "run_s": o["run_s"] / a["run_s"],
            "us_per_grad_run": o["us_per_grad_run"] / a["us_per_grad_run"],
            "grads_total": o["grads_total"] / a["grads_total"],
            "min_bulk_ess": o["min_bulk_ess"] / a["min_bulk_ess"],
            "end_to_end_wall_s": (None if o["end_to_end_wall_s"] is None
                                  else o["end_to_end_wall_s"] / a["end_to_end_wall_s"]),
        })
    return out


RATIO_ROWS = [
    ("**min bulk ESS / s, ODE / analytic** (target >= 0.33)", "min_bulk_ess_per_s"),
    ("analytic / ODE in min bulk ESS / s (x slower)", None),
    ("warmup + sampling time, ODE / analytic", "run_s"),
    ("  us per gradient in the run, ODE / analytic", "us_per_grad_run"),
    ("  gradient evaluations, ODE / analytic", "grads_total"),
    ("min bulk ESS, ODE / analytic", "min_bulk_ess"),
    ("end-to-end wall, probde.infer / analytic MCMC.run", "end_to_end_wall_s"),
]


def ratio_table(rats: list[dict]) -> str:
    head = ["ratio"] + [f"seed {r['seed']}" for r in rats] + ["min", "median", "max"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| " + " | ".join([f"both implementations mixed (max R-hat < {MIXED_RHAT})"]
                                   + [fmt(r["both_mixed"]) for r in rats] + ["", "", ""])
                 + " |")
    for label, key in RATIO_ROWS:
        if key is None:
            vals = [1.0 / r["min_bulk_ess_per_s"] for r in rats]
        else:
            vals = [r[key] for r in rats]
        sp = spread(vals)
        lines.append("| " + " | ".join([label] + [fmt(v, 3) for v in vals]
                                       + [fmt(sp[k], 3) for k in ("min", "median", "max")])
                     + " |")
    return "\n".join(lines)


def pooled_means(draws: list, runs: list) -> dict | None:
    """Mean and MCSE of each population parameter from the draws of the repeats whose
    chains mixed (each repeat's chains kept as chains); None if none did."""
    draws = [d for d, r in zip(draws, runs, strict=True) if r["mixed"]]
    if not draws:
        return None
    out = {}
    for name in POPULATION:
        x = np.concatenate([d[name] for d in draws], axis=0)
        out[name] = {"mean": float(x.mean()), "mcse": float(az.mcse(x)),
                     "sd": float(x.std())}
    return out


def means_table(pooled: dict, runs: dict) -> str:
    lines = ["| parameter | analytic mean (MCSE) | ODE mean (MCSE) | posterior sd | "
             "difference / combined MCSE (pooled) | per seed |",
             "|---|---|---|---|---|---|"]
    for name in POPULATION:
        a, o = pooled["analytic"][name], pooled["ode"][name]
        z = (o["mean"] - a["mean"]) / math.hypot(a["mcse"], o["mcse"])
        per = []
        for ra, ro in zip(runs["analytic"], runs["ode"], strict=True):
            pa, po = ra["population"][name], ro["population"][name]
            z_seed = (po["mean"] - pa["mean"]) / math.hypot(pa["mcse"], po["mcse"])
            per.append(f"{z_seed:+.2f}" + ("" if ra["mixed"] and ro["mixed"] else " (not mixed)"))
        lines.append(f"| {name} | {a['mean']:.4f} ({a['mcse']:.4f}) | {o['mean']:.4f} "
                     f"({o['mcse']:.4f}) | {a['sd']:.4f} | {z:+.2f} | {', '.join(per)} |")
    return "\n".join(lines)


def micro_table(micro_runs: list[dict], seeds: list[int]) -> str:
    rows = [("value-and-grad, analytic", "vg_analytic"),
            ("value-and-grad, ODE route", "vg_ode"),
            ("value-and-grad, ODE route with probde.infer's failure callback", "vg_ode_counted"),
            ("value only, analytic", "value_analytic"),
            ("value only, ODE route", "value_ode"),
            (f"value-and-grad in a compiled loop of {LOOP} (per gradient), analytic",
             "vg_loop_analytic"),
            (f"value-and-grad in a compiled loop of {LOOP} (per gradient), ODE route",
             "vg_loop_ode")]
    head = ["one jitted call, us"] + [f"after seed {s}" for s in seeds] + ["median",
                                                                         "/ analytic"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    med = {k: statistics.median(m[k] for m in micro_runs) for k in micro_runs[0]}
    for label, key in rows:
        base = med[next(b for b in ("vg_loop_analytic", "vg_analytic", "value_analytic")
                        if key.startswith(b.rsplit("_", 1)[0]))]
        lines.append("| " + " | ".join([label] + [fmt(m[key]) for m in micro_runs]
                                       + [fmt(med[key]), f"{med[key] / base:.1f}"]) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------- main
def _own_times(prepared) -> int:
    """How many times each subject's solve saves: its own (the most of any subject), or
    the union of all subjects' times where the library solves every subject there."""
    own = getattr(prepared, "own", None)
    return int(prepared.times.shape[0] if own is None else own.sum(axis=1).max())


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs, each with its own seed (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 2 chains x (100 + 100), 1 repeat; numbers mean nothing")
    parser.add_argument("--out", type=pathlib.Path,
                        default=ROOT / "benchmarks" / "results_theophylline.json",
                        help="JSON file for the raw numbers")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first repeat")
    parser.add_argument("--skip-end-to-end", action="store_true",
                        help="skip the end-to-end probde.infer / MCMC.run runs")
    parser.add_argument("--end-to-end-repeats", type=int, default=None,
                        help="measure end-to-end in the first N repeats only (default all)")
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
        s = Settings(num_chains=2, num_warmup=100, num_samples=100,
                     repeats=args.repeats or 1, micro_calls=100)
    else:
        s = Settings(num_chains=4, num_warmup=1000, num_samples=1000,
                     repeats=args.repeats or 3, micro_calls=1000)
    print(f"theophylline benchmark: {s.num_chains} chains x ({s.num_warmup} warmup + "
          f"{s.num_samples} draws), {s.repeats} repeat(s), {jax.device_count()} host devices, "
          f"{os.cpu_count()} cores, chain method {args.chain_method}", flush=True)

    clock = lh.CompileClock()
    problem = Problem()
    print(f"{len(problem.data)} subjects, {problem.num_obs} observations; the ODE route "
          f"solves each subject at its own {_own_times(problem.prepared)} times (of "
          f"{problem.prepared.times.shape[0]} in all)", flush=True)
    chain_method, notes, probes = args.chain_method, [], {}
    if chain_method == "parallel":
        probes = probe_parallel(problem, s.num_chains)
        failed = {k: v for k, v in probes.items() if v is not None}
        if failed:
            chain_method = "sequential"
            notes.append(f"parallel chains do not trace here ({failed}); both implementations "
                         "run sequential chains")
            print("note:", notes[-1], flush=True)

    seeds = [args.seed + r for r in range(s.repeats)]
    starts = {}
    for seed in seeds:
        starts[seed] = initial_points(problem, seed, s.num_chains)
        print(f"seed {seed}: chains starting at the same point in both implementations: "
              f"{starts[seed]['same_start_by_chain']}", flush=True)

    print("compiling the micro-benchmarks ...", flush=True)
    micro = Micro(problem)
    print(f"potential at the reference point: analytic {micro.potential['analytic']:.8f}, "
          f"ODE {micro.potential['ode']:.8f}; max |gradient difference| "
          f"{micro.grad_max_abs_diff:.2e}", flush=True)

    runs = {impl: [] for impl in IMPLEMENTATIONS}
    draws = {impl: [] for impl in IMPLEMENTATIONS}
    micro_runs = []
    e2e_repeats = s.repeats if args.end_to_end_repeats is None else args.end_to_end_repeats
    for r, seed in enumerate(seeds):
        for impl in IMPLEMENTATIONS:
            print(f"repeat {r + 1}/{s.repeats}: {LABELS[impl]}, seed {seed} ...", flush=True)
            res, d = measure_run(problem, clock, impl, chain_method, s, seed,
                                 end_to_end=not args.skip_end_to_end and r < e2e_repeats)
            runs[impl].append(res)
            draws[impl].append(d)
            e2e = res["end_to_end_wall_s"]
            print(f"  warmup {res['warmup_s']:.2f} s, sampling {res['sampling_s']:.2f} s, "
                  f"gradients {res['grads_total']:,}, min bulk ESS {res['min_bulk_ess']:.0f}, "
                  f"ESS/s {res['min_bulk_ess_per_s']:.1f}, max R-hat {res['max_rhat']:.3f}, "
                  f"divergences {res['divergences']}, end-to-end "
                  f"{'n/a' if e2e is None else f'{e2e:.1f} s'}", flush=True)
        micro_runs.append(micro.measure(s.micro_calls))
        print("  micro (us): " + ", ".join(f"{k} {v:.0f}" for k, v in micro_runs[-1].items()),
              flush=True)

    rats = ratios(runs)
    pooled = {impl: pooled_means(draws[impl], runs[impl]) for impl in IMPLEMENTATIONS}
    ess_ratio = spread([r["min_bulk_ess_per_s"] for r in rats])
    ess_ratio_mixed = spread([r["min_bulk_ess_per_s"] for r in rats if r["both_mixed"]])
    judged = ess_ratio_mixed if ess_ratio_mixed["median"] is not None else ess_ratio
    met = judged["median"] >= 1 / 3

    print()
    print(f"## Theophylline: ODE route vs analytic floor ({s.num_chains} chains x "
          f"({s.num_warmup} + {s.num_samples}), {chain_method} chains, seeds "
          f"{', '.join(map(str, seeds))})")
    print()
    print(per_repeat_table(runs, seeds))
    print()
    print("### Ratios per repeat")
    print()
    print(ratio_table(rats))
    print()
    mixed = [r["seed"] for r in rats if r["both_mixed"]]
    print(f"Repeats where both implementations mixed (max R-hat < {MIXED_RHAT}): "
          f"{mixed or 'none'}. Target (ODE route within 3x of the analytic floor in min bulk "
          f"ESS / s): {'met' if met else 'not met'} (median ratio {judged['median']:.3f}, "
          f"range {judged['min']:.3f}-{judged['max']:.3f} over "
          f"{'those' if judged is ess_ratio_mixed else 'all'} repeats; 3x is 0.333).")
    print()
    print("### Posterior means of the population parameters (draws of the repeats that mixed)")
    print()
    if pooled["analytic"] is None or pooled["ode"] is None:
        print("(no repeat mixed for one of the implementations)")
    else:
        print(means_table(pooled, runs))
    print()
    print("### Per-gradient cost (one jitted call on one device, median of "
          f"{s.micro_calls} calls, at the reference point)")
    print()
    print(micro_table(micro_runs, seeds))
    print()
    print(f"Potential at the reference point: analytic {micro.potential['analytic']:.8f}, "
          f"ODE {micro.potential['ode']:.8f}; max |gradient difference| "
          f"{micro.grad_max_abs_diff:.2e}. ODE solver steps per subject there: "
          f"{micro.solver_steps}.")
    for note in notes:
        print(f"Note: {note}")
    if args.quick:
        print("(--quick: smoke-test settings; these numbers are not a benchmark)")

    report = {
        "settings": dataclasses.asdict(s) | {"chain_method": chain_method,
                                             "requested_chain_method": args.chain_method,
                                             "seed": args.seed, "quick": args.quick,
                                             "end_to_end": not args.skip_end_to_end,
                                             "end_to_end_repeats": args.end_to_end_repeats,
                                             "mixed_rhat_below": MIXED_RHAT},
        "environment": lh.environment(),
        "notes": notes,
        "parallel_probe_errors": probes,
        "num_observations": problem.num_obs,
        "ode_times_per_subject": _own_times(problem.prepared),
        "times_in_union": int(problem.prepared.times.shape[0]),
        "initial_points": starts,
        "reference_point": {k: np.asarray(v).tolist() for k, v in REFERENCE.items()},
        "potential_at_reference": micro.potential,
        "grad_max_abs_diff_at_reference": micro.grad_max_abs_diff,
        "solver_steps_at_reference": micro.solver_steps,
        "runs": runs,
        "ratios_ode_over_analytic": rats,
        "ratio_min_bulk_ess_per_s_spread": ess_ratio,
        "ratio_min_bulk_ess_per_s_spread_mixed": ess_ratio_mixed,
        "target_3x_met": met,
        "pooled_population": pooled,
        "micro_us": micro_runs,
        "micro_us_median": {k: statistics.median(m[k] for m in micro_runs)
                            for k in micro_runs[0]},
        "spread": {impl: {key: spread([r[key] for r in runs[impl]]) for _, key, _ in ROWS
                          if key != "mixed"} for impl in IMPLEMENTATIONS},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
