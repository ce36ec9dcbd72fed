"""Load, log-likelihood and gradient cost of probde on the PEtab benchmark collection.

For every problem folder of the collection (`--root`, one sub-folder per problem with its
PEtab v1 `*.yaml`; `reference_llh.json` there holds reference log-likelihoods at the
nominal parameters for some problems, with AMICI's CI time budget `t_fwd_budget_s` for
one forward-sensitivity gradient) this script measures, in fresh subprocesses (so that a
slow compile, a crash or a timeout of one problem does not stop the rest):

1. "base" subprocess: `probde.petab.load(yaml)` with the default solver
   (`probde.petab.default_solver()`: Kvaerno5, rtol 1e-8, atol 1e-10): its wall time and
   the problem's sizes (states, estimated parameters, experiments, measurements). Then
   `jax.jit(problem.log_likelihood)` at the nominal parameters: the first call (trace +
   compile + one run) and `--repeats` timed calls ("simulation": all experiments solved,
   the log-likelihood summed). Compile time is the first call minus the median of the
   timed calls. The value is compared with the reference; where they differ by more than
   1e-3 the problem is loaded again with rtol 1e-10, atol 1e-12 and that value is kept too.
2. "forward" and "adjoint" subprocesses (skipped, and said so, when the median simulation
   takes over 5 s): the problem loaded with `Solver(Kvaerno5(), rtol=1e-8, atol=1e-10,
   max_steps=100_000, adjoint=...)` for `probde.ForwardSensitivity()` and
   `diffrax.RecursiveCheckpointAdjoint()`; `jax.jit(jax.value_and_grad(
   problem.log_likelihood))` at the nominal parameters, first call and `--repeats` timed
   calls; the value (against step 1), whether the gradient is finite (and which entries are
   not), and the largest difference between the two gradients. The forward median is
   divided by AMICI's budget ("ratio").

`--timeout` bounds each problem: the base step gets all of it, the forward step half of
what is left, the adjoint step the rest. A timeout or crash is recorded with the step it
happened in; whatever the step had recorded before is kept. Every timed call ends in
`jax.block_until_ready`; times are wall-clock (`time.perf_counter`); every repeat is kept.
A step that raises is recorded with the exception's type name, its first line (for errors
raised inside a compiled program, the Equinox/Lineax message) and the full text, truncated.
Machine information (cores, affinity, load average at start and end, package versions, git
commit and whether `probde/` had uncommitted changes) goes into the JSON.

The probde measured is the one in the checkout that holds this script (its root is put
first on `sys.path`). `--load-only` loads every problem and stops there; `--load-only
unreferenced` does so for the problems without a reference value only. `--report JSON`
prints the table of an earlier run's results file (AMICI budgets from `--root`).

    taskset -c 1 python benchmarks/petab.py [--root DIR] [--problems NAME ...]
        [--repeats 5] [--timeout 900] [--load-only [unreferenced]]
        [--out benchmarks/results_petab.json]
    python benchmarks/petab.py --report benchmarks/results_petab.json
"""

import argparse
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, this file's folder comes first on sys.path, and this file (petab.py)
# would shadow the petab package that probde.petab imports; measure this checkout's probde.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if pathlib.Path(p or ".").resolve() != HERE]

COLLECTION = pathlib.Path("/work/shared/data/petab/benchmark")
SLOW_SIMULATION_S = 5.0
MATCH = 1e-3
GRADIENTS = ("forward", "adjoint")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=pathlib.Path, default=COLLECTION,
                   help="the PEtab benchmark collection folder (one sub-folder per problem, "
                        "each with its *.yaml; reference_llh.json beside them)")
    p.add_argument("--problems", nargs="+", metavar="NAME",
                   help="problem folders to run (default: all)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    p.add_argument("--timeout", type=float, default=900, help="seconds per problem")
    p.add_argument("--load-only", nargs="?", const="all", choices=("all", "unreferenced"),
                   help="only load the problems (all, or those without a reference value)")
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results_petab.json")
    p.add_argument("--report", type=pathlib.Path, metavar="JSON",
                   help="print the table of an earlier run's results file and stop")
    p.add_argument("--one", help=argparse.SUPPRESS)      # internal: one problem, one step
    p.add_argument("--phase", choices=("base", "load", *GRADIENTS), help=argparse.SUPPRESS)
    p.add_argument("--record", type=pathlib.Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------- helpers


def error_info(err):
    """Type, one-line message and (truncated) full text of an exception."""
    text = str(err).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    message = lines[0] if lines else ""
    inner = re.search(r"(\w*RuntimeError): (.+?)(\n\s*\n|$)", text, re.S)
    if inner and "Traceback" in message:  # raised inside a compiled program (a callback)
        message = f"{inner.group(1).lstrip('_')}: {' '.join(inner.group(2).split())}"
    return {"type": type(err).__name__, "message": message, "full": text[:4000]}


def summary(times):
    return {"all_s": times, "min_s": min(times), "median_s": statistics.median(times),
            "max_s": max(times)}


def time_calls(fn, arg, repeats):
    """First call (compile + run) and `repeats` timed calls of `fn(arg)`."""
    import jax

    start = time.perf_counter()
    out = jax.block_until_ready(fn(arg))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(arg))
        times.append(time.perf_counter() - start)
    timing = summary(times)
    timing.update(first_call_s=first, compile_s=first - timing["median_s"])
    return out, timing


def references(root):
    path = root / "reference_llh.json"
    if not path.is_file():
        return {}
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def yaml_file(folder):
    """The problem's YAML: `<folder name>.yaml`, else `problem.yaml`, else the only one."""
    for name in (f"{folder.name}.yaml", "problem.yaml"):
        if (folder / name).is_file():
            return folder / name
    files = sorted(folder.glob("*.yaml"))
    if len(files) != 1:
        raise FileNotFoundError(f"{folder}: one *.yaml expected, found {[f.name for f in files]}")
    return files[0]


# ------------------------------------------------------ one problem, one step (child)


class Steps:
    """Runs named steps, recording each one's error; saves the record after every step."""

    def __init__(self, record, path):
        self.record, self.path = record, path

    def save(self):
        if self.path is not None:
            self.path.write_text(json.dumps(self.record, indent=1))

    def __call__(self, name, fn):
        self.record["running"] = name
        self.save()
        try:
            out = fn()
        except Exception as err:  # recorded, never raised: the caller decides what follows
            self.record.setdefault("errors", {})[name] = error_info(err)
            out = None
        self.record["running"] = None
        self.save()
        return out


def solver(rtol=1e-8, atol=1e-10, adjoint="auto"):
    import diffrax

    import probde

    return probde.Solver(diffrax.Kvaerno5(), rtol=rtol, atol=atol, max_steps=100_000,
                         adjoint=adjoint)


def step_load(rec, yaml):
    import probde.petab

    start = time.perf_counter()
    problem = probde.petab.load(yaml)
    rec["load_s"] = time.perf_counter() - start
    rec.update(states=len(problem.sbml.state_ids), estimated=len(problem.estimated),
               experiments=len(problem.experiments),
               measurements=len(problem.tables.measurements))
    return problem


def step_simulate(rec, problem, repeats, ref):
    import jax

    value, timing = time_calls(jax.jit(problem.log_likelihood), problem.nominal, repeats)
    rec["llh"] = float(value)
    rec["simulation"] = timing
    if ref is not None:
        rec["llh_reference"] = ref["llh"]
        rec["llh_diff"] = abs(float(value) - ref["llh"])
    return timing


def step_tight(rec, yaml, ref):
    """The log-likelihood again at rtol 1e-10, atol 1e-12."""
    import jax

    import probde.petab

    problem = probde.petab.load(yaml, solver=solver(1e-10, 1e-12))
    value = float(jax.block_until_ready(jax.jit(problem.log_likelihood)(problem.nominal)))
    rec["tight"] = {"rtol": 1e-10, "atol": 1e-12, "llh": value,
                    "llh_diff": abs(value - ref["llh"])}


def step_gradient(rec, yaml, phase, repeats):
    import diffrax
    import jax
    import numpy as np

    import probde
    import probde.petab

    adjoint = (probde.ForwardSensitivity() if phase == "forward"
               else diffrax.RecursiveCheckpointAdjoint())
    problem = probde.petab.load(yaml, solver=solver(adjoint=adjoint))
    vg = jax.jit(jax.value_and_grad(problem.log_likelihood))
    (value, grad), timing = time_calls(vg, problem.nominal, repeats)
    g = np.array([float(grad[k]) for k in problem.estimated])
    timing.update(adjoint=repr(adjoint), value=float(value),
                  grad_finite=bool(np.all(np.isfinite(g))),
                  grad_nonfinite=[k for k, v in zip(problem.estimated, g, strict=True)
                                  if not np.isfinite(v)],
                  grad=[float(v) for v in g])
    rec["value_and_grad"] = timing


def run_one(args):
    import jax

    jax.config.update("jax_enable_x64", True)
    rec = {"problem": args.one, "phase": args.phase}
    run = Steps(rec, args.record)
    ref = references(args.root).get(args.one)
    yaml = run("find_yaml", lambda: yaml_file(args.root / args.one))
    if yaml is not None and args.phase in GRADIENTS:
        run(f"value_and_grad_{args.phase}", lambda: step_gradient(rec, yaml, args.phase,
                                                                  args.repeats))
        return run.save()
    problem = None if yaml is None else run("load", lambda: step_load(rec, yaml))
    if problem is None or args.phase == "load":
        return run.save()
    run("simulate", lambda: step_simulate(rec, problem, args.repeats, ref))
    if ref is not None and rec.get("llh_diff", 0.0) > MATCH:
        run("llh_tight", lambda: step_tight(rec, yaml, ref))
    run.save()


# ------------------------------------------------------------- driver (parent)


def run_phase(args, name, phase, timeout):
    """One step of one problem in a subprocess; its record, with a timeout or crash noted."""
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "record.json"
        cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--one", name,
               "--phase", phase, "--root", str(args.root), "--repeats", str(args.repeats),
               "--record", str(path)]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc = None
        wall = time.perf_counter() - start
        rec = json.loads(path.read_text()) if path.is_file() else {}
    rec["wall_s"] = wall
    if proc is None:
        rec["timeout"] = {"after_s": timeout, "during": rec.get("running")}
    elif proc.returncode != 0:
        rec["crash"] = {"returncode": proc.returncode, "during": rec.get("running"),
                        "stderr_tail": proc.stderr[-3000:]}
    return rec


def load_only(args, name, refs):
    return args.load_only == "all" or (args.load_only == "unreferenced" and name not in refs)


def run_problem(args, name, refs):
    """The base step, then (unless load-only or slow) the two gradient steps, merged."""
    phase = "load" if load_only(args, name, refs) else "base"
    rec = run_phase(args, name, phase, args.timeout)
    rec["problem"], rec["steps_wall_s"] = name, {phase: rec.pop("wall_s")}
    if name in refs:
        rec["amici_budget_s"] = refs[name]["t_fwd_budget_s"]
    for key in ("timeout", "crash"):
        if key in rec:
            rec[key + "s"] = {phase: rec.pop(key)}
    sim = rec.get("simulation")
    if phase == "load" or sim is None or rec.get("timeouts") or rec.get("crashes"):
        return rec
    if sim["median_s"] > SLOW_SIMULATION_S:
        rec["gradients_skipped"] = (f"median simulation {sim['median_s']:.1f} s > "
                                    f"{SLOW_SIMULATION_S:g} s")
        return rec
    for i, grad in enumerate(GRADIENTS):
        left = args.timeout - sum(rec["steps_wall_s"].values())
        if left < 1.0:
            rec.setdefault("timeouts", {})[grad] = {"after_s": 0.0, "during": "not started"}
            continue
        merge(rec, grad, run_phase(args, name, grad, left / (len(GRADIENTS) - i)))
    compare_gradients(rec, refs.get(name))
    return rec


def merge(rec, phase, sub):
    rec["steps_wall_s"][phase] = sub["wall_s"]
    for key in ("timeout", "crash"):
        if key in sub:
            rec.setdefault(key + "s", {})[phase] = sub[key]
    rec.setdefault("errors", {}).update(sub.get("errors", {}))
    if not rec["errors"]:
        del rec["errors"]
    if "value_and_grad" in sub:
        timing = sub["value_and_grad"]
        if "llh" in rec:
            timing["value_minus_llh"] = timing["value"] - rec["llh"]
        rec.setdefault("value_and_grad", {})[phase] = timing


def compare_gradients(rec, ref):
    import numpy as np

    vg = rec.get("value_and_grad", {})
    if all(g in vg for g in GRADIENTS):
        fwd, adj = (np.array(vg[g]["grad"]) for g in GRADIENTS)
        diff = np.abs(fwd - adj)
        rec["gradient_forward_vs_adjoint"] = {
            "max_abs_diff": float(np.max(diff)),
            "max_rel_diff": float(np.max(diff / np.maximum(np.abs(adj), 1.0)))}
    if ref is not None and "forward" in vg:
        rec["ratio_to_budget"] = vg["forward"]["median_s"] / ref["t_fwd_budget_s"]


def git(*cmd):
    try:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as err:
        return f"unavailable: {err}"


def machine():
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("jax", "jaxlib", "diffrax", "equinox", "lineax", "numpyro", "petab",
                "python-libsbml", "sympy"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {"cpu_count": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
            "platform": platform.platform(), "processor": platform.processor(),
            "python": platform.python_version(), "versions": versions,
            "probde_path": str(ROOT), "git_commit": git("rev-parse", "HEAD"),
            "uncommitted_in_probde": git("status", "--porcelain", "--", "probde").splitlines()}


def run_all(args):
    names = args.problems or sorted(d.name for d in args.root.iterdir() if d.is_dir())
    refs = references(args.root)
    out = {"command": " ".join(["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
           "settings": {"repeats": args.repeats, "timeout_s": args.timeout,
                        "load_only": args.load_only, "root": str(args.root),
                        "slow_simulation_s": SLOW_SIMULATION_S},
           "machine": machine(), "load_average_start": os.getloadavg(), "problems": {}}
    start = time.perf_counter()
    for name in names:
        rec = run_problem(args, name, refs)
        out["problems"][name] = rec
        print(f"{name}: {status(rec)} ({sum(rec['steps_wall_s'].values()):.0f} s)", flush=True)
        write(args.out, out)
    out["load_average_end"] = os.getloadavg()
    out["total_wall_s"] = time.perf_counter() - start
    write(args.out, out)
    report(args, out)


def write(path, out):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")


# ------------------------------------------------------------------ reporting


def status(rec):
    """'ok', or every error, timeout, crash and suspicious value of a problem's record."""
    notes = [f"{k}: {v['type']}: {v['message'][:160]}" for k, v in rec.get("errors", {}).items()]
    notes += [f"{phase}: timeout after {v['after_s']:.0f} s in {v['during']}"
              for phase, v in rec.get("timeouts", {}).items()]
    notes += [f"{phase}: crashed (exit {v['returncode']}) in {v['during']}"
              for phase, v in rec.get("crashes", {}).items()]
    for name, timing in rec.get("value_and_grad", {}).items():
        if not abs(timing.get("value_minus_llh", 0.0)) <= MATCH:
            notes.append(f"{name}: value {timing['value']:.6g} (simulation: {rec['llh']:.6g})")
        if not timing["grad_finite"]:
            notes.append(f"{name}: non-finite gradient for {timing['grad_nonfinite']}")
    return "; ".join(notes) or "ok"


def ms3(timing):
    if not timing:
        return "-"
    values = [1e3 * timing[k] for k in ("min_s", "median_s", "max_s")]
    return "/".join(f"{v:.3g}" if v < 100 else f"{v:,.0f}" for v in values)


def diff_cell(rec):
    if "llh_diff" not in rec:
        return "-" if "llh" in rec else "n/a"
    cell = f"{rec['llh'] - rec['llh_reference']:.1e}"
    if "tight" in rec:
        cell += f" (tight: {rec['tight']['llh'] - rec['llh_reference']:.1e})"
    return cell


def grad_cell(rec, name):
    error = rec.get("errors", {}).get(f"value_and_grad_{name}")
    if error is not None:
        inner = re.match(r"(\w+RuntimeError):", error["message"])
        return f"fails: {inner.group(1) if inner else error['type']}"
    if name in rec.get("timeouts", {}):
        return "timeout"
    if name in rec.get("crashes", {}):
        return "crashed"
    if "gradients_skipped" in rec:
        return "skipped"
    timing = rec.get("value_and_grad", {}).get(name)
    if timing is None:
        return "-"
    notes = [] if timing["grad_finite"] else ["non-finite grad"]
    if not abs(timing.get("value_minus_llh", 0.0)) <= MATCH:
        notes.append(f"value {timing['value']:.4g}")
    return ms3(timing) + (f" ({', '.join(notes)})" if notes else "")


def table(problems, refs):
    head = ("| problem | states | estimated params | measurements | llh − reference | "
            "compile s | simulation ms (min/median/max) | value-and-grad forward ms "
            "(min/median/max) | value-and-grad adjoint ms | AMICI budget ms | ratio |")
    rows = [head, "|" + "---|" * 11]
    for name, rec in problems.items():
        if "load_s" not in rec:
            continue
        sim = rec.get("simulation")
        budget = refs.get(name, {}).get("t_fwd_budget_s")
        rows.append("| " + " | ".join([
            name, str(rec["states"]), str(rec["estimated"]), str(rec["measurements"]),
            diff_cell(rec), f"{sim['compile_s']:.1f}" if sim else compile_cell(rec), ms3(sim),
            grad_cell(rec, "forward"), grad_cell(rec, "adjoint"),
            f"{1e3 * budget:g}" if budget else "-",
            f"{rec['ratio_to_budget']:.1f}" if "ratio_to_budget" in rec else "-"]) + " |")
    return "\n".join(rows)


def compile_cell(rec):
    return "load only" if "load" in rec["steps_wall_s"] else "-"


def report(args, out):
    print(table(out["problems"], references(args.root)))
    print(failures(out["problems"]))


def failures(problems):
    lines = [f"- {name}: {status(rec)}" for name, rec in problems.items()
             if status(rec) != "ok"]
    return "\n".join(["Problems with an error, crash, timeout or suspect value:", *lines]
                     ) if lines else ""


def main():
    args = parse_args()
    if args.one:
        run_one(args)
    elif args.report:
        report(args, json.loads(args.report.read_text()))
    else:
        run_all(args)


if __name__ == "__main__":
    main()
