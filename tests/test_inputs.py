"""Bad input gets a clear error naming the argument, what was expected and what came."""

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import probde


def decay(t, y, theta):
    return -theta["k"] * y


ODE1 = probde.ODE(decay, state_names=("x",))


def model(**overrides):
    kwargs = dict(
        dynamics=ODE1,
        params={"k": dist.LogNormal(0.0, 1.0)},
        initial_state=jnp.array([1.0]),
        observation=probde.noise.Normal(sigma=0.1),
    )
    kwargs.update(overrides)
    return probde.Model(**kwargs)


# ------------------------------------------------------------------ TimeSeries
@pytest.mark.parametrize(
    ("times", "values", "observables", "error", "match"),
    [
        ([0.0, 2.0, 1.0], [1, 2, 3], ("x",), ValueError,
         r"times must be strictly increasing \(unsorted times\); got 1.0 after 2.0 at index 2"),
        ([0.0, 1.0, 1.0], [1, 2, 3], ("x",), ValueError,
         r"strictly increasing \(duplicate time\); got 1.0 after 1.0 at index 2"),
        ([0.0, np.inf], [1, 2], ("x",), ValueError, "times must be finite; got inf at index 1"),
        ([0.0, 1.0], [1.0, np.inf], ("x",), ValueError,
         "values must be finite or NaN \\(missing\\); got inf at time 1.0 for 'x'"),
        ([0.0, 1.0, 2.0], [1.0, 2.0], ("x",), ValueError,
         "values must have one row per time: 3 times but 2 rows"),
        ([0.0, 1.0], [[1.0, 2.0], [3.0, 4.0]], ("x",), ValueError,
         r"values must have one column per observable: 1 observables \('x',\) but 2 columns"),
        ([0.0, 1.0], [np.nan, np.nan], ("x",), ValueError, "values are all missing"),
        ([0.0, 1.0], [1.0, 2.0], "x", TypeError, "observables must be a sequence of names"),
        ([[0.0, 1.0]], [1.0, 2.0], ("x",), ValueError, "times must be a non-empty 1-D array"),
        ([0.0, 1.0], ["a", "b"], ("x",), TypeError, "values must be an array of numbers"),
    ],
)
def test_timeseries_bad_input(times, values, observables, error, match):
    with pytest.raises(error, match=match):
        probde.TimeSeries(times, values, observables=observables)


def test_timeseries_keeps_missing_values_masked():
    data = probde.TimeSeries([0.0, 1.0, 2.0], [1.0, np.nan, 3.0], observables=("x",))
    assert data.values.shape == (3, 1)
    assert data.num_observed == 2
    assert data.mask.tolist() == [[True], [False], [True]]


# ---------------------------------------------------------------------- Model
def test_model_initial_state_of_wrong_size():
    with pytest.raises(ValueError, match=r"initial_state must have shape \(1,\).*got shape \(2,\)"):
        model(initial_state=jnp.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"initial_state distribution must have shape \(1,\)"):
        model(initial_state=dist.LogNormal(0.0, 1.0).expand([3]))
    # (the same check for SDE models: one function, tested here)
    with pytest.raises(ValueError, match=r"initial_state distribution must have shape \(1,\).*"
                                         r"Use .expand\(\[1\]\)"):
        model(initial_state=dist.LogNormal(0.0, 1.0))


def test_model_initial_state_function_of_wrong_size():
    with pytest.raises(ValueError, match=r"initial_state must have shape \(1,\)"):
        model(initial_state=lambda theta: jnp.ones(3))


def test_model_prior_not_a_distribution():
    with pytest.raises(TypeError, match=r"params\['k'\] must be a numpyro distribution \(the prior\) or a probde.PerExperiment\(...\); got 1.0 of type float"):
        model(params={"k": 1.0})
    with pytest.raises(TypeError, match="params must be a dict"):
        model(params=[("k", dist.Normal())])


def test_model_observed_name_not_a_state():
    with pytest.raises(ValueError, match=r"observe names 'y', which is not a state; states are \('x',\)"):
        model(observe=("y",))


def test_model_parameter_read_but_not_defined():
    def vf(t, y, theta):
        return -theta["k"] * theta["missing_rate"] * y

    with pytest.raises(ValueError, match=r"reads parameter 'missing_rate'.*params has \['k'\]"):
        model(dynamics=probde.ODE(vf, state_names=("x",)))


def test_model_vector_field_of_wrong_shape():
    with pytest.raises(ValueError, match=r"vector_field must return shape \(1,\)"):
        model(dynamics=probde.ODE(lambda t, y, th: jnp.zeros(2), state_names=("x",)))


def test_model_observation_not_a_noise_model():
    with pytest.raises(TypeError, match="observation must be a probde.noise model"):
        model(observation=dist.Normal(0.0, 1.0))


def test_noise_bad_arguments():
    with pytest.raises(ValueError, match="sigma must be positive; got -1.0"):
        probde.noise.Normal(sigma=-1.0)
    with pytest.raises(TypeError, match="sigma must be a positive number .* or a numpyro distribution"):
        probde.noise.LogNormal(sigma="wide")
    with pytest.raises(ValueError, match="exactly one of phi or phi_inv"):
        probde.noise.NegativeBinomial()


@pytest.mark.parametrize("noise", [probde.noise.Poisson(), probde.noise.NegativeBinomial(phi=3.0)])
def test_negative_counts_rejected(noise):
    m = model(observation=noise)
    data = probde.TimeSeries([0.0, 1.0], [3.0, -1.0], observables=("x",))
    with pytest.raises(ValueError, match="data.values must hold non-negative counts .* got -1.0"):
        m.prepare(data)
    frac = probde.TimeSeries([0.0, 1.0], [3.0, 1.5], observables=("x",))
    with pytest.raises(ValueError, match="must hold integer counts .* got 1.5"):
        m.prepare(frac)


def test_lognormal_needs_positive_data():
    m = model(observation=probde.noise.LogNormal(sigma=0.1))
    data = probde.TimeSeries([0.0, 1.0], [3.0, 0.0], observables=("x",))
    with pytest.raises(ValueError, match="data.values must be positive for noise.LogNormal; got 0.0"):
        m.prepare(data)


def test_data_columns_must_match_observables():
    m = model()
    data = probde.TimeSeries([0.0, 1.0], [3.0, 1.0], observables=("z",))
    with pytest.raises(ValueError, match=r"data.observables must match the model's observables \('x',\); got \('z',\)"):
        m.prepare(data)
    with pytest.raises(TypeError, match=r"data\[1\] must be a probde.TimeSeries"):
        m.prepare([probde.TimeSeries([0.0], [1.0], observables=("x",)), np.ones(3)])


def test_t0_after_first_observation():
    m = model(t0=2.0)
    with pytest.raises(ValueError, match="t0 must not be after the first observation time 0.0; got t0=2.0"):
        m.prepare(probde.TimeSeries([0.0, 1.0], [3.0, 1.0], observables=("x",)))


def test_dynamics_of_wrong_type():
    # (a discrepancy of the wrong type: tests/test_discrepancy.py; a likelihood on an ODE
    # model: tests/test_sde.py, with the other likelihood checks)
    with pytest.raises(TypeError, match="dynamics must be a probde.ODE, a probde.SDE or a probde.GPEmulator"):
        model(dynamics="ode")


def test_noise_hyperparameter_prior_of_wrong_shape():
    m = model(observation=probde.noise.Normal(sigma=dist.HalfNormal(1.0).expand([3])))
    data = probde.TimeSeries([0.0, 1.0], [1.0, 0.5], observables=("x",))
    with pytest.raises(ValueError, match=r"noise parameter 'sigma' must have shape \(\) .* or \(1,\)"):
        probde.log_likelihood(m, data, {"k": 1.0, "sigma": jnp.ones(3)})


def test_log_likelihood_names_wrong_keys():
    m = model()
    data = probde.TimeSeries([0.0, 1.0], [1.0, 0.5], observables=("x",))
    with pytest.raises(ValueError, match=r"exactly the keys \['k'\]; missing \['k'\], unexpected \['rate'\]"):
        probde.log_likelihood(m, data, {"rate": 1.0})


def test_infer_bad_method_and_seed():
    m = model()
    data = probde.TimeSeries([0.0, 1.0], [1.0, 0.5], observables=("x",))
    with pytest.raises(TypeError, match="method must be a probde method"):
        probde.infer(m, data, "nuts")
    with pytest.raises(TypeError, match="seed must be an integer; got 1.5"):
        probde.infer(m, data, probde.NUTS(), seed=1.5)
    with pytest.raises(TypeError, match="model must be a probde.Model or a numpyro model function"):
        probde.infer(3, data)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_chains": 0}, "num_chains must be a positive integer; got 0"),
        ({"num_warmup": -1}, "num_warmup must be a non-negative integer"),
        ({"target_accept": 1.5}, r"target_accept must be in \(0, 1\); got 1.5"),
        ({"chain_method": "threads"}, "chain_method must be one of"),
        ({"target_accept": True}, "target_accept must be in"),
        ({"max_tree_depth": 0}, "max_tree_depth must be a positive integer; got 0"),
        ({"init_radius": float("inf")}, "init_radius must be a positive finite number; got inf"),
    ],
)
def test_nuts_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        probde.NUTS(**kwargs)
