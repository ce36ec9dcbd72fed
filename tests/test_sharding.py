"""Chains sharded over devices with `jax.sharding` (`chain_method="sharded"`), run in a
fresh process with two forced CPU devices (the suite's own process has four)."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import RTOL

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, os
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    import numpyro.distributions as dist, probde
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

    # End to end, against numpyro's own chain methods with the same seed (the same keys
    # and starting points per chain): one chain per device runs the unbatched chain code,
    # as "sequential" does; two per device vmap it, as "vectorized" does over all four.
    decay = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    model = probde.Model(decay, {"k": dist.LogNormal(0.0, 0.5)}, jnp.array([1.0]),
                         probde.noise.Normal(sigma=0.05))
    data = probde.TimeSeries([0.0, 1.0, 2.0], [1.0, 0.6, 0.37], observables=("x",))
    for chains, cm in ((2, "sharded"), (2, "sequential"), (4, "sharded"), (4, "vectorized")):
        r = probde.infer(model, data, probde.NUTS(num_chains=chains, num_warmup=50,
                         num_samples=50, chain_method=cm), seed=1, num_prior_samples=0)
        out[f"{cm}{chains}"] = {"k": np.asarray(r.idata.posterior["k"]).tolist(),
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
    # One chain per device: the same program as sequential chains, bit for bit.
    assert np.shape(out["sharded2"]["k"]) == (2, 50)
    np.testing.assert_array_equal(out["sharded2"]["k"], out["sequential2"]["k"])
    assert out["sharded2"]["failures"] == out["sequential2"]["failures"]
    # Two per device: the same chains as four vectorised ones, up to the rounding of a
    # batch of two against a batch of four (about 1e-9 after 100 iterations, carried
    # through the step-size adaptation), far below any difference of chains or keys.
    assert np.shape(out["sharded4"]["k"]) == (4, 50)
    np.testing.assert_allclose(out["sharded4"]["k"], out["vectorized4"]["k"],
                               rtol=RTOL[np.dtype("float64")], atol=0)
    assert out["sharded4"]["failures"] == out["vectorized4"]["failures"]
    assert out["sharded4"]["failures"] is not None
