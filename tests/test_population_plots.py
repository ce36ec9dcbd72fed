"""Plots of population models: plot_fit's grid of experiments, with the noise-free model's
credible band and the predictive band on the predictions' fine grid, and plot_population's
forest plot of the per-experiment parameters with the population distribution."""

import warnings

import matplotlib

matplotlib.use("Agg")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import pytest  # noqa: E402
from conftest import Z_MAX  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

import probde  # noqa: E402
import probde.inference.plot  # noqa: E402
from probde.inference.plot import population_draws  # noqa: E402

NAMES = ("a", "b", "c")
RATES = (0.4, 0.7, 1.1)
# each experiment its own times; "c" starts later (its initial state is at its first time)
TIMES = (np.array([0.0, 0.5, 1.5, 3.0]), np.array([0.0, 1.0, 2.0, 2.5, 4.0]),
         np.array([1.0, 1.8, 3.5]))
GRID = np.linspace(0.0, 4.0, 41)
CREDIBLE = "90% credible (noise-free model)"
PREDICTIVE = "90% predictive (new observations)"
POPULATION = "new experiment (population)"


def decay_model():
    return probde.Model(
        probde.ODE(lambda t, y, th: -jnp.exp(th["lk"]) * y, state_names=("x",)),
        {"mu": dist.Normal(-0.5, 0.5), "tau": dist.HalfNormal(0.5),
         "lk": probde.PerExperiment(lambda th: dist.Normal(th["mu"], th["tau"]))},
        initial_state=jnp.array([2.0]), observation=probde.noise.Normal(sigma=0.05))


def decay_data():
    rng = np.random.default_rng(3)
    return [probde.TimeSeries(t, 2.0 * np.exp(-k * (t - t[0])) + 0.05 * rng.normal(size=t.size),
                              observables=("x",), name=name)
            for name, k, t in zip(NAMES, RATES, TIMES, strict=True)]


@pytest.fixture(scope="module")
def fitted():
    with warnings.catch_warnings():  # a short run: a few rejected proposals in warmup
        warnings.filterwarnings("ignore", message=".*proposals were rejected")
        warnings.filterwarnings("ignore", category=probde.ConvergenceWarning)
        return probde.infer(decay_model(), decay_data(),
                            probde.NUTS(num_warmup=100, num_samples=100, num_chains=1), seed=0,
                            num_prior_samples=0)


@pytest.fixture(scope="module")
def predicted(fitted):
    result = probde.InferenceResult(fitted.idata.copy(), model=fitted.model, data=fitted.data)
    result.predict(GRID)
    return result


def _bands(ax):
    """The fill_between bands of a panel by label."""
    return {c.get_label(): c for c in ax.collections if isinstance(c, PolyCollection)}


def _line(ax, label=None, marker=None):
    lines = [ln for ln in ax.lines if (label is None or ln.get_label() == label)
             and (marker is None or ln.get_marker() == marker)]
    assert len(lines) == 1, [ln.get_label() for ln in ax.lines]
    return lines[0]


def _y_range(band):
    y = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
    return y.min(), y.max()


def test_plot_fit_at_the_data_times_a_grid_of_experiments(fitted, tmp_path):
    assert "predictions" not in fitted.idata.children
    fig = fitted.plot_fit(tmp_path / "fit.png")
    # 3 experiments in a 2 x 2 grid: the fourth cell removed, the legend in its place
    assert len(fig.axes) == 3
    assert [a.get_title() for a in fig.axes] == list(NAMES)
    assert all(a.get_visible() for a in fig.axes)
    assert fig.legends and POPULATION not in [t.get_text() for t in fig.legends[0].texts]
    mu = fitted.idata["posterior_predictive"]["mu"]
    for a, name, t, series in zip(fig.axes, NAMES, TIMES, decay_data(), strict=True):
        # the curve at this experiment's own times only, not the union of all times
        line = _line(a, "model median")
        np.testing.assert_allclose(line.get_xdata(), t)
        expected = mu.sel(experiment=name, observable="x", time=t).median(("chain", "draw"))
        np.testing.assert_allclose(line.get_ydata(), expected.values)
        data = _line(a, "data")
        np.testing.assert_allclose(data.get_xdata(), t)
        np.testing.assert_allclose(data.get_ydata(), series.values[:, 0])
        bands = _bands(a)
        assert set(bands) == {CREDIBLE, PREDICTIVE}
        lo_c, hi_c = _y_range(bands[CREDIBLE])
        lo_p, hi_p = _y_range(bands[PREDICTIVE])
        assert lo_p < lo_c and hi_c < hi_p  # new observations add the noise
    assert (tmp_path / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_fit_draws_the_predictions_on_their_fine_grid(predicted):
    fig = predicted.plot_fit()
    assert len(fig.axes) == 3
    mu = predicted.idata["predictions"]["mu"]
    for a, name, t in zip(fig.axes, NAMES, TIMES, strict=True):
        line = _line(a, "model median")
        modelled = GRID[GRID >= t[0]]  # "c" is modelled from its start on
        assert len(line.get_xdata()) == modelled.size > len(t)
        np.testing.assert_allclose(line.get_xdata(), modelled)
        expected = mu.sel(experiment=name, observable="x", time=modelled).median(("chain", "draw"))
        np.testing.assert_allclose(line.get_ydata(), expected.values)
        bands = _bands(a)
        assert set(bands) == {CREDIBLE, PREDICTIVE}
        x = bands[PREDICTIVE].get_paths()[0].vertices[:, 0]
        assert x.min() == pytest.approx(modelled[0]) and x.max() == pytest.approx(GRID[-1])
        np.testing.assert_allclose(_line(a, "data").get_xdata(), t)
    # the posterior predictive group is still there: group= picks it
    coarse = predicted.plot_fit(group="posterior_predictive")
    assert len(_line(coarse.axes[0], "model median").get_xdata()) == TIMES[0].size


# ------------------------------------------------- layouts, on hand-made DataTrees (fast)
def _tree(experiments, observables=("x",), hidden=(), predictions=None, seed=0):
    """A DataTree shaped like a result: `y`, `mu` (and `trajectory` with the `hidden`
    states, and a smoothed_states group, as an SDE model's) for 2 chains x 30 draws at 5
    times; `experiments` None: one experiment (no experiment dim)."""
    import xarray as xr

    rng = np.random.default_rng(seed)
    times = np.arange(5.0)
    exp = [] if experiments is None else ["experiment"]
    shape = (2, 30) + (() if experiments is None else (len(experiments),)) + (5,)
    coords = {"time": times, "observable": list(observables)}
    if experiments is not None:
        coords["experiment"] = list(experiments)
    mu = np.sin(times)[..., None] + 0.1 * rng.normal(size=shape + (len(observables),))
    dims = ["chain", "draw", *exp, "time", "observable"]
    groups = {
        "posterior_predictive": xr.Dataset(
            {"mu": (dims, mu), "y": (dims, mu + rng.normal(size=mu.shape))}, coords=coords),
        "observed_data": xr.Dataset({"y": (dims[2:], mu[0, 0])}, coords=coords),
    }
    if hidden:
        states = list(observables) + list(hidden)
        traj = np.concatenate([mu, rng.normal(size=shape + (len(hidden),))], axis=-1)
        groups["posterior_predictive"]["trajectory"] = (
            dims[:-1] + ["state"], traj)
        groups["posterior_predictive"] = groups["posterior_predictive"].assign_coords(
            state=states)
        groups["smoothed_states"] = xr.Dataset({"mean": (dims[:-1] + ["state"], traj)},
                                               coords={**coords, "state": states})
    if predictions is not None:
        groups["predictions"] = predictions
    return xr.DataTree.from_dict(groups)


def test_plot_fit_of_one_experiment_keeps_one_column():
    fig = probde.inference.plot.plot_fit(_tree(None, observables=("x", "z")))
    assert len(fig.axes) == 2 and not fig.legends
    assert [a.get_ylabel() for a in fig.axes] == ["x", "z"]
    assert [a.get_title() for a in fig.axes] == ["", ""]
    assert fig.axes[0].get_legend() is not None and fig.axes[1].get_xlabel() == "time"
    assert fig.axes[0].get_position().y0 > fig.axes[1].get_position().y1  # one column
    for a in fig.axes:
        assert set(_bands(a)) == {CREDIBLE, PREDICTIVE}
        assert len(_line(a, "model median").get_xdata()) == 5


def test_plot_fit_of_an_sde_model_has_a_row_per_experiment_with_its_hidden_states():
    fig = probde.inference.plot.plot_fit(_tree(["p", "q"], hidden=("v",)))
    assert [a.get_title() for a in fig.axes] == ["p", "p", "q", "q"]
    assert [a.get_ylabel() for a in fig.axes] == ["x", "v (unobserved)"] * 2
    latent = "90% latent state (smoothed)"
    for a in fig.axes[::2]:  # observed: predictive band and smoothed state
        assert set(_bands(a)) == {PREDICTIVE, latent}
        _line(a, "data")
    for a in fig.axes[1::2]:  # hidden: the smoothed state only, no data
        assert set(_bands(a)) == {latent}
        assert not [ln for ln in a.lines if ln.get_label() == "data"]


def test_plot_fit_adds_panels_for_predicted_experiments_that_were_not_observed():
    """`predict(times, experiments=[...])` of a new experiment: the observed experiments'
    curves come from the posterior predictive, the new one gets a panel without data."""
    import xarray as xr

    grid = np.linspace(0.0, 4.0, 17)
    mu = np.cos(grid)[None, None, None, :, None] * np.ones((2, 30, 1, 1, 1))
    dims = ["chain", "draw", "experiment", "time", "observable"]
    pred = xr.Dataset({"mu": (dims, mu), "y": (dims, mu + 0.3)},
                      coords={"time": grid, "observable": ["x"], "experiment": ["new"]})
    fig = probde.inference.plot.plot_fit(_tree(["p", "q"], predictions=pred))
    assert [a.get_title() for a in fig.axes] == ["p", "q", "new (predicted)"]
    assert [len(_line(a, "model median").get_xdata()) for a in fig.axes] == [5, 5, 17]
    assert not [ln for ln in fig.axes[2].lines if ln.get_label() == "data"]
    np.testing.assert_allclose(_line(fig.axes[2], "model median").get_ydata(), np.cos(grid))


# ------------------------------------------------------------------- plot_population
def test_plot_population_rows_per_experiment_and_the_population(fitted, tmp_path):
    fig = fitted.plot_population(tmp_path / "population.png")
    assert (tmp_path / "population.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # lk only: not the shared mu, tau, nor the standardised lk_decentered
    assert "lk_decentered" in fitted.idata["posterior"]
    assert len(fig.axes) == 1
    a = fig.axes[0]
    assert a.get_title() == "lk"
    assert [t.get_text() for t in a.get_yticklabels()] == [*NAMES, POPULATION]
    # the experiments' rows: posterior median and 90% interval of each one's value
    lk = fitted.idata["posterior"]["lk"]
    medians = _line(a, marker="o")
    np.testing.assert_allclose(medians.get_xdata(),
                               lk.median(("chain", "draw")).sel(experiment=list(NAMES)).values)
    rows = a.collections[0].get_segments()
    q = lk.quantile([0.05, 0.95], dim=("chain", "draw")).transpose("experiment", ...).values
    np.testing.assert_allclose([[s[0, 0], s[1, 0]] for s in rows], q)
    # the population row: a new experiment's value, one draw per posterior draw
    new = population_draws(fitted.model, fitted.idata, ["lk"])["lk"]
    assert new.shape == (100,)
    segment = a.collections[-1].get_segments()[0]
    np.testing.assert_allclose(segment[:, 0], np.quantile(new, [0.05, 0.95]))
    assert segment[0, 1] > len(NAMES) - 1  # below the experiments' rows
    # ... drawn from Normal(mu, tau) of each draw: its mean is that of mu
    post = fitted.idata["posterior"]
    tau = post["tau"].values.ravel()
    z = (new.mean() - post["mu"].values.mean()) / np.sqrt(np.mean(tau ** 2) / new.size)
    assert abs(z) < Z_MAX
    assert np.std(new) > np.std(post["mu"].values)


def test_plot_population_without_the_model_shows_the_experiments_only(fitted, tmp_path):
    path = tmp_path / "idata.nc"
    fitted.to_netcdf(path)
    loaded = probde.load(path)
    fig = loaded.plot_population(interval=0.5)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == list(NAMES)
    lk = fitted.idata["posterior"]["lk"]
    q = lk.quantile([0.25, 0.75], dim=("chain", "draw")).transpose("experiment", ...).values
    rows = fig.axes[0].collections[0].get_segments()
    np.testing.assert_allclose([[s[0, 0], s[1, 0]] for s in rows], q)


def test_plot_population_checks_its_variables(fitted):
    with pytest.raises(ValueError, match="no experiment dim"):
        fitted.plot_population(var_names=["mu"])
    with pytest.raises(ValueError, match="no posterior variable"):
        fitted.plot_population(var_names=["nope"])
    with pytest.raises(ValueError, match="interval"):
        fitted.plot_population(interval=1.5)
