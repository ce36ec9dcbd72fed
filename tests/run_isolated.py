"""Run the whole test suite one file per process (`make test`, CI).

    python tests/run_isolated.py [pytest options ...]

First the whole `tests` folder is collected, not run (`--collect-only`): that collection
fails if `tests/tiers.py` names a test that no longer exists in any file, which per-file
runs cannot see for a deleted file. Then every `tests/test_*.py` runs in a fresh
`python -m pytest` process, then the doctests of the `probde` package in one more; the
options given are passed to each. All of them run
even when one fails; the exit status is 0 only if every process passed (pytest's 5, no
tests collected, counts as a failure). A table of the processes, their status and wall
time is printed at the end.

Why one process per file: twice a single process running the whole suite (about 540
tests, some hundreds of compiled XLA programs) died inside XLA's CPU compiler, once with a
segmentation fault and once with an abort, both at the same test of tests/test_sde.py,
which passes in a process of its own. The crash is in JAX's native code, not in probde's,
and we have not isolated its cause; fresh processes keep one file's programs from
affecting another's.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main(options: list[str]) -> int:
    targets = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py"))
    targets.append("probde")
    results = []
    print("=== collecting the whole tests folder (tests/tiers.py must name only tests that "
          "exist)", flush=True)
    start = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", "pytest", "--collect-only", "-q", "tests"],
                           cwd=ROOT, stdout=subprocess.DEVNULL)
    results.append(("collection of tests/", code, time.perf_counter() - start))
    for target in targets:
        print(f"\n=== {target}", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, "-X", "faulthandler", "-m", "pytest", target,
                                *options], cwd=ROOT)
        results.append((target, code, time.perf_counter() - start))
    print("\n=== summary (one process per target)")
    width = max(len(t) for t, _, _ in results)
    for target, code, seconds in results:
        status = "passed" if code == 0 else f"FAILED (exit {code})"
        print(f"{target:<{width}}  {status:<18} {seconds:7.1f} s")
    failed = [t for t, code, _ in results if code != 0]
    total = sum(s for _, _, s in results)
    print(f"{len(results) - len(failed)} of {len(results)} passed in {total:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
