"""`plot_fit`, `plot_population`, `plot_discrepancy`, `plot_loss`: the figures of a result."""

from __future__ import annotations

import math

import numpy as np


def plot_fit(idata, *, path=None, interval=0.9, ax=None, group=None):
    """Data with the model's credible band and the predictive band, per observable and
    experiment.

    What is drawn in each panel (one per observable, and per experiment):

    - the observed data (black points);
    - the median of the noise-free model `mu` (line) and its central `interval` credible
      band (darker): where the model itself is;
    - the central `interval` of the posterior predictive distribution of new
      observations `y` (lighter band): where new data are expected, noise included;
    - for a model with a discrepancy, the corrected process `mu + delta` (median and band)
      with the simulator's median `mu` dashed;
    - for an SDE model with a Gaussian filter, `mu` is the smoothed latent state, and every
      unobserved state gets a panel of its own (smoothed band and median).

    The curves come from the `predictions` group when there is one (`result.predict(times)`,
    usually a fine time grid), else from `posterior_predictive` at the data times; `group`
    names another group. Each experiment's curves are drawn only where it is modelled: on
    the fine grid, where its predictions are defined (not before its start); at the data
    times, at that experiment's own observation times.

    Layout: one experiment keeps one column of panels; several experiments get a grid
    titled with the experiments' labels (about square with one observable, else one row
    per experiment and one column per observable or unobserved state), with shared axes
    and the unused cells removed. `ax` (an axes or an array of them, used in order) draws
    into existing axes instead. Returns the figure; saves it to `path` when given.
    """
    import matplotlib

    if path is not None and ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not 0 < interval < 1:
        raise ValueError(f"interval must be in (0, 1); got {interval}")
    if "posterior_predictive" not in idata.children or "observed_data" not in idata.children:
        raise ValueError("plot_fit needs the posterior_predictive and observed_data groups")
    if group is None:
        group = "predictions" if "predictions" in idata.children else "posterior_predictive"
    if group not in idata.children:
        raise ValueError(f"plot_fit: no group {group!r}; groups are {list(idata.children)}")
    source = idata[group]
    if "y" not in source and "mu" not in source:
        raise ValueError(f"plot_fit: group {group!r} has neither y nor mu")
    fine = group != "posterior_predictive"
    fitted = idata["posterior_predictive"]
    obs = idata["observed_data"]["y"]
    observables = list(obs["observable"].values)
    sde = "smoothed_states" in idata.children
    # a model with a discrepancy (predictions carry a zero one for any ODE model)
    corrected = "corrected" in fitted
    # SDE models: the unobserved states' smoothed posterior gets panels of its own.
    hidden = []
    if sde:
        traj = next((g["trajectory"] for g in (fitted, source) if "trajectory" in g), None)
        if traj is not None:
            hidden = [s for s in traj["state"].values.tolist() if s not in observables]
    quantities = [("observable", o) for o in observables] + [("state", s) for s in hidden]
    experiments = _fit_experiments(obs, source if fine else None)
    multi = len(experiments) > 1 or "experiment" in obs.dims
    panels = [(e, kind, name) for e in experiments for kind, name in quantities]
    fig, axes, spare = _fit_axes(plt, ax, len(panels), len(experiments), len(quantities), multi)
    lo, hi = (1 - interval) / 2, 1 - (1 - interval) / 2
    pct = f"{int(round(interval * 100))}%"
    for a, (e, kind, name) in zip(axes, panels, strict=True):
        title, data_at, src_at, from_fine = e
        group_e = source if from_fine else fitted
        # at the data times, only the experiment's own observation times (the group holds
        # the union of all experiments' times); on the fine grid, all of it
        when = (obs.sel(data_at).notnull().any("observable").values
                if not from_fine and data_at else None)
        if kind == "observable":
            data = None if data_at is None else obs.sel({"observable": name, **data_at})
            _observable_panel(a, group_e, data, {"observable": name, **src_at}, when,
                              (lo, hi), pct, sde, corrected)
        elif "trajectory" in group_e:
            t, q = _bands(group_e["trajectory"].sel({"state": name, **src_at}), when, (lo, hi))
            if t.size:
                a.fill_between(t, q[0], q[2], alpha=0.3, color="C1",
                               label=f"{pct} latent state (smoothed)")
                a.plot(t, q[1], color="C1", lw=1.2)
        if multi:
            a.set_title(title, fontsize="medium")
        # one quantity in a grid: its name on the first column only
        first_column = a.get_subplotspec() is None or a.get_subplotspec().colspan.start == 0
        if not (multi and len(quantities) == 1 and ax is None) or first_column:
            a.set_ylabel(name if kind == "observable" else f"{name} (unobserved)")
    _time_labels(axes, ax is None)
    handles, labels = _legend_entries(axes)
    if ax is None:
        fig.tight_layout()
    box = spare[0].get_position() if spare else None
    for unused in spare:
        fig.delaxes(unused)
    if spare and handles:
        # the legend goes into the first unused cell of the grid
        fig.legend(handles, labels, loc="center", fontsize="small", frameon=False,
                   bbox_to_anchor=(box.x0, box.y0, box.width, box.height),
                   bbox_transform=fig.transFigure)
    elif handles and multi and ax is None:
        # a full grid: the legend goes under it
        fig.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize="small",
                   frameon=False)
        fig.tight_layout(rect=(0, 0.5 / fig.get_figheight(), 1, 1))
    elif handles:
        axes[0].legend(handles, labels, loc="upper right", fontsize="small")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def _legend_entries(axes):
    """`(handles, labels)` of all the panels, each label once, in order of appearance."""
    entries = {}
    for a in axes:
        for handle, label in zip(*a.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    return list(entries.values()), list(entries)


def _fit_experiments(obs, fine):
    """The experiments of plot_fit's panels: `(title, selection of the observed data or
    None, selection of the curves' group, whether the curves come from the fine group)`.

    The observed experiments first: their curves come from the `fine` group (predictions)
    when it has them, else from the posterior predictive. Then the experiments that only the
    predictions have (`predict(times, experiments=...)` for new ones), without data."""
    observed = list(obs["experiment"].values) if "experiment" in obs.dims else [None]
    predicted = None
    if fine is not None:
        predicted = list(fine["experiment"].values) if "experiment" in fine.dims else [None]
    out = []
    for exp in observed:
        at = {} if exp is None else {"experiment": exp}
        in_fine = predicted is not None and (exp in predicted if exp is not None
                                             else predicted == [None])
        out.append(("data" if exp is None else str(exp), at, at, in_fine))
    for exp in predicted or []:
        if exp is None and observed != [None]:
            out.append(("prediction", None, {}, True))
        elif exp is not None and exp not in observed:
            out.append((f"{exp} (predicted)", None, {"experiment": exp}, True))
    return out


def _fit_axes(plt, ax, n_panels, n_experiments, n_quantities, multi):
    """`(figure, axes in panel order, unused axes)` of plot_fit."""
    if ax is not None:
        axes = list(np.ravel(np.atleast_1d(ax)))
        if len(axes) < n_panels:
            raise ValueError(f"plot_fit needs {n_panels} axes; got {len(axes)}")
        return axes[0].figure, axes[:n_panels], []
    if not multi:
        fig, grid = plt.subplots(n_panels, 1, figsize=(7, 2.6 * n_panels), squeeze=False,
                                 sharex=True)
        return fig, list(grid[:, 0]), []
    if n_quantities == 1:
        ncols = math.ceil(math.sqrt(n_experiments))
        nrows = math.ceil(n_experiments / ncols)
        fig, grid = plt.subplots(nrows, ncols, figsize=(3.6 * ncols + 0.6, 2.7 * nrows + 0.4),
                                 squeeze=False, sharex=True, sharey=True)
    else:
        nrows, ncols = n_experiments, n_quantities
        fig, grid = plt.subplots(nrows, ncols, figsize=(3.8 * ncols + 0.6, 2.5 * nrows + 0.4),
                                 squeeze=False, sharex=True, sharey="col")
    flat = list(grid.ravel())
    return fig, flat[:n_panels], flat[n_panels:]


def _time_labels(axes, own):
    """'time' under the lowest panel of each column (with tick labels there: a shared x
    axis hides them above a removed cell)."""
    if not own or len(axes) == 1:
        axes[-1].set_xlabel("time")
        return
    lowest = {}
    for a in axes:
        spec = a.get_subplotspec()
        col, row = spec.colspan.start, spec.rowspan.start
        if col not in lowest or row > lowest[col].get_subplotspec().rowspan.start:
            lowest[col] = a
    for a in lowest.values():
        a.xaxis.set_tick_params(labelbottom=True)
        a.set_xlabel("time")


def _bands(da, when, bounds):
    """`(times, [lower, median, upper])` of the draws of `da` (dims chain, draw, time), at
    the times `when` selects (a boolean mask, or all) where any draw is defined."""
    lo, hi = bounds
    t = da["time"].values
    x = _draws(da)
    keep = np.isfinite(x).any(axis=0)
    if when is not None:
        keep &= np.asarray(when, dtype=bool)
    t, x = t[keep], x[:, keep]
    if not t.size:
        return t, np.empty((3, 0))
    return t, np.nanquantile(x, [lo, 0.5, hi], axis=0)


def _observable_panel(a, group, data, sel, when, bounds, pct, sde, corrected):
    """One observable's panel: predictive band, model (or smoothed state) and data."""
    if "y" in group:
        t, q = _bands(group["y"].sel(sel), when, bounds)
        if t.size:
            a.fill_between(t, q[0], q[2], alpha=0.2, color="C0", lw=0,
                           label=f"{pct} predictive (new observations)")
            if "mu" not in group:
                a.plot(t, q[1], color="C0", lw=1.5, label="posterior predictive median")
    if "mu" in group:
        t, m = _bands(group["mu"].sel(sel), when, bounds)
        if t.size and sde:
            a.fill_between(t, m[0], m[2], alpha=0.3, color="C1", lw=0,
                           label=f"{pct} latent state (smoothed)")
            a.plot(t, m[1], color="C1", lw=1.5, label="latent state median")
        elif t.size and corrected:
            a.plot(t, m[1], color="C1", lw=1, ls="--", label="simulator median")
        elif t.size:
            a.fill_between(t, m[0], m[2], alpha=0.45, color="C0", lw=0,
                           label=f"{pct} credible (noise-free model)")
            a.plot(t, m[1], color="C0", lw=1.5, label="model median")
    if corrected:
        t, c = _bands(group["corrected"].sel(sel), when, bounds)
        if t.size:
            a.fill_between(t, c[0], c[2], alpha=0.3, color="C2", lw=0)
            a.plot(t, c[1], color="C2", lw=1.5, label=f"simulator + discrepancy ({pct})")
    if data is not None:
        seen = np.isfinite(data.values)
        a.plot(data["time"].values[seen], data.values[seen], "o", color="k", ms=4, label="data")


def _panels(obs):
    """One `(label, selection)` per observable and experiment of the observed data."""
    observables = list(obs["observable"].values)
    experiments = list(obs["experiment"].values) if "experiment" in obs.dims else [None]
    return [
        (name if exp is None else f"{name} ({exp})",
         {"observable": name} if exp is None else {"observable": name, "experiment": exp})
        for exp in experiments
        for name in observables
    ]


def _draws(da, sel=None):
    """`(samples, time)` draws of one observable or state (and experiment)."""
    if sel:
        da = da.sel(sel)
    return da.stack(sample=("chain", "draw")).transpose("sample", "time").values



def per_experiment_names(idata, var_names=None) -> list[str]:
    """The posterior variables that have one value per experiment: those listed as
    parameters (`idata.attrs["probde_parameters"]`, else all) with an `experiment` dim,
    without the non-centred forms `*_decentered`; or `var_names`, checked."""
    if "posterior" not in idata.children:
        raise ValueError("plot_population needs the posterior group")
    post = idata["posterior"]
    if var_names is not None:
        names = [var_names] if isinstance(var_names, str) else list(var_names)
        for name in names:
            if name not in post:
                raise ValueError(f"plot_population: no posterior variable {name!r}")
            if "experiment" not in post[name].dims:
                raise ValueError(f"plot_population: {name!r} has no experiment dim (dims "
                                 f"{post[name].dims}); it is not a per-experiment variable")
        return names
    listed = [n for n in idata.attrs.get("probde_parameters", "").split(",") if n]
    names = listed or list(post.data_vars)
    return [n for n in names if n in post and "experiment" in post[n].dims
            and not n.endswith("_decentered")]


def plot_population(idata, *, path=None, interval=0.9, var_names=None, population=None):
    """Forest plot of the per-experiment parameters, with the population distribution.

    One panel per per-experiment parameter (`var_names`, default: every parameter with an
    `experiment` dim, without the `*_decentered` standardised values; a parameter with
    further dims gets a panel per element), one row per experiment labelled with its name:
    the posterior median (point) and central `interval` credible interval (line).

    `population` (optional): a dict from parameter name to draws of a NEW experiment's
    value (one per posterior draw: the population distribution given the hyperparameters,
    averaged over their posterior, as `InferenceResult.plot_population` computes from the
    model). Each such parameter gets one more row at the bottom, "new experiment
    (population)", with the median and `interval` of those draws, and the interval shaded
    across the panel, to compare the experiments with the population they are drawn from.

    Returns the figure; saves it to `path` when given.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not 0 < interval < 1:
        raise ValueError(f"interval must be in (0, 1); got {interval}")
    names = per_experiment_names(idata, var_names)
    if not names:
        raise ValueError("plot_population: the posterior has no per-experiment parameters "
                         "(variables with an experiment dim)")
    population = population or {}
    post = idata["posterior"]
    experiments = [str(e) for e in post["experiment"].values]
    panels = []
    for name in names:
        da = post[name]
        extra = [d for d in da.dims if d not in ("chain", "draw", "experiment")]
        if not extra:
            panels.append((name, da, population.get(name)))
            continue
        stacked = da.stack(element=extra)
        for i, key in enumerate(stacked["element"].values):
            label = ",".join(str(k) for k in np.atleast_1d(key))
            panels.append((f"{name}[{label}]", stacked.isel(element=i), None))
    lo, hi = (1 - interval) / 2, 1 - (1 - interval) / 2
    pct = f"{int(round(interval * 100))}%"
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    n_exp = len(experiments)
    with_pop = [p is not None for _, _, p in panels]
    any_pop = any(with_pop)
    # the same rows in every panel: their labels on the first column only
    same_rows = all(with_pop) or not any_pop
    height = 0.32 * (n_exp + (1.5 if any_pop else 0)) + 1.4
    width = 3.6 * ncols + (2.5 if same_rows else 2.5 * ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(width, height * nrows), squeeze=False,
                             sharey=same_rows)
    flat = list(grid.ravel())
    rows = np.arange(n_exp, dtype=float)
    for a, (label, da, new) in zip(flat, panels, strict=False):
        x = da.transpose("experiment", "chain", "draw").values.reshape(n_exp, -1)
        q = np.nanquantile(x, [lo, 0.5, hi], axis=1)
        a.hlines(rows, q[0], q[2], color="C0", lw=2.2, label=f"{pct} credible interval")
        a.plot(q[1], rows, "o", color="C0", ms=4.5, label="posterior median")
        ticks, labels = list(rows), list(experiments)
        if new is not None:
            new = np.asarray(new, dtype=float).ravel()
            p = np.nanquantile(new, [lo, 0.5, hi])
            row = n_exp + 0.5
            a.axvspan(p[0], p[2], color="C3", alpha=0.12, lw=0)
            a.hlines(row, p[0], p[2], color="C3", lw=2.2,
                     label=f"new experiment (population), {pct}")
            a.plot(p[1], row, "D", color="C3", ms=5)
            ticks.append(row)
            labels.append("new experiment (population)")
        a.set_yticks(ticks, labels=labels)
        a.set_ylim(max(ticks) + 0.7, -0.7)
        a.set_title(label, fontsize="medium")
        a.grid(axis="x", alpha=0.3)
    for a in flat[len(panels):]:
        fig.delaxes(a)
    handles, labels = _legend_entries(flat[:len(panels)])
    fig.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize="small",
               frameon=False)
    fig.tight_layout(rect=(0, 0.45 / fig.get_figheight(), 1, 1))
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def population_draws(model, idata, names, *, seed=0, max_draws=2000) -> dict:
    """Draws of a new experiment's value for each of `names` that is a per-experiment
    parameter of `model`: one per posterior draw (at most `max_draws`, evenly thinned),
    from the population distribution given that draw's shared parameters."""
    import jax

    varying = getattr(model, "per_experiment", None) or {}
    wanted = [n for n in names if n in varying]
    if not wanted:
        return {}
    post = idata["posterior"]
    shared_names = [n for n in model.params if n in post]
    flat = {n: post[n].stack(sample=("chain", "draw")).transpose("sample", ...).values
            for n in shared_names}
    total = post.sizes["chain"] * post.sizes["draw"]
    pick = np.unique(np.linspace(0, total - 1, min(total, max_draws)).round().astype(int))
    theta = {n: v[pick] for n, v in flat.items()}
    keys = jax.random.split(jax.random.PRNGKey(seed), pick.size)
    out = {}
    for name in wanted:
        p = varying[name]
        draw = jax.vmap(lambda th, key, p=p, name=name: p.distribution(th, name).sample(key))
        out[name] = np.asarray(draw(theta, keys))
    return out


def plot_discrepancy(idata, *, path=None, interval=0.9, group=None):
    """Data, simulator, discrepancy and corrected process with bands, per observable.

    Uses the `predictions` group (from `result.predict(times)`, usually a fine grid) when
    present, else the posterior predictive at the data times. Top panel: data, simulator
    `mu`, `corrected = mu + delta` (on the data scale); bottom panel: `delta`.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if group is None:
        group = "predictions" if "predictions" in idata.children else "posterior_predictive"
    pred = idata[group]
    if "discrepancy" not in pred:
        raise ValueError(
            f"plot_discrepancy needs a model with a discrepancy; {group} has no discrepancy")
    obs = idata["observed_data"]["y"]
    panels = _panels(obs)
    n = len(panels)
    fig, axes = plt.subplots(2, n, figsize=(5.5 * n, 5.5), squeeze=False, sharex="col",
                             gridspec_kw={"height_ratios": [2, 1]})
    lo, hi = (1 - interval) / 2, 1 - (1 - interval) / 2
    times = pred["time"].values
    for j, (label, sel) in enumerate(panels):
        top, bottom = axes[0, j], axes[1, j]
        for var, colour, legend in (("mu", "C1", "simulator"),
                                    ("corrected", "C2", "simulator + discrepancy")):
            q = np.nanquantile(_draws(pred[var], sel), [lo, 0.5, hi], axis=0)
            top.fill_between(times, q[0], q[2], alpha=0.25, color=colour)
            top.plot(times, q[1], color=colour, lw=1.5, label=f"{legend} ({int(interval * 100)}%)")
        top.plot(obs["time"].values, obs.sel(sel).values, "o", color="k", ms=4, label="data")
        top.set_ylabel(label)
        q = np.nanquantile(_draws(pred["discrepancy"], sel), [lo, 0.5, hi], axis=0)
        bottom.fill_between(times, q[0], q[2], alpha=0.3, color="C3")
        bottom.plot(times, q[1], color="C3", lw=1.5, label="discrepancy delta")
        bottom.axhline(0.0, color="grey", lw=0.8)
        bottom.set_xlabel("time")
        bottom.set_ylabel("delta")
    axes[0, 0].legend(fontsize="small")
    axes[1, 0].legend(fontsize="small")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_loss(idata, *, path=None, ax=None):
    """The optimisation trace of a variational or Laplace fit (group `svi_trace`)."""
    import matplotlib

    if path is not None and ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if "svi_trace" not in idata.children:
        raise ValueError(
            "plot_loss needs the svi_trace group of a probde.SVI or probde.Laplace fit; this "
            f"result has groups {list(idata.children)}"
        )
    trace = idata["svi_trace"]
    loss = np.asarray(trace["loss"].values, dtype=float)
    steps = np.asarray(trace["step"].values)
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.2))
    else:
        fig = ax.figure
    finite = np.isfinite(loss)
    ax.plot(steps[finite], loss[finite], color="C0", lw=0.5, alpha=0.35, label="loss per step")
    # a running median over 1% of the run shows the trend under the step-to-step noise
    width = max(1, loss.size // 100)
    if finite.sum() > width:
        smooth = np.array([np.median(loss[max(0, i - width):i + 1][finite[max(0, i - width):i + 1]])
                           if finite[max(0, i - width):i + 1].any() else np.nan
                           for i in range(loss.size)])
        ax.plot(steps, smooth, color="C0", lw=1.5, label=f"running median ({width} steps)")
    skipped = np.asarray(trace["skipped"].values, dtype=bool)
    if skipped.any():
        lo = np.nanmin(loss[finite]) if finite.any() else 0.0
        ax.plot(steps[skipped], np.full(skipped.sum(), lo), "|", color="C3",
                label=f"skipped steps ({int(skipped.sum())})")
    if finite.any():
        # the first steps from a random start are far above the rest; keep them on the
        # axes without letting them flatten the end of the run
        tail = loss[finite][loss[finite].size // 10:]
        lo, hi = np.min(tail), np.quantile(tail, 0.99)
        pad = 0.1 * (hi - lo) if hi > lo else 1.0
        ax.set_ylim(lo - pad, hi + 4 * pad)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (negative ELBO)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
