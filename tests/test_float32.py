"""The library works in float32 too (tests enable float64 globally, so run in a subprocess)."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, numpyro.distributions as dist, probde
    assert not jax.config.jax_enable_x64
    ode = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    times = jnp.linspace(0.0, 3.0, 7)
    traj = probde.solve(ode, jnp.array([2.0]), {"k": 0.8}, times)
    assert traj.ys.dtype == jnp.float32 and bool(traj.ok)
    np.testing.assert_allclose(traj.ys[:, 0], 2.0 * np.exp(-0.8 * np.asarray(times)), rtol=5e-4)
    model = probde.Model(ode, {"k": dist.LogNormal(0.0, 1.0)}, jnp.array([2.0]),
                         probde.noise.LogNormal(sigma=dist.HalfNormal(1.0)))
    data = probde.TimeSeries(np.asarray(times), 2.0 * np.exp(-0.8 * np.asarray(times)),
                             observables=("x",))
    f = jax.jit(jax.value_and_grad(lambda p: probde.log_likelihood(model, data, p)))
    value, grad = f({"k": jnp.float32(0.8), "sigma": jnp.float32(0.1)})
    assert value.dtype == jnp.float32 and bool(jnp.isfinite(value))
    assert abs(float(grad["k"])) < 1.0  # the data sit at the mean: the gradient in k is ~0
    print("ok")
    """
)


def test_float32_solve_and_log_likelihood():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
