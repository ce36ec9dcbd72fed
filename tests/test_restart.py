"""NUTS(restart_stuck=True): a chain far below the others at the end of a short screening
warmup is moved to another chain's position; one that sampled far below them is found from
the run's log densities, and the run is repeated once with every chain starting in the best
chains' region (probde/inference/restart.py). And NUTS(init_candidates=k): each chain starts
at the best of k uniform draws (probde/inference/initialisation.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import probde
from probde.inference import chunks, restart


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


def _fit(restart_stuck, num_warmup=300, seed=2):
    # one uniform draw per chain (numpyro's own start): with the best of 8, every chain
    # starts left of 0, where the density is higher, and slides into the major mode
    method = probde.NUTS(num_chains=4, num_warmup=num_warmup, num_samples=500,
                         restart_stuck=restart_stuck, init_candidates=1)
    return probde.infer(_lopsided, None, method, seed=seed, num_prior_samples=0)


@pytest.mark.filterwarnings("ignore::probde.ConvergenceWarning")
def test_without_restart_a_chain_stays_in_the_minor_mode():
    # The scenario of the next tests: with this seed, uniform starts leave a chain in the
    # mode e^-40 times less probable, and nothing moves it.
    result = _fit(False)
    means = result.idata.posterior["x"].mean("draw").values
    assert (means > 8.0).any() and (means < -8.0).any(), means
    assert not {"restarted", "screened"} & set(result.idata["sample_stats"].attrs)


def test_the_screening_warmup_moves_a_chain_that_ends_it_far_below(monkeypatch):
    traces = []
    chunk = chunks.Chunks._nuts_chunk

    def counted(self, *args):
        traces.append(1)
        return chunk(self, *args)

    monkeypatch.setattr(chunks.Chunks, "_nuts_chunk", counted)
    result = _fit(True)  # no warning: the run that is kept never had a stuck chain
    # the moved states go back where the chunk program had them: it is not traced again
    assert len(traces) == 1, traces
    means = result.idata.posterior["x"].mean("draw").values
    assert (means < -8.0).all(), means
    attrs = result.idata["sample_stats"].attrs
    assert "screening warmup (75 iterations)" in attrs["screened"], attrs["screened"]
    assert "moved to chain" in attrs["screened"] and "restarted" not in attrs
    assert result.diagnose(show=False).ok


def test_screen_length_window_and_note():
    assert restart.screen_length(1000, 4) == 75 and restart.screen_length(300, 2) == 75
    assert restart.screen_length(299, 4) == 0 and restart.screen_length(1000, 1) == 0
    lp = np.arange(2 * 75.0).reshape(2, 75)
    assert restart.screen_window(lp).shape == (2, 25)
    assert restart.screen_window(lp[:, :20]).shape == (2, 10)
    text = restart.screen_note(_lp([-136.0, -755.0], draws=25), np.array([False, True]),
                               np.array([0, 0]), 75)
    assert "chain 1 (mean log density -75" in text and "moved to chain 0's position and adaptation" in text


def test_a_stuck_chain_is_restarted_from_another_chains_final_point():
    # a warmup under 300 iterations is not screened, so the check after sampling acts
    with pytest.warns(probde.ConvergenceWarning, match="far below the best chain") as caught:
        result = _fit(True, num_warmup=90)
    assert caught[0].filename == __file__  # points at the caller's line
    means = result.idata.posterior["x"].mean("draw").values
    assert (means < -8.0).all(), means  # every chain now in the major mode
    attrs = result.idata["sample_stats"].attrs
    assert "restarted from chain" in attrs["restarted"]
    assert result.diagnose(show=False).ok


def test_each_chain_starts_at_the_best_of_its_candidates():
    from probde.inference.initialisation import best_uniform_starts

    key = jax.random.PRNGKey(5)
    starts = best_uniform_starts(_lopsided, key, 4, 8, {}, 2.0)
    assert isinstance(starts["x"], np.ndarray) and starts["x"].shape == (4,)
    # the same candidates, drawn by numpyro's initialisation with the same keys: on
    # (-2, 2) the density falls from left to right, so each chain's best is its leftmost
    from numpyro.infer.util import initialize_model

    info, *_ = initialize_model(jax.random.split(key, 32), _lopsided)
    candidates = np.asarray(info.z["x"]).reshape(4, 8)
    np.testing.assert_array_equal(starts["x"], candidates.min(axis=1))
    one = best_uniform_starts(_lopsided, key, 1, 3, {}, 2.0)
    assert one["x"].shape == ()


def test_init_candidates_must_be_a_positive_int():
    with pytest.raises(ValueError, match="init_candidates must be a positive integer; got 0"):
        probde.NUTS(init_candidates=0)


def test_a_screen_that_falls_back_to_sequential_chains_warns_once():
    # An implicit solver's reverse adjoint cannot run under pmap (diffrax #765): the
    # screening warmup falls back to sequential chains, and the main run follows it
    # instead of failing and warning a second time.
    import warnings

    import diffrax

    decay = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    model = probde.Model(decay, {"k": dist.LogNormal(0.0, 0.5)}, jnp.array([1.0]),
                         probde.noise.Normal(sigma=0.05),
                         solver=probde.Solver(diffrax.Kvaerno5()))
    data = probde.TimeSeries([0.0, 1.0, 2.0], [1.0, 0.6, 0.37], observables=("x",))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probde.infer(model, data, probde.NUTS(num_chains=2, num_warmup=300, num_samples=200),
                     seed=0, num_prior_samples=0)
    fallback = [w for w in caught if "running the chains sequentially" in str(w.message)]
    assert len(fallback) == 1 and fallback[0].filename == __file__


# ------------------------------------------------------------ the warmup in two parts
def _correlated():
    numpyro.sample("x", dist.MultivariateNormal(jnp.zeros(2), jnp.array([[1.0, 0.0],
                                                                          [0.0, 100.0]])))


def _warmup(kernel, num_warmup, key, init_params):
    mcmc = numpyro.infer.MCMC(kernel, num_warmup=num_warmup, num_samples=1, progress_bar=False)
    mcmc.warmup(key, init_params=init_params, extra_fields=("adapt_state.step_size",),
                collect_warmup=True)
    return mcmc


def test_a_warmup_resumed_after_its_first_75_iterations_is_the_whole_warmup():
    # The screen runs the first 75 iterations of the warmup and the rest resumes the chains'
    # states (failures.CountingNUTS, warmup_schedule): draw for draw what one warmup gives,
    # so the adaptation (step size, the slow windows' mass matrix) is not restarted.
    method = probde.NUTS(num_chains=1, num_warmup=300)
    start = {"x": jnp.array([1.5, -1.0])}
    key = jax.random.PRNGKey(0)
    whole = _warmup(method.kernel(_correlated), 300, key, start)
    screen = _warmup(method.kernel(_correlated, warmup_schedule=300), 75, key, start)
    rest = _warmup(method.mcmc(_correlated, after_screen=75).sampler, 225,
                   jax.random.PRNGKey(9), screen.last_state)  # resumed: its key is unused
    a, b = whole.last_state, rest.last_state
    assert int(b.i) == int(a.i) == 300
    np.testing.assert_allclose(b.z["x"], a.z["x"], rtol=1e-12)
    np.testing.assert_allclose(b.adapt_state.step_size, a.adapt_state.step_size, rtol=1e-12)
    np.testing.assert_allclose(b.adapt_state.inverse_mass_matrix[("x",)],
                               a.adapt_state.inverse_mass_matrix[("x",)], rtol=1e-12)
    # the slow windows ran: the mass matrix follows the variances (1, 100), not the identity
    assert a.adapt_state.inverse_mass_matrix[("x",)][1] > 20.0
    steps = np.concatenate([screen.get_extra_fields()["adapt_state.step_size"],
                            rest.get_extra_fields()["adapt_state.step_size"]])
    np.testing.assert_allclose(steps, whole.get_extra_fields()["adapt_state.step_size"],
                               rtol=1e-12)


def test_a_moved_chain_takes_the_whole_state_and_a_key_of_its_own():
    method = probde.NUTS(num_chains=3, num_warmup=300, chain_method="sequential")
    mcmc = numpyro.infer.MCMC(method.kernel(_correlated, warmup_schedule=300), num_warmup=20,
                              num_samples=1, num_chains=3, chain_method="sequential",
                              progress_bar=False)
    mcmc.warmup(jax.random.PRNGKey(1), init_params={"x": jnp.array([[0.1, 0.2], [1.0, -1.0],
                                                                    [-0.5, 0.3]])})
    state = mcmc.last_state
    moved = restart.states(state, np.array([0, 1, 0]))
    for name in ("i", "potential_energy", "z_grad", "adapt_state"):
        for got, want in zip(jax.tree.leaves(getattr(moved, name)),
                             jax.tree.leaves(getattr(state, name))):
            np.testing.assert_array_equal(np.asarray(got)[2], np.asarray(want)[0])
            np.testing.assert_array_equal(np.asarray(got)[:2], np.asarray(want)[:2])
    np.testing.assert_array_equal(moved.z["x"][2], state.z["x"][0])
    keys = np.asarray(moved.rng_key)
    np.testing.assert_array_equal(keys[:2], np.asarray(state.rng_key)[:2])
    assert not np.array_equal(keys[2], keys[0])  # the copy does not retrace chain 0's steps
