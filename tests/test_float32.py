"""The library works in float32 too. Tests enable float64 globally, so one fresh process
runs everything in float32 (an ODE solve, an ODE model's log-likelihood and gradient, and
the Markov GP's log marginal, gradient and leave-one-out terms) and the results are checked
here, in float64, against closed forms and the dense GP algebra, at the float32 tolerance."""

import json
import subprocess
import sys
import textwrap

import gpjax as gpx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import RTOL

from probde.discrepancy import dense

F32 = RTOL[np.dtype("float32")]

SCRIPT = textwrap.dedent(
    """
    import json
    import probde  # first: its XLA option counts only before JAX starts (gpjax starts it)
    import jax, jax.numpy as jnp, numpy as np, numpyro.distributions as dist, gpjax as gpx
    from probde.discrepancy import markov
    assert not jax.config.jax_enable_x64
    out = {}
    ode = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    times = jnp.linspace(0.0, 3.0, 7)
    traj = probde.solve(ode, jnp.array([2.0]), {"k": 0.8}, times)
    out["solve"] = dict(dtype=str(traj.ys.dtype), ok=bool(traj.ok),
                        ys=np.asarray(traj.ys[:, 0]).tolist())
    model = probde.Model(ode, {"k": dist.LogNormal(0.0, 1.0)}, jnp.array([2.0]),
                         probde.noise.LogNormal(sigma=dist.HalfNormal(1.0)))
    data = probde.TimeSeries(np.asarray(times), 2.0 * np.exp(-0.8 * np.asarray(times)),
                             observables=("x",))
    f = jax.jit(jax.value_and_grad(lambda p: probde.log_likelihood(model, data, p)))
    for k in ("0.8", "0.9"):
        value, grad = f({"k": jnp.float32(float(k)), "sigma": jnp.float32(0.1)})
        out["ode_" + k] = dict(dtypes=[str(value.dtype), str(grad["k"].dtype)],
                               value=float(value), k=float(grad["k"]),
                               sigma=float(grad["sigma"]))
    t = jnp.linspace(0.5, 20.0, 200, dtype=jnp.float32)
    r = jnp.sin(t)
    kernel = gpx.kernels.Matern52(lengthscale=1.5, variance=1.0)
    g = jax.jit(jax.value_and_grad(lambda r: markov.log_marginal(kernel, t, r, 0.1)))
    value, grad = g(r)
    loo = jax.jit(lambda r: markov.loo_pointwise(kernel, t, r, 0.1))(r)
    out["markov"] = dict(dtypes=[str(value.dtype), str(grad.dtype), str(loo.dtype)],
                         value=float(value), t=np.asarray(t).tolist(),
                         r=np.asarray(r).tolist(), grad=np.asarray(grad).tolist(),
                         loo=np.asarray(loo).tolist())
    print("RESULT", json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def float32_run():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_float32_in_a_fresh_process(float32_run):
    out = float32_run
    # The solve, against the closed form 2 exp(-0.8 t).
    times = np.linspace(0.0, 3.0, 7)
    assert out["solve"]["dtype"] == "float32" and out["solve"]["ok"]
    np.testing.assert_allclose(out["solve"]["ys"], 2.0 * np.exp(-0.8 * times), rtol=F32)

    # LogNormal noise, log y_i = log 2 - 0.8 t_i, log mu_i = log 2 - k t_i, r_i their
    # difference: l = sum(-r^2 / (2 s^2) - log s - log y - log(2 pi) / 2),
    # dl/dk = -sum(r t) / s^2, dl/ds = sum(r^2 / s^3 - 1 / s).
    sigma = 0.1
    log_y = np.log(2.0) - 0.8 * times
    for k in ("0.8", "0.9"):
        got = out["ode_" + k]
        assert got["dtypes"] == ["float32", "float32"], k
        r = (float(k) - 0.8) * times
        terms = -0.5 * (r / sigma) ** 2 - np.log(sigma) - log_y - 0.5 * np.log(2 * np.pi)
        # relative to the size of the terms (they partly cancel at k = 0.9)
        assert abs(got["value"] - terms.sum()) < F32 * np.abs(terms).sum(), (k, got)
        np.testing.assert_allclose(got["sigma"], np.sum(r**2 / sigma**3 - 1 / sigma), rtol=F32)
        grad_k = -np.sum(r * times) / sigma**2
        if k == "0.8":
            # The data sit at the mean: the gradient in k is exactly 0. Its scale is the
            # score's standard deviation, sqrt(Fisher information) = sqrt(sum t^2) / s
            # (about 48): float32 must get within F32 of it.
            assert grad_k == 0.0
            assert abs(got["k"]) < F32 * np.sqrt(np.sum(times**2)) / sigma, got
        else:
            np.testing.assert_allclose(got["k"], grad_k, rtol=F32)

    # The Markov GP against the dense algebra in float64 at the same (float32) inputs.
    m = out["markov"]
    assert m["dtypes"] == ["float32"] * 3
    t, r = jnp.asarray(m["t"], float), jnp.asarray(m["r"], float)
    K = dense.gram(gpx.kernels.Matern52(lengthscale=1.5, variance=1.0), t)
    value, grad = jax.value_and_grad(lambda r: dense.log_marginal(K, r, 0.1, jitter=0.0))(r)
    np.testing.assert_allclose(m["value"], float(value), rtol=F32)
    grad = np.asarray(grad)
    np.testing.assert_allclose(m["grad"], grad, rtol=F32, atol=F32 * np.abs(grad).max())
    loo = np.asarray(dense.loo_pointwise(K, r, 0.1, jitter=0.0))
    np.testing.assert_allclose(m["loo"], loo, rtol=F32, atol=F32 * np.abs(loo).max())
