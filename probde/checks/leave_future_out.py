"""Leave-future-out cross-validation (`lfo`): how well a calibrated model forecasts data it
has not seen, `horizon` time points ahead.

Design notes (why it is built this way):

- **Truncations and scores** (`_lfo_density.py`): the first i time points of the
  data, the later values set missing; `log p(y_{1:k} | theta)` for every k from the
  model's own program. The joint density of a forecast block is the difference of two of
  them, right also for observations correlated given the parameters.
- **Refits are kept with the result** (released with it): PSIS-LFO's refits do not depend
  on the horizon, so a second horizon (or exact LFO) on the same result reuses them.
- **PSIS-LFO** (Bürkner, Gabry & Vehtari 2020, "Approximate leave-future-out
  cross-validation for Bayesian time series models"): the first forecast uses a refit on
  the first `min_observations` time points; later forecasts reweight the draws of the last
  refit by the likelihood of the values added since, with Pareto-smoothed importance
  sampling (ArviZ's `psislw`), and refit when the Pareto k of those weights exceeds
  `k_threshold`.
- **Not `arviz_stats.lfo_cv`**: it sums pointwise log-likelihood terms along time, which
  is the joint forecast density only for observations independent given the parameters;
  a marginal GP discrepancy or a filter likelihood correlates them (and several
  experiments on their own time grids, or missing values, have no single time axis of
  pointwise terms). The PSIS weights themselves are ArviZ's.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
import weakref

import numpy as np
import pandas as pd

from .._checks import describe
from ..inference.convergence import ConvergenceWarning
from ..inference.infer import infer
from ..inference.likelihood import _latent_names
from ..inference.methods import AbstractMethod
from ..inference.result import InferenceResult
from ..model import Model
from ..model.experiments import as_series
from ._lfo_density import Scores, Truncations, psis, weighted_predictive

_METHODS = ("approx", "exact")
# Fewer effective draws than this behind a forecast make its estimate unreliable (the rule
# of thumb for Monte Carlo standard errors that Stan and ArviZ use).
MIN_ESS = 100


@dataclasses.dataclass(frozen=True, eq=False)
class LFOResult:
    """Leave-future-out cross-validation of a calibration (`probde.lfo`).

    **Fields:**

    - `elpd`: the expected log predictive density of the forecasts, summed over the
      forecast origins: $\\sum_i \\log p(y_{i+1:i+M} \\mid y_{1:i})$.
    - `se`: its standard error as Bürkner, Gabry & Vehtari give it, $\\sqrt{n}$ times the
      standard deviation of the `n` pointwise values.
    - `mcse`: the Monte Carlo standard error of `elpd`: the origins' `mcse` added in
      quadrature (approximate for PSIS-LFO, whose origins between two refits share draws).
    - `pointwise`: a pandas DataFrame, one row per forecast origin `i` (the number of
      time points conditioned on): `time` (the last time conditioned on), `elpd`, `mcse`,
      `ess` (the effective number of draws behind that forecast's estimate), `pareto_k`
      (of the importance weights; NaN where none were needed) and `refit` (whether the
      model was refitted there). Below `MIN_ESS` (100) effective draws an origin's `elpd`
      and `mcse` are unreliable (more draws help): a future value far in the tail of the
      forecast (an outlier, a change the model misses) rests on a few draws. The
      importance weights then get a heavy tail at the next origin, and PSIS-LFO refits
      there. A block of future times without any observed value has no forecast to
      score: its `elpd` is NaN and it is left out.
    - `refits`: the origins `i` at which the model was refitted; `num_refits` their number.
    - `method`, `horizon`, `min_observations`, `k_threshold`: the options of the run.
    """

    elpd: float
    se: float
    mcse: float
    pointwise: pd.DataFrame
    refits: tuple[int, ...]
    method: str
    horizon: int
    min_observations: int
    k_threshold: float

    @property
    def num_refits(self) -> int:
        return len(self.refits)

    def __str__(self) -> str:
        scored = self.pointwise.dropna(subset=["elpd"])
        kind = "PSIS-LFO" if self.method == "approx" else "exact LFO"
        span = (f"{len(scored)} forecast origins, {scored['time'].iloc[0]:g} to "
                f"{scored['time'].iloc[-1]:g}") if len(scored) else "no forecast origins"
        lines = [
            f"Leave-future-out cross-validation ({kind}, {self.horizon}-step-ahead)",
            f"  {span}; at least {self.min_observations} time points conditioned on",
            f"  elpd_lfo {self.elpd:.2f}  (se {self.se:.2f}, Monte Carlo se {self.mcse:.2g})",
            f"  refits: {self.num_refits}" + (f" (at i = {', '.join(map(str, self.refits))})"
                                              if self.refits else ""),
        ]
        if self.method == "approx":
            lines.append(f"  Pareto k threshold {self.k_threshold:g}")
        bad = scored.index[scored["ess"] < MIN_ESS].tolist()
        if bad:
            lines.append(f"  unreliable estimates (fewer than {MIN_ESS} effective draws) at "
                         f"i = {', '.join(map(str, bad))}")
        return "\n".join(lines)

    def plot(self, path=None):
        """The pointwise elpd over the forecast origins' times and, for PSIS-LFO, the
        Pareto k of the importance weights with the threshold; refits are marked (open red
        markers). Returns the matplotlib figure; saves it to `path` when given."""
        import matplotlib.pyplot as plt

        pw = self.pointwise
        cols = ["elpd"] + (["pareto_k"] if self.method == "approx" else [])
        fig, axes = plt.subplots(len(cols), 1, sharex=True, squeeze=False,
                                 figsize=(7, 0.6 + 2.4 * len(cols)))
        refit = pw["refit"].to_numpy(dtype=bool)
        for ax, col in zip(axes[:, 0], cols, strict=True):
            y = pw[col].to_numpy(dtype=float)
            ax.plot(pw["time"], y, "o-", ms=4)
            ax.plot(pw["time"][refit], y[refit], "o", mfc="none", mec="C3", ms=9, label="refit")
            ax.set_ylabel(f"elpd ({self.horizon}-step-ahead)" if col == "elpd" else "Pareto k")
        if self.method == "approx":
            axes[1, 0].axhline(self.k_threshold, color="k", ls="--", lw=0.8, label="threshold")
        axes[-1, 0].legend(fontsize="small")
        axes[-1, 0].set_xlabel("forecast origin (last time conditioned on)")
        if path is not None:
            fig.savefig(path, bbox_inches="tight")
        return fig


def lfo(
    result: InferenceResult,
    *,
    min_observations: int,
    horizon: int = 1,
    method: str = "approx",
    refit_method: AbstractMethod | None = None,
    seed: int = 0,
    k_threshold: float = 0.7,
    progress_bar: bool | None = None,
) -> LFOResult:
    r"""Leave-future-out cross-validation: the log predictive density of each next
    `horizon` time points given the data before them,
    $\text{elpd} = \sum_{i=L}^{T-M} \log p(y_{i+1:i+M} \mid y_{1:i})$, $L$ =
    `min_observations`, $M$ = `horizon`.

    Unlike leave-one-out, it never lets the model see the future it is asked to predict,
    which is the question to ask of a model used for forecasting.

    **Main arguments:**

    - `result`: a `probde.InferenceResult` of `probde.infer(model, data, ...)` with a
      `probde.Model` (a result read with `probde.load` needs `model=` and `data=`).
    - `min_observations`: $L$, the number of time points the first forecast conditions on,
      from 1 to $T - M$ ($T$ the number of times; for several experiments, of the union of
      their times, and every experiment needs an observed value among the first $L$).
    - `horizon`: $M \ge 1$, how many time points ahead each forecast reaches; their values
      are scored jointly.
    - `method`: `"approx"` (default): PSIS-LFO, refitting only where the Pareto k of the
      importance weights exceeds `k_threshold`; `"exact"`: a refit at every origin.

    **Other arguments:**

    - `refit_method`: the inference method of the refits, e.g. the one of the run:
      `probde.NUTS(num_chains=4)`. Needed: a result does not record its method.
    - `seed`: refit at origin `i` uses seed `seed + i`.
    - `k_threshold`: refit when the Pareto k exceeds it (0.7, as Bürkner et al.).
    - `progress_bar`: show progress over the origins; default: when stderr is a terminal.

    Refits run through `probde.infer` on the data with the later values set missing
    (NaN). Their `ConvergenceWarning`s are gathered into one warning naming the refits
    that failed their checks; other warnings are repeated once each, with the refits that
    raised them. The refits are kept with `result` (and released with it): another
    `horizon`, or `method="exact"`, on the same result reuses those with the same
    `refit_method`, `seed` and origin (PSIS-LFO refits at the same origins whatever the
    horizon), and repeats their warnings.

    **Returns:** a `probde.checks.leave_future_out.LFOResult` (`elpd`, `se`, `mcse`, `pointwise`,
    `refits`, `num_refits`; `print` it, `.plot()` it).

    **Example:**

    ```python
    >>> import jax.numpy as jnp, numpyro.distributions as dist, probde
    >>> from probde.checks.leave_future_out import lfo
    >>> decay = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    >>> model = probde.Model(decay, {"k": dist.LogNormal(0.0, 0.5)}, jnp.array([1.0]),
    ...                      probde.noise.Normal(sigma=0.05))
    >>> data = probde.TimeSeries([0.0, 1.0, 2.0, 3.0], [1.0, 0.6, 0.37, 0.22],
    ...                          observables=("x",))
    >>> fit = probde.Laplace(num_draws=400)
    >>> result = probde.infer(model, data, fit, seed=0, num_prior_samples=0)
    >>> cv = lfo(result, min_observations=3, refit_method=fit)
    >>> cv.num_refits, cv.pointwise["time"].tolist()
    (1, [2.0])

    ```
    """
    model, data, refit_method = _check_result(result, refit_method)
    series, single = as_series(data)
    prepared = model.prepare(data)
    times = prepared.times
    T = len(times)
    _check_options(min_observations, horizon, method, seed, k_threshold, T)
    _check_experiments(series, times, min_observations)
    if progress_bar is None:
        progress_bar = sys.stderr.isatty()
    run = _Run(result, model, series, single, prepared, refit_method, seed)
    # observed values per time (all experiments and observables)
    observed = prepared.mask.sum(axis=(0, 2))
    steps = range(min_observations, T - horizon + 1)
    rows = []
    from tqdm.auto import tqdm

    with tqdm(total=len(steps), desc=f"LFO ({method})", disable=not progress_bar) as bar:
        for i in steps:
            row = {"i": i, "time": float(times[i - 1]), "elpd": np.nan, "mcse": np.nan,
                   "ess": np.nan, "pareto_k": np.nan, "refit": False}
            if observed[i:i + horizon].sum():
                row.update(run.step(i, horizon, exact=method == "exact",
                                    k_threshold=k_threshold))
            rows.append(row)
            bar.update()
            bar.set_postfix(refits=len(run.refits))
    run.warn()
    pointwise = pd.DataFrame(rows).set_index("i")
    scored = pointwise["elpd"].dropna().to_numpy()
    n = scored.size
    return LFOResult(
        elpd=float(scored.sum()),
        se=float(math.sqrt(n) * scored.std(ddof=1)) if n > 1 else math.nan,
        mcse=float(np.sqrt(np.nansum(pointwise["mcse"].to_numpy() ** 2))),
        pointwise=pointwise,
        refits=tuple(run.refits),
        method=method,
        horizon=horizon,
        min_observations=min_observations,
        k_threshold=float(k_threshold),
    )


# result -> its model, data, truncations and refits (see `_Run`)
_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class _Fit:
    """What lfo keeps of a refit: its draws' scores, their (chain, draw) shape, and the
    failed convergence checks and other warnings of its `probde.infer` run."""

    scores: Scores
    shape: tuple[int, int]
    not_converged: str | None
    other: tuple[tuple[type, str], ...]


class _Run:
    """One LFO run: the current fit (the last refit), the refits made or reused, and what
    they warned. The truncations and refits of a result are kept with it (`_KEPT`)."""

    def __init__(self, result, model, series, single, prepared, refit_method, seed):
        kept = _KEPT.get(result)
        if kept is None or kept["model"] is not model or kept["data"] is not result.data:
            kept = {"model": model, "data": result.data, "truncations": {}, "fits": {}}
            _KEPT[result] = kept
        if seed not in kept["truncations"]:
            kept["truncations"][seed] = Truncations(model, series, single, prepared, seed)
        self.truncations = kept["truncations"][seed]
        self._fits = kept["fits"]
        self.model, self.times, self.seed = model, prepared.times, seed
        self.refit_method, self.names = refit_method, _latent_names(model, prepared)
        self.refits: list[int] = []
        self.fit: _Fit | None = None
        self.origin = None  # the number of time points of the current fit
        self._used: list[_Fit] = []

    def refit(self, i) -> None:
        key = (self.refit_method, self.seed, i)
        try:
            fit = self._fits.get(key)
        except TypeError:  # a method with unhashable options: not kept
            key, fit = None, None
        if fit is None:
            fit = self._run_infer(i)
            if key is not None:
                self._fits[key] = fit
        self.fit, self.origin = fit, i
        self.refits.append(i)
        self._used.append(fit)

    def _run_infer(self, i) -> _Fit:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = infer(self.model, self.truncations.truncated(i), self.refit_method,
                           seed=self.seed + i, num_prior_samples=0, progress_bar=False)
        not_converged = [_failed_checks(str(w.message)) for w in caught
                         if issubclass(w.category, ConvergenceWarning)]
        other = tuple((w.category, str(w.message)) for w in caught
                      if not issubclass(w.category, ConvergenceWarning))
        post = result.idata["posterior"]
        missing = [n for n in self.names if n not in post]
        if missing:
            raise ValueError(f"the refit's posterior lacks the model's latent variables "
                             f"{missing}; lfo needs draws of all of {self.names}")
        shape = (post.sizes["chain"], post.sizes["draw"])
        S = shape[0] * shape[1]
        draws = {n: np.asarray(post[n].values).reshape((S,) + post[n].shape[2:])
                 for n in self.names}
        return _Fit(self.truncations.scores(draws), shape,
                    "; ".join(not_converged) or None, other)

    def step(self, i, horizon, *, exact, k_threshold) -> dict:
        """The forecast from origin `i`: its elpd, Monte Carlo se and Pareto k."""
        k_hat, refit = math.nan, exact or self.origin is None
        if not refit:
            log_w, k_hat = psis(self.fit.scores(i) - self.fit.scores(self.origin),
                                 self.fit.shape)
            refit = bool(k_hat > k_threshold)
        if refit:
            self.refit(i)
            S = self.fit.shape[0] * self.fit.shape[1]
            log_w = np.full(S, -np.log(S))
        log_p = self.fit.scores(i + horizon) - self.fit.scores(i)
        elpd, mcse, ess = weighted_predictive(log_w, log_p, self.fit.shape)
        return {"elpd": elpd, "mcse": mcse, "ess": ess, "pareto_k": float(k_hat),
                "refit": refit}

    def warn(self) -> None:
        """One warning for the refits that failed convergence checks; the refits' other
        warnings once each."""
        failed = [(i, f.not_converged) for i, f in zip(self.refits, self._used, strict=True)
                  if f.not_converged]
        if failed:
            where = "; ".join(f"i = {i} ({self.times[i - 1]:g}): {checks}"
                              for i, checks in failed)
            warnings.warn(
                f"{len(failed)} of {len(self.refits)} LFO refits failed their convergence "
                f"checks ({where}); the forecasts from those origins may be wrong: give "
                "refit_method more warmup and draws (or see probde.infer(...).diagnose() "
                "on the truncated data)", ConvergenceWarning, stacklevel=3)
        other: dict[tuple[type, str], list[int]] = {}
        for i, fit in zip(self.refits, self._used, strict=True):
            for item in fit.other:
                other.setdefault(item, []).append(i)
        for (category, message), origins in other.items():
            at = ", ".join(map(str, origins))
            warnings.warn(f"LFO refits at i = {at}: {message}", category, stacklevel=3)


def _failed_checks(message: str) -> str:
    """The names of the failed checks in a `ConvergenceWarning`'s message (its lines
    `- NAME: ...`), else its first line."""
    names = [line[2:].split(":")[0].strip() for line in message.splitlines()
             if line.startswith("- ") and ":" in line]
    return ", ".join(names) if names else message.splitlines()[0] if message else "failed"


def _check_result(result, refit_method):
    if not isinstance(result, InferenceResult):
        raise TypeError(f"result must be a probde.InferenceResult of probde.infer; got "
                        f"{describe(result)}")
    if not isinstance(result.model, Model) or result.data is None:
        raise ValueError(
            "lfo needs the model and data of the run (it refits the model on the earlier "
            "data); this result has none (read from a file, or a numpyro model function): "
            "use probde.load(path, model=model, data=data) with a probde.Model")
    if refit_method is None:
        refit_method = getattr(result, "method", None)
    if not isinstance(refit_method, AbstractMethod):
        raise TypeError(
            "refit_method must be the inference method for the refits, such as the run's "
            "own, e.g. refit_method=probde.NUTS(num_chains=4) (a result does not record its "
            f"method); got {describe(refit_method)}")
    return result.model, result.data, refit_method


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_options(min_observations, horizon, method, seed, k_threshold, T) -> None:
    if not _is_int(horizon) or horizon < 1:
        raise ValueError(f"horizon must be a positive integer (time points ahead); got "
                         f"{describe(horizon)}")
    if horizon >= T:
        raise ValueError(f"horizon must be below the number of times, {T}; got {horizon}")
    if not _is_int(min_observations) or not 1 <= min_observations <= T - horizon:
        raise ValueError(
            f"min_observations must be an integer from 1 to {T - horizon} (the {T} times "
            f"less horizon={horizon}); got {describe(min_observations)}")
    if method not in _METHODS:
        hint = (" (the inference method of the refits is refit_method=...)"
                if isinstance(method, AbstractMethod) else "")
        raise ValueError(f"method must be one of {_METHODS}{hint}; got {describe(method)}")
    if not _is_int(seed):
        raise TypeError(f"seed must be an integer; got {describe(seed)}")
    if isinstance(k_threshold, bool) or not isinstance(k_threshold, (int, float)) or not (
            0 < k_threshold < math.inf):
        raise ValueError(f"k_threshold must be a positive number; got {describe(k_threshold)}")


def _check_experiments(series, times, min_observations) -> None:
    """Every experiment needs an observed value among the first `min_observations` times
    (a truncated TimeSeries cannot be all missing)."""
    cutoff = times[min_observations - 1]
    for e, ts in enumerate(series):
        seen = ts.times[ts.mask.any(axis=1)]
        if seen[0] > cutoff:
            need = int(np.searchsorted(times, seen[0])) + 1
            name = ts.name if ts.name is not None else str(e)
            raise ValueError(
                f"min_observations={min_observations} conditions on the times up to "
                f"{cutoff:g}, but experiment {name!r} has its first observed value at "
                f"{seen[0]:g}; every experiment needs one: use min_observations >= {need}")
