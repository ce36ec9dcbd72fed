"""The persistent compilation cache probde configures, and runs without the failure count."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import pytest

import probde

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cache_dir_in_fresh_process(env_extra, prelude=""):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PROBDE_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    env.update(env_extra, PYTHONPATH=str(ROOT))
    code = prelude + "import jax, probde; print('DIR', jax.config.jax_compilation_cache_dir)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    return next(x for x in out.splitlines() if x.startswith("DIR ")).split(" ", 1)[1]


def test_import_turns_the_cache_on_in_probdes_folder(tmp_path):
    got = _cache_dir_in_fresh_process({"XDG_CACHE_HOME": str(tmp_path)})
    assert got == str(tmp_path / "probde" / "jax")


def test_cache_opt_out_and_folder_from_the_environment(tmp_path):
    assert _cache_dir_in_fresh_process({"PROBDE_COMPILATION_CACHE": "0"}) == "None"
    assert _cache_dir_in_fresh_process({"PROBDE_COMPILATION_CACHE": str(tmp_path)}) == str(tmp_path)


def test_a_cache_folder_the_user_set_stands(tmp_path):
    prelude = f"import jax; jax.config.update('jax_compilation_cache_dir', {str(tmp_path)!r}); "
    assert _cache_dir_in_fresh_process({}, prelude) == str(tmp_path)


def test_compilation_cache_switch(tmp_path):
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache)
    try:
        assert probde.compilation_cache(tmp_path) == tmp_path
        assert jax.config.jax_compilation_cache_dir == str(tmp_path)
        assert probde.compilation_cache(False) is None
        assert jax.config.jax_enable_compilation_cache is False
        with pytest.raises(TypeError, match="path must be a folder, None, True or False; got 3"):
            probde.compilation_cache(3)
    finally:  # as the rest of the suite had it
        if before[0] and before[1]:
            probde.compilation_cache(before[0])
        else:
            jax.config.update("jax_enable_compilation_cache", before[1])


def _decay_problem():
    decay = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    model = probde.Model(decay, {"k": dist.LogNormal(0.0, 0.5)}, jnp.array([1.0]),
                         probde.noise.Normal(sigma=0.05))
    data = probde.TimeSeries([0.0, 1.0, 2.0], [1.0, 0.6, 0.37], observables=("x",))
    return model, data


def test_infer_without_failure_count_gives_the_same_draws():
    model, data = _decay_problem()
    method = probde.NUTS(num_chains=1, num_warmup=100, num_samples=100)
    counted = probde.infer(model, data, method, seed=3, num_prior_samples=0)
    uncounted = probde.infer(model, data, method, seed=3, num_prior_samples=0,
                             count_failures=False)
    assert counted.solver_failures is not None and counted.solver_failures >= 0
    assert uncounted.solver_failures is None
    assert "solver_failures" not in uncounted.idata["sample_stats"].attrs
    # The count is a side channel: the chain itself is unchanged.
    assert jnp.array_equal(counted.idata.posterior["k"].values,
                           uncounted.idata.posterior["k"].values)
    with pytest.raises(TypeError, match="count_failures must be True or False; got 'yes'"):
        probde.infer(model, data, method, count_failures="yes")
