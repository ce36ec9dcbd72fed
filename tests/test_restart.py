"""NUTS(restart_stuck=True): a chain that sampled far below the others is found from the
run's log densities, and the run is repeated once with every chain starting in the best
chains' region (probde/inference/restart.py)."""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import probde
from probde.inference import restart


def _lp(means, sd=2.0, draws=400, seed=0):
    rng = np.random.default_rng(seed)
    return np.asarray(means, dtype=float)[:, None] + sd * rng.standard_normal((len(means), draws))


def test_a_chain_39_nats_down_is_far_below_and_agreeing_chains_are_not():
    # lynx-hare's minor mode: a mean log density of -176 against -137 (within-chain sd 2)
    below = restart.far_below(_lp([-137.0, -137.2, -176.0, -136.9]))
    assert below.tolist() == [False, False, True, False]
    assert not restart.far_below(_lp([-137.0, -139.0, -141.0, -136.0])).any()
    # the gap scales with the within-chain spread: 5 sds of 4 nats = 20 > 15
    assert not restart.far_below(_lp([-100.0, -115.0], sd=4.0)).any()
    assert restart.far_below(_lp([-100.0, -125.0], sd=4.0)).tolist() == [False, True]
    # a chain whose log density is not finite is below; one chain has nothing to compare
    lp = _lp([-10.0, -10.0, -10.0])
    lp[1, 3] = -np.inf
    assert restart.far_below(lp).tolist() == [False, True, False]
    assert not restart.far_below(_lp([-500.0])).any()


def test_restarted_chains_take_the_other_chains_final_points_in_turn():
    assert restart.donors([False, True, False, True]).tolist() == [0, 0, 2, 2]
    assert restart.donors([True, True, False, True]).tolist() == [2, 2, 2, 2]
    assert restart.donors([False, False, False]).tolist() == [0, 1, 2]
    lp = _lp([-137.0, -176.0])
    text = restart.note(lp, np.array([False, True]), np.array([0, 0]))
    assert "chain 1 (mean log density -17" in text and "from chain 0's final point" in text
    assert "NUTS(restart_stuck=False)" in text


def test_restart_stuck_must_be_a_bool():
    with pytest.raises(TypeError, match="restart_stuck must be True or False; got 'yes'"):
        probde.NUTS(restart_stuck="yes")


def _lopsided():
    # Two modes 20 apart, the one at +10 e^-40 times less probable than the one at -10, with
    # a barrier between them that NUTS does not cross. Uniform starts in (-2, 2) right of
    # about 0.5 slide into the minor mode.
    x = numpyro.sample("x", dist.Normal(0.0, 10.0))
    numpyro.factor("modes", jnp.logaddexp(dist.Normal(-10.0, 0.5).log_prob(x),
                                          dist.Normal(10.0, 0.5).log_prob(x) - 40.0))


def _fit(restart_stuck):
    method = probde.NUTS(num_chains=4, num_warmup=300, num_samples=500,
                         restart_stuck=restart_stuck)
    return probde.infer(_lopsided, None, method, seed=2, num_prior_samples=0)


@pytest.mark.filterwarnings("ignore::probde.ConvergenceWarning")
def test_without_restart_a_chain_stays_in_the_minor_mode():
    # The scenario of the next test: with this seed, uniform starts leave a chain in the
    # mode e^-40 times less probable, and nothing moves it.
    result = _fit(False)
    means = result.idata.posterior["x"].mean("draw").values
    assert (means > 8.0).any() and (means < -8.0).any(), means
    assert "restarted" not in result.idata["sample_stats"].attrs


def test_a_stuck_chain_is_restarted_from_another_chains_final_point():
    with pytest.warns(probde.ConvergenceWarning, match="far below the best chain") as caught:
        result = _fit(True)
    assert caught[0].filename == __file__  # points at the caller's line
    means = result.idata.posterior["x"].mean("draw").values
    assert (means < -8.0).all(), means  # every chain now in the major mode
    attrs = result.idata["sample_stats"].attrs
    assert "restarted from chain" in attrs["restarted"]
    assert result.diagnose(show=False).ok
