r"""Is a Gaussian filter good enough for this model and these data? (`check_filter`)

The EKF and UKF replace the distribution of the latent state between two observations by
a Gaussian. For a nonlinear SDE observed sparsely (gaps long against the drift's time
scale, a spike or a switch between wells inside a gap) that distribution is skewed or
multimodal, and the filters' log-likelihood is wrong. A particle filter has no such error:
its estimate is unbiased for the likelihood of the (discretised) SDE. So the check scores
draws of the parameters with both and asks how much the Gaussian filter's error *varies*
over them.

**The rule.** Let $\Delta(\theta) = \log p_\text{PF}(y \mid \theta) - \log
p_\text{Gauss}(y \mid \theta)$ be the filter's log-likelihood error. A constant error
cancels in the posterior; what moves it is the part that varies with $\theta$. Weighting the
Gaussian-filter posterior by $e^{\Delta}$ gives the exact posterior, and for small errors
the shift of any posterior mean is $\operatorname{cov}(\Delta, \theta)$, so by
Cauchy-Schwarz

$$ \frac{|E_\text{exact}[\theta_j] - E_\text{Gauss}[\theta_j]|}{\operatorname{sd}(\theta_j)}
   \lesssim \operatorname{sd}_\text{posterior}(\Delta) $$

for every parameter at once: the standard deviation of the error over the posterior, in
nats, bounds every mean's shift in posterior standard deviations. The filter is judged
adequate when that standard deviation is below `tolerance` (0.25 by default: no mean off by
more than a quarter of its sd), inadequate when it is clearly above, and the check is
inconclusive when the particle filter's own noise does not resolve the difference (then
give it more particles or seeds).

**The estimate.** At `num_draws` draws (thinned evenly from a fit, or given), the Gaussian
filter's log-likelihood once and the particle filter's `num_seeds` times, all draws and
seeds in one compiled, vectorised call. With $\bar\Delta_i$ the mean over seeds at draw $i$
and $s_i^2$ the variance over seeds, the error's variance over the posterior is
$\operatorname{var}_i(\bar\Delta_i) - \operatorname{mean}_i(s_i^2)/R$ (the particle noise
removed); its 90% interval is a bootstrap over draws. The Pareto $\hat k$ of the weights
$e^{\bar\Delta_i}$ (ArviZ's PSIS) and the importance-weighted shift of each parameter's mean
are reported too.

Why this is written here: ArviZ has the PSIS weights and numpyro the samplers, but neither
knows about two likelihoods of one model; cd-dynamax and dynestyx offer the same filters
without a check.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

from .._checks import describe, integer_at_least
from ..inference.likelihood import _latent_names, log_likelihood
from ..inference.particle import ParticleFilter
from ..inference.particle_checks import _with_likelihood
from ._lfo_density import psis

VERDICTS = ("adequate", "inadequate", "inconclusive")


class FilterWarning(UserWarning):
    """A Gaussian filter (EKF, UKF) whose log-likelihood error varies over the posterior by
    more than the check's tolerance: the posterior is not the SDE's (`check_filter`)."""


@dataclasses.dataclass(frozen=True)
class FilterCheck:
    """The outcome of `probde.check_filter`.

    - `verdict`: `"adequate"`, `"inadequate"` or `"inconclusive"`.
    - `error_sd`: the standard deviation over the draws of the Gaussian filter's
      log-likelihood error (nats), particle noise removed; `error_sd_interval`: its 90%
      bootstrap interval. It bounds every posterior mean's shift in posterior sds.
    - `tolerance`: the threshold it was judged against.
    - `log_lik_gaussian` `(num_draws,)`, `log_lik_particle` `(num_draws, num_seeds)`: the
      two filters' log-likelihoods at each draw.
    - `particle_sd`: the median over draws of the particle estimate's sd over seeds.
    - `mean_error`: the mean error (nats; a constant error does not matter).
    - `pareto_k`: Pareto k of the importance weights from the Gaussian filter's posterior
      to the particle filter's (above 0.7: the weights cannot correct it; NaN with fewer
      than about 25 draws, too few for a Pareto tail).
    - `shifts`: per parameter element, the importance-weighted change of its mean in
      posterior sds (a noisy estimate from `num_draws` draws).
    - `filter`: the Gaussian filter's name.
    """

    verdict: str
    error_sd: float
    error_sd_interval: tuple[float, float]
    tolerance: float
    log_lik_gaussian: np.ndarray
    log_lik_particle: np.ndarray
    particle_sd: float
    mean_error: float
    pareto_k: float
    shifts: dict[str, float]
    filter: str

    @property
    def adequate(self) -> bool:
        return self.verdict == "adequate"

    def __str__(self) -> str:
        lo, hi = self.error_sd_interval
        n, r = self.log_lik_particle.shape
        worst = max(self.shifts.items(), key=lambda kv: abs(kv[1]), default=None)
        lines = [
            f"{self.filter} against a particle filter at {n} draws ({r} seeds each): "
            f"{self.verdict.upper()}",
            f"  sd of the log-likelihood error over the draws: {self.error_sd:.3g} nats "
            f"(90% interval {lo:.3g} to {hi:.3g}; tolerance {self.tolerance:g})",
            f"  mean error {self.mean_error:.3g} nats; particle estimate sd {self.particle_sd:.2g}"
            f"; Pareto k of the weights {self.pareto_k:.2f}",
        ]
        if worst is not None:
            lines.append(f"  largest weighted shift of a mean: {worst[0]} by {worst[1]:+.2f} sd")
        return "\n".join(lines)

    def warning_text(self) -> str:
        if self.verdict == "inadequate":
            return (
                f"the {self.filter}'s log-likelihood error varies over the posterior by "
                f"{self.error_sd:.3g} nats (sd; 90% interval {self.error_sd_interval[0]:.3g} "
                f"to {self.error_sd_interval[1]:.3g}), more than the tolerance "
                f"{self.tolerance:g}: posterior means may be off by up to about that many "
                "posterior sds. The gaps between observations are too long for a Gaussian "
                "approximation of the state between them; use "
                "likelihood=probde.ParticleFilter(...) with probde.RandomWalkMetropolis, "
                "or observe more densely")
        return (
            f"the check of the {self.filter} against a particle filter is inconclusive: the "
            f"error's sd over the posterior is {self.error_sd:.3g} nats but its 90% interval "
            f"({self.error_sd_interval[0]:.3g} to {self.error_sd_interval[1]:.3g}) spans the "
            f"tolerance {self.tolerance:g}; the particle estimate's sd is "
            f"{self.particle_sd:.2g}. Raise num_particles or num_seeds of check_filter")


def _draws_of(result, names, num_draws):
    post = result.idata["posterior"]
    missing = [n for n in names if n not in post]
    if missing:
        raise ValueError(f"the result's posterior lacks the model's latent variables {missing}"
                         f"; check_filter needs draws of all of {names}")
    S = post.sizes["chain"] * post.sizes["draw"]
    pick = np.unique(np.linspace(0, S - 1, min(num_draws, S)).round().astype(int))
    return {n: np.asarray(post[n].values).reshape((S,) + post[n].shape[2:])[pick]
            for n in names}


def check_filter(result=None, *, model=None, data=None, draws=None, num_draws: int = 40,
                 num_particles: int = 1000, num_seeds: int = 4, tolerance: float = 0.25,
                 particle_filter: ParticleFilter | None = None, seed: int = 0,
                 warn: bool = True) -> FilterCheck:
    r"""Check a Gaussian filter (EKF, UKF) against a particle filter on posterior draws.

    Scores `num_draws` parameter draws with the model's Gaussian filter and with a
    particle filter (`num_seeds` independent estimates each), and judges the filter by the
    standard deviation over the draws of its log-likelihood error, which bounds every
    posterior mean's shift in posterior sds (the rule is in this module's docstring). Warns
    (`FilterWarning`) unless the filter is adequate. `probde.infer` does not run it (it
    costs about as much as a short fit, mostly compiling the particle filter): run it after
    fitting a nonlinear SDE with a Gaussian filter, before trusting the posterior.

    **Arguments** (a result, or a model, data and draws):

    - `result`: a `probde.InferenceResult` of an SDE model whose likelihood is
      `probde.EKF()` or `probde.UKF()`; its posterior is thinned evenly to `num_draws`.
    - `model`, `data`, `draws`: instead of `result`, a model, its data and a dict of
      parameter draws, each with a leading draws axis (names as for
      `probde.log_likelihood`): e.g. draws from a quick fit or the prior.
    - `num_particles`, `num_seeds`: the particle filter's size and the estimates per draw.
      The check resolves an error sd of about `particle_sd / sqrt(num_seeds)`.
    - `tolerance`: the largest acceptable sd of the error over the draws, in nats.
    - `particle_filter`: a `probde.ParticleFilter` to compare with (default: one with
      `num_particles` and its default step rule; give `num_steps` for a fixed step).
    - `seed`: random seed of the particle filter; `warn`: `False` to return quietly.

    **Returns:** a `FilterCheck`; `print` it for the report.

    **Example** (a linear SDE: the EKF is exact and the check says so):

    ```python
    >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, probde
    >>> jax.config.update("jax_enable_x64", True)
    >>> ou = probde.SDE(lambda t, x, th: -th["k"] * x, lambda t, x, th: jnp.array([0.5]),
    ...                 state_names=("x",), linear=True)
    >>> model = probde.Model(ou, {"k": dist.LogNormal(0.0, 0.5)},
    ...                      dist.Normal(jnp.array([1.0]), 0.1), probde.noise.Normal(sigma=0.2),
    ...                      likelihood=probde.EKF())
    >>> data = probde.TimeSeries([0.5, 1.0, 2.0, 3.5], [0.7, 0.5, 0.1, 0.2], observables=("x",))
    >>> check = probde.check_filter(model=model, data=data,
    ...                             draws={"k": jnp.linspace(0.5, 2.0, 20)})
    >>> check.verdict
    'adequate'

    ```
    """
    from ..inference.filters import _GaussianFilter
    from ..model import Model

    if result is not None:
        if model is not None or data is not None or draws is not None:
            raise ValueError("give either result, or model, data and draws; got both")
        model, data = getattr(result, "model", None), getattr(result, "data", None)
        if model is None or data is None:
            raise ValueError("result has no model or data (a result read back with "
                             "probde.load); pass them: probde.load(path, model=..., data=...)")
    elif model is None or data is None or draws is None:
        raise ValueError("check_filter needs a result, or model, data and draws; got "
                         f"model={describe(model)}, data={describe(data)}, "
                         f"draws={describe(draws)}")
    if not isinstance(model, Model) or not isinstance(model.likelihood, _GaussianFilter):
        raise ValueError("check_filter needs an SDE model whose likelihood is probde.EKF() or "
                         f"probde.UKF(); got likelihood "
                         f"{describe(getattr(model, 'likelihood', model))}")
    num_draws = integer_at_least("num_draws", num_draws, 2)
    num_seeds = integer_at_least("num_seeds", num_seeds, 2)
    num_particles = integer_at_least("num_particles", num_particles)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance > 0:
        raise ValueError(f"tolerance must be a positive number of nats; got {tolerance!r}")
    if particle_filter is None:
        particle_filter = ParticleFilter(num_particles=num_particles)
    elif not isinstance(particle_filter, ParticleFilter):
        raise TypeError(f"particle_filter must be a probde.ParticleFilter; got "
                        f"{describe(particle_filter)}")

    names = _latent_names(model, model.prepare(data))
    if result is not None:
        draws = _draws_of(result, names, num_draws)
    else:
        if not isinstance(draws, dict) or set(draws) != set(names):
            raise ValueError(f"draws must be a dict with exactly the keys {sorted(names)}; got "
                             f"{describe(draws) if not isinstance(draws, dict) else sorted(draws)}")
        draws = {k: np.asarray(v) for k, v in draws.items()}
        sizes = {v.shape[0] if v.ndim else None for v in draws.values()}
        if len(sizes) != 1 or None in sizes or sizes.pop() < 2:
            raise ValueError("every entry of draws needs the same leading draws axis of "
                             "at least 2 draws; got shapes "
                             f"{ {k: v.shape for k, v in draws.items()} }")
    n = next(iter(draws.values())).shape[0]
    pf_model = _with_likelihood(model, particle_filter)
    keys = jax.random.split(jax.random.PRNGKey(seed), num_seeds)

    def both(params):
        gauss = log_likelihood(model, data, params)
        pf = jax.vmap(lambda k: log_likelihood(pf_model, data, params, seed=k))(keys)
        return gauss, pf

    # One program: draws one after another (lax.map bounds memory), seeds vectorised.
    gauss, pf = jax.jit(lambda d: jax.lax.map(both, d))(
        {k: jnp.asarray(v) for k, v in draws.items()})
    gauss, pf = np.asarray(gauss, dtype=float), np.asarray(pf, dtype=float)
    return _judge(gauss, pf, draws, tolerance, type(model.likelihood).__name__, seed, warn)


def _error_sd(delta, var_mean):
    return math.sqrt(max(float(np.var(delta, ddof=1) - np.mean(var_mean)), 0.0))


def _judge(gauss, pf, draws, tolerance, name, seed, warn) -> FilterCheck:
    n, r = pf.shape
    ok = np.isfinite(gauss) & np.all(np.isfinite(pf), axis=1)
    if ok.sum() < 2:
        check = FilterCheck("inconclusive", math.nan, (math.nan, math.nan), tolerance, gauss,
                            pf, math.nan, math.nan, math.nan, {}, name)
        if warn:
            warnings.warn(f"check_filter: fewer than 2 draws with finite log-likelihoods from "
                          f"both filters ({int(ok.sum())} of {n}); no verdict", FilterWarning,
                          stacklevel=3)
        return check
    delta = pf[ok].mean(axis=1) - gauss[ok]
    var_mean = pf[ok].var(axis=1, ddof=1) / r
    est = _error_sd(delta, var_mean)
    rng = np.random.default_rng(seed)
    boots = [_error_sd(delta[i], var_mean[i])
             for i in rng.integers(0, delta.size, size=(1000, delta.size))]
    lo, hi = (float(q) for q in np.quantile(boots, [0.05, 0.95]))
    verdict = ("adequate" if hi <= tolerance else "inadequate" if lo > tolerance
               else "inconclusive")
    log_w, k = psis(delta, (1, delta.size))
    if not np.isfinite(k):  # too few draws for a Pareto tail (under about 25): plain weights
        log_w, k = delta - logsumexp(delta), math.nan
    w = np.exp(log_w)
    shifts = {}
    for name_, v in draws.items():
        v = np.asarray(v, dtype=float)[ok].reshape(delta.size, -1)
        sd = v.std(axis=0, ddof=1)
        shift = np.where(sd > 0, (w @ v - v.mean(axis=0)) / np.where(sd > 0, sd, 1.0), 0.0)
        for j, s in enumerate(shift):
            shifts[name_ if v.shape[1] == 1 else f"{name_}[{j}]"] = float(s)
    check = FilterCheck(verdict, est, (lo, hi), float(tolerance), gauss, pf,
                        float(np.median(np.sqrt(pf[ok].var(axis=1, ddof=1)))),
                        float(delta.mean()), float(k), shifts, name)
    if warn and verdict != "adequate":
        warnings.warn(check.warning_text(), FilterWarning, stacklevel=3)
    return check
