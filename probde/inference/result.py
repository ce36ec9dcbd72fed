"""`InferenceResult`: the ArviZ DataTree of a run, with summaries, plots and saving."""

from __future__ import annotations

# ArviZ's packages for data and statistics, not `arviz`, which also imports arviz_plots
# and matplotlib's pyplot (`convergence.py`); plots import them when drawn.
import arviz_base
import arviz_stats
import numpy as np
import xarray as xr

from ..model.sites import CORRECTED, DELTA, INITIAL_STATE, MEAN, OBSERVED, TRAJECTORY, public

PARAMETERS_ATTR = "probde_parameters"
Y = public(OBSERVED)  # the observations' name in the DataTree


def _site_dims(name, value_shape, model, data):
    """Named dims of one posterior site (without chain/draw)."""
    if model is not None and name in model.dims:
        return list(model.dims[name])
    if model is None:
        return None
    S = model.dynamics.num_states
    O = len(data.observables)
    E = data.num_experiments
    if name == INITIAL_STATE:
        return ["state"] if data.single else ["experiment", "state"]
    names = model.discrepancy_names
    if name == names.get("z"):
        return ([] if data.single else ["experiment"]) + ["discrepancy_observable", "time"]
    if model.discrepancy is not None and name in names.values():
        return model.discrepancy.site_dims(name, value_shape, names)
    hyper = set(model.hyper_names.values())
    if value_shape == (O,) and name in hyper:
        return ["observable"]
    if value_shape == (S,):
        return ["state"]
    if value_shape == (O,):
        return ["observable"]
    if value_shape == (E,) and not data.single:
        return ["experiment"]
    return None


def _deep_weight_names(model) -> set[str]:
    """The weight sites of a discrepancy (e.g. a deep GP's: not listed as parameters, there
    are hundreds of them and they are not identified)."""
    if model is None or model.discrepancy is None:
        return set()
    return model.discrepancy.weight_sites(model.discrepancy_names)


def _squeeze_experiment(arr, data, axis):
    return np.take(arr, 0, axis=axis) if data is not None and data.single else arr


def _coords_and_dims(model, data, posterior):
    """Coordinates and named dims of a model's groups (`exp`: the experiment dim, if any)."""
    exp = [] if data.single else ["experiment"]
    coords = {
        "time": data.times,
        "observable": list(data.observables),
        "state": list(model.dynamics.state_names),
    }
    if not data.single:
        coords["experiment"] = list(data.experiments)
    if model.discrepancy is not None:
        idx = model.discrepancy.observable_index(data.observables)
        coords["discrepancy_observable"] = [data.observables[i] for i in idx]
    # Parameter groups and data groups get their own dims: a parameter may be called like
    # a predictive variable (a model's `mu`).
    dims = {"parameters": {}, "data": {}}
    for name, value in posterior.items():
        d = _site_dims(name, tuple(value.shape[2:]), model, data)
        if d is not None:
            dims["parameters"][name] = d
    for site in (OBSERVED, MEAN, DELTA, CORRECTED):
        dims["data"][public(site)] = exp + ["time", "observable"]
    dims["data"][public(TRAJECTORY)] = exp + ["time", "state"]
    dims["parameters"]["solver_steps"] = exp
    return coords, dims, exp


def _model_groups(groups, dims, coords, exp, model, data, states):
    """Squeeze a single experiment's axis, add the observed data and the latent states."""

    def squeeze(group):
        return None if group is None else {
            k: _squeeze_experiment(v, data, 2) for k, v in group.items()}

    groups["sample_stats"]["solver_steps"] = _squeeze_experiment(
        groups["sample_stats"]["solver_steps"], data, 2)
    for name in ("posterior_predictive", "prior_predictive"):
        groups[name] = squeeze(groups[name])
    if states:
        coords["state_col"] = list(model.dynamics.state_names)
        for name, group in states.items():
            groups[name] = squeeze(group)
        dims["data"].update({"mean": exp + ["time", "state"],
                             "cov": exp + ["time", "state", "state_col"]})
    if groups["log_likelihood"] is not None and data.mask.all():
        groups["log_likelihood"] = squeeze(groups["log_likelihood"])
    groups["observed_data"] = {Y: _squeeze_experiment(data.values, data, 0)}


def _log_likelihood_by_obs_id(log_likelihood, data):
    """With missing values, ArviZ's LOO needs one finite value per observation: the
    observed values only, along `obs_id`, with coordinates that say where each came from."""
    log_likelihood = {k: v[:, :, data.mask] for k, v in log_likelihood.items()}
    e, t, o = np.nonzero(data.mask)
    ll = arviz_base.from_dict(
        {"log_likelihood": log_likelihood}, dims={Y: ["obs_id"]}
    )["log_likelihood"].to_dataset()
    ll = ll.assign_coords(
        obs_time=("obs_id", data.times[t]),
        obs_observable=("obs_id", np.asarray(data.observables)[o]),
    )
    if not data.single:
        ll = ll.assign_coords(obs_experiment=("obs_id", np.asarray(data.experiments)[e]))
    return xr.DataTree(ll)


def _parameter_names(model, posterior) -> list[str]:
    """The posterior variables that are the model's parameters (not weights or latent
    GP values)."""
    names = list(posterior)
    if model is None:
        return names
    disc_names = model.discrepancy_names
    names = [n for n in names if n in model.params or n in model.per_experiment
             or n in model.derived
             or n in model.hyper_names.values() or n == INITIAL_STATE
             or n in disc_names.values()]
    return [n for n in names if n not in _deep_weight_names(model) and n != disc_names.get("z")]


def build_datatree(
    *,
    model,
    data,
    posterior,
    sample_stats,
    posterior_predictive,
    log_likelihood,
    prior,
    prior_predictive,
    solver_failures,
    states=None,
):
    """Assemble the DataTree with named dims and coordinates (internal)."""
    dims: dict = {"parameters": {}, "data": {}}
    coords: dict = {}
    groups: dict = {
        "posterior": dict(posterior), "sample_stats": dict(sample_stats),
        "posterior_predictive": posterior_predictive, "log_likelihood": log_likelihood,
        "prior": prior, "prior_predictive": prior_predictive,
    }
    by_obs_id = data is not None and log_likelihood is not None and not data.mask.all()
    if data is not None:
        coords, dims, exp = _coords_and_dims(model, data, posterior)
        _model_groups(groups, dims, coords, exp, model, data, states)
    if by_obs_id:
        groups.pop("log_likelihood")
    groups = {k: v for k, v in groups.items() if v or k in ("posterior", "sample_stats")}
    parameter_groups = ("posterior", "sample_stats", "prior")
    idata = arviz_base.from_dict({k: v for k, v in groups.items() if k in parameter_groups},
                         dims=dims["parameters"], coords=coords)
    others = {k: v for k, v in groups.items() if k not in parameter_groups}
    if others:
        tree = arviz_base.from_dict(others, dims=dims["data"], coords=coords)
        for name in others:
            idata[name] = tree[name]
    if by_obs_id:
        idata["log_likelihood"] = _log_likelihood_by_obs_id(log_likelihood, data)
    idata.attrs[PARAMETERS_ATTR] = ",".join(_parameter_names(model, posterior))
    idata.attrs["inference_library"] = "probde"
    if solver_failures is not None:
        idata["sample_stats"].attrs["solver_failures"] = int(solver_failures)
    return idata


class InferenceResult:
    """The result of `probde.infer`: an ArviZ DataTree plus conveniences.

    **Fields:** `idata`, an `xarray.DataTree` with groups posterior, sample_stats,
    log_likelihood, posterior_predictive, observed_data, prior, prior_predictive. Every
    ArviZ function takes it as is: `az.summary(result.idata)`, `az.loo(result.idata)`,
    `az.plot_trace(result.idata)`.
    """

    def __init__(self, idata: xr.DataTree, *, model=None, data=None):
        if not isinstance(idata, xr.DataTree):
            raise TypeError(f"idata must be an xarray.DataTree; got {type(idata).__name__}")
        self.idata = idata
        self.model = model
        self.data = data

    def predict(self, times, *, seed: int = 0, group: str | None = "predictions",
                experiments=None):
        """Posterior predictions at new `times`, one per posterior draw.

        Returns an `xarray.Dataset` with `mu` (the simulator's prediction), and for a model
        with a discrepancy `discrepancy` (delta, drawn from its posterior given the data) and `corrected`
        (the simulator corrected by the discrepancy: the model's estimate of the true
        process), and `y` (new observations). Dims: chain, draw, (experiment,) time,
        observable. For an SDE model: `trajectory` (latent states: drawn from the smoothed
        posterior given the data for EKF/UKF, i.e. interpolation and forecasting on a finer
        grid; free sample paths for the particle filter), `mu` and `y`. With `group`
        (default `"predictions"`) the dataset is also stored in
        `idata` under that group name (replacing an earlier one).

        `experiments` (ODE models) predicts other experiments than the observed ones: a
        list of `dict(name=..., inputs={...}, doses=[probde.Dose(...)], start=t0)` (all
        but `name` optional). An observed experiment's name keeps its posterior
        per-experiment parameters (and, unless given, its inputs, doses and start): e.g. a
        new dosing regimen for an observed subject. Any other name is a new experiment,
        whose per-experiment parameters are drawn from the population distribution given
        each posterior draw (the predictive distribution for a new subject).

        Needs the model and data of the run: a result read back with `probde.load` has
        neither; pass them with `probde.load(path, model=model, data=data)`.
        """
        from .predict import predict

        ds = predict(self, times, seed=seed, experiments=experiments)
        if group:
            self.idata[group] = xr.DataTree(ds)
        return ds

    @property
    def parameter_names(self) -> list[str]:
        """Posterior variables that are parameters (not derived observations)."""
        names = self.idata.attrs.get(PARAMETERS_ATTR, "")
        return [n for n in names.split(",") if n] or list(self.idata["posterior"].data_vars)

    @property
    def solver_failures(self) -> int | None:
        """Rejected proposals (failed solves, impossible predictions) during the run;
        `None` when they were not counted (a numpyro model function, or
        `probde.infer(..., count_failures=False)`)."""
        value = self.idata["sample_stats"].attrs.get("solver_failures")
        return None if value is None else int(value)

    def diagnose(self, var_names=None, *, show: bool = True):
        """The full convergence report of an MCMC run (like CmdStan's `diagnose`).

        Checks the draws of the parameters (or of `var_names`): rank-normalised split
        R-hat (fails above 1.01), bulk and tail ESS (below 100 per chain), and for NUTS
        E-BFMI per chain (below 0.3), divergences and transitions that reached the maximum
        tree depth; and whether a chain sits apart from the others (a different mean log
        density, or a parameter whose R-hat fails sitting elsewhere in that chain): a
        chain stuck in another mode. Prints the report (unless `show=False`) and returns
        it: a `ConvergenceReport` with `ok`, `failed`, `checks` and `stuck_chains`.
        `probde.infer` runs the same checks after every MCMC run, warns
        (`probde.ConvergenceWarning`) when one fails, and keeps the figures in
        `idata.sample_stats.attrs`.

        A variational fit (`probde.SVI`, `probde.Laplace`) draws independently from its
        approximation, so these checks say nothing about it and raise a `ValueError`;
        its loss trace (`plot_loss`) and its warnings are its checks.
        """
        from .convergence import ALL_CHECKS, check_convergence

        if "svi_trace" in self.idata.children:
            raise ValueError("diagnose() checks MCMC draws; this result is a variational "
                             "fit (it has an svi_trace group): see result.plot_loss()")
        checks = ALL_CHECKS
        if "energy" not in self.idata["sample_stats"]:  # random-walk Metropolis
            checks = ("rhat", "ess", "stuck")
        names = self.parameter_names if var_names is None else list(var_names)
        missing = [n for n in names if n not in self.idata["posterior"]]
        if missing:
            raise ValueError(f"var_names must name posterior variables; got {missing} "
                             f"(the posterior has {list(self.idata['posterior'].data_vars)})")
        depth = self.idata["sample_stats"].attrs.get("max_tree_depth")
        report = check_convergence(self.idata, names, checks=checks, max_tree_depth=depth)
        if show:
            print(report)
        return report

    def summary(self, var_names=None, **kwargs):
        """`arviz.summary` of the parameters (or of `var_names`), as a pandas DataFrame."""
        var_names = self.parameter_names if var_names is None else var_names
        return arviz_stats.summary(self.idata, var_names=var_names, **kwargs)

    def plot_fit(self, path=None, *, interval: float = 0.9, ax=None, group=None):
        """Data with the model's credible band and the predictive band, one panel per
        observable (and experiment: a grid titled with the experiments' labels).

        Draws the observed data as points, the median of the noise-free model `mu` as a
        line with its central `interval` credible band (darker), and the central
        `interval` of the posterior predictive distribution of new observations `y`
        (lighter band). After `predict(times)` the curves are drawn from the `predictions`
        group on those times (a fine grid), else at the data times; each experiment only
        where it is modelled. For an SDE model with a Gaussian filter `mu` is the smoothed
        latent state, and each unobserved state gets a panel. Returns the matplotlib
        figure; saves it to `path` when given. See `probde.inference.plot.plot_fit`.
        """
        from .plot import plot_fit

        return plot_fit(self.idata, path=path, interval=interval, ax=ax, group=group)

    def plot_population(self, path=None, *, interval: float = 0.9, var_names=None):
        """Forest plot of the per-experiment parameters with the population distribution.

        One panel per per-experiment parameter (`probde.PerExperiment`; or `var_names`),
        one row per experiment: posterior median and central `interval` credible interval.
        When the model is at hand (not after `probde.load` without `model=`), a last row
        "new experiment (population)", shaded across the panel: the interval of a new
        experiment's value, drawn for each posterior draw (at most 2000, thinned) from the
        population distribution given that draw's shared parameters (hyperparameters). Returns
        the figure; saves it to `path` when given.
        """
        from .plot import per_experiment_names, plot_population, population_draws

        population = None
        if self.model is not None:
            names = per_experiment_names(self.idata, var_names)
            population = population_draws(self.model, self.idata, names)
        return plot_population(self.idata, path=path, interval=interval,
                               var_names=var_names, population=population)

    def plot_discrepancy(self, path=None, *, interval: float = 0.9):
        """Data, simulator, discrepancy and corrected process with bands (models with a
        discrepancy). Call `predict(times)` first to draw them on a fine grid."""
        from .plot import plot_discrepancy

        return plot_discrepancy(self.idata, path=path, interval=interval)

    def plot_loss(self, path=None, *, ax=None):
        """The loss per optimisation step of a `probde.SVI` or `probde.Laplace` fit (the
        group `svi_trace`), with a running median and the skipped steps marked; the y axis
        covers the last 90% of the run, where convergence is judged. Returns the figure;
        saves it to `path` when given."""
        from .plot import plot_loss

        return plot_loss(self.idata, path=path, ax=ax)

    def to_netcdf(self, path) -> None:
        """Write the DataTree to a netCDF file (h5netcdf); `probde.load(path)` reads it back."""
        self.idata.to_netcdf(path, engine="h5netcdf")

    def __repr__(self):
        groups = ", ".join(c for c in self.idata.children)
        return f"InferenceResult(groups: {groups})"


def load(path, *, model=None, data=None) -> InferenceResult:
    """Read a result written by `InferenceResult.to_netcdf`, fully into memory.

    Pass the `model` and `data` of the run to make `result.predict` available again.
    """
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        idata = tree.load().copy()
    return InferenceResult(idata, model=model, data=data)
