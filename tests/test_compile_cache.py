"""The persistent compilation cache probde configures, by what it does: compiled programs
are written to the folder probde (or the user) chose, nowhere when it is off, and a second
process loads the sampler from it instead of compiling it (docs/guide/speed.md); and runs
without the failure count.

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

    import jax.numpy as jnp, numpyro.distributions as dist, probde

    decay = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    model = probde.Model(decay, {"k": dist.LogNormal(0.0, 0.5)}, jnp.array([1.0]),
                         probde.noise.Normal(sigma=0.05))
    data = probde.TimeSeries([0.0, 1.0, 2.0], [1.0, 0.6, 0.37], observables=("x",))
    method = probde.NUTS(num_chains=1, num_warmup=100, num_samples=100)
    out = {}
    for counted in [c == "counted" for c in sys.argv[1:]]:
        for key in log:
            log[key].clear()
        result = probde.infer(model, data, method, seed=3, num_prior_samples=0,
                              progress_bar=False, count_failures=counted)
        out["counted" if counted else "uncounted"] = dict(
            {key: list(names) for key, names in log.items()},
            k=result.idata.posterior["k"].values.ravel().tolist())
    print("RESULT", json.dumps(out))
    """
)
SAMPLER = "jit__fori_collect_loop"  # numpyro's program for warmup and sampling


def _sampler_run(xdg, *runs):
    env = _fresh_env({"XDG_CACHE_HOME": str(xdg), "EQX_ON_ERROR": "nan"})
    proc = subprocess.run([sys.executable, "-c", SAMPLER_RUN, *runs], env=env,
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _sampler_entries(folder):
    return {name: (folder / name).stat().st_mtime_ns for name in _entries(folder)
            if name.startswith(SAMPLER + "-")}


def test_a_second_process_loads_the_sampler_from_the_cache(tmp_path):
    # As docs/guide/speed.md says: without the progress bar, the failure count and
    # equinox's runtime checks, the sampler has no callbacks and is cached, so a second
    # process loads it; with the failure count it cannot be stored.
    folder = tmp_path / "probde" / "jax"
    first = _sampler_run(tmp_path, "uncounted")["uncounted"]
    assert SAMPLER in first["miss"] and SAMPLER not in first["not_written_callbacks"], first
    written = _sampler_entries(folder)
    assert len(written) == 1, _entries(folder)

    second = _sampler_run(tmp_path, "uncounted", "counted")
    again, counted = second["uncounted"], second["counted"]
    assert SAMPLER in again["hit"] and SAMPLER not in again["miss"], again
    assert _sampler_entries(folder) == written  # read, neither rewritten nor added to
    assert again["k"] == first["k"]  # the loaded program draws the same chain
    # The failure count calls back into Python: compiled anew, and not written.
    assert SAMPLER in counted["miss"] and SAMPLER in counted["not_written_callbacks"], counted
    assert counted["k"] == first["k"]


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
