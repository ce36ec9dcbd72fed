"""Strict JAX for the whole suite: float64, no implicit rank promotion, 4 CPU devices."""

import atexit
import os
import shutil
import tempfile

# Single-threaded BLAS: small LAPACK calls (GP Cholesky and solves) otherwise stall on
# thread hand-offs on a loaded 2-core machine (see case_studies/_common.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# A compilation cache of this test session's own: probde turns JAX's persistent cache on at
# import, and a folder shared with other processes compiling at the same time (a second
# test run, a parallel worker) once handed one of them an entry it aborted on while reading
# (inside JAX's cache read, in test_sde). The cache tests set their own folders. The workers
# of `make check` (pytest-xdist) inherit the folder this file made in the process that
# started them: each makes its own.
_OWNER = "_PROBDE_TESTS_CACHE_OWNER"
if ("PROBDE_COMPILATION_CACHE" not in os.environ
        or os.environ.get(_OWNER) not in (None, str(os.getpid()))):
    _SESSION_CACHE = tempfile.mkdtemp(prefix="probde-tests-")
    os.environ["PROBDE_COMPILATION_CACHE"] = _SESSION_CACHE
    os.environ[_OWNER] = str(os.getpid())
    atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)

import numpyro  # noqa: E402

numpyro.set_host_device_count(4)  # must precede JAX's backend start

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

# probde before any test module's gpjax, which starts JAX's backend on import: probde sets
# its XLA option before that (_xla.py).
import probde  # noqa: E402, F401, I001

# Deterministic tolerances keyed by dtype (TESTING.md).
RTOL = {np.dtype("float64"): 5e-7, np.dtype("float32"): 5e-4}
# Monte Carlo tolerance: |estimate - truth| / MCSE below this z.
Z_MAX = 4.0


@pytest.fixture(autouse=True)
def _x64_doctest_namespace(doctest_namespace):
    doctest_namespace["np"] = np


def decay_at_failure_edge():
    """`(model, data)`: exponential decay whose solve fails for every rate above about 3
    (`max_steps=24`); the data put the posterior right at that edge (k = 2.9), the prior
    well past it. For tests of runs with many failed solves."""
    import jax.numpy as jnp
    import numpyro.distributions as dist

    ode = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    model = probde.Model(
        ode, {"k": dist.LogNormal(1.0, 1.0)}, initial_state=jnp.array([2.0]),
        observation=probde.noise.Normal(sigma=0.05), solver=probde.Solver(max_steps=24), t0=0.0,
    )
    t = np.linspace(0.25, 5.0, 8)
    return model, probde.TimeSeries(t, 2.0 * np.exp(-2.9 * t), observables=("x",))


# --------------------------------------------------------------------------- test tiers
# `make check` runs `pytest --check-tier`: the fast tier, everything except what
# tests/tiers.py leaves out and the tests marked slow. `make test` (CI) runs everything
# except tests/tiers.py's LONG (`--skip-long`); `make test-all` runs everything.


def _tiers():
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location(
        "_probde_test_tiers", pathlib.Path(__file__).with_name("tiers.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_addoption(parser):
    parser.addoption(
        "--check-tier", action="store_true", default=False,
        help="run the fast tier only (make check): leave out the tests marked slow and "
             "those listed in tests/tiers.py")
    parser.addoption(
        "--skip-long", action="store_true", default=False,
        help="leave out the long checks listed in tests/tiers.py's LONG (make test, CI)")


def _wholly_collected(config):
    """A function telling whether every test of a file was collected in this run (it was
    named, or a folder above it, and not narrowed to some of its tests by `file::test`)."""
    import pathlib

    if config.getoption("lf", False) or config.getoption("stepwise", False):
        return lambda path: False  # these collect only some files
    here = pathlib.Path(config.invocation_params.dir)
    whole, partial = [], set()
    for arg in config.args:
        path, sep, _ = arg.partition("::")
        path = (here / path).resolve()
        (partial.add(path) if sep else whole.append(path))
    return lambda path: path not in partial and any(
        path == root or root in path.parents for root in whole)


_FAILED_TO_COLLECT = set()  # files whose collection failed: their own error says why


def pytest_collectreport(report):
    if report.failed:
        _FAILED_TO_COLLECT.add(report.nodeid.partition("::")[0])


def _stale_tier_entries(config, items, tiers):
    """Entries of tests/tiers.py that match no test although their file was collected whole
    (or no longer exists), and long checks outside tests/."""
    import pathlib

    collected = _wholly_collected(config)
    root = pathlib.Path(config.rootpath).resolve()

    def wholly(path):
        failed = path.is_relative_to(root) and path.relative_to(root).as_posix() in \
            _FAILED_TO_COLLECT
        return collected(path) and not failed

    stale = []
    entries = [("SLOW", prefix, ()) for prefix in tiers.SLOW]
    entries += [("LONG", prefix, ()) for prefix in tiers.LONG]
    entries += [("CASES", prefix, ids) for prefix, ids in tiers.CASES.items()]
    for table, prefix, ids in entries:
        if table == "LONG" and not prefix.startswith("tests/"):
            # tests/run_isolated.py --skip-long passes the option to tests/ only
            stale.append(f"LONG: {prefix} (only tests in tests/ can be long checks)")
            continue
        path = (root / prefix.partition("::")[0]).resolve()
        if not path.exists():
            if wholly(path.parent):
                stale.append(f"{table}: {prefix} (no file {path.relative_to(root)})")
            continue
        if not wholly(path):
            continue
        found = [i.nodeid for i in items if tiers.matches(i.nodeid, prefix)]
        if not found:
            stale.append(f"{table}: {prefix} (no such test)")
        for case in set(ids) - {tiers.case_id(n) for n in found}:
            stale.append(f"{table}: {prefix}[{case}] (no such case)")
    return stale


def _is_long(item, tiers) -> bool:
    """Whether tests/tiers.py's LONG names `item` (left out by `make test` and the fast tier)."""
    return any(tiers.matches(item.nodeid, p) for p in tiers.LONG)


def _in_fast_tier(items, tiers):
    """Split `items` into the fast tier and the rest."""
    keep, drop, first = [], [], {}
    for item in items:
        cases = next(((p, ids) for p, ids in tiers.CASES.items()
                      if tiers.matches(item.nodeid, p)), None)
        if cases is not None:
            prefix, ids = cases
            first.setdefault(prefix, item.nodeid)
            other_case = (tiers.case_id(item.nodeid) not in ids if ids
                          else first[prefix] != item.nodeid)
        else:
            other_case = False
        if (other_case or item.get_closest_marker("slow") is not None
                or any(tiers.matches(item.nodeid, p) for p in tiers.SLOW)
                or _is_long(item, tiers)):
            drop.append(item)
        else:
            keep.append(item)
    return keep, drop


@pytest.hookimpl(tryfirst=True)  # before -k/-m/--deselect narrow the items
def pytest_collection_modifyitems(config, items):
    tiers = _tiers()
    stale = _stale_tier_entries(config, items, tiers)
    if stale:
        raise pytest.UsageError(
            "tests/tiers.py names tests that were not collected (renamed, merged or deleted?); "
            "update it:\n  " + "\n  ".join(stale))
    if config.getoption("check_tier"):
        keep, drop = _in_fast_tier(items, tiers)
    elif config.getoption("skip_long"):
        keep = [i for i in items if not _is_long(i, tiers)]
        drop = [i for i in items if _is_long(i, tiers)]
        if drop and not keep:
            config.stash[_ALL_LONG] = True
    else:
        drop = []
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


_ALL_LONG = pytest.StashKey[bool]()


def pytest_sessionfinish(session, exitstatus):
    """A file whose every test is a long check (tests/tiers.py's LONG) passes under
    `--skip-long` rather than failing as a file with no tests (pytest's exit status 5)."""
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and session.config.stash.get(
            _ALL_LONG, False):
        session.exitstatus = pytest.ExitCode.OK
