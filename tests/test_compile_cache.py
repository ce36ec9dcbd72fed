"""The persistent compilation cache probde configures, by what it does: compiled programs
are written to the folder probde (or the user) chose, nowhere when it is off, and a second
process loads the sampler from it instead of compiling it, with default settings
(docs/guide/speed.md); and runs without reporting the failure count.

JAX writes a program to the cache only if it took at least
`jax_persistent_cache_min_compile_time_secs` (1 s) to compile; the tests set that to 0, so
that whether a program is written depends on the cache's configuration, not on the speed
of the machine.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import pytest

import probde

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _fresh_env(env_extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PROBDE_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR",
                        "JAX_ENABLE_COMPILATION_CACHE", "XDG_CACHE_HOME")}
    env.update(env_extra, PYTHONPATH=str(ROOT), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return env


def _compile_in_fresh_process(env_extra, prelude=""):
    """Import probde in a fresh process (after `prelude`), compile one small function, and
    return JAX's cache folder as the process saw it (`'None'` when off)."""
    code = (prelude + "import jax, probde; "
            "jax.jit(lambda x: 3.0 * x + 1.0)(2.0).block_until_ready(); "
            "print('DIR', jax.config.jax_compilation_cache_dir)")
    out = subprocess.run([sys.executable, "-c", code], env=_fresh_env(env_extra),
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return next(x for x in out.splitlines() if x.startswith("DIR ")).split(" ", 1)[1]


def _entries(folder):
    """Names of the cache entries (one file per compiled program) under `folder`."""
    folder = pathlib.Path(folder)
    return sorted(p.name for p in folder.rglob("*-cache")) if folder.exists() else []


def _has_the_jitted_lambda(folder):
    return any(name.startswith("jit__lambda-") for name in _entries(folder))


def test_import_turns_the_cache_on_in_probdes_folder(tmp_path):
    got = _compile_in_fresh_process({"XDG_CACHE_HOME": str(tmp_path)})
    assert got == str(tmp_path / "probde" / "jax")
    assert _has_the_jitted_lambda(tmp_path / "probde" / "jax"), _entries(tmp_path)


def test_cache_opt_out_and_folder_from_the_environment(tmp_path):
    xdg = tmp_path / "xdg"
    assert _compile_in_fresh_process({"PROBDE_COMPILATION_CACHE": "0",
                                      "XDG_CACHE_HOME": str(xdg)}) == "None"
    assert _entries(tmp_path) == []  # nothing written anywhere
    folder = tmp_path / "chosen"
    assert _compile_in_fresh_process({"PROBDE_COMPILATION_CACHE": str(folder),
                                      "XDG_CACHE_HOME": str(xdg)}) == str(folder)
    assert _has_the_jitted_lambda(folder)
    assert _entries(xdg) == []


def test_a_cache_folder_the_user_set_stands(tmp_path):
    user, xdg = tmp_path / "user", tmp_path / "xdg"
    prelude = f"import jax; jax.config.update('jax_compilation_cache_dir', {str(user)!r}); "
    assert _compile_in_fresh_process({"XDG_CACHE_HOME": str(xdg)}, prelude) == str(user)
    assert _has_the_jitted_lambda(user)
    assert _entries(xdg) == []


@pytest.fixture
def cache_settings():
    """Every compiled program is written (min compile time 0); afterwards the cache is as
    the rest of the suite had it."""
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache,
              jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[2])
    if before[0] and before[1]:
        probde.compilation_cache(before[0])
    else:
        jax.config.update("jax_enable_compilation_cache", before[1])


def _compile_a_new_program(c):
    """Compile a program no other has compiled (the constant `c` is in it: a new key)."""
    jax.jit(lambda x: x * c + 0.25).lower(1.0).compile()


def test_compilation_cache_switch(tmp_path, cache_settings):
    first, second = tmp_path / "first", tmp_path / "second"
    assert probde.compilation_cache(first) == first
    assert jax.config.jax_compilation_cache_dir == str(first)
    _compile_a_new_program(1.2345)
    written = _entries(first)
    assert len(written) == 1 and written[0].startswith("jit__lambda-"), written
    assert probde.compilation_cache(second) == second  # the next program goes there
    _compile_a_new_program(2.3456)
    assert len(_entries(second)) == 1 and _entries(first) == written
    with pytest.raises(TypeError, match="path must be a folder, None, True or False; got 3"):
        probde.compilation_cache(3)


@pytest.mark.xfail(strict=True, reason=(
    "probde.compilation_cache(False) sets jax_enable_compilation_cache=False but does not "
    "reset JAX's cache (compilation_cache.reset_cache()): JAX decides once per process "
    "whether the cache is used (is_cache_used), so a process that has compiled with the "
    "cache on keeps writing to it"))
def test_compilation_cache_off_at_run_time_writes_nothing(tmp_path, cache_settings):
    folder = tmp_path / "cache"
    probde.compilation_cache(folder)
    _compile_a_new_program(3.4567)
    written = _entries(folder)
    assert len(written) == 1, written
    assert probde.compilation_cache(False) is None
    assert jax.config.jax_enable_compilation_cache is False
    _compile_a_new_program(4.5678)
    assert _entries(folder) == written  # off: nothing more is written


# ------------------------------------------------- the sampler, from one process to the next
SAMPLER_RUN = textwrap.dedent(
    """
    import json, logging, sys
    import jax

    # JAX logs every persistent-cache lookup (hit or miss) and every program it does not
    # write because it calls back into Python.
    log = {"hit": [], "miss": [], "not_written_callbacks": []}

    class Record(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            name = message.split("'")[1] if "'" in message else ""
            if message.startswith("Persistent compilation cache hit"):
                log["hit"].append(name)
            elif message.startswith("PERSISTENT COMPILATION CACHE MISS"):
                log["miss"].append(name)
            elif "because it uses host callbacks" in message:
                log["not_written_callbacks"].append(name)

    logger = logging.getLogger("jax._src.compiler")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Record())

    import jax.numpy as jnp, numpy as np, numpyro.distributions as dist, probde

    # exponential decay at the edge of its solver's max_steps (tests/conftest.py's
    # decay_at_failure_edge): many failed solves, so the count is not zero
    ode = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    model = probde.Model(ode, {"k": dist.LogNormal(1.0, 1.0)}, initial_state=jnp.array([2.0]),
                         observation=probde.noise.Normal(sigma=0.05),
                         solver=probde.Solver(max_steps=24), t0=0.0)
    t = np.linspace(0.25, 5.0, 8)
    data = probde.TimeSeries(t, 2.0 * np.exp(-2.9 * t), observables=("x",))
    method = probde.NUTS(num_chains=2, num_warmup=100, num_samples=100)
    bar = sys.argv[1] == "bar"
    kwargs = {"progress_bar": True} if bar else {}  # else the default (off: not a terminal)
    result = probde.infer(model, data, method, seed=3, num_prior_samples=0, **kwargs)
    out = dict(log, k=result.idata.posterior["k"].values.ravel().tolist(),
               failures=result.solver_failures)
    print("RESULT", json.dumps(out))
    """
)
SAMPLER = "jit__nuts_chunk"  # probde's program for warmup and sampling (chunks.py)


def _sampler_run(xdg, variant):
    """`probde.infer` in a fresh process with default settings (equinox's and JAX's
    included: only the cache's folder and the test's minimum compile time are set; one
    CPU device, so the chains run one after the other)."""
    env = _fresh_env({"XDG_CACHE_HOME": str(xdg)})
    # As a user's process: one CPU device, and not under CI (numpyro's own progress bar
    # turns off when `CI` or `PYTEST_XDIST_WORKER` is set).
    for name in ("EQX_ON_ERROR", "XLA_FLAGS", "CI", "PYTEST_XDIST_WORKER"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", SAMPLER_RUN, variant],
                          env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _named(folder, name):
    return {entry: (folder / entry).stat().st_mtime_ns for entry in _entries(folder)
            if entry.startswith(name + "-")}


@pytest.mark.parametrize("variant", ["default", "bar"])
def test_a_second_process_loads_the_sampler_from_the_cache(tmp_path, variant):
    # Nothing in the run calls back into Python (the failure count is carried in the
    # sampler's state; equinox's checks inside diffrax are NaNs in probde's solves; the
    # progress bar is updated by the host between chunks), so every program is written,
    # and a second process loads the sampler instead of compiling it, bar or no bar.
    program = SAMPLER
    folder = tmp_path / "probde" / "jax"
    first = _sampler_run(tmp_path, variant)
    assert first["not_written_callbacks"] == [], first["not_written_callbacks"]
    assert program in first["miss"], first["miss"]
    written = _named(folder, program)
    assert len(written) == 1, _entries(folder)
    assert first["failures"] > 0  # rejected proposals are counted all the same

    second = _sampler_run(tmp_path, variant)
    assert program in second["hit"] and program not in second["miss"], second
    assert _named(folder, program) == written  # read, neither rewritten nor added to
    assert second["k"] == first["k"]  # the loaded program draws the same chains
    assert second["failures"] == first["failures"]


def test_probde_keeps_every_program_unless_the_user_chose(tmp_path):
    # JAX keeps only programs that took a second or more to compile; probde's cache keeps
    # all of them (most of a run's programs are small), unless the user set the minimum.
    env = {k: v for k, v in _fresh_env({"XDG_CACHE_HOME": str(tmp_path / "a")}).items()
           if k != "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"}
    code = ("import jax, probde; jax.jit(lambda x: 3.0 * x + 1.0)(2.0).block_until_ready(); "
            "print('MIN', jax.config.jax_persistent_cache_min_compile_time_secs)")

    def run(env):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True, cwd=ROOT).stdout
        return float(next(x for x in out.splitlines() if x.startswith("MIN ")).split()[1])

    assert run(env) == 0.0
    assert _has_the_jitted_lambda(tmp_path / "a" / "probde" / "jax")  # a tiny program
    chosen = dict(env, XDG_CACHE_HOME=str(tmp_path / "b"),
                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="30")
    assert run(chosen) == 30.0
    assert not _has_the_jitted_lambda(tmp_path / "b" / "probde" / "jax")


# ------------------------------------------------------------- without the failure count
def _decay_problem():
    decay = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    model = probde.Model(decay, {"k": dist.LogNormal(0.0, 0.5)}, jnp.array([1.0]),
                         probde.noise.Normal(sigma=0.05))
    data = probde.TimeSeries([0.0, 1.0, 2.0], [1.0, 0.6, 0.37], observables=("x",))
    return model, data


@pytest.mark.filterwarnings("ignore::probde.ConvergenceWarning")  # a short run on purpose
def test_infer_without_failure_count_gives_the_same_draws():
    model, data = _decay_problem()
    method = probde.NUTS(num_chains=1, num_warmup=100, num_samples=100)
    counted = probde.infer(model, data, method, seed=3, num_prior_samples=0)
    uncounted = probde.infer(model, data, method, seed=3, num_prior_samples=0,
                             count_failures=False)
    # A well-posed decay (every rate the sampler proposes solves in a few steps): counted,
    # and none.
    assert counted.solver_failures == 0
    assert counted.idata["sample_stats"].attrs["solver_failures"] == 0
    assert uncounted.solver_failures is None
    assert "solver_failures" not in uncounted.idata["sample_stats"].attrs
    # The count is a side channel: the chain itself is unchanged.
    assert jnp.array_equal(counted.idata.posterior["k"].values,
                           uncounted.idata.posterior["k"].values)
    with pytest.raises(TypeError, match="count_failures must be True or False; got 'yes'"):
        probde.infer(model, data, method, count_failures="yes")
