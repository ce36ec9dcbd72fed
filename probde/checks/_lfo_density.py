"""The densities of leave-future-out cross-validation (`lfo.py`): `log p(y_{1:k} |
theta_s)` for every truncation `k` of the data and every draw `s` of a fit, the
Pareto-smoothed importance weights between truncations, and the weighted estimate of a
forecast's log predictive density with its Monte Carlo error.

"The first k time points" are the first k times of the data (for several experiments, of
the union of their times); a truncated data set keeps every time and sets the later values
missing (NaN), so that every truncation is the same model on the same time grid, with the
same experiments and initial times, and any fit's draws can be scored on any truncation.

Two ways to the same numbers, both from the model's own program (one log density):

- Observations independent given the latent variables (independent noise, also around a
  latent discrepancy): one pass of the program on all the data gives each value's log
  density per draw, and `log p(y_{1:k} | theta)` is their cumulative sum over time. One
  compiled function serves every `k` (tracing an ODE model's program takes seconds; there
  are as many truncations as forecast origins).
- Observations correlated given the latent variables (a marginal GP discrepancy, an SDE
  likelihood from a filter; their observed site has `loo_pointwise`): the likelihood of
  each truncated data set (`probde.log_likelihood`), one compiled function per `k`.

A draw that the program on all data rejects although its solve succeeded (an impossible
mean) is scored on the truncated data sets, as in the second way: a noise model whose check
looked only at the observed values might accept it on the earlier ones. (probde's positive
noise models check every time, so both ways give -inf.)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from numpyro import handlers
from scipy.special import logsumexp

from ..inference.likelihood import _kwargs, log_likelihood
from ..model.sites import OBSERVED, REJECTED, SOLVER_OK
from ..observations import TimeSeries

_SAMPLE_DIMS = ["chain", "draw"]
# Draws scored per vectorised batch (bounds memory for long series and many draws).
_BATCH = 256


def _size(draws) -> int:
    return next(iter(draws.values())).shape[0]


class Truncations:
    """The truncations of one model's data, and the compiled functions that score draws
    on them (`scores(draws)`)."""

    def __init__(self, model, series, single, prepared, seed):
        self.model, self.series, self.single, self.seed = model, series, single, seed
        self.times = prepared.times
        self.mask = prepared.mask  # (E, T, O)
        self._program = model.numpyro_model(prepared)
        self._masked: dict[int, object] = {}  # k -> compiled likelihood of truncation k
        self._all: dict[int, object] = {}  # number of draws -> compiled `_pointwise`
        self.factorised = self._is_factorised()

    def truncated(self, k):
        """The data with every value after the k-th time set missing."""
        cutoff = self.times[k - 1]
        out = []
        for ts in self.series:
            values = np.array(ts.values)
            values[ts.times > cutoff] = np.nan
            out.append(TimeSeries(ts.times, values, ts.observables, name=ts.name,
                                  inputs=ts.inputs, doses=ts.doses))
        return out[0] if self.single else out

    def _trace(self, sample):
        fn = handlers.substitute(handlers.seed(self._program, rng_seed=self.seed), data=sample)
        with handlers.block():
            return handlers.trace(fn).get_trace(**_kwargs(self.model))

    def _is_factorised(self) -> bool:
        found = {}

        def probe():
            with handlers.block(), handlers.seed(rng_seed=0):
                tr = handlers.trace(self._program).get_trace(**_kwargs(self.model))
            site = tr[OBSERVED]
            found["independent"] = not hasattr(site["fn"], "loo_pointwise") and all(
                name in tr for name in (REJECTED, SOLVER_OK))
            if found["independent"]:
                found["shape"] = site["fn"].log_prob(site["value"]).shape
            return jnp.zeros(())

        jax.eval_shape(probe)  # traced abstractly: no solve or filter runs
        return found["independent"] and found["shape"] == self.mask.shape

    def _pointwise(self, sample):
        """Per draw: each value's log density `(E, T, O)` (0 where missing), whether the
        program on all data rejects the draw, and whether its solves succeeded."""
        tr = self._trace(sample)
        site = tr[OBSERVED]
        lp = jnp.where(jnp.asarray(self.mask), site["fn"].log_prob(site["value"]), 0.0)
        rejected = tr[REJECTED]["fn"].log_prob(tr[REJECTED]["value"]) == -jnp.inf
        return lp, rejected, jnp.all(tr[SOLVER_OK]["value"])

    def masked(self, k, draws) -> np.ndarray:
        """`log p(y_{1:k} | theta_s)` from the likelihood of the k-th truncation."""
        if k not in self._masked:
            model, data, seed = self.model, self.truncated(k), self.seed
            one = lambda p: log_likelihood(model, data, p, seed=seed)  # noqa: E731
            self._masked[k] = jax.jit(
                lambda d: jax.lax.map(one, d, batch_size=min(_size(d), _BATCH)))
        out = np.asarray(self._masked[k](draws), dtype=float)
        return np.where(np.isnan(out), -np.inf, out)

    def pointwise(self, draws):
        """`_pointwise` of every draw, as numpy arrays."""
        size = _size(draws)
        if size not in self._all:
            self._all[size] = jax.jit(
                lambda d: jax.lax.map(self._pointwise, d, batch_size=min(size, _BATCH)))
        return tuple(np.asarray(a) for a in self._all[size](draws))

    def scores(self, draws) -> Scores:
        return Scores(self, draws)


class Scores:
    """`scores(k)`: `log p(y_{1:k} | theta_s)` for one fit's draws `(S,)`, for any k."""

    def __init__(self, truncations: Truncations, draws: dict):
        self._tr = truncations
        self._cache: dict[int, np.ndarray] = {}
        self._draws = draws
        if not truncations.factorised:
            return
        lp, rejected, ok = truncations.pointwise(draws)
        by_time = np.where(np.isnan(lp), -np.inf, lp).sum(axis=(1, 3))  # (S, T)
        cumulative = np.concatenate([np.zeros((len(ok), 1)), np.cumsum(by_time, axis=1)],
                                    axis=1)
        self._cumulative = np.where(ok[:, None], cumulative, -np.inf)
        # possible on the earlier values, perhaps: scored on the truncations themselves
        self._redo = np.nonzero(rejected & ok)[0]
        self._draws = {k: v[self._redo] for k, v in draws.items()} if self._redo.size else None

    def __call__(self, k: int) -> np.ndarray:
        if k not in self._cache:
            if not self._tr.factorised:
                self._cache[k] = self._tr.masked(k, self._draws)
            else:
                out = self._cumulative[:, k].copy()
                if self._redo.size:
                    out[self._redo] = self._tr.masked(k, self._draws)
                self._cache[k] = out
        return self._cache[k]


def _relative_ess(values: np.ndarray, shape) -> float:
    """ArviZ's ESS of `values` over (chain, draw), divided by the number of draws; 1 for
    constant values."""
    finite = values[np.isfinite(values)]
    if finite.size < values.size or finite.size < 4 or np.ptp(finite) == 0:
        return 1.0
    da = xr.DataArray(values.reshape(shape), dims=_SAMPLE_DIMS)
    ess = float(da.azstats.ess(sample_dims=_SAMPLE_DIMS))
    return ess / values.size if np.isfinite(ess) and ess > 0 else 1.0


def psis(log_ratio: np.ndarray, shape) -> tuple[np.ndarray, float]:
    """Pareto-smoothed, normalised log importance weights and the Pareto k of the ratios
    `log_ratio` (ArviZ's `psislw`). Ratios that are equal wherever finite need no
    smoothing: weights uniform over them, k NaN. Ratios PSIS cannot take give k = inf,
    which makes the caller refit."""
    S = log_ratio.size
    finite = np.isfinite(log_ratio)
    if not finite.any() or np.any(log_ratio == np.inf):
        return np.full(S, -np.log(S)), math.inf
    if np.ptp(log_ratio[finite]) == 0:
        return np.where(finite, -np.log(finite.sum()), -np.inf), math.nan
    r_eff = _relative_ess(np.exp(log_ratio - log_ratio[finite].max()), shape)
    # psislw takes a log-likelihood and weights by its negative (the LOO convention).
    da = xr.DataArray(-log_ratio.reshape(shape), dims=_SAMPLE_DIMS)
    try:
        log_w, k = da.azstats.psislw(dim=_SAMPLE_DIMS, r_eff=r_eff)
    except ValueError:
        return np.full(S, -np.log(S)), math.inf
    log_w = np.asarray(log_w.values, dtype=float).reshape(S)
    k = float(k)
    if not np.all(np.isfinite(log_w) | ~finite) or not np.isfinite(k):
        return np.full(S, -np.log(S)), math.inf
    return log_w - logsumexp(log_w), k


def weighted_predictive(log_w, log_p, shape) -> tuple[float, float, float]:
    """`log sum_s w_s p_s`, its Monte Carlo standard error and the effective number of
    draws behind it.

    The standard error is the delta method's: the variance of a self-normalised
    importance-sampling mean, `sum_s w_s^2 (p_s / p_hat - 1)^2`, divided by the relative
    ESS of `p_s` (autocorrelated draws). The effective number of draws is Kong's
    `1 / sum_s v_s^2` of the terms' shares `v_s = w_s p_s / p_hat`, times that relative ESS.
    The delta method needs many of them: a value far in the tail of the forecast makes
    a few draws carry the whole estimate, and then the standard error is itself wrong
    (Pareto k cannot tell: the draws never reach where the mass is)."""
    elpd = float(logsumexp(log_w + log_p))
    if not np.isfinite(elpd):
        return elpd, math.nan, 0.0
    q = np.exp(log_p - elpd)
    var = float(np.sum(np.exp(2 * log_w) * (q - 1.0) ** 2))
    r_eff = _relative_ess(np.exp(log_p - np.max(log_p)), shape)
    ess = r_eff / float(np.sum(np.exp(2 * (log_w + log_p - elpd))))
    return elpd, math.sqrt(var / r_eff), ess
