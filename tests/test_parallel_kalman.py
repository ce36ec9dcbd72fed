"""The parallel-in-time Kalman filter and smoother (`probde.EKF(parallel=True)`).

Two implementations agree (TESTING.md, layer 2): the associative-scan filter against the
sequential exact-linear filter (itself checked against the dense Gaussian in
`test_sde.py`), on a three-state linear SDE seen through two affine observables, with
missing components, wholly missing times, a non-stationary initial state and irregular
gaps from 1e-3 to 8; log-likelihood, filtered and smoothed moments, leave-one-out terms
and gradients. Then the model layer (`probde.log_likelihood`) and bad input.

Tolerance. Both sides are exact float64 algebra on the same transitions, in a different
order of operations: `PARALLEL` = 1e-10, relative to the scale of each quantity (the
largest covariance entry for moments, the magnitude of the log-likelihood), as the issue
asks and as `DISCRETE` in test_sde.py. Gradients: the same, on the gradient's scale.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import probde
from probde.dynamics.sde import FilterInputs

PARALLEL = 1e-10

A3 = np.array([[-0.6, 0.9, 0.0], [-0.9, -0.4, 0.3], [0.1, 0.0, -1.2]])
L3 = np.array([[0.5, 0.0], [0.2, 0.3], [0.0, 0.7]])
H3 = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, -0.3]])


def drift(t, x, th):
    return th["scale"] * (jnp.asarray(A3) @ x) + th["b"]


def diffusion(t, x, th):
    return th["s"] * jnp.asarray(L3)


SDE3 = probde.SDE(drift, diffusion, state_names=("a", "b", "c"))
THETA = {"scale": 1.1, "b": np.array([0.2, -0.1, 0.3]), "s": 0.8}


def observe(x):
    return jnp.asarray(H3) @ x + jnp.array([0.4, -0.2])


def _data(T, seed):
    """Irregular times, values from a rough simulation (their law does not matter: both
    filters condition on the same numbers), a pattern of missing components."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(0.4, T)
    gaps[rng.choice(T, T // 10, replace=False)] = 1e-3
    gaps[rng.choice(T, max(1, T // 100), replace=False)] = 8.0
    times = -0.5 + np.cumsum(gaps)
    values = np.sin(times)[:, None] * np.array([1.0, -0.5]) + 0.3 * rng.normal(size=(T, 2))
    mask = rng.random((T, 2)) > 0.2
    mask[rng.choice(T, max(1, T // 20), replace=False)] = False  # wholly missing times
    return times, np.where(mask, values, 0.0), mask


@functools.cache
def _runs(T):
    times, values, mask = _data(T, T)
    inputs = FilterInputs(times=jnp.asarray(times), t0=jnp.asarray(-0.5),
                          values=jnp.asarray(values), mask=jnp.asarray(mask), observe=observe,
                          noise_var=jnp.array([0.09, 0.25]))
    initial = (jnp.array([1.0, -0.5, 0.2]), jnp.diag(jnp.array([0.3, 0.2, 0.5])))
    theta = jax.tree.map(jnp.asarray, THETA)

    def run(parallel, smooth, th):
        return probde.EKF(parallel=parallel).run(SDE3, th, initial, inputs, probde.Solver(),
                                                 None, smooth=smooth)

    out = {}
    for parallel in (False, True):
        res = jax.jit(functools.partial(run, parallel, True))(theta)
        grad = jax.jit(jax.grad(lambda th, p=parallel: run(p, False, th).log_lik))(theta)
        out[parallel] = jax.tree.map(np.asarray, (res, grad))
    return out


def _close(actual, expected, scale):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=PARALLEL * scale)


@pytest.mark.parametrize("T", [7, 2000])
def test_parallel_filter_and_smoother_are_the_sequential_ones(T):
    (seq, _), (par, _) = _runs(T)[False], _runs(T)[True]
    assert bool(par.ok) and bool(seq.ok)
    _close(par.log_lik, seq.log_lik, abs(float(seq.log_lik)))
    scale = float(np.abs(seq.filtered_cov).max())
    for name in ("filtered_mean", "filtered_cov", "smoothed_mean", "smoothed_cov"):
        _close(getattr(par, name), getattr(seq, name), scale)
    _close(par.pointwise, seq.pointwise, float(np.abs(seq.pointwise).max()))
    assert int(par.num_steps) == 0  # no solver steps: exact transitions


@pytest.mark.parametrize("T", [7, 2000])
def test_parallel_gradient_is_the_sequential_one(T):
    (_, g_seq), (_, g_par) = _runs(T)[False], _runs(T)[True]
    for name in THETA:
        scale = float(np.abs(g_seq[name]).max())
        _close(g_par[name], g_seq[name], scale)


def _ou_model(likelihood, observation=None):
    sde = probde.SDE(lambda t, x, th: th["k"] * (th["m"] - x),
                     lambda t, x, th: jnp.stack([th["s"]]), state_names=("x",))
    return probde.Model(
        sde, {"k": dist.LogNormal(0.0, 0.5), "m": dist.Normal(0.0, 1.0),
              "s": dist.LogNormal(-0.5, 0.5)},
        initial_state=lambda th: dist.Normal(th["m"], 1.0).expand([1]),
        observation=observation or probde.noise.Normal(sigma=0.3), likelihood=likelihood)


DATA = probde.TimeSeries(np.array([0.0, 0.3, 1.1, 1.5, 2.7, 3.0]),
                         np.array([0.52, 0.95, np.nan, 1.18, 0.84, 0.12]), observables=("x",))
PARAMS = {"k": 0.8, "m": 0.6, "s": 0.7}


def test_model_log_likelihood_is_the_sequential_one():
    value = {p: float(probde.log_likelihood(_ou_model(probde.EKF(parallel=p)), DATA, PARAMS))
             for p in (False, True)}
    _close(value[True], value[False], abs(value[False]))


def test_nonlinear_sde_is_a_clear_error():
    sde = probde.SDE(lambda t, x, th: -th["k"] * x**3, lambda t, x, th: jnp.ones(1),
                     state_names=("x",))
    model = probde.Model(sde, {"k": dist.LogNormal(0.0, 0.5)}, initial_state=jnp.zeros(1),
                         observation=probde.noise.Normal(sigma=0.3),
                         likelihood=probde.EKF(parallel=True))
    with pytest.raises(ValueError, match=r"parallel=True\) needs a linear SDE"):
        probde.log_likelihood(model, DATA, {"k": 1.0})


def test_log_link_is_a_clear_error():
    model = _ou_model(probde.EKF(parallel=True), probde.noise.LogNormal(sigma=0.3))
    data = probde.TimeSeries(DATA.times, np.abs(DATA.values[:, 0]) + 0.1, observables=("x",))
    with pytest.raises(ValueError, match="observations affine in the state"):
        probde.log_likelihood(model, data, PARAMS)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="parallel must be True or False; got 'yes'"):
        probde.EKF(parallel="yes")
    with pytest.raises(ValueError, match="got exact_linear=False"):
        probde.UKF(parallel=True, exact_linear=False)
