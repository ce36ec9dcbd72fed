"""Convergence checks after MCMC (`probde.inference.convergence`, `result.diagnose()`):
each check fails on draws built to fail it and passes on independent draws; `probde.infer`
warns by name and keeps the figures in `sample_stats`."""

import warnings

import arviz as az
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import probde
from probde.inference import convergence

C, N = 4, 500


def _idata(posterior, **stats):
    rng = np.random.default_rng(9)
    base = {"lp": rng.normal(size=(C, N)), "energy": rng.normal(size=(C, N)),
            "diverging": np.zeros((C, N), bool),
            "reached_max_treedepth": np.zeros((C, N), bool)}
    base.update(stats)
    return az.from_dict({"posterior": posterior, "sample_stats": base},
                        dims={"v": ["state"]}, coords={"state": ["S", "I"]})


def _draws(seed=0):
    rng = np.random.default_rng(seed)
    return {"k": rng.normal(size=(C, N)), "v": rng.normal(size=(C, N, 2))}


def test_independent_draws_pass_every_check():
    report = convergence.check_convergence(_idata(_draws()), max_tree_depth=10)
    assert report.ok, str(report)
    assert [c.name for c in report.checks] == [
        "R-hat", "bulk ESS", "tail ESS", "E-BFMI", "divergences", "tree depth", "stuck chains"]
    assert report.attrs()["convergence_ok"] == 1


def test_a_chain_in_another_mode_is_named():
    draws = _draws()
    draws["k"][2] += 5.0  # chain 2 sits elsewhere in k ...
    lp = np.random.default_rng(1).normal(size=(C, N))
    lp[2] -= 30.0  # ... where the log density is far lower
    report = convergence.check_convergence(_idata(draws, lp=lp))
    failed = {c.name: c for c in report.failed}
    assert set(failed) == {"R-hat", "bulk ESS", "tail ESS", "stuck chains"}
    assert "k (" in failed["R-hat"].summary and "v[" not in failed["R-hat"].summary
    assert report.stuck_chains == (2,)
    text = failed["stuck chains"].summary
    assert text.startswith("chain 2 sits apart from chains 0, 1, 3")
    assert "30 lower" in text and "k = 5" in text
    assert "NUTS(init='map')" in failed["stuck chains"].remedy


def test_two_equally_good_modes_are_called_a_symmetry():
    draws = _draws()
    draws["k"][[0, 3]] += 6.0
    report = convergence.check_convergence(_idata(draws))
    stuck = next(c for c in report.failed if c.name == "stuck chains")
    assert "about equally probable" in stuck.summary
    assert len(report.stuck_chains) == 2


def test_elements_of_a_vector_parameter_are_named_by_coordinate():
    draws = _draws()
    draws["v"][1, :, 1] += 4.0
    report = convergence.check_convergence(_idata(draws))
    rhat = next(c for c in report.failed if c.name == "R-hat")
    assert "v[I]" in rhat.summary and "v[S]" not in rhat.summary


def test_divergences_tree_depth_and_ebfmi_fail_when_they_should():
    rng = np.random.default_rng(2)
    diverging = np.zeros((C, N), bool)
    diverging[1, :7] = True
    depth = np.zeros((C, N), bool)
    depth[:, ::10] = True
    # E-BFMI is the mean squared energy change over the energy variance: a random walk
    # in energy moves little per transition.
    energy = np.cumsum(rng.normal(size=(C, N)), axis=1)
    report = convergence.check_convergence(
        _idata(_draws(), diverging=diverging, reached_max_treedepth=depth, energy=energy),
        max_tree_depth=10)
    failed = {c.name: c for c in report.failed}
    assert failed["divergences"].summary == "7 of 2000 post-warmup transitions diverged"
    assert failed["divergences"].detail == ("chain 0: 0, chain 1: 7, chain 2: 0, chain 3: 0",)
    assert failed["tree depth"].summary.startswith("200 of 2000 transitions (10.0%)")
    assert "maximum depth 10" in failed["tree depth"].summary
    assert failed["E-BFMI"].summary.startswith("chain(s) 0, 1, 2, 3 below 0.3")
    bfmi = az.bfmi(_idata(_draws(), energy=energy))["energy"].values
    assert np.all(bfmi < 0.3)


def test_ess_thresholds_are_100_per_chain():
    # An AR(1) chain with coefficient 0.95 has an ESS of about N (1 - 0.95) / (1 + 0.95)
    # per chain: 13, far below 100.
    rng = np.random.default_rng(3)
    x = np.zeros((C, N))
    for i in range(1, N):
        x[:, i] = 0.95 * x[:, i - 1] + rng.normal(size=C)
    draws = _draws()
    draws["k"] = x
    report = convergence.check_convergence(_idata(draws))
    bulk = next(c for c in report.checks if c.name == "bulk ESS")
    assert not bulk.passed and "below 400 (100 per chain): k (" in bulk.summary
    ess = float(az.ess(az.from_dict({"posterior": {"k": x}}), method="bulk")["k"])
    assert f"k ({ess:.0f})" in bulk.summary


def test_one_chain_gets_the_r_hat_of_its_halves():
    draws = {"k": np.concatenate([np.zeros(250), np.ones(250) * 3])[None]
             + np.random.default_rng(4).normal(size=(1, 500)) * 0.1}
    idata = az.from_dict({"posterior": draws, "sample_stats": {
        "lp": np.zeros((1, 500))}})
    report = convergence.check_convergence(idata, checks=("rhat", "stuck"))
    rhat = report.checks[0]
    assert not rhat.passed and "one chain: of its two halves" in rhat.summary
    assert report.checks[1].passed  # nothing to compare a single chain with


# ------------------------------------------------------------------ through probde.infer


def _bimodal(data=None):
    x = numpyro.sample("x", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(x**2, 0.1), obs=data)


def test_infer_warns_about_chains_in_separate_modes_and_keeps_the_report():
    with pytest.warns(probde.ConvergenceWarning) as caught:
        result = probde.infer(_bimodal, jnp.array(1.0),
                              probde.NUTS(num_chains=4, num_warmup=300, num_samples=300),
                              seed=2, num_prior_samples=0)  # chains 2-2 in the modes
    text = str(caught[0].message)
    assert "R-hat: 1 parameter(s) above 1.01: x (" in text
    assert "sit apart from chains" in text and "result.diagnose()" in text
    assert caught[0].filename == __file__  # points at the caller's line
    attrs = result.idata["sample_stats"].attrs
    assert attrs["convergence_ok"] == 0 and "R-hat" in attrs["convergence_failed"]
    assert attrs["max_tree_depth"] == 10
    report = result.diagnose(show=False)
    assert not report.ok and len(report.stuck_chains) == 2
    assert report.failed[0].name == "R-hat"


def test_a_converged_run_is_quiet(capsys):
    decay = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    model = probde.Model(decay, {"k": dist.LogNormal(0.0, 0.5)}, jnp.array([1.0]),
                         probde.noise.Normal(sigma=0.05))
    data = probde.TimeSeries([0.0, 1.0, 2.0], [1.0, 0.6, 0.37], observables=("x",))
    with warnings.catch_warnings():
        warnings.simplefilter("error", probde.ConvergenceWarning)
        result = probde.infer(model, data, probde.NUTS(num_chains=2, num_warmup=300,
                                                       num_samples=500), seed=0,
                              num_prior_samples=0)
    assert result.idata["sample_stats"].attrs["convergence_ok"] == 1
    report = result.diagnose()
    assert report.ok
    out = capsys.readouterr().out
    assert out.startswith("Convergence report: 2 chain(s) x 500 draws")
    assert "All checks passed." in out


def test_diagnose_refuses_a_variational_fit_and_unknown_names():
    def model(data=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=data)

    data = jnp.array([0.9, 1.4, 1.1])
    svi = probde.infer(model, data, probde.Laplace(num_steps=300, num_draws=100), seed=0,
                       num_prior_samples=0)
    assert "convergence_ok" not in svi.idata["sample_stats"].attrs
    with pytest.raises(ValueError, match="diagnose\\(\\) checks MCMC draws"):
        svi.diagnose()
    rwm = probde.infer(model, data, probde.RandomWalkMetropolis(
        num_chains=2, num_warmup=1000, num_samples=5000), seed=0, num_prior_samples=0)
    names = [c.name for c in rwm.diagnose(show=False).checks]
    assert names == ["R-hat", "bulk ESS", "tail ESS", "stuck chains"]
    with pytest.raises(ValueError, match=r"var_names must name posterior variables; got \['nu'\]"):
        rwm.diagnose(["nu"])
