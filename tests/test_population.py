"""Population models: per-experiment parameters with population priors, experiments' inputs,
doses (solves restarted at events), prediction for new experiments and regimens.

Exact references: the one-compartment model with first-order absorption has a closed form,
and several doses add up (superposition, the model is linear in the amounts)
(`closed_forms.py`). The hierarchical theophylline posterior is checked against a
hand-written numpyro model with the closed form (no ODE) on the case study's own run, in
tests/test_case_studies.py.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from closed_forms import central_closed_form
from numpyro import handlers

import probde

jax.config.update("jax_enable_x64", True)

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIGHT = probde.Solver(rtol=1e-10, atol=1e-10, max_steps=100_000)


def absorption_vf(t, y, th):
    ka, ke = jnp.exp(th["lKa"]), jnp.exp(th["lKe"])
    return jnp.stack([-ka * y[0], ka * y[0] - ke * y[1]])


ABSORPTION = probde.ODE(absorption_vf, ("gut", "central"))


# ------------------------------------------------------------------ doses in probde.solve
def test_multiple_doses_match_superposition_and_their_gradients():
    doses = [(0.0, 4.0), (24.0, 4.0), (36.5, 2.0)]  # 36.5 falls between save times
    times = jnp.linspace(1.0, 60.0, 25)
    theta = {"lKa": jnp.log(1.3), "lKe": jnp.log(0.09)}

    def probde_central(th):
        traj = probde.solve(ABSORPTION, jnp.zeros(2), th, times, t0=0.0, solver=TIGHT,
                            doses=[probde.Dose(t, a, "gut") for t, a in doses])
        return traj.ys[:, 1]

    def exact(th):
        return central_closed_form(times, jnp.exp(th["lKa"]), jnp.exp(th["lKe"]), doses)

    np.testing.assert_allclose(probde_central(theta), exact(theta), rtol=1e-8, atol=1e-9)
    # gradients across the events: against the closed form's and central differences
    weights = jnp.linspace(0.5, 1.5, times.shape[0])
    loss = lambda th: jnp.sum(weights * probde_central(th))  # noqa: E731
    grad = jax.grad(loss)(theta)
    grad_exact = jax.grad(lambda th: jnp.sum(weights * exact(th)))(theta)
    for k in theta:
        np.testing.assert_allclose(grad[k], grad_exact[k], rtol=1e-6)
        h = 1e-5
        up, down = dict(theta), dict(theta)
        up[k], down[k] = theta[k] + h, theta[k] - h
        np.testing.assert_allclose(grad[k], (loss(up) - loss(down)) / (2 * h), rtol=1e-5)


def test_a_sample_at_a_dose_time_sees_the_state_before_the_dose():
    decay = probde.ODE(lambda t, y, th: -th["k"] * y, ("x",))
    traj = probde.solve(decay, jnp.array([1.0]), {"k": 0.5}, jnp.array([1.0, 1.0 + 1e-9]),
                        t0=0.0, solver=TIGHT, doses=[probde.Dose(1.0, 10.0, "x")])
    np.testing.assert_allclose(traj.ys[:, 0], [np.exp(-0.5), np.exp(-0.5) + 10.0], rtol=1e-7)


def test_infusion_matches_closed_form():
    """A constant-rate infusion into a one-compartment model: x' = r - k x while it runs."""
    decay = probde.ODE(lambda t, y, th: -th["k"] * y, ("x",))
    k, rate, start, duration = 0.3, 2.0, 1.0, 2.5
    times = jnp.array([0.5, 1.0, 2.0, 3.5, 5.0, 8.0])
    traj = probde.solve(decay, jnp.array([0.0]), {"k": k}, times, t0=0.0, solver=TIGHT,
                        doses=[probde.Dose(start, rate * duration, "x", duration=duration)])
    t = np.asarray(times)
    during = rate / k * (1 - np.exp(-k * np.clip(t - start, 0, duration)))
    after = np.exp(-k * np.clip(t - start - duration, 0, None))
    np.testing.assert_allclose(traj.ys[:, 0], during * after, rtol=1e-8, atol=1e-10)


def test_dose_errors_name_the_problem():
    with pytest.raises(ValueError, match="before the initial time"):
        probde.solve(ABSORPTION, jnp.zeros(2), {"lKa": 0.0, "lKe": -2.0},
                     jnp.array([1.0, 2.0]), t0=0.5, doses=[probde.Dose(0.2, 1.0, "gut")])
    with pytest.raises(ValueError, match="state 'liver'.*states are"):
        probde.solve(ABSORPTION, jnp.zeros(2), {"lKa": 0.0, "lKe": -2.0},
                     jnp.array([1.0, 2.0]), doses=[probde.Dose(1.0, 1.0, "liver")])
    with pytest.raises(ValueError, match="duration must be >= 0"):
        probde.Dose(1.0, 1.0, "gut", duration=-1.0)
    with pytest.raises(TypeError, match="Dose amount must be a number"):
        probde.Dose(1.0, "4 mg", "gut")
    with pytest.raises(TypeError, match=r"doses\[0\] must be a probde.Dose"):
        probde.TimeSeries([0.0, 1.0], [1.0, 2.0], ("x",), doses=[(0.0, 1.0)])


# ------------------------------------------------------------ events (probde.Event)
def harvested_decay(t, x0, k, keep, level, t1, t2):
    """x' = -k x from x0, multiplied by `keep` at t1, set to `level` at t2 (t1 < t2)."""
    before = x0 * jnp.exp(-k * t)
    return jnp.where(t <= t1, before, jnp.where(t <= t2, keep * before,
                                                level * jnp.exp(-k * (t - t2))))


def test_events_reset_the_state_with_exact_values_and_gradients():
    events = (probde.Event(2.0, lambda t, y, th: y * th["keep"], name="harvest"),
              probde.Event(lambda th: th["t_set"], lambda t, y, th: jnp.full_like(y, th["level"])))
    decay = probde.ODE(lambda t, y, th: -th["k"] * y, ("x",), events=events)
    times = jnp.array([0.5, 2.0, 2.5, 3.0, 4.0, 6.0])  # 2.0 sees the state before the event
    theta = {"k": 0.4, "keep": 0.3, "level": 1.7, "t_set": 3.5}

    def ours(th):
        return probde.solve(decay, jnp.array([2.0]), th, times, t0=0.0, solver=TIGHT).ys[:, 0]

    def exact(th):
        return harvested_decay(times, 2.0, th["k"], th["keep"], th["level"], 2.0, th["t_set"])

    np.testing.assert_allclose(ours(theta), exact(theta), rtol=1e-8)
    weights = jnp.linspace(0.5, 1.5, times.shape[0])
    grad = jax.grad(lambda th: jnp.sum(weights * ours(th)))(theta)
    grad_exact = jax.grad(lambda th: jnp.sum(weights * exact(th)))(theta)
    for k in ("k", "keep", "level"):
        np.testing.assert_allclose(grad[k], grad_exact[k], rtol=1e-6)
    assert grad["t_set"] == 0.0  # event times are known: no derivative is taken
    # a bolus at the event's time comes first, then the reset; under jit and vmap
    dosed = jax.jit(jax.vmap(lambda keep: probde.solve(
        decay, jnp.array([2.0]), dict(theta, keep=keep), times, t0=0.0, solver=TIGHT,
        doses=[probde.Dose(2.0, 1.0, "x")]).ys[:, 0]))(jnp.array([0.3, 0.6]))
    for keep, row in zip((0.3, 0.6), dosed, strict=True):
        expected = exact(dict(theta, keep=keep)) + keep * jnp.where(
            (times > 2.0) & (times <= 3.5), jnp.exp(-0.4 * (times - 2.0)), 0.0)
        np.testing.assert_allclose(row, expected, rtol=1e-8)


def test_events_before_the_start_do_not_happen_and_at_the_start_do():
    double = lambda t, y, th: 2.0 * y  # noqa: E731
    for time, factor in ((-1.0, 1.0), (0.0, 2.0)):
        ode = probde.ODE(lambda t, y, th: -th["k"] * y, ("x",),
                         events=(probde.Event(time, double),))
        ys = probde.solve(ode, jnp.array([1.0]), {"k": 1.0}, jnp.array([0.0, 1.0]), t0=0.0,
                          solver=TIGHT).ys[:, 0]
        # the sample at t0 sees the state before an event at t0
        np.testing.assert_allclose(ys, [1.0, factor * np.exp(-1.0)], rtol=1e-8)


def test_event_errors_name_the_problem():
    with pytest.raises(TypeError, match="Event time must be a number or a function"):
        probde.Event("soon", lambda t, y, th: y)
    with pytest.raises(ValueError, match="Event time must be finite"):
        probde.Event(float("inf"), lambda t, y, th: y)
    with pytest.raises(TypeError, match="Event reset must be a function"):
        probde.Event(1.0, 0.5)
    with pytest.raises(TypeError, match="events must be a list of probde.Event"):
        probde.ODE(lambda t, y, th: -y, ("x",), events=probde.Event(1.0, lambda t, y, th: y))
    bad = probde.ODE(lambda t, y, th: -y, ("x",),
                     events=[probde.Event(1.0, lambda t, y, th: jnp.zeros(2), name="drain")])
    with pytest.raises(ValueError, match=r"Event 'drain': reset.*shape \(1,\); got shape \(2,\)"):
        probde.solve(bad, jnp.ones(1), {}, jnp.array([0.0, 2.0]))
    # in a model, an event time must not read an estimated parameter
    ode = probde.ODE(lambda t, y, th: -th["k"] * y, ("x",),
                     events=[probde.Event(lambda th: th["k"], lambda t, y, th: y, name="at_k")])
    with pytest.raises(ValueError, match=r"Event 'at_k': its time reads \['k'\]"):
        probde.Model(ode, params={"k": dist.LogNormal(0.0, 1.0)}, initial_state=jnp.ones(1),
                     observation=probde.noise.Normal(sigma=0.1))


def test_event_times_from_inputs_differ_between_experiments():
    # The model layer: the time is a per-experiment input; the log-likelihood is that of
    # the closed form, experiment by experiment.
    ode = probde.ODE(lambda t, y, th: -th["k"] * y, ("x",),
                     events=[probde.Event(lambda th: th["t_cut"],
                                          lambda t, y, th: y * th["keep"])])
    model = probde.Model(ode, params={"k": dist.LogNormal(0.0, 1.0),
                                      "keep": dist.Uniform(0.0, 1.0)},
                         initial_state=jnp.ones(1), observation=probde.noise.Normal(sigma=0.1),
                         inputs=("t_cut",), t0=0.0, solver=TIGHT)
    times = np.array([0.5, 1.0, 1.5, 2.5, 4.0])
    rng = np.random.default_rng(0)
    data = [probde.TimeSeries(times, rng.uniform(0.0, 1.0, 5), ("x",), inputs={"t_cut": c},
                              name=f"cut at {c}") for c in (1.2, 3.0)]
    theta = {"k": 0.5, "keep": 0.25}
    expected = 0.0
    for ts in data:
        mean = harvested_decay(jnp.asarray(times), 1.0, 0.5, 0.25, 0.0, ts.inputs["t_cut"], np.inf)
        expected += float(dist.Normal(mean, 0.1).log_prob(ts.values[:, 0]).sum())
    np.testing.assert_allclose(float(probde.log_likelihood(model, data, theta)), expected,
                               rtol=1e-9)


# ------------------------------------------------------------------ the model layer
def decay_population(centered=False, **kwargs):
    decay = probde.ODE(lambda t, y, th: -jnp.exp(th["lk"]) * y, ("x",))
    return probde.Model(
        decay,
        params={"mu": dist.Normal(-1.0, 0.5), "tau": dist.HalfNormal(0.5),
                "lk": probde.PerExperiment(lambda th: dist.Normal(th["mu"], th["tau"]),
                                           centered=centered)},
        initial_state=lambda th: jnp.stack([th["amount"]]),
        observation=probde.noise.Normal(sigma=0.05),
        inputs=("amount",), **kwargs)


def three_experiments(**extra):
    grids = [np.array([0.5, 1.0, 2.0]), np.array([0.25, 1.5, 3.0, 4.0]), np.array([1.0, 2.5])]
    rates = (0.3, 0.5, 0.8)
    return [probde.TimeSeries(t, np.exp(-k * t) * a, ("x",), name=name,
                              inputs={"amount": a}, **extra)
            for t, k, a, name in zip(grids, rates, (1.0, 2.0, 3.0), ("A", "B", "C"),
                                     strict=True)]


def trace_program(model, data, values):
    fn = model.numpyro_model(model.prepare(data))
    with handlers.trace() as tr, handlers.seed(rng_seed=0), handlers.substitute(data=values):
        fn(True)
    return tr


@pytest.mark.parametrize("centered", [False, True])
def test_each_experiment_sees_its_own_parameter_and_input(centered):
    model = decay_population(centered=centered, t0=0.0)
    lk = jnp.array([-1.0, -0.5, 0.2])
    site = "lk" if centered else "lk_decentered"
    mu, tau = -0.3, 0.4
    value = lk if centered else (lk - mu) / tau
    tr = trace_program(model, three_experiments(), {"mu": mu, "tau": tau, site: value})
    assert tr["lk"]["value"].shape == (3,)
    np.testing.assert_allclose(tr["lk"]["value"], lk, rtol=1e-12)
    mean = np.asarray(tr["_probde/mu"]["value"])[..., 0]  # (E, union times)
    times = model.prepare(three_experiments()).times
    for e, data in enumerate(three_experiments()):
        rows = np.searchsorted(times, data.times)
        expected = data.inputs["amount"] * np.exp(-np.exp(lk[e]) * data.times)
        np.testing.assert_allclose(mean[e, rows], expected, rtol=1e-5)
    # the population prior enters the joint density once per experiment
    expected_prior = dist.Normal(mu, tau).log_prob(lk).sum()
    if centered:
        np.testing.assert_allclose(tr["lk"]["fn"].log_prob(lk).sum(), expected_prior)
    else:
        assert "lk_decentered" in tr and tr["lk"]["type"] == "deterministic"


@pytest.mark.filterwarnings("ignore::probde.ConvergenceWarning")  # a short run on purpose
def test_per_experiment_parameters_are_labelled_by_experiment_in_the_results():
    # well-identified experiments: the centred form samples without divergences
    model = decay_population(centered=True, t0=0.0)
    result = probde.infer(model, three_experiments(), probde.NUTS(
        num_warmup=150, num_samples=150, num_chains=1), seed=1, progress_bar=False)
    post = result.idata["posterior"]
    assert post["lk"].dims == ("chain", "draw", "experiment")
    assert list(post["lk"]["experiment"].values) == ["A", "B", "C"]
    summary = result.summary()
    assert {"lk[A]", "lk[B]", "lk[C]", "mu", "tau"} <= set(summary.index)
    assert "lk_decentered" not in result.idata["posterior"]
    # a new experiment's parameter comes from the population; an observed one keeps its own
    grid = np.linspace(0.0, 4.0, 9)
    pred = result.predict(grid, experiments=[{"name": "B"}, {"name": "new",
                                                             "inputs": {"amount": 2.0}}])
    assert list(pred["experiment"].values) == ["B", "new"]
    own = result.predict(grid, group=None)["mu"].sel(experiment="B")
    np.testing.assert_allclose(pred["mu"].sel(experiment="B"), own, rtol=1e-9)
    # the new experiment's spread is the population's: wider than an observed one's
    spread = pred["mu"].sel(time=4.0, observable="x").std(("chain", "draw"))
    assert float(spread.sel(experiment="new")) > 2 * float(spread.sel(experiment="B"))


@pytest.mark.filterwarnings("ignore::probde.ConvergenceWarning")  # a short run on purpose
def test_new_regimen_for_an_observed_experiment():
    model = decay_population(centered=True, t0=0.0)
    data = three_experiments()
    result = probde.infer(model, data, probde.NUTS(num_warmup=100, num_samples=100,
                                                   num_chains=1), seed=2, progress_bar=False)
    grid = np.array([1.0, 2.0, 3.0])
    regimen = [probde.Dose(2.0, 5.0, "x")]
    pred = result.predict(grid, experiments=[{"name": "A", "doses": regimen}], group=None)
    k = np.exp(result.idata["posterior"]["lk"].sel(experiment="A").values)
    mu = pred["mu"].sel(experiment="A").values[..., 0]
    # sample at t = 2 sees the state before the dose, then the dose decays too
    expected = np.stack([np.exp(-k * 1.0), np.exp(-k * 2.0),
                         np.exp(-k * 3.0) + 5.0 * np.exp(-k * 1.0)], axis=-1)
    np.testing.assert_allclose(mu, expected, rtol=1e-5)


def test_doses_in_the_data_enter_the_model():
    model = decay_population(t0=0.0)
    data = three_experiments(doses=[probde.Dose(1.0, 1.0, "x")])
    lk = jnp.array([-1.0, -0.5, 0.2])
    tr = trace_program(model, data, {"mu": 0.0, "tau": 1.0, "lk_decentered": lk})
    mean = np.asarray(tr["_probde/mu"]["value"])[..., 0]
    times = model.prepare(data).times
    for e, ts in enumerate(data):
        rows = np.searchsorted(times, ts.times)
        k = np.exp(float(lk[e]))
        expected = ts.inputs["amount"] * np.exp(-k * ts.times) + np.where(
            ts.times > 1.0, np.exp(-k * (ts.times - 1.0)), 0.0)
        np.testing.assert_allclose(mean[e, rows], expected, rtol=1e-5)


def test_log_likelihood_takes_per_experiment_values_by_name():
    model = decay_population(t0=0.0)  # non-centred in the sampler
    data = three_experiments()
    lk = jnp.log(jnp.array([0.3, 0.5, 0.8]))  # the rates that made the data
    ll = probde.log_likelihood(model, data, {"mu": -1.0, "tau": 0.5, "lk": lk})
    num_values = sum(len(ts.times) for ts in data)
    expected = num_values * float(dist.Normal(0.0, 0.05).log_prob(0.0))
    np.testing.assert_allclose(float(ll), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="missing"):
        probde.log_likelihood(model, data, {"mu": -1.0, "tau": 0.5, "lk_decentered": lk})


def test_experiments_are_solved_once_each_at_their_own_times():
    """Ragged grids: each experiment is one solve saved at its own times only (not at the
    union of all experiments' times): its steps are those of a solve at its own times, and
    the results leave the other times of the union empty (NaN)."""
    model = decay_population(t0=0.0)
    data = three_experiments()
    lk = jnp.array([-1.0, -0.5, 0.2])
    tr = trace_program(model, data, {"mu": 0.0, "tau": 1.0, "lk_decentered": lk})
    steps = np.asarray(tr["_probde/solver_steps"]["value"])
    decay = probde.ODE(lambda t, y, th: -jnp.exp(th["lk"]) * y, ("x",))
    prepared = model.prepare(data)
    mean = np.asarray(tr["_probde/mu"]["value"])[..., 0]
    for e, ts in enumerate(data):
        own = probde.solve(decay, jnp.array([ts.inputs["amount"]]), {"lk": lk[e]},
                           jnp.asarray(ts.times), t0=0.0, solver=model.solver)
        assert steps[e] == int(own.num_steps)
        rows = np.searchsorted(prepared.times, ts.times)
        np.testing.assert_allclose(mean[e, rows], own.ys[:, 0], rtol=1e-12)
    active = model.active(prepared)
    assert active.sum() == sum(len(ts.times) for ts in data) < active.size


def test_population_input_errors_are_clear():
    model = decay_population(t0=0.0)
    data = three_experiments()
    with pytest.raises(ValueError, match="vary by experiment.*single TimeSeries"):
        model.prepare(data[0])
    missing = [probde.TimeSeries(ts.times, ts.values, ("x",), name=ts.name) for ts in data]
    with pytest.raises(ValueError, match=r"data\[0\] \(experiment 'A'\) gives no value for "
                                         r"input\(s\) \['amount'\]"):
        model.prepare(missing)
    extra = [probde.TimeSeries(ts.times, ts.values, ("x",), name=ts.name,
                               inputs={"amount": 1.0, "temp": 20.0}) for ts in data]
    with pytest.raises(ValueError, match=r"gives input\(s\) \['temp'\] that the model does not "
                                         "declare"):
        model.prepare(extra)
    early = three_experiments(doses=[probde.Dose(-1.0, 1.0, "x")])
    with pytest.raises(ValueError, match=r"data\[0\] \(experiment 'A'\)\.doses\[0\] is at time "
                                         r"-1.0, before the initial time 0.0"):
        model.prepare(early)
    wrong_state = three_experiments(doses=[probde.Dose(1.0, 1.0, "gut")])
    with pytest.raises(ValueError, match="doses state 'gut', which the model does not have"):
        model.prepare(wrong_state)
    with pytest.raises(ValueError, match="input 'mu' is also a parameter"):
        decay_population(t0=0.0).__class__(
            ABSORPTION, params={"mu": dist.Normal()}, initial_state=jnp.zeros(2),
            observation=probde.noise.Normal(sigma=1.0), inputs=("mu",))
    with pytest.raises(ValueError, match="reads parameter 'dose'.*no prior"):
        probde.Model(probde.ODE(lambda t, y, th: -th["k"] * y, ("x",)),
                     params={"k": dist.LogNormal()},
                     initial_state=lambda th: jnp.stack([th["dose"]]),
                     observation=probde.noise.Normal(sigma=1.0))
    with pytest.raises(ValueError, match="non-centred form needs a location-scale"):
        decay = probde.ODE(lambda t, y, th: -th["k"] * y, ("x",))
        probde.Model(decay, params={"k": probde.PerExperiment(dist.LogNormal(0.0, 1.0))},
                     initial_state=jnp.ones(1), observation=probde.noise.Normal(sigma=1.0))
    with pytest.raises(ValueError, match="population prior reads 'nu', which is not a shared"):
        probde.Model(probde.ODE(lambda t, y, th: -th["k"] * y, ("x",)),
                     params={"k": probde.PerExperiment(lambda th: dist.Normal(th["nu"], 1.0))},
                     initial_state=jnp.ones(1), observation=probde.noise.Normal(sigma=1.0))


def test_per_experiment_values_need_an_ode():
    sde = probde.SDE(lambda t, x, th: -x, lambda t, x, th: jnp.eye(1), ("x",))
    with pytest.raises(ValueError, match="supported for ODE models only"):
        probde.Model(sde, params={"k": probde.PerExperiment(dist.Normal())},
                     initial_state=jnp.zeros(1), observation=probde.noise.Normal(sigma=1.0),
                     likelihood=probde.EKF())
