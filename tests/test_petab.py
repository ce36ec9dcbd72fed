"""PEtab problems read into probde models, checked against the PEtab v1 test suite (expected
simulations and log-likelihoods) and the benchmark collection's reference log-likelihoods
at the nominal parameters (computed by AMICI). The tolerances are the suite's own
(`tol_llh`, `tol_simulations` in each solution file) and the issue's 1e-3 for the
collection."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import sympy as sp
import yaml
from scipy import stats

import probde
from probde import petab
from probde.petab import noise as petab_noise
from probde.petab import priors

DATA = Path(__file__).parent / "data" / "petab"
SUITE = DATA / "test_suite" / "v1.0.0" / "sbml"
BENCHMARK = DATA / "benchmark"
CASES = sorted(p.name for p in SUITE.iterdir() if p.is_dir())

#: test-suite cases probde cannot pass yet, with the reason (none at present)
NOT_PASSING: dict[str, str] = {}

#: benchmark problems whose reference probde does not meet, with the evidence
REFERENCE_OFF = {
    "Crauste_CellSystems2017": (
        "probde's log-likelihood is converged (the same to 1e-9 at rtol 1e-8, 1e-10 and 1e-12) "
        "and 1.24e-3 above the reference; the collection's simulated data depart from "
        "probde's after day 8 by up to 1e-5 relative, as a looser solve would"),
}


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _solution(case):
    return yaml.safe_load((SUITE / case / f"_{case}_solution.yaml").read_text())


def test_every_vendored_suite_case_is_run_or_listed():
    assert len(CASES) == 20
    assert set(NOT_PASSING) <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_suite_case(case):
    if case in NOT_PASSING:
        pytest.xfail(NOT_PASSING[case])
    problem = petab.load(SUITE / case / f"_{case}.yaml")
    sol = _solution(case)
    llh = float(problem.log_likelihood())
    assert abs(llh - sol["llh"]) < sol["tol_llh"], (llh, sol["llh"])
    expected = pd.read_csv(SUITE / case / sol["simulation_files"][0], sep="\t")
    got = problem.simulate()
    np.testing.assert_allclose(got["simulation"].to_numpy(), expected["simulation"].to_numpy(),
                               rtol=0, atol=sol["tol_simulations"])


def _references():
    return json.loads((BENCHMARK / "reference_llh.json").read_text())


def _benchmark_yaml(name):
    if name == "Boehm_JProteomeRes2014":
        return probde.datasets.petab_problem(name)
    return BENCHMARK / name / f"{name}.yaml"


BENCHMARKS = sorted([p.name for p in BENCHMARK.iterdir() if p.is_dir()]
                    + ["Boehm_JProteomeRes2014"])


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_log_likelihood_at_nominal_matches_the_reference(name):
    reference = _references()[name]["llh"]
    llh = float(jax.jit(petab.load(_benchmark_yaml(name)).log_likelihood)())
    if name in REFERENCE_OFF:
        assert 1e-3 < abs(llh - reference) < 2e-3, REFERENCE_OFF[name]
        return
    assert abs(llh - reference) < 1e-3, (llh, reference)


def test_crauste_log_likelihood_is_converged_in_the_solver_tolerance():
    """The evidence behind REFERENCE_OFF: tightening the tolerances 100-fold changes
    nothing at the 1e-3 level."""
    path = _benchmark_yaml("Crauste_CellSystems2017")
    values = []
    for rtol in (1e-8, 1e-10):
        solver = probde.Solver(diffrax.Kvaerno5(), rtol=rtol, atol=rtol * 1e-2,
                               max_steps=1_000_000)
        values.append(float(petab.load(path, solver=solver).log_likelihood()))
    assert abs(values[0] - values[1]) < 1e-6


@pytest.mark.parametrize("case", ["0001", "0009", "0019"])
def test_gradient_equals_finite_differences(case):
    """Through the solve, the pre-equilibration (0009) and a log10-scale initial value
    (0019)."""
    problem = petab.load(SUITE / case / f"_{case}.yaml")
    f = jax.jit(problem.log_likelihood)
    x = {k: jnp.asarray(v * 1.1 + 0.05) for k, v in problem.nominal.items()}
    grad = jax.grad(problem.log_likelihood)(x)
    for k in x:
        h = 1e-5 * max(1.0, abs(float(x[k])))
        up, down = dict(x), dict(x)
        up[k], down[k] = x[k] + h, x[k] - h
        fd = (float(f(up)) - float(f(down))) / (2 * h)
        assert float(grad[k]) == pytest.approx(fd, rel=1e-4, abs=1e-6), k


def test_gradient_is_finite_where_a_linear_observable_is_exactly_zero():
    """Boehm's pSTAT5A_rel is 0 at t = 0: the log of the untaken log-transform branch must
    not make the gradient NaN (it did)."""
    problem = petab.load(probde.datasets.petab_problem())
    grad = jax.jit(jax.grad(problem.log_likelihood))(problem.nominal)
    assert all(np.isfinite(float(v)) for v in grad.values())
    f = jax.jit(problem.log_likelihood)
    for k in ("k_phos", "Epo_degradation_BaF3"):
        x = dict(problem.nominal)
        h = 1e-4 * abs(x[k])
        up, down = dict(x, **{k: x[k] + h}), dict(x, **{k: x[k] - h})
        fd = (float(f(up)) - float(f(down))) / (2 * h)
        assert float(grad[k]) == pytest.approx(fd, rel=1e-3, abs=1e-9), k


def test_problem_parts():
    problem = probde.petab.load(SUITE / "0009" / "_0009.yaml")  # probde.petab on first use
    assert problem.nominal == {"a0": 1.0, "b0": 0.0, "k2": 0.6}
    assert set(problem.model.params) == {"a0", "b0", "k2"}
    assert [ts.name for ts in problem.data] == ["preeq_c0->c0"]
    assert "probde.petab.Problem(_0009.yaml: 2 states, 3 estimated" in repr(problem)
    with pytest.raises(ValueError, match=r"missing \['k2'\]"):
        problem.log_likelihood({"a0": 1.0, "b0": 0.0})


@pytest.mark.filterwarnings("ignore::probde.ConvergenceWarning")  # a short run on purpose
def test_nuts_samples_a_petab_model_under_its_ids():
    problem = petab.load(SUITE / "0001" / "_0001.yaml")
    result = probde.infer(problem.model, problem.data,
                          probde.NUTS(num_warmup=100, num_samples=100, num_chains=1), seed=0)
    post = result.idata.posterior
    assert set(post.data_vars) >= {"a0", "b0", "k1", "k2"}
    for k in ("a0", "b0", "k1", "k2"):  # the bounds [0, 10] hold
        v = post[k].values
        assert np.all((v > 0) & (v < 10))


def test_steady_state_measurement(tmp_path):
    """A measurement at time = inf sees the steady state of A <-> B from A = 1, B = 0:
    A = k2 / (k1 + k2)."""
    d = _copy_case(tmp_path)
    path = d / "_measurements.tsv"
    path.write_text(path.read_text().replace("c0\t10\t", "c0\tinf\t"))
    problem = petab.load(d / "_0001.yaml")
    assert [ts.name for ts in problem.data] == ["c0", "c0 (steady state)"]
    sim = problem.simulate()
    assert np.isinf(sim["time"].iloc[1])
    assert sim["simulation"].iloc[1] == pytest.approx(0.6 / 1.4, rel=1e-6)
    expected = stats.norm.logpdf([0.7, 0.1], [1.0, 0.6 / 1.4], 0.5).sum()
    assert float(problem.log_likelihood()) == pytest.approx(expected, rel=1e-6)


def test_a_parameter_named_like_a_placeholder_is_a_parameter(tmp_path):
    """`noiseParameter1` without the `_<observable>` suffix is an ordinary parameter id
    (Lang 2024 names one so): case 0001 with its noise 0.5 moved into such a parameter."""
    d = _copy_case(tmp_path)
    obs = d / "_observables.tsv"
    obs.write_text(obs.read_text().replace("\t0.5", "\tnoiseParameter1"))
    par = d / "_parameters.tsv"
    par.write_text(par.read_text().rstrip("\n") + "\nnoiseParameter1\tlin\t0\t10\t0.5\t0\n")
    llh = float(petab.load(d / "_0001.yaml").log_likelihood())
    assert llh == pytest.approx(_solution("0001")["llh"], abs=1e-6)


# ------------------------------------------------------------------------ priors
def test_log10_uniform_prior_is_uniform_on_the_log10_scale():
    row = pd.Series({"parameterScale": "log10", "lowerBound": 1e-3, "upperBound": 1e2})
    prior = priors.prior(row, "k")
    draws = np.asarray(prior.sample(jax.random.PRNGKey(0), (4000,)))
    assert stats.kstest(np.log10(draws), stats.uniform(-3, 5).cdf).pvalue > 1e-3
    k = jnp.asarray(0.5)
    expected = -math.log(5) - math.log(0.5 * math.log(10))  # density of k
    assert float(prior.log_prob(k)) == pytest.approx(expected, rel=1e-10)
    t = priors.biject_to(prior.support)
    u = jnp.linspace(-30, 30, 7)
    assert np.all(np.diff(np.asarray(t(u))) > 0)
    assert float(t(jnp.asarray(0.0))) == pytest.approx(10 ** -0.5)  # the log10 midpoint


def test_objective_prior_types():
    row = pd.Series({"parameterScale": "log10", "lowerBound": 1e-3, "upperBound": 1e3,
                     "objectivePriorType": "parameterScaleNormal",
                     "objectivePriorParameters": "0;1"})
    prior = priors.prior(row, "k")
    z = 0.3
    base = stats.truncnorm(-3, 3).logpdf(z)
    assert float(prior.log_prob(jnp.asarray(10**z))) == pytest.approx(
        base - math.log(10**z * math.log(10)), rel=1e-8)
    row = pd.Series({"parameterScale": "lin", "lowerBound": 0.0, "upperBound": 10.0,
                     "objectivePriorType": "normal", "objectivePriorParameters": "2;1"})
    expected = stats.truncnorm(-2, 8, loc=2, scale=1).logpdf(2.5)
    assert float(priors.prior(row, "k").log_prob(jnp.asarray(2.5))) == pytest.approx(
        expected, rel=1e-8)
    row["objectivePriorType"] = "cauchy"
    with pytest.raises(ValueError, match="objectivePriorType 'cauchy' is not supported"):
        priors.prior(row, "k")
    bad = pd.Series({"parameterScale": "log", "lowerBound": 0.0, "upperBound": 1.0})
    with pytest.raises(ValueError, match="needs lowerBound > 0"):
        priors.prior(bad, "k")


# ------------------------------------------------------------------------- noise
@pytest.mark.parametrize("family", ["normal", "laplace"])
@pytest.mark.parametrize("transform", ["lin", "log", "log10"])
def test_column_noise_is_the_density_of_the_untransformed_data(family, transform):
    f, t = petab_noise.DISTRIBUTIONS.index(family), petab_noise.TRANSFORMATIONS.index(transform)
    d = petab_noise.ColumnNoise(jnp.asarray(2.0), jnp.asarray(0.3), f, t)
    y = 2.7
    g = {"lin": lambda v: v, "log": math.log, "log10": math.log10}[transform]
    dg = {"lin": 1.0, "log": 1 / y, "log10": 1 / (y * math.log(10))}[transform]
    base = stats.norm(g(2.0), 0.3) if family == "normal" else stats.laplace(g(2.0), 0.3)
    assert float(d.log_prob(jnp.asarray(y))) == pytest.approx(base.logpdf(g(y)) + math.log(dg),
                                                              rel=1e-10)
    draws = np.asarray(d.sample(jax.random.PRNGKey(1), (4000,)))
    assert stats.kstest(np.vectorize(g)(draws), base.cdf).pvalue > 1e-3


# ------------------------------------------------------------------- bad input
def _copy_case(tmp_path, case="0001") -> Path:
    dst = tmp_path / case
    shutil.copytree(SUITE / case, dst)
    return dst


def test_shipped_problem_names_are_checked():
    with pytest.raises(ValueError, match="name must be one of"):
        probde.datasets.petab_problem("Boehm")


def test_missing_problem_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="PEtab problem file not found"):
        petab.load(tmp_path / "nothing.yaml")


def test_problem_naming_a_missing_table(tmp_path):
    d = _copy_case(tmp_path)
    (d / "_measurements.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="_measurements.tsv"):
        petab.load(d / "_0001.yaml")


@pytest.mark.parametrize("case, table, old, new, error, message", [
    ("0001", "_measurements.tsv", "0.1", "inf", petab.PEtabError,
     "row 2: measurement must be a finite number"),
    ("0013", "_conditions.tsv", "par", "nope", petab.PEtabError,
     "B = 'nope' is not a parameter"),
    ("0001", "_observables.tsv", "\t0.5", "\tmystery", petab.PEtabError,
     "'mystery' is neither a model entity"),
], ids=["non-finite measurement", "unknown condition parameter", "unknown noise parameter"])
def test_bad_tables_are_named(tmp_path, case, table, old, new, error, message):
    d = _copy_case(tmp_path, case)
    path = d / table
    path.write_text(path.read_text().replace(old, new))
    with pytest.raises(error, match=message):
        petab.load(d / f"_{case}.yaml")


@pytest.mark.parametrize("construct, message", [
    ('<listOfRules><algebraicRule><math xmlns="http://www.w3.org/1998/Math/MathML">'
     '<apply><minus/><ci> a0 </ci><ci> b0 </ci></apply></math></algebraicRule></listOfRules>',
     "algebraic rules are not supported"),
    ('<listOfEvents><event id="e1"><trigger><math xmlns="http://www.w3.org/1998/Math/MathML">'
     '<apply><lt/><ci> A </ci><cn> 0.5 </cn></apply></math></trigger><listOfEventAssignments>'
     '<eventAssignment variable="B"><math xmlns="http://www.w3.org/1998/Math/MathML">'
     '<cn> 1 </cn></math></eventAssignment></listOfEventAssignments></event></listOfEvents>',
     "only time-triggered events"),
])
def test_unsupported_sbml_constructs_are_named(tmp_path, construct, message):
    with pytest.raises(petab.SBMLError, match=message):
        petab.load(_case_with(tmp_path, construct))


def _case_with(tmp_path, construct: str) -> Path:
    """Case 0001 with an SBML element added in its place (rules before reactions, events
    after); the path of its problem file."""
    d = _copy_case(tmp_path)
    path = d / "_model.xml"
    text = path.read_text()
    if "listOfRules" in construct:
        text = text.replace("<listOfReactions>", construct + "<listOfReactions>")
    else:
        text = text.replace("</listOfReactions>", "</listOfReactions>" + construct)
    path.write_text(text)
    return d / "_0001.yaml"


def _pulse(trigger_time: str, assigned: str = "<apply><plus/><ci> A </ci><ci> a0 </ci></apply>"):
    """An SBML event `pulse`: when time reaches `trigger_time` (MathML), A += a0."""
    return ('<listOfEvents><event id="pulse"><trigger><math '
            'xmlns="http://www.w3.org/1998/Math/MathML"><apply><geq/><csymbol '
            'encoding="text" definitionURL="http://www.sbml.org/sbml/symbols/time"> t '
            f'</csymbol>{trigger_time}</apply></math></trigger><listOfEventAssignments>'
            '<eventAssignment variable="A"><math xmlns="http://www.w3.org/1998/Math/MathML">'
            f'{assigned}</math></eventAssignment></listOfEventAssignments></event>'
            '</listOfEvents>')


def _conversion(t, a, b, k1, k2):
    """Case 0001's A -> B (k1), B -> A (k2): A(t) from A(0) = a, B(0) = b."""
    eq = k2 * (a + b) / (k1 + k2)
    return eq + (a - eq) * jnp.exp(-(k1 + k2) * t)


def test_time_triggered_events_against_the_closed_form(tmp_path):
    # A -> B <-> A from (a0, b0); at t = T, A jumps by a0 (an estimated parameter, so the
    # gradient flows through the reset). T = 5 from the trigger; then T = 4 from a
    # parameter of the SBML file that the condition table sets. The measurements at t = 0
    # and t = 10 must be the closed form's, and the gradient that of its log-likelihood.
    def expected(x, T):
        a0, b0, k1, k2 = (x[k] for k in ("a0", "b0", "k1", "k2"))
        a_T = _conversion(T, a0, b0, k1, k2)
        a_10 = _conversion(10.0 - T, a_T + a0, a0 + b0 - a_T, k1, k2)
        return jnp.stack([a0, a_10])

    x = {k: jnp.asarray(v) for k, v in {"a0": 1.2, "b0": 0.3, "k1": 0.8, "k2": 0.6}.items()}
    for T, construct in ((5.0, _pulse("<cn> 5 </cn>")), (4.0, _pulse("<ci> t_pulse </ci>"))):
        d = _case_with(tmp_path / str(T), construct)
        if T == 4.0:
            xml = d.parent / "_model.xml"
            xml.write_text(xml.read_text().replace(
                "<listOfParameters>",
                '<listOfParameters><parameter id="t_pulse" value="5" constant="true"/>'))
            (d.parent / "_conditions.tsv").write_text("conditionId\tt_pulse\nc0\t4\n")
        problem = petab.load(d)
        sim = problem.simulate(x)["simulation"]
        np.testing.assert_allclose(sim.to_numpy(), expected(x, T), rtol=1e-7)

        def llh(x, T=T):
            return jnp.sum(jax.scipy.stats.norm.logpdf(jnp.array([0.7, 0.1]), expected(x, T),
                                                       0.5))

        # simulations to 1e-7 (the solver's rtol 1e-8, times the steps' accumulation) move
        # the llh by at most sum |residual| / sigma^2 * 1e-7 < 1e-6
        np.testing.assert_allclose(float(problem.log_likelihood(x)), float(llh(x)), atol=1e-6)
        grad, grad_exact = jax.grad(problem.log_likelihood)(x), jax.grad(llh)(x)
        for k in x:
            np.testing.assert_allclose(float(grad[k]), float(grad_exact[k]), rtol=1e-5)


def test_event_times_that_depend_on_estimated_parameters_are_refused(tmp_path):
    with pytest.raises(petab.PEtabError,
                       match=r"trigger time of event 'pulse' in condition 'c0' depends on "
                             r"\['k1'\], which are estimated"):
        petab.load(_case_with(tmp_path, _pulse("<ci> k1 </ci>")))
    d = _case_with(tmp_path / "steady", _pulse("<cn> 5 </cn>")).parent
    with open(d / "_measurements.tsv", "a") as f:
        f.write("obs_a\tc0\tinf\t0.5\n")
    with pytest.raises(petab.PEtabError, match="events together with steady-state"):
        petab.load(d / "_0001.yaml")


def test_piecewise_switches_in_time_split_the_solve(tmp_path):
    # The forward reaction stops at t = 5 (a piecewise factor): the solve restarts there
    # (an identity event), and A(10) is the closed form's: conversion to t = 5, then
    # B -> A alone.
    d = _copy_case(tmp_path)
    xml = d / "_model.xml"
    switch = ('<piecewise><piece><cn> 1 </cn><apply><lt/><csymbol encoding="text" '
              'definitionURL="http://www.sbml.org/sbml/symbols/time"> t </csymbol>'
              '<cn> 5 </cn></apply></piece><otherwise><cn> 0 </cn></otherwise></piecewise>')
    xml.write_text(xml.read_text().replace("<ci> k1 </ci>", "<ci> k1 </ci>" + switch, 1))
    problem = petab.load(d / "_0001.yaml")
    assert [float(t) for t in problem.split_times] == [5.0]
    x = {k: jnp.asarray(v) for k, v in {"a0": 1.2, "b0": 0.3, "k1": 0.8, "k2": 0.6}.items()}
    a_5 = _conversion(5.0, 1.2, 0.3, 0.8, 0.6)
    a_10 = 1.5 - (1.5 - a_5) * np.exp(-0.6 * 5.0)
    np.testing.assert_allclose(problem.simulate(x)["simulation"], [1.2, a_10], rtol=1e-7)
    # the SBML side: thresholds of time in piecewise and Heaviside conditions
    t, a, b = (sp.Symbol(n, real=True) for n in ("time", "a", "b"))
    found = petab.sbml.time_thresholds([sp.Piecewise((1, (t > a + 4) & (t <= 2 * b)), (0, True))
                                        + sp.Heaviside(3 - t), sp.Heaviside(t * a)])
    assert set(found) == {a + 4, 2 * b, 3} and len(found) == 3
