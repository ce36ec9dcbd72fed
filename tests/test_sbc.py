"""Simulation-based calibration (`probde.sbc`): uniform ranks where the inference is
exact, flagged ranks where it is wrong (a prior that differs from the simulator's, a
likelihood bug), and the bookkeeping (ranks, PIT values, the DataTree layout)."""

import dataclasses

import arviz as az
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import probde
from probde.checks import calibration as sbc_module

# x' = m, x(0) = 0: x(t) = m t, observed with Normal noise of known scale. With a Normal
# prior on m the posterior is Normal (conjugate), so NUTS targets it exactly.
TIMES = np.array([0.5, 1.0, 1.5, 2.0])
SIGMA = 0.5
NUM = 100
METHOD = probde.NUTS(num_chains=1, num_warmup=150, num_samples=300)


def _model(prior=None, noise=None):
    ode = probde.ODE(lambda t, y, th: jnp.broadcast_to(th["m"], y.shape), state_names=("x",))
    return probde.Model(ode, {"m": prior or dist.Normal(0.0, 1.0)}, jnp.array([0.0]),
                        noise or probde.noise.Normal(sigma=SIGMA), t0=0.0)


DATA = probde.TimeSeries(TIMES, np.zeros(4), observables=("x",))


@pytest.fixture(scope="module")
def exact():
    return probde.sbc(_model(), DATA, METHOD, num_simulations=NUM, seed=1)


def test_ranks_are_uniform_when_the_inference_is_exact(exact):
    # The p-value of a correct inference is uniform; 1% is the level at which a wrong one
    # is flagged below (seeded: this run is fixed).
    assert exact.pvalues["m"] > 0.01
    assert exact.vectorized
    assert exact.ranks["m"].shape == (NUM,)
    assert exact.ranks["m"].min() >= 0 and exact.ranks["m"].max() <= exact.num_draws
    assert exact.num_draws == 100
    assert exact.min_ess.shape == (NUM,) and np.all(exact.min_ess > 0)
    assert not exact.divergences.any()


def test_simulated_data_follow_the_prior_predictive():
    # y(t) = m t + e: Var y(t) = t^2 + sigma^2, mean 0, independent of the fit.
    model = _model()
    theta, values = sbc_module.simulate(model, model.prepare(DATA), 4000,
                                        __import__("jax").random.PRNGKey(3))
    y = values[:, 0, :, 0]
    var = TIMES**2 + SIGMA**2
    # Monte Carlo: the sample variance's standard error is var * sqrt(2 / n).
    assert np.all(np.abs(y.var(axis=0) - var) < 4 * var * np.sqrt(2 / 4000))
    assert np.all(np.abs(y.mean(axis=0)) < 4 * np.sqrt(var / 4000))
    # The data are m t plus noise of scale sigma (the parameters kept match the data).
    resid = y - theta["m"][:, None] * TIMES
    assert abs(resid.std() - SIGMA) < 4 * SIGMA / np.sqrt(2 * resid.size)


def test_the_sbc_group_has_the_layout_arviz_plots():
    result = _fake_result()
    pit = result.idata["prior_sbc"]["m"]
    assert pit.dims == ("chain", "draw") and pit.shape == (1, 50)
    assert float(pit.min()) > 0 and float(pit.max()) < 1
    # ArviZ's own Delta-ECDF plot reads the group as it is.
    az.plot_ecdf_pit(result.idata, var_names=["m"])
    fig = result.plot()
    assert len(fig.axes) == 2


def _fake_result():
    rng = np.random.default_rng(0)
    theta = {"m": rng.normal(size=50)}
    draws = {"m": rng.normal(size=(50, 1, 200))}
    ranks, pit, num = sbc_module._ranks(["m"], theta, draws, rng)
    return sbc_module._result(["m"], theta, ranks, pit, num, np.full(50, 100.0),
                              np.zeros((50, 1, 200)), 1.0, True, None)


def test_ranks_count_the_draws_below_the_prior_draw():
    theta = {"m": np.array([0.5, -10.0, 10.0])}
    draws = {"m": np.tile(np.linspace(0.0, 1.0, 11), (3, 1, 1))}  # (S, C, N)
    ranks, pit, num = sbc_module._ranks(["m"], theta, draws, np.random.default_rng(0))
    assert num == 11
    np.testing.assert_array_equal(ranks["m"], [5, 0, 11])
    assert np.all((pit["m"] >= ranks["m"] / 12) & (pit["m"] < (ranks["m"] + 1) / 12))


def test_a_prior_that_differs_from_the_simulators_is_flagged():
    # The data come from m ~ N(1.5, 1); the fitted model believes N(0, 1): the posterior
    # is pulled towards 0, so the true m ranks high too often.
    result = probde.sbc(_model(), DATA, METHOD, num_simulations=NUM, seed=1,
                        simulator=_model(prior=dist.Normal(1.5, 1.0)))
    assert result.pvalues["m"] < 0.01
    # ... and in the direction expected: high ranks. Under uniform ranks the share above
    # the middle is binomial (sd 0.5 / sqrt(NUM)); this one is more than 3 sd above.
    high = np.mean(result.ranks["m"] > result.num_draws / 2)
    assert (high - 0.5) / (0.5 / np.sqrt(NUM)) > 3


class _VarianceAsScale(dist.Normal):
    """A likelihood bug: draws are right, but the log density takes the variance for the
    scale (sigma = 0.5 becomes 0.25)."""

    def log_prob(self, value):
        return dist.Normal(self.loc, self.scale**2).log_prob(value)


@dataclasses.dataclass(frozen=True)
class _BuggyNormal(probde.noise.Normal):
    def distribution(self, mu, hyper):
        return _VarianceAsScale(mu, hyper["sigma"])


def test_a_likelihood_bug_is_flagged():
    # The posterior is too narrow: the true m ranks at the extremes too often.
    result = probde.sbc(_model(noise=_BuggyNormal(sigma=SIGMA)), DATA, METHOD,
                        num_simulations=NUM, seed=1)
    assert result.pvalues["m"] < 0.01
    # The outer half of the ranks holds half the simulations when they are uniform
    # (binomial sd 0.5 / sqrt(NUM)); here more than 3 sd more.
    outer = np.mean(np.abs(result.ranks["m"] / result.num_draws - 0.5) > 0.25)
    assert (outer - 0.5) / (0.5 / np.sqrt(NUM)) > 3


def test_a_loop_of_fits_for_other_methods(exact):
    # Laplace on a Gaussian posterior is exact; fitted one data set at a time.
    result = probde.sbc(_model(), DATA, probde.Laplace(num_draws=200), num_simulations=2,
                        seed=0)
    assert not result.vectorized
    assert result.ranks["m"].shape == (2,)
    assert result.num_draws == 100


def test_lanes_run_one_after_another_or_vmapped_give_the_same_fits():
    # The two ways of running the compiled program's lanes (simulation x chain) are the
    # same arithmetic: the same keys give the same chains, hence the same ranks.
    kw = {"num_simulations": 6, "seed": 2}
    mapped = probde.sbc(_model(), DATA, METHOD, vectorize="map", **kw)
    vmapped = probde.sbc(_model(), DATA, METHOD, vectorize="vmap", **kw)
    assert (mapped.strategy, vmapped.strategy) == ("map", "vmap")
    np.testing.assert_array_equal(mapped.ranks["m"], vmapped.ranks["m"])
    np.testing.assert_allclose(mapped.min_ess, vmapped.min_ess, rtol=1e-9)
    # True picks by backend: one after another on a CPU.
    assert sbc_module._strategy(True, METHOD, _model()) == "map"
    assert sbc_module._strategy(True, probde.Laplace(), _model()) == "loop"
    assert "one after another" in str(mapped)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_simulations": 1}, ValueError,
         "num_simulations must be an integer of at least 2; got 1"),
        ({"num_simulations": 10, "seed": 1.5}, TypeError, "seed must be an integer"),
        ({"num_simulations": 10, "simulator": "model"}, TypeError,
         "simulator must be None or a probde.Model"),
        ({"num_simulations": 10, "method": "NUTS"}, TypeError,
         "method must be a probde method"),
        ({"num_simulations": 10, "vectorize": "pmap"}, ValueError,
         "vectorize must be True, False, 'vmap' or 'map'; got 'pmap'"),
    ],
)
def test_bad_input(kwargs, error, match):
    kwargs = dict(kwargs)
    method = kwargs.pop("method", METHOD)
    with pytest.raises(error, match=match):
        probde.sbc(_model(), DATA, method, **kwargs)


def test_a_simulator_without_the_models_parameters_is_refused():
    ode = probde.ODE(lambda t, y, th: jnp.broadcast_to(th["a"], y.shape), state_names=("x",))
    other = probde.Model(ode, {"a": dist.Normal(0.0, 1.0)}, jnp.array([0.0]),
                         probde.noise.Normal(sigma=SIGMA))
    with pytest.raises(ValueError, match=r"simulator must have the parameters of model.*'m'"):
        probde.sbc(_model(), DATA, METHOD, num_simulations=10, simulator=other)
