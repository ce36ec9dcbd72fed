"""Strict JAX for the whole suite: float64, no implicit rank promotion, 4 CPU devices."""

import os

# Single-threaded BLAS: small LAPACK calls (GP Cholesky and solves) otherwise stall on
# thread hand-offs on a loaded 2-core machine (see case_studies/_common.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpyro  # noqa: E402

numpyro.set_host_device_count(4)  # must precede JAX's backend start

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

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

    import probde

    ode = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    model = probde.Model(
        ode, {"k": dist.LogNormal(1.0, 1.0)}, initial_state=jnp.array([2.0]),
        observation=probde.noise.Normal(sigma=0.05), solver=probde.Solver(max_steps=24), t0=0.0,
    )
    t = np.linspace(0.25, 5.0, 8)
    return model, probde.TimeSeries(t, 2.0 * np.exp(-2.9 * t), observables=("x",))
