"""Chains sharded over devices with `jax.sharding` (`chain_method="sharded"`), run in a
fresh process with two forced CPU devices (the suite's own process has four)."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, os
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    import numpyro.distributions as dist, probde
    import arviz as az
    from probde.inference.methods import sharded_chains

    out = {"devices": len(jax.devices())}

    # The chain method itself: 4 chains, 2 per device, on a mesh of both devices.
    method = sharded_chains(4)
    def chain(args):
        key, x = args
        return x + jax.random.normal(key, ()) * 0.0 + jnp.arange(3.0).sum()
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    xs = jnp.arange(4.0)
    res = method(chain)((keys, xs))
    out["mesh_devices"] = int(method.mesh.devices.size)
    out["result_devices"] = len(res.sharding.device_set)
    out["result"] = np.asarray(res).tolist()

    # End to end: the same posterior as vectorised chains.
    decay = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    model = probde.Model(decay, {"k": dist.LogNormal(0.0, 0.5)}, jnp.array([1.0]),
                         probde.noise.Normal(sigma=0.05))
    data = probde.TimeSeries([0.0, 1.0, 2.0], [1.0, 0.6, 0.37], observables=("x",))
    for cm in ("sharded", "vectorized"):
        r = probde.infer(model, data, probde.NUTS(num_chains=4, num_warmup=300,
                         num_samples=300, chain_method=cm), seed=1, num_prior_samples=0)
        k = np.asarray(r.idata.posterior["k"])
        out[cm] = {"shape": list(k.shape), "mean": float(k.mean()),
                   "mcse": float(az.mcse(k, method="mean")),
                   "failures": r.solver_failures}
    print("RESULT", json.dumps(out))
    """
)


@pytest.mark.slow
def test_sharded_chains_on_two_forced_host_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert out["devices"] == 2
    assert out["mesh_devices"] == 2 and out["result_devices"] == 2
    assert out["result"] == [3.0, 4.0, 5.0, 6.0]
    sharded, vectorized = out["sharded"], out["vectorized"]
    assert sharded["shape"] == [4, 300]
    assert sharded["failures"] is not None and sharded["failures"] >= 0
    # Same chains (same seed and starting points), so the means agree within Monte Carlo
    # error (rounding differs between batch sizes and can move individual draws).
    z = abs(sharded["mean"] - vectorized["mean"]) / (sharded["mcse"] ** 2 + vectorized["mcse"] ** 2) ** 0.5
    assert z < 4.0
