"""Run the test suite one file per process, one process per core (`make test`, CI, and
`make test-all`).

    python tests/run_isolated.py [--jobs N] [--pin] [--file-timeout SECONDS] [--skip-long]
                                 [pytest options ...]

`make test` passes `--skip-long` to leave out the long checks that tests/tiers.py lists in
`LONG` (an option of tests/conftest.py, so it goes to the test files' processes only; the
package's doctests, collected without that conftest, have no long checks); `make test-all`
runs them too.

First the whole `tests` folder is collected, not run (`--collect-only`): that collection
fails if `tests/tiers.py` names a test that no longer exists in any file, which per-file
runs cannot see for a deleted file. Then every `tests/test_*.py` runs in a fresh
`python -m pytest` process, and the doctests of the `probde` package in one more; the
pytest options given are passed to each.

`--jobs N` processes run at once (default: one per core this process may use). They are
not pinned to cores unless `--pin` is given: a file that runs alone at the end (or whose
case studies start processes of their own) then gets every core; pinned, the case
studies took 1,940 s on one core against 1,090 s unpinned. The files start longest first
(`EXPECTED` below), which keeps the cores busy to the end. Each process's output is printed
whole when it ends, so files do not interleave. A process that runs past `--file-timeout`
seconds (default 3600) is killed with its children and counts as failed: a hang cannot
take the whole of CI's time.

All of them run even when one fails; the exit status is 0 only if every process passed
(pytest's 5, no tests collected, counts as a failure). A table of the processes, their
status and wall time is printed at the end.

Why one process per file: twice a single process running the whole suite (about 540
tests, some hundreds of compiled XLA programs) died inside XLA's CPU compiler, once with a
segmentation fault and once with an abort, both at the same test of tests/test_sde.py,
which passes in a process of its own. The crash is in JAX's native code, not in probde's,
and we have not isolated its cause; fresh processes keep one file's programs from
affecting another's. Each process also gets its own compilation cache (tests/conftest.py).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Seconds each target took in a whole-suite run without the long checks (`--skip-long`;
# December 2026, development machine, two files at a time); only the order matters. A file
# not listed is taken to be short and runs after these.
EXPECTED = {
    "tests/test_case_studies.py": 800, "tests/test_petab.py": 550, "tests/test_sde.py": 455,
    "tests/test_svi.py": 445, "tests/test_discrepancy.py": 365, "tests/test_particle.py": 355,
    "tests/test_deepgp.py": 320, "tests/test_inference.py": 255,
    "tests/test_sensitivity.py": 240, "tests/test_no_callbacks.py": 235,
    "tests/test_chunks.py": 235,
    "tests/test_latent_path.py": 225, "tests/test_population.py": 215,
    "tests/test_identifiability.py": 210, "tests/test_lfo.py": 185,
    "tests/test_deep_emulator.py": 180, "tests/test_likelihood.py": 175,
    "tests/test_sbc.py": 170, "tests/test_compile_cache.py": 155, "tests/test_markov.py": 150,
    "probde": 125, "tests/test_emulator.py": 125, "tests/test_docs.py": 105,
    "tests/test_filter_check.py": 100, "tests/test_solve.py": 100,
    "tests/test_convergence.py": 80, "tests/test_population_plots.py": 80,
    "tests/test_parallel_kalman.py": 75, "tests/test_rwm.py": 75, "tests/test_restart.py": 65,
}


def _pin(cpu: int | None):
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_all(targets: list[str], options: list[str], jobs: int, file_timeout: float,
            pin: bool = False, tests_only: tuple[str, ...] = ()):
    """Run `targets` `jobs` at a time, each with the pytest `options` (and `tests_only` for
    the files in `tests/`); return [(target, exit code, seconds)] in end order."""
    cpus = sorted(os.sched_getaffinity(0))
    pinned = pin and 1 < jobs <= len(cpus)
    pending = sorted(targets, key=lambda t: -EXPECTED.get(t, 0))
    free = list(cpus[:jobs]) if pinned else [None] * jobs
    running = []  # (target, proc, log file, cpu, start)
    results = []
    while pending or running:
        while pending and free:
            target, cpu = pending.pop(0), free.pop(0)
            log = tempfile.TemporaryFile(mode="w+")
            proc = subprocess.Popen(
                [sys.executable, "-X", "faulthandler", "-m", "pytest", target,
                 *options, *(tests_only if target.startswith("tests/") else ())],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_pin(cpu))
            where = f" on core {cpu}" if cpu is not None else ""
            print(f"--- started {target}{where}", flush=True)
            running.append((target, proc, log, cpu, time.perf_counter()))
        time.sleep(0.5)
        for item in list(running):
            target, proc, log, cpu, start = item
            seconds = time.perf_counter() - start
            code = proc.poll()
            if code is None and seconds > file_timeout:
                _kill(proc)
                code = f"killed after {file_timeout:.0f} s"
            if code is None:
                continue
            running.remove(item)
            free.append(cpu)
            log.seek(0)
            print(f"\n=== {target} ({seconds:.0f} s)", flush=True)
            sys.stdout.write(log.read())
            log.close()
            if isinstance(code, str):
                print(f"=== {target}: {code}", flush=True)
                code = -1
            results.append((target, code, seconds))
            sys.stdout.flush()
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--jobs", "-j", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--pin", action="store_true")
    parser.add_argument("--file-timeout", type=float, default=3600.0)
    parser.add_argument("--skip-long", action="store_true")
    args, options = parser.parse_known_args(argv)
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be at least 1; got {args.jobs}")
    targets = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py"))
    targets.append("probde")
    wall = time.perf_counter()
    print("=== collecting the whole tests folder (tests/tiers.py must name only tests that "
          "exist)", flush=True)
    start = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", "pytest", "--collect-only", "-q", "tests"],
                           cwd=ROOT, stdout=subprocess.DEVNULL)
    results = [("collection of tests/", code, time.perf_counter() - start)]
    print(f"=== {len(targets)} processes, {args.jobs} at a time", flush=True)
    results += run_all(targets, options, args.jobs, args.file_timeout, args.pin,
                       tests_only=("--skip-long",) if args.skip_long else ())
    print("\n=== summary (one process per target)")
    width = max(len(t) for t, _, _ in results)
    for target, code, seconds in results:
        status = "passed" if code == 0 else f"FAILED (exit {code})"
        print(f"{target:<{width}}  {status:<18} {seconds:7.1f} s")
    failed = [t for t, code, _ in results if code != 0]
    total = sum(s for _, _, s in results)
    print(f"{len(results) - len(failed)} of {len(results)} passed: {total:.0f} s of processes "
          f"in {time.perf_counter() - wall:.0f} s wall time")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
