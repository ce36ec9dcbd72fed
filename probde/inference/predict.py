"""Posterior predictions at new times (`InferenceResult.predict`)."""

from __future__ import annotations

import jax
import numpy as np
import xarray as xr
from numpyro.infer import Predictive

from ..model import sites
from ..model.experiments import starts_of
from ..model.sites import CORRECTED, DELTA, MEAN, OBSERVED, TRAJECTORY

_SITES = (MEAN, DELTA, CORRECTED, OBSERVED)


def _check_times(times):
    try:
        arr = np.asarray(times, dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(f"times must be a 1-D array of numbers; got {type(times).__name__}") from err
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"times must be a non-empty 1-D array; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("times must be finite")
    if np.any(np.diff(arr) < 0):
        raise ValueError("times must be sorted in increasing order")
    return arr


def _experiment_series(model, run, series, experiments, times):
    """`TimeSeries` standing for the experiments to predict (`dict(name=..., inputs=...,
    doses=..., start=...)`); an observed experiment keeps its own times' start, inputs and
    doses unless the dict gives others. The values are placeholders: predictions do not
    condition on them."""
    from ..observations import TimeSeries

    known = dict(zip(run.experiments, series, strict=True))
    out = []
    if not isinstance(experiments, (list, tuple)) or not experiments:
        raise TypeError("experiments must be a non-empty list of dicts with keys name, inputs, "
                        f"doses, start; got {type(experiments).__name__}")
    for i, spec in enumerate(experiments):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise TypeError(f"experiments[{i}] must be a dict with a string 'name'; got {spec!r}")
        extra = set(spec) - {"name", "inputs", "doses", "start"}
        if extra:
            raise ValueError(f"experiments[{i}] has unknown keys {sorted(extra)}; allowed: "
                             "name, inputs, doses, start")
        old = known.get(spec["name"])
        default_start = old.times[0] if old is not None else times[0]
        start = model.t0 if model.t0 is not None else spec.get("start", default_start)
        out.append(TimeSeries(
            [start], [[1.0] * len(run.observables)], run.observables, name=spec["name"],
            inputs=spec.get("inputs", old.inputs if old is not None else None),
            doses=spec.get("doses", old.doses if old is not None else None)))
    return out


def _per_experiment_draws(model, run_names, new_names, flat, key):
    """Posterior draws of the per-experiment sites for the experiments `new_names`: an
    observed experiment keeps its own draws; a new one gets a draw from the population
    distribution given each posterior draw of the shared parameters."""
    flat = dict(flat)
    n = next(iter(flat.values())).shape[0]
    shared = {k: flat[k] for k in model.params}
    for j, (name, p) in enumerate(model.per_experiment.items()):
        site = name if p.centered else name + "_decentered"

        def draw(k, th, name=name, p=p):
            d = p.distribution(th, name)
            v = d.sample(k)
            return v if p.centered else (v - d.loc) / d.scale

        keys = jax.random.split(jax.random.fold_in(key, j), (len(new_names), n))
        cols = []
        for e, exp in enumerate(new_names):
            if exp in run_names:
                cols.append(flat[site][:, run_names.index(exp)])
            else:
                cols.append(np.asarray(jax.vmap(draw)(keys[e], shared)))
        flat[site] = np.stack(cols, axis=1)
        if not p.centered:
            flat.pop(name, None)  # recomputed from the standardised draws
    return flat


def predict(result, times, *, seed: int = 0, experiments=None) -> xr.Dataset:
    model, data = result.model, result.data
    if model is None or data is None:
        raise ValueError(
            "predict needs the model and data of the run; this result has none (it was read "
            "from a file): use probde.load(path, model=model, data=data)"
        )
    times = _check_times(times)
    run = model.prepare(data)
    if experiments is not None:
        from ..model.experiments import as_series

        data = _experiment_series(model, run, as_series(data)[0], experiments, times)
        if model.discrepancy is not None or model.sde is not None or (
                sites.INITIAL_STATE in result.idata["posterior"]):
            raise ValueError(
                "predict(experiments=...) is for ODE models without a discrepancy or an "
                "uncertain initial state (their posterior is tied to the observed experiments)")
    prepared = model.prepare(data)
    start = starts_of(model, prepared)
    # an emulator predicts wherever it was trained
    start = np.array([model.source.earliest_time(float(s)) for s in start])
    fn = model.numpyro_model(prepared, predict_times=times)
    post = result.idata["posterior"].to_dataset()
    nc, nd = post.sizes["chain"], post.sizes["draw"]
    flat = {k: np.asarray(v.values).reshape((nc * nd,) + v.shape[2:]) for k, v in post.data_vars.items()}
    if experiments is not None:
        flat = _per_experiment_draws(model, list(run.experiments), list(prepared.experiments),
                                     flat, jax.random.PRNGKey(seed + 1))
    names = (MEAN, OBSERVED, TRAJECTORY) if model.sde is not None else _SITES
    out = Predictive(fn, posterior_samples=flat, return_sites=[sites.new(s) for s in names])(
        jax.random.PRNGKey(seed), observed=False, conditional=True
    )
    active = times[None, :, None] >= start[:, None, None]
    exp = [] if prepared.single else ["experiment"]
    coords = {"time": times, "observable": list(prepared.observables)}
    if not prepared.single:
        coords["experiment"] = list(prepared.experiments)
    variables = {}
    for name in names:
        arr = np.where(active[None], np.asarray(out[sites.new(name)]), np.nan)
        arr = arr.reshape((nc, nd) + arr.shape[1:])
        if prepared.single:
            arr = arr[:, :, 0]
        last = "state" if name == TRAJECTORY else "observable"
        variables[sites.public(name)] = (["chain", "draw"] + exp + ["time", last], arr)
    if model.sde is not None:
        coords["state"] = list(model.dynamics.state_names)
    coords["chain"] = post["chain"].values
    coords["draw"] = post["draw"].values
    return xr.Dataset(variables, coords=coords)
