"""`probde.infer`: posterior inference for a `probde.Model` (or a numpyro model function)."""

from __future__ import annotations

import sys
import warnings

import jax
import numpy as np
import xarray as xr
from numpyro.infer import Predictive
from numpyro import handlers
from numpyro.infer import log_likelihood as _numpyro_log_likelihood

from .._checks import describe
from ..model import Model, sites
from ..model.latent import path_grid
from ..model.sites import (
    CORRECTED,
    DELTA,
    FILTERED_COV,
    FILTERED_MEAN,
    MEAN,
    OBSERVED,
    PATH_INCREMENTS,
    PATH_INITIAL,
    SMOOTHED_COV,
    SMOOTHED_MEAN,
    SOLVER_OK,
    SOLVER_STEPS,
    STATE_SITES,
    TRAJECTORY,
    VALID,
)
from . import convergence
from .convergence import check_convergence
from .failures import REJECTED_TOTAL
from .likelihood import _latent_names
from .methods import NUTS, AbstractMethod
from .particle import ParticleFilter
from .restart import NOTES
from .result import InferenceResult, build_datatree

# Warn about rejected proposals when they exceed this fraction of the sampling phase's
# gradient evaluations; a few rejections at the edge of the prior are harmless.
FAILURE_WARN_FRACTION = 0.01


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer; got {describe(seed)}")
    return int(seed)


def infer(
    model,
    data=None,
    method: AbstractMethod | None = None,
    *,
    seed: int = 0,
    num_prior_samples: int = 500,
    progress_bar: bool | None = None,
    count_failures: bool = True,
) -> InferenceResult:
    """Sample the posterior of `model` given `data`.

    **Main arguments:**

    - `model`: a `probde.Model`, or a numpyro model function. A function is called as
      `model(data)`: it should condition its observed sites on `data` and, called with
      `None`, sample them (for the predictive groups).
    - `data`: a `probde.TimeSeries`, or a list of them (several experiments sharing the
      parameters, each with its own initial state). For a model function, anything it
      accepts.
    - `method`: `probde.NUTS(...)` (default `probde.NUTS()`),
      `probde.RandomWalkMetropolis(...)`, or variational `probde.SVI(...)` /
      `probde.Laplace(...)` (one chain of draws from the fitted approximation, and the
      optimisation trace in the group `svi_trace`).
    - `seed`: the random seed. Same seed, data and platform give identical draws.

    **Other arguments:**

    - `num_prior_samples`: draws for the `prior` and `prior_predictive` groups (0 skips).
    - `progress_bar`: show a progress bar; default: when stderr is a terminal.
    - `count_failures`: report the rejected proposals (below); with `False`,
      `result.solver_failures` is `None` and there is no warning about them. The count is
      carried in the sampler's state (no callback into Python, so the compiled sampler
      is kept in the persistent compilation cache, `probde.compilation_cache`).

    **Returns:** a `probde.InferenceResult`; its `idata` is an ArviZ `DataTree` with groups
    posterior, sample_stats, log_likelihood, posterior_predictive, observed_data, prior and
    prior_predictive.

    Proposals whose solve fails (or that predict an impossible mean, e.g. a negative count
    rate) are rejected, counted (`idata.sample_stats.attrs["solver_failures"]` for the
    whole run, warmup included; per draw, the variable `rejected` of `sample_stats` for
    MCMC) and reported with a warning; they never stop the run.

    **Example:**

    ```python
    >>> import jax.numpy as jnp, numpyro.distributions as dist, probde
    >>> decay = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    >>> model = probde.Model(decay, {"k": dist.LogNormal(0.0, 0.5)}, jnp.array([1.0]),
    ...                      probde.noise.Normal(sigma=0.05))
    >>> data = probde.TimeSeries([0.0, 1.0, 2.0], [1.0, 0.6, 0.37], observables=("x",))
    >>> result = probde.infer(model, data, probde.NUTS(num_chains=2, num_warmup=300,
    ...                       num_samples=500), seed=0, num_prior_samples=0)
    >>> 0.4 < float(result.idata.posterior["k"].mean()) < 0.6
    True

    ```
    """
    method = NUTS() if method is None else method
    if not isinstance(method, AbstractMethod):
        raise TypeError(f"method must be a probde method such as probde.NUTS(); got {describe(method)}")
    seed = _check_seed(seed)
    if not isinstance(num_prior_samples, int) or num_prior_samples < 0:
        raise ValueError(f"num_prior_samples must be a non-negative integer; got {num_prior_samples!r}")
    if progress_bar is None:
        progress_bar = sys.stderr.isatty()
    key_run, key_post, key_prior = jax.random.split(jax.random.PRNGKey(seed), 3)
    if isinstance(model, Model):
        return _infer_model(model, data, method, key_run, key_post, key_prior,
                            num_prior_samples, progress_bar, count_failures)
    if callable(model):
        return _infer_function(model, data, method, key_run, key_post, key_prior,
                               num_prior_samples, progress_bar)
    raise TypeError(f"model must be a probde.Model or a numpyro model function; got {describe(model)}")


def _without_factors(sites):
    """Drop `numpyro.factor` sites (their values are empty arrays)."""
    return {k: np.asarray(v) for k, v in sites.items() if np.asarray(v).size}


def _flatten(samples):
    return {k: np.asarray(v).reshape((-1,) + v.shape[2:]) for k, v in samples.items()}


def _by_chain(samples, num_chains):
    return {k: np.asarray(v).reshape((num_chains, -1) + v.shape[1:]) for k, v in samples.items()}


def _run_method(method, model_fn, key, progress_bar, model_kwargs, options=None):
    """`method.run`: `(samples, stats, extra_groups, rejected, notes)`; a method may
    return only the first two (then there are no extra DataTree groups). `rejected`: the
    run's count of rejected model evaluations, which the method passes in `stats`
    (`REJECTED_TOTAL`, per chain), or `None` when it does not count them. `notes`: text
    attributes for `sample_stats`, passed in `stats` under `restart.NOTES`."""
    out = method.run(model_fn, key, progress_bar=progress_bar, model_kwargs=model_kwargs,
                     **(options or {}))
    samples, stats, extra = (out[0], out[1], {}) if len(out) == 2 else out
    stats = dict(stats)
    totals = stats.pop(REJECTED_TOTAL, None)
    rejected = None if totals is None else int(np.sum(np.asarray(totals)))
    notes = dict(stats.pop(NOTES, None) or {})
    return samples, stats, dict(extra or {}), rejected, notes


def _add_groups(idata, extra):
    """Attach a method's extra groups (e.g. SVI's `svi_trace`): each an `xarray.Dataset`,
    or a dict of arrays whose first dimension is `step`."""
    for name, group in extra.items():
        if not isinstance(group, xr.Dataset):
            group = xr.Dataset(
                {
                    k: (("step",) + tuple(f"{k}_dim_{i}" for i in range(1, np.ndim(v))),
                        np.asarray(v))
                    for k, v in group.items()
                }
            )
        idata[name] = xr.DataTree(group)
    return idata


def _check_method(model, method):
    if model.sde is not None and model.likelihood.needs_key and method.needs_gradient:
        raise ValueError(
            f"{type(model.likelihood).__name__} gives a random, non-differentiable estimate "
            f"of the likelihood, which {type(method).__name__} cannot use; pass "
            "method=probde.RandomWalkMetropolis(...) (exact pseudo-marginal MCMC), or use "
            "likelihood=probde.EKF() / probde.UKF() with NUTS"
        )


def _infer_model(model, data, method, key_run, key_post, key_prior, num_prior, progress_bar,
                 count_failures=True):
    _check_method(model, method)
    prepared = model.prepare(data)
    method.check_model(model, prepared)
    if not isinstance(count_failures, bool):
        raise TypeError(f"count_failures must be True or False; got {count_failures!r}")
    fn = model.numpyro_model(prepared)
    samples, stats, extra, rejected, notes = _run_method(
        method, fn, key_run, progress_bar, {"observed": True},
        method.run_options(model, prepared))
    samples = {k: np.asarray(v) for k, v in samples.items()}
    num_chains = next(iter(samples.values())).shape[0]
    stats = {k: np.asarray(v) for k, v in stats.items()}
    failures = rejected if count_failures else None
    if not count_failures:
        stats.pop("rejected", None)
    stats["solver_steps"] = samples[SOLVER_STEPS]
    latent = {k: v for k, v in samples.items() if not sites.is_bookkeeping(k)}
    # A latent path (probde.LatentPath) is sampled with the parameters but kept out of
    # the posterior: its own group, and with the parameters wherever the program reruns.
    path = {k: samples[k] for k in sites.PATH_SITES if k in samples}
    flat = _flatten({**latent, **path})

    active = model.active(prepared)[None, :, :, None]
    post_pred = _posterior_predictive(model, fn, flat, key_post, active, num_chains)
    loglik = pointwise_log_likelihood(fn, flat)
    if loglik is not None:
        loglik = np.where(prepared.mask, np.asarray(loglik), np.nan)
        loglik = {sites.public(OBSERVED): loglik.reshape((num_chains, -1) + loglik.shape[1:])}
    states = None
    if model.sde is not None:
        states = _latent_states(fn, flat, key_post, num_chains)
    prior, prior_pred = (None, None) if not num_prior else _prior_draws(
        fn, key_prior, num_prior, active, latent)

    idata = build_datatree(
        model=model,
        data=prepared,
        posterior=latent,
        sample_stats=stats,
        posterior_predictive=post_pred,
        log_likelihood=loglik,
        prior=prior,
        prior_predictive=prior_pred,
        solver_failures=failures,
        states=states,
    )
    idata["sample_stats"].attrs.update(notes)
    _add_groups(idata, extra)
    if path:
        idata["latent_path"] = _path_group(model, prepared, path)
    _warn(idata, failures, model, method, variational=bool(extra.get("svi_trace") is not None))
    _check_particle_steps(model, data, prepared, latent, idata)
    return InferenceResult(idata, model=model, data=data)


def _check_particle_steps(model, data, prepared, latent, idata):
    """After a fit whose likelihood is a `ParticleFilter` on a nonlinear SDE: its
    discretisation check (`ParticleFilter.check_discretisation`, 20 estimates with the
    filter's steps and 20 with half the step) at the posterior median of every latent
    variable; it warns when the two disagree. The outcome is kept in the posterior's
    attributes (`particle_steps_check`: the difference in nats and its standard error).
    A linear SDE's transitions are exact: no check."""
    if not isinstance(model.likelihood, ParticleFilter) or getattr(model.dynamics, "linear",
                                                                   False):
        return
    median = {k: np.median(np.reshape(latent[k], (-1,) + latent[k].shape[2:]), axis=0)
              for k in _latent_names(model, prepared)}
    check = model.likelihood.check_discretisation(model, data, median)
    idata["posterior"].attrs["particle_steps_check"] = (
        f"step halved at the posterior median: difference {check.difference:.3g} nats, "
        f"standard error {check.standard_error:.2g}, "
        f"{'agrees' if check.agrees else 'DISAGREES'}; the log-likelihood estimate's sd over "
        f"{check.log_lik.size} seeds {np.std(check.log_lik, ddof=1):.2g} (aim for about 1-1.5 "
        "without correlation: ParticleFilter.check_noise)")


def _posterior_predictive(model, fn, flat, key, active, num_chains):
    """The posterior predictive group: observations, trajectory, mean (and discrepancy),
    NaN before an experiment's initial time (there is no prediction there)."""
    pred_sites = [OBSERVED, TRAJECTORY, MEAN]
    if model.discrepancy is not None:
        pred_sites += [DELTA, CORRECTED]
    predictive = Predictive(fn, posterior_samples=flat, return_sites=pred_sites + [VALID])
    out = predictive(key, observed=False, conditional=True)
    post_pred = {k: np.where(active, np.asarray(out[k]), np.nan) for k in pred_sites}
    return _public(_by_chain(post_pred, num_chains))


def _prior_draws(fn, key, num_prior, active, latent):
    """The prior and prior predictive groups (impossible or failed draws as NaN)."""
    drawn = Predictive(fn, num_samples=num_prior)(key, observed=False)
    drawn = {k: np.asarray(v) for k, v in drawn.items()}
    valid = drawn[VALID][:, :, None, None] & active
    ok = drawn[SOLVER_OK][:, :, None, None] & active
    prior = {k: v[None] for k, v in drawn.items() if k in latent}
    prior_pred = _public({
        OBSERVED: np.where(valid, drawn[OBSERVED], np.nan)[None],
        TRAJECTORY: np.where(ok, drawn[TRAJECTORY], np.nan)[None],
        MEAN: np.where(valid, drawn[MEAN], np.nan)[None],
    })
    return prior, prior_pred


def _public(group: dict) -> dict:
    """Bookkeeping sites under their DataTree names (`y`, `mu`, `trajectory`, ...)."""
    return {sites.public(k): v for k, v in group.items()}


def _latent_states(fn, flat, key, num_chains):
    """Filtered and smoothed state moments per posterior draw (SDE models):
    `{"filtered_states": {"mean", "cov"}, "smoothed_states": {...}}`, by chain."""
    out = Predictive(fn, posterior_samples=flat, return_sites=list(STATE_SITES))(
        key, observed=True, states=True
    )
    out = _by_chain({k: np.asarray(v) for k, v in out.items()}, num_chains)
    groups = {}
    if FILTERED_MEAN in out:  # a latent path has no filtered states
        groups["filtered_states"] = {"mean": out[FILTERED_MEAN], "cov": out[FILTERED_COV]}
    if SMOOTHED_MEAN in out:
        groups["smoothed_states"] = {"mean": out[SMOOTHED_MEAN], "cov": out[SMOOTHED_COV]}
    return groups


def _path_group(model, prepared, path) -> xr.DataTree:
    """The DataTree group `latent_path`: the standardised increments `(chain, draw,
    [experiment,] path_step, noise)`, the initial state's sampled values, and `step_end`,
    the time at the end of each grid step."""
    single = prepared.single
    exp = [] if single else ["experiment"]
    step_starts, steps, _ = path_grid(model, prepared)
    ends = step_starts + steps
    coords = {} if single else {"experiment": list(prepared.experiments)}
    variables = {}
    z = np.asarray(path[PATH_INCREMENTS])
    variables["increments"] = (["chain", "draw"] + exp + ["path_step", "noise"],
                               z[:, :, 0] if single else z)
    if PATH_INITIAL in path:
        u = np.asarray(path[PATH_INITIAL])
        variables["initial"] = (["chain", "draw"] + exp + ["state"], u[:, :, 0] if single else u)
        coords["state"] = list(model.dynamics.state_names)
    variables["step_end"] = (exp + ["path_step"], ends[0] if single else ends)
    coords.update(chain=np.arange(z.shape[0]), draw=np.arange(z.shape[1]))
    group = xr.Dataset(variables, coords=coords)
    if PATH_INITIAL in path:
        group.attrs["initial"] = (
            "a Normal or MultivariateNormal initial state's standardised values (x0 = loc + "
            "scale_tril @ initial); for other distributions, the initial states themselves")
    return xr.DataTree(group)


def pointwise_log_likelihood(fn, flat):
    """`(draws, E, T, O)` pointwise log-likelihood of the observed site `y`, or `None`.

    Independent noise gives the log density of each value. With a marginalised discrepancy,
    or an SDE whose path a Gaussian filter integrates out, the values are correlated, and
    the terms are the leave-one-out predictive densities `log p(y_i | y_-i, theta)` (what
    PSIS-LOO needs for a non-factorised likelihood). The particle filter provides none
    (`None`).
    """

    def one(sample):
        with handlers.block():
            tr = handlers.trace(handlers.substitute(handlers.seed(fn, rng_seed=0), data=sample)).get_trace(
                observed=True
            )
        site = tr[OBSERVED]
        d = site["fn"]
        if hasattr(d, "loo_pointwise"):
            return d.loo_pointwise(site["value"])
        return d.log_prob(site["value"])

    n = next(iter(flat.values())).shape[0]
    # Whether the observed site has pointwise terms is known from its distribution alone:
    # trace the model abstractly (no filter or solve is run) and read the flag.
    found = {}

    def probe():
        with handlers.block(), handlers.seed(rng_seed=0):
            tr = handlers.trace(fn).get_trace(observed=True)
        found["has_loo"] = getattr(tr[OBSERVED]["fn"], "has_loo", True)
        return jax.numpy.zeros(())

    jax.eval_shape(probe)
    if not found["has_loo"]:
        return None
    return jax.jit(lambda f: jax.lax.map(one, f, batch_size=min(n, 64)))(flat)


def _warn(idata, failures, model, method, variational=False):
    """Warnings on rejected proposals and on failed convergence checks (an MCMC method's
    draws: R-hat, ESS, E-BFMI, divergences, tree depth, stuck chains; see
    `convergence.py`). A variational fit reports its
    failed steps itself (skipped steps, `svi_trace`): its failure count covers every
    optimisation step and start, not draws, so it is not compared with the draws here."""
    stats = idata["sample_stats"]
    evaluations = int(np.asarray(stats["n_steps"]).sum())
    if not variational and failures is not None and failures > FAILURE_WARN_FRACTION * evaluations:
        warnings.warn(
            f"{failures} proposals were rejected because the solve (or the filter) failed or "
            "predicted an impossible value (e.g. a non-positive mean for "
            f"{type(model.observation).__name__} noise) during warmup and sampling "
            f"({evaluations} log-density evaluations after warmup); "
            "the run is valid, but to waste less time "
            f"raise Solver(max_steps=...) (now {model.solver.max_steps}), use a stiff solver "
            "such as diffrax.Kvaerno5(), or tighten the priors",
            stacklevel=4,
        )
    report_convergence(idata, method, stacklevel=4)


def report_convergence(idata, method, stacklevel):
    """Run the method's convergence checks (`method.convergence_checks`) on the model's
    parameters, keep them in `sample_stats`' attributes and warn (`ConvergenceWarning`)
    when one fails. `stacklevel` as for a `warnings.warn` made by the caller."""
    if not method.convergence_checks:
        return None
    names = InferenceResult(idata).parameter_names
    report = check_convergence(idata, names, checks=method.convergence_checks,
                               max_tree_depth=getattr(method, "max_tree_depth", None))
    idata["sample_stats"].attrs.update(report.attrs())
    if getattr(method, "max_tree_depth", None) is not None:
        idata["sample_stats"].attrs["max_tree_depth"] = int(method.max_tree_depth)
    convergence.warn(report, stacklevel=stacklevel + 1)
    return report


def _infer_function(model_fn, data, method, key_run, key_post, key_prior, num_prior, progress_bar):
    method.check_model(None, None)
    samples, stats, extra, _, notes = _run_method(method, model_fn, key_run, progress_bar,
                                               {"data": data} if data is not None else {})
    samples = {k: np.asarray(v) for k, v in samples.items()}
    num_chains = next(iter(samples.values())).shape[0]
    # a numpyro model function rejects nothing through probde: no count
    stats = {k: np.asarray(v) for k, v in stats.items() if k != "rejected"}
    flat = _flatten(samples)
    args = () if data is None else (data,)
    # Seeded, so that a model drawing randomness with numpyro.prng_key() (e.g. a particle
    # filter) gets a key here as it did in the sampler.
    loglik = _without_factors(
        _numpyro_log_likelihood(handlers.seed(model_fn, key_post), flat, *args)
    )
    post_pred = Predictive(model_fn, posterior_samples=flat)(key_post, None) if data is not None else {}
    post_pred = {k: v for k, v in _without_factors(post_pred).items() if k not in samples}
    prior = prior_pred = None
    if num_prior:
        drawn = Predictive(model_fn, num_samples=num_prior)(key_prior, *(None,) * len(args))
        prior = {k: np.asarray(v)[None] for k, v in drawn.items() if k in samples}
        prior_pred = {k: v[None] for k, v in _without_factors(drawn).items() if k in post_pred}
    idata = build_datatree(
        model=None,
        data=None,
        posterior=samples,
        sample_stats=stats,
        posterior_predictive=_by_chain(post_pred, num_chains) if post_pred else None,
        log_likelihood=_by_chain(loglik, num_chains),
        prior=prior,
        prior_predictive=prior_pred or None,
        solver_failures=None,
    )
    idata["sample_stats"].attrs.update(notes)
    _add_groups(idata, extra)
    report_convergence(idata, method, stacklevel=3)
    return InferenceResult(idata)
