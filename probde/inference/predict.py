"""Posterior predictions at new times (`InferenceResult.predict`)."""

from __future__ import annotations

import jax
import numpy as np
import xarray as xr
from numpyro.infer import Predictive

from ..model import sites
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


def predict(result, times, *, seed: int = 0) -> xr.Dataset:
    model, data = result.model, result.data
    if model is None or data is None:
        raise ValueError(
            "predict needs the model and data of the run; this result has none (it was read "
            "from a file): use probde.load(path, model=model, data=data)"
        )
    times = _check_times(times)
    prepared = model.prepare(data)
    start = np.full(prepared.num_experiments, model.t0) if model.t0 is not None else prepared.starts
    # an emulator predicts wherever it was trained
    start = np.array([model.source.earliest_time(float(s)) for s in start])
    fn = model.numpyro_model(prepared, predict_times=times)
    post = result.idata["posterior"].to_dataset()
    nc, nd = post.sizes["chain"], post.sizes["draw"]
    flat = {k: np.asarray(v.values).reshape((nc * nd,) + v.shape[2:]) for k, v in post.data_vars.items()}
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
