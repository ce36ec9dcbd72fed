"""NUTS advanced in chunks by one compiled program (`probde.inference.chunks`): the same
chains as numpyro's `MCMC`, whatever the chunks' lengths, with a progress bar from the
host. (No feasible start: `tests/test_inference.py`.)"""

import numpyro

numpyro.set_host_device_count(2)  # must precede JAX's backend start

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from numpyro.infer import MCMC  # noqa: E402

import probde  # noqa: E402
from probde.inference import chunks  # noqa: E402
from probde.inference.initialisation import best_uniform_starts  # noqa: E402
from probde.inference.methods import _EXTRA_FIELDS  # noqa: E402

from conftest import decay_at_failure_edge  # noqa: E402


def _problem():
    """The decay model at its solver's failure edge (many rejected proposals), as numpyro
    runs it: `(model_fn, model_kwargs)`."""
    model, data = decay_at_failure_edge()
    prepared = model.prepare(data)
    return model.numpyro_model(prepared), {"observed": True}


def _numpyro_run(method, fn, kwargs, key):
    mcmc = MCMC(method.kernel(fn), num_warmup=method.num_warmup,
                num_samples=method.num_samples, num_chains=method.num_chains,
                thinning=method.thinning, chain_method=method.chain_method,
                progress_bar=False)
    mcmc.run(key, extra_fields=tuple(_EXTRA_FIELDS), **kwargs)
    return mcmc


@pytest.mark.parametrize("chain_method", ["sequential", "vectorized", "parallel"])
def test_the_chains_are_numpyros_draw_for_draw(chain_method):
    # numpyro's own start (init_candidates=1) and neither screen nor restart: the run is
    # numpyro's MCMC with the same key, iteration for iteration, thinning included.
    fn, kwargs = _problem()
    method = probde.NUTS(num_chains=2, num_warmup=60, num_samples=40, thinning=3,
                         chain_method=chain_method, init_candidates=1, restart_stuck=False)
    key = jax.random.PRNGKey(5)
    samples, stats = method.run(fn, key, progress_bar=False, model_kwargs=kwargs)
    reference = _numpyro_run(method, fn, kwargs, key)
    expected = reference.get_samples(group_by_chain=True)
    assert samples["k"].shape == expected["k"].shape == (2, 13)
    np.testing.assert_allclose(samples["k"], expected["k"], rtol=1e-12)
    extra = reference.get_extra_fields(group_by_chain=True)
    for field, name in _EXTRA_FIELDS.items():
        sign = -1 if name == "lp" else 1
        np.testing.assert_allclose(sign * stats[name], extra[field], rtol=1e-12, err_msg=name)
    assert stats["rejected"].sum() > 0  # the edge does reject proposals
    np.testing.assert_array_equal(stats["rejected_total"],
                                  np.asarray(reference.last_state.rejected_total))


def test_the_chunks_lengths_change_nothing(monkeypatch):
    fn, kwargs = _problem()
    method = probde.NUTS(num_chains=2, num_warmup=300, num_samples=50,
                         chain_method="sequential")
    key = jax.random.PRNGKey(1)
    default, _ = method.run(fn, key, progress_bar=False, model_kwargs=kwargs)
    lengths = []
    advance = chunks.Chunks.advance

    def spy(self, state, n, keep):
        lengths.append(n)
        return advance(self, state, n, keep)

    monkeypatch.setattr(chunks, "TARGET_SECONDS", 1e-9)  # one iteration a chunk
    monkeypatch.setattr(chunks.Chunks, "advance", spy)
    short, _ = method.run(fn, key, progress_bar=False, model_kwargs=kwargs)
    assert lengths[0] == 10 and set(lengths[1:]) == {1}, lengths
    assert sum(lengths) == 350
    np.testing.assert_array_equal(short["k"], default["k"])


def test_a_chunk_stops_at_the_screens_end_and_the_warmups(monkeypatch):
    fn, kwargs = _problem()
    method = probde.NUTS(num_chains=2, num_warmup=300, num_samples=30,
                         chain_method="sequential")
    calls = []
    advance = chunks.Chunks.advance

    def spy(self, state, n, keep):
        calls.append((n, keep))
        return advance(self, state, n, keep)

    monkeypatch.setattr(chunks, "TARGET_SECONDS", 1e3)  # chunks as long as they can be
    monkeypatch.setattr(chunks.Chunks, "advance", spy)
    method.run(fn, jax.random.PRNGKey(0), progress_bar=False, model_kwargs=kwargs)
    # the screen (75), the rest of the warmup (225), sampling (30); draws kept only there
    assert calls == [(10, False), (65, False), (100, False), (100, False), (25, False),
                     (30, True)], calls


@pytest.mark.filterwarnings("ignore:.*proposals were rejected")  # the model's edge
@pytest.mark.filterwarnings("ignore::probde.ConvergenceWarning")  # a short run
def test_the_progress_bar_counts_every_iteration_from_the_host(capsys):
    model, data = decay_at_failure_edge()
    method = probde.NUTS(num_chains=2, num_warmup=300, num_samples=100)
    result = probde.infer(model, data, method, seed=0, num_prior_samples=0, progress_bar=True)
    bar = capsys.readouterr().err
    assert "400/400" in bar and "sample" in bar and "divergent" in bar, bar[-500:]
    assert result.idata["posterior"]["k"].shape == (2, 100)


@pytest.mark.filterwarnings("ignore::probde.ConvergenceWarning")  # a short run
def test_one_chain_from_the_best_start_is_numpyros_chain_from_it():
    # One chain: the start has no chain axis (numpyro's convention), nor have numpyro's
    # init_params; no screen (one chain has nothing to compare with).
    fn, kwargs = _problem()
    method = probde.NUTS(num_chains=1, num_warmup=50, num_samples=30)
    key = jax.random.PRNGKey(2)
    samples, stats = method.run(fn, key, progress_bar=False, model_kwargs=kwargs)
    start = best_uniform_starts(fn, jax.random.fold_in(key, 2), 1, method.init_candidates,
                                kwargs, method.init_radius)
    assert np.ndim(start["k"]) == 0
    mcmc = MCMC(method.kernel(fn), num_warmup=50, num_samples=30, progress_bar=False)
    mcmc.run(key, init_params=start, **kwargs)
    assert samples["k"].shape == (1, 30)
    np.testing.assert_allclose(samples["k"][0], mcmc.get_samples()["k"], rtol=1e-12)


def test_no_warmup_samples_from_the_start():
    fn, kwargs = _problem()
    method = probde.NUTS(num_chains=2, num_warmup=0, num_samples=20, restart_stuck=False)
    samples, stats = method.run(fn, jax.random.PRNGKey(0), progress_bar=False,
                                model_kwargs=kwargs)
    assert samples["k"].shape == stats["step_size"].shape == (2, 20)
    assert np.all(stats["step_size"] == 1.0)  # numpyro's initial step size, never adapted
