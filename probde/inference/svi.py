"""Variational inference and the Laplace approximation as inference methods:
`probde.SVI` and `probde.Laplace`.

Both fit a numpyro autoguide by optax on the model's own log density (one log density,
ARCHITECTURE.md invariant 3), then draw from the fitted guide. The draws come back with a
single chain, `(1, num_draws, ...)`, and go through the same posterior predictive,
log-likelihood and DataTree steps as NUTS draws, so ArviZ works on them unchanged; the
optimisation trace becomes an extra DataTree group, `svi_trace`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr
from jax import lax, random

from numpyro import handlers
from numpyro.infer import SVI as _NumpyroSVI
from numpyro.infer import Predictive, Trace_ELBO
from numpyro.infer.autoguide import (
    AutoIAFNormal,
    AutoLaplaceApproximation,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)
from numpyro.distributions.transforms import biject_to
from numpyro.infer.util import log_density
from numpyro.optim import optax_to_numpyro

from .._checks import describe
from .._optim import svi_step
from .methods import AbstractMethod, _check_init_radius, _positive_int, _real, init_strategy

GUIDES = ("normal", "multivariate_normal", "low_rank", "flow")
TRACE_GROUP = "svi_trace"
SKIPPED_ATTR = "skipped_steps"
# Convergence check: the last and the preceding `_WINDOW` share of the steps (at least
# `_MIN_WINDOW` steps), and a relative tolerance on the loss scale (floored at 1 nat).
_WINDOW = 0.1
_MIN_WINDOW = 10
# Shorter runs are never judged converged: over a few dozen steps the trend of a noisy
# one-draw ELBO is hidden by its noise (a 20-step fit from a random start is flagged only
# about half the time by the window rule), and Adam moves each parameter by at most about
# the learning rate per step.
_MIN_STEPS = 100
_CONVERGENCE_Z = 2.0
_CONVERGENCE_RTOL = 1e-3
# Warn when more than this share of the optimisation steps had to be skipped.
_SKIP_WARN_FRACTION = 0.1
# AutoIAFNormal defaults: two flows with one hidden layer (2 * latent_dim units) each.
_FLOW_NUM_FLOWS = 2


def _check_common(method):
    """Checks shared by `SVI` and `Laplace` (fields num_steps, num_draws, learning_rate,
    optimizer, init_radius)."""
    _positive_int("num_steps", method.num_steps)
    _positive_int("num_draws", method.num_draws)
    if not _real(method.learning_rate) or not 0 < method.learning_rate < math.inf:
        raise ValueError(
            f"learning_rate must be a positive finite number; got {method.learning_rate!r}"
        )
    if method.optimizer is not None and not isinstance(
        method.optimizer, optax.GradientTransformation
    ):
        raise TypeError(
            "optimizer must be an optax.GradientTransformation (e.g. optax.adam(1e-2)) "
            f"or None; got {describe(method.optimizer)}"
        )
    _check_init_radius(method.init_radius)


def default_optimizer(learning_rate: float, num_steps: int) -> optax.GradientTransformation:
    """Adam on a warmup-cosine schedule: a linear rise from `learning_rate / 10` to
    `learning_rate` over the first 5% of the steps, then a cosine decay to
    `learning_rate / 100` at `num_steps`."""
    warmup = max(1, num_steps // 20)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=learning_rate / 10,
        peak_value=learning_rate,
        warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1),
        end_value=learning_rate / 100,
    )
    return optax.adam(schedule)


def _fit(model_fn, guide, optimizer, num_particles, num_steps, key, progress_bar, model_kwargs,
         starts=()):
    """Fit `guide` by `num_steps` SVI steps under one jit-compiled `lax.scan`.

    A step whose loss is not finite (a failed solve or an impossible prediction makes the
    model's log density -inf at the guide's draw), or whose update would make a parameter
    non-finite, is skipped: the optimiser state (parameters, moments, schedule count) is
    kept as it was and only the random key moves on. (`optax.apply_if_finite` is not
    enough: it looks at the gradient only, and the model's `-inf` factor for a failed
    solve, `jnp.where(rejected, -inf, 0)`, has a finite, zero gradient under an infinite
    loss; and after `max_consecutive_errors` it applies the bad update.) Returns
    `(params, losses, skipped, start_losses)`:
    the constrained guide parameters, the loss at every step (inf/NaN where skipped), a
    boolean per step, and the score of every start (empty without `starts`).

    `starts = (guides, start_steps)`: several starting points. Every guide in `guides`
    (`guide` first, then more of the same family, each initialised from its own key, hence
    its own starting point) is optimised for `start_steps` steps; the one with the lowest mean loss over its
    last fifth continues for the remaining `num_steps - start_steps` steps, so the returned
    trace is that start's whole path. The guides differ only in their starting values, so
    one compiled step serves them all.
    """
    svi = _NumpyroSVI(model_fn, guide, optax_to_numpyro(optimizer), Trace_ELBO(num_particles))
    start_losses = np.zeros((0,))
    head_losses = head_skipped = np.zeros((0,))
    if starts:
        guides, start_steps = starts
        keys = random.split(key, len(guides))
        step = svi_step(svi, model_kwargs)
        scan = jax.jit(lambda s: lax.scan(step, s, None, length=start_steps))
        runs = []
        for i, (g, k) in enumerate(zip(guides, keys)):
            # the first start initialises `svi` itself (its guide's prototype and the
            # constraining transforms `get_params` uses); the others only lend a state
            init = svi if i == 0 else _NumpyroSVI(model_fn, g, optax_to_numpyro(optimizer),
                                                  Trace_ELBO(num_particles))
            runs.append(scan(init.init(k, **model_kwargs)))
        tail = max(1, start_steps // 5)
        start_losses = np.array([_mean_finite(np.asarray(out[0])[-tail:]) for _, out in runs])
        best = int(np.argmin(np.where(np.isnan(start_losses), np.inf, start_losses)))
        state, (head_losses, head_skipped) = runs[best]
        head_losses, head_skipped = np.asarray(head_losses), np.asarray(head_skipped)
        num_steps = num_steps - start_steps
    else:
        state = svi.init(key, **model_kwargs)
    step = svi_step(svi, model_kwargs)

    if not progress_bar:
        state, (losses, skipped) = jax.jit(
            lambda s: lax.scan(step, s, None, length=num_steps)
        )(state)
    else:
        from tqdm.auto import tqdm

        chunk = max(1, num_steps // 20)
        run_chunk = jax.jit(lambda s, n: lax.scan(step, s, None, length=n), static_argnums=1)
        parts = []
        with tqdm(total=num_steps, desc="SVI") as bar:
            done = 0
            while done < num_steps:
                n = min(chunk, num_steps - done)
                state, out = run_chunk(state, n)
                parts.append(out)
                done += n
                bar.update(n)
                bar.set_postfix_str(f"loss {float(out[0][-1]):.4g}", refresh=False)
        losses = jnp.concatenate([p[0] for p in parts])
        skipped = jnp.concatenate([p[1] for p in parts])
    losses = np.concatenate([head_losses, np.asarray(losses)])
    skipped = np.concatenate([head_skipped.astype(bool), np.asarray(skipped)])
    return svi.get_params(state), losses, skipped, start_losses


def _mean_finite(x):
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else np.nan


def _site_kinds(model_fn, model_kwargs):
    """Names of the model's latent sample sites and deterministic sites (an abstract trace:
    no solve is run)."""
    found = {}

    def probe():
        with handlers.block(), handlers.seed(rng_seed=0):
            tr = handlers.trace(model_fn).get_trace(**model_kwargs)
        found["latent"] = [
            k for k, s in tr.items() if s["type"] == "sample" and not s["is_observed"]
        ]
        found["deterministic"] = [k for k, s in tr.items() if s["type"] == "deterministic"]
        return jnp.zeros(())

    jax.eval_shape(probe)
    return found["latent"], found["deterministic"]


def _guide_draws(guide, params, key, num_draws, latent, model_kwargs):
    """`num_draws` draws of the model's latent sites (constrained) from the fitted guide,
    without running the model. A guide's own sample sites carry the model's names; the
    Laplace guide's sites sit at its `loc` parameter (its MAP), so the draws of its normal
    approximation in the unconstrained space are put there one at a time."""
    if isinstance(guide, AutoLaplaceApproximation):
        loc_name = f"{guide.prefix}_loc"
        def sample(key):
            posterior = guide.get_posterior(params)  # the Hessian, once
            return jax.vmap(posterior.sample)(random.split(key, num_draws))

        latent_draws = jax.jit(sample)(key)

        def at(z):
            tr = handlers.trace(handlers.substitute(guide, data={**params, loc_name: z}))
            tr = tr.get_trace(**model_kwargs)
            return {k: tr[k]["value"] for k in latent}

        drawn = jax.jit(jax.vmap(at))(latent_draws)
        if num_draws > 1 and not np.any(np.ptp(np.asarray(latent_draws), axis=0) > 0):
            warnings.warn(
                "Laplace: the Hessian of the negative log density at the mode is not "
                "positive definite (the mode is a saddle or the posterior is flat in some "
                "direction), so every draw is the mode; use probde.SVI or probde.NUTS, or "
                "tighten the priors",
                stacklevel=8,
            )
        return drawn
    drawn = Predictive(guide, params=params, num_samples=num_draws, return_sites=latent)(
        key, **model_kwargs
    )
    return {k: drawn[k] for k in latent}


def _draws(model_fn, guide, params, num_draws, key, model_kwargs):
    """`(samples, stats)` for `num_draws` draws of the fitted guide: the latent and
    deterministic sites, and `lp` (the model's log density in the unconstrained space,
    as NUTS reports it), `diverging` (False) and `n_steps` (1), all with a leading chain
    dimension of 1."""
    latent, deterministic = _site_kinds(model_fn, model_kwargs)
    key_guide, key_model = random.split(key)
    drawn = _guide_draws(guide, params, key_guide, num_draws, latent, model_kwargs)
    seeded = handlers.seed(model_fn, rng_seed=key_model)

    def one(sample):
        # One run of the model per draw gives both the deterministic sites and the log
        # density: the log joint at the constrained values plus log|det J| of the map
        # from the unconstrained space (numpyro's potential_energy, negated).
        log_joint, tr = log_density(seeded, (), model_kwargs, sample)
        for name in latent:
            site = tr[name]
            t = biject_to(site["fn"].support)
            x = site["value"]
            log_joint = log_joint + jnp.sum(t.log_abs_det_jacobian(t.inv(x), x))
        return log_joint, {k: tr[k]["value"] for k in deterministic}

    lp, det = jax.jit(lambda d: lax.map(one, d, batch_size=min(num_draws, 64)))(drawn)
    samples = {**drawn, **det}
    samples = {k: np.asarray(v)[None] for k, v in samples.items()}
    stats = {
        "lp": np.asarray(lp)[None],
        "diverging": np.zeros((1, num_draws), dtype=bool),
        "n_steps": np.ones((1, num_draws), dtype=np.int32),
    }
    return samples, stats


def _trace_group(losses, skipped, start_losses=np.zeros((0,))):
    """The `svi_trace` DataTree group: `loss` and `skipped` per `step`, the number of
    skipped steps as the attribute `skipped_steps`, and with several starts `start_loss`
    per `start` (the mean loss over the last fifth of each start's first phase)."""
    data = {"loss": ("step", losses), "skipped": ("step", skipped.astype(bool))}
    coords = {"step": np.arange(losses.shape[0])}
    if start_losses.size:
        data["start_loss"] = ("start", start_losses)
        coords["start"] = np.arange(start_losses.shape[0])
    ds = xr.Dataset(data, coords=coords)
    ds.attrs[SKIPPED_ATTR] = int(skipped.sum())
    return ds


def loss_converged(losses) -> bool:
    """The convergence rule of `SVI` and `Laplace` on a loss trace.

    Windows of `w = max(10% of the steps, 10)` steps (at most half of them): the rule
    fails (`False`) when the mean loss over the last `w` steps is below the mean over the
    preceding `w` by more than two standard errors of that difference (from the two
    windows' sample variances) plus `1e-3 * max(1, |preceding mean|)`, i.e. the loss was
    still falling. Skipped steps (non-finite loss) are left out. The floor of 10 steps
    keeps the standard error meaningful on short runs: with two-step windows (10% of 20
    steps) the noise of a one-draw ELBO hides any trend. Runs of fewer than 100 steps
    are never judged converged: too short for the trend to show above the noise.

    Known false alarm: under a decaying learning rate the mean loss keeps falling slowly
    as the iterates' jitter shrinks, even once the guide sits at its optimum. On the
    lynx-hare fit (10,000 steps, default schedule; benchmarks/RESULTS.md) the last 10% lay
    0.35 nats (7 standard errors) below the preceding 10% with the posterior means already
    within 0.08 sd of NUTS's. Comparing 5% windows removes that alarm but flags short
    (600-step) fits that the 10% rule passes; the rule stays at 10% until a better one is
    found (e.g. judged at a fixed learning rate).
    """
    losses = np.asarray(losses, dtype=float)
    n = losses.shape[0]
    if n < _MIN_STEPS:
        return False
    w = min(max(int(n * _WINDOW), _MIN_WINDOW), n // 2)
    last = losses[-w:]
    prev = losses[-2 * w : -w]
    last, prev = last[np.isfinite(last)], prev[np.isfinite(prev)]
    if last.size < 2 or prev.size < 2:
        return False
    se = math.sqrt(last.var(ddof=1) / last.size + prev.var(ddof=1) / prev.size)
    drop = prev.mean() - last.mean()
    return bool(drop <= _CONVERGENCE_Z * se + _CONVERGENCE_RTOL * max(1.0, abs(prev.mean())))


def _check_fit(name, losses, skipped, num_steps):
    n_skip = int(skipped.sum())
    if n_skip == num_steps:
        raise RuntimeError(
            f"{name}: every one of the {num_steps} optimisation steps had a non-finite loss "
            "or update (failed solves or impossible predictions at the guide's draws), so "
            "nothing was fitted; check the priors and initial_state against the data's scale, "
            "lower init_radius or learning_rate, or raise Solver(max_steps=...)"
        )
    if n_skip > _SKIP_WARN_FRACTION * num_steps:
        warnings.warn(
            f"{name}: {n_skip} of {num_steps} optimisation steps were skipped because the "
            "loss or the update was not finite (failed solves or impossible predictions at "
            "the guide's draws); the fit used the rest. Lower learning_rate, tighten the "
            "priors or raise Solver(max_steps=...)",
            stacklevel=7,
        )
    if not loss_converged(losses):
        why = (
            f"{num_steps} steps are too few to tell (at least {_MIN_STEPS} are needed)"
            if num_steps < _MIN_STEPS
            else f"the loss was still falling at the end of the {num_steps} steps "
            f"(see idata['{TRACE_GROUP}'].loss)"
        )
        warnings.warn(
            f"{name} has not converged: {why}; raise num_steps or learning_rate",
            stacklevel=7,
        )


def _run(method, name, guide, model_fn, key, progress_bar, model_kwargs, num_particles=1,
         starts=(), fit_kwargs=None):
    """Fit (with `fit_kwargs`, e.g. minibatch sizes; default `model_kwargs`), check, and
    draw (with `model_kwargs`, all the data)."""
    optimizer = method.optimizer
    if optimizer is None:
        optimizer = default_optimizer(method.learning_rate, method.num_steps)
    key_fit, key_draw = random.split(key)
    try:
        params, losses, skipped, start_losses = _fit(
            model_fn, guide, optimizer, num_particles, method.num_steps, key_fit,
            progress_bar, model_kwargs if fit_kwargs is None else fit_kwargs, starts,
        )
    except RuntimeError as err:
        if "Cannot find valid initial parameters" not in str(err):
            raise
        raise RuntimeError(
            f"{name} found no feasible starting point: at every one of 100 points drawn "
            f"uniformly in (-{method.init_radius}, {method.init_radius}) in the unconstrained "
            "space the solve failed, a prediction was impossible for the noise model, or the "
            "log density or its gradient was not finite. Check the priors and initial_state "
            "against the data's scale, raise Solver(max_steps=...), or use a stiff solver "
            "such as diffrax.Kvaerno5()"
        ) from err
    _check_fit(name, losses, skipped, method.num_steps)
    samples, stats = _draws(model_fn, guide, params, method.num_draws, key_draw, model_kwargs)
    return samples, stats, {TRACE_GROUP: _trace_group(losses, skipped, start_losses)}


@dataclasses.dataclass(frozen=True)
class SVI(AbstractMethod):
    """Stochastic variational inference: fit a numpyro autoguide by maximising the ELBO
    with optax, then draw from it.

    The guide is a distribution over the parameters in the unconstrained space; `Trace_ELBO`
    estimates the ELBO with `num_particles` draws from the guide per step. It is much
    cheaper than NUTS on large models but approximate: a Gaussian guide cannot represent
    skewed or multimodal posteriors, and the mean-field guide (`"normal"`) under-estimates
    the marginal standard deviations when parameters are correlated.

    **Main arguments:**

    - `guide`: the variational family, one of
        - `"normal"`: independent normals (numpyro's `AutoNormal`, mean field);
        - `"multivariate_normal"` (default): a full-covariance normal
          (`AutoMultivariateNormal`);
        - `"low_rank"`: a normal with low-rank-plus-diagonal covariance
          (`AutoLowRankMultivariateNormal`, rank `rank`, default about the square root of
          the number of parameters);
        - `"flow"`: a normal pushed through two inverse autoregressive flows
          (`AutoIAFNormal`, one hidden layer of twice the number of parameters each), for
          skewed posteriors.
    - `num_steps`: optimisation steps.
    - `learning_rate`: peak learning rate of the default optimiser (Adam on a warmup-cosine
      schedule: from `learning_rate / 10` up to `learning_rate` over the first 5% of the
      steps, then down to `learning_rate / 100`).
    - `num_draws`: draws from the fitted guide in the posterior (one chain).

    **Other arguments:**

    - `optimizer`: an `optax.GradientTransformation` replacing the default one (then
      `learning_rate` is unused).
    - `num_particles`: guide draws per ELBO estimate.
    - `rank`: the rank of the `"low_rank"` guide.
    - `batch_size`, `experiment_batch_size`: minibatch sizes (see below; default: all the
      data every step).
    - `init_scale`: the initial standard deviation of the Gaussian guides in the
      unconstrained space (numpyro's default, 0.1).
    - `init_radius`: the guide starts centred at a point drawn uniformly in (-r, r) in the
      unconstrained space; infeasible points (failed solves, non-finite density) are redrawn.
    - `num_starts`, `start_steps`: with `num_starts > 1`, that many starting points are
      each optimised for `start_steps` steps (default a tenth of `num_steps`), and the one
      with the lowest loss over its last fifth continues to `num_steps` in all. The ELBO
      of an ODE model can have local optima that a single start does not escape: on the
      lynx-hare model, five single-start runs at the default learning rate all ended at a
      fit with about 2.5 times the noise sd and a log-likelihood 43 lower than at the
      posterior mean NUTS finds (see the lynx-hare tutorial). `svi_trace.start_loss`
      holds every start's score.

    A step whose loss is not finite (the guide drew a point where the solve failed or the
    prediction is impossible, so the log density is -inf) is skipped: the parameters and
    the optimiser state stay as they were. The result's `svi_trace` group holds `loss` (the
    negative ELBO estimate) and `skipped` per `step`, and the attribute `skipped_steps`.
    More than 10% skipped steps give a warning: the kept steps' gradients come from the
    feasible draws only, which biases the fit when the infeasible region holds a good share
    of the guide's mass (harmless when failures are confined to the posterior's tails).

    **Convergence check:** after fitting, a warning says to raise `num_steps` or
    `learning_rate` when the mean loss over the last 10% of the steps (at least 10 steps,
    at most half the run) is below the mean over the preceding as many steps by more than
    two standard errors of the difference plus `1e-3 * max(1, |preceding mean|)`: the loss
    was still falling. A loss that has levelled off gives no warning. Runs of fewer than
    100 steps always warn: too short to tell. With the default
    decaying schedule the loss also levels off when the learning rate has decayed before
    the optimum is reached, so the check can miss a run that stopped short; compare the
    trace's start and end when in doubt.

    `sample_stats` gets `lp` (the model's log density at each draw in the unconstrained
    space, as NUTS reports it), and `diverging` (always False) and `n_steps` (always 1) for
    compatibility with NUTS. The pointwise log-likelihood (for `az.loo`) and the posterior
    predictive are computed from the draws as for NUTS, from all the data.

    **Minibatching:** with `batch_size=B` every step uses a random subset of B of the
    data's time points (and with `experiment_batch_size=K`, of K experiments), drawn
    afresh each step by numpyro's subsampling plates, which scale the batch's
    log-likelihood by (number of time points) / B (and experiments / K): an unbiased
    estimate of the full ELBO and its gradient. The ODE is solved at the batch's times
    only, so a step costs O(B) however long the series. It needs a likelihood that is a
    sum over time points given the global parameters: no discrepancy or a
    `probde.DeepGPDiscrepancy` (not a GP discrepancy, an emulator or an SDE filter, which
    couple the time points), and for experiment batches initial states that are not
    inferred per experiment. The loss trace is then the minibatch estimate (noisier).

    **Example:**

    ```python
    >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist, probde
    >>> def model(data):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=data)
    >>> data = jnp.array([0.9, 1.4, 1.1, 0.7, 1.2])
    >>> result = probde.infer(model, data, probde.SVI(num_steps=2000, num_draws=500),
    ...                       seed=0, num_prior_samples=0)
    >>> 0.7 < float(result.idata.posterior["mu"].mean()) < 1.1  # exact: 5.3 / 6 = 0.88
    True
    >>> result.idata["svi_trace"]["loss"].shape
    (2000,)

    ```
    """

    guide: str = "multivariate_normal"
    optimizer: optax.GradientTransformation | None = None
    num_steps: int = 5000
    learning_rate: float = 1e-2
    num_particles: int = 1
    num_draws: int = 1000
    rank: int | None = None
    init_radius: float = 2.0
    num_starts: int = 1
    start_steps: int | None = None
    batch_size: int | None = None
    experiment_batch_size: int | None = None
    init_scale: float = 0.1

    def __post_init__(self):
        if not _real(self.init_scale) or not 0 < self.init_scale < math.inf:
            raise ValueError(
                f"init_scale must be a positive finite number; got {self.init_scale!r}"
            )
        if self.guide == "flow" and self.init_scale != 0.1:
            raise ValueError(
                "init_scale applies to the Gaussian guides; guide='flow' starts from its own "
                f"scale; got init_scale={self.init_scale!r}"
            )
        _positive_int("num_starts", self.num_starts)
        for name in ("batch_size", "experiment_batch_size"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.start_steps is not None:
            _positive_int("start_steps", self.start_steps)
            if self.start_steps >= self.num_steps:
                raise ValueError(
                    f"start_steps must be below num_steps ({self.num_steps}); got "
                    f"{self.start_steps}"
                )
        if not isinstance(self.guide, str) or self.guide not in GUIDES:
            raise ValueError(f"guide must be one of {GUIDES}; got {self.guide!r}")
        _check_common(self)
        _positive_int("num_particles", self.num_particles)
        if self.rank is not None:
            if self.guide != "low_rank":
                raise ValueError(
                    f"rank applies to guide='low_rank' only; got rank={self.rank!r} with "
                    f"guide={self.guide!r}"
                )
            _positive_int("rank", self.rank)

    def autoguide(self, model_fn):
        """The numpyro autoguide these options describe, for `model_fn`."""
        init = init_strategy(self.init_radius, model_fn)
        scale = self.init_scale
        if self.guide == "normal":
            return AutoNormal(model_fn, init_loc_fn=init, init_scale=scale)
        if self.guide == "multivariate_normal":
            return AutoMultivariateNormal(model_fn, init_loc_fn=init, init_scale=scale)
        if self.guide == "low_rank":
            return AutoLowRankMultivariateNormal(model_fn, init_loc_fn=init, rank=self.rank,
                                                 init_scale=scale)
        return _FlowGuide(model_fn, init_loc_fn=init, num_flows=_FLOW_NUM_FLOWS)

    def check_model(self, model, data) -> None:
        """Minibatching needs a likelihood that is a sum over time points (and
        experiments) given the global latent variables; called by `probde.infer`."""
        if self.batch_size is None and self.experiment_batch_size is None:
            return
        if model is None:
            raise TypeError(
                "batch_size and experiment_batch_size need a probde.Model (whose likelihood "
                "probde can subsample); with a numpyro model function, subsample inside it "
                "with numpyro.plate(..., subsample_size=...)"
            )
        why = None
        if model.sde is not None:
            why = "an SDE's filter likelihood runs through the time points in order"
        elif model.emulator is not None:
            why = "an emulator's predictive covariance couples the time points"
        elif model.discrepancy is not None and not getattr(model.discrepancy, "minibatch", False):
            why = (f"a {type(model.discrepancy).__name__} couples the time points; "
                   "DeepGPDiscrepancy does not")
        if why:
            raise ValueError(f"SVI cannot minibatch this model: {why}; use batch_size=None")
        T, E = data.times.shape[0], data.num_experiments
        if self.batch_size is not None and self.batch_size > T:
            raise ValueError(
                f"batch_size must not exceed the number of time points in the data ({T}); "
                f"got {self.batch_size}"
            )
        if self.experiment_batch_size is not None and self.experiment_batch_size > E:
            raise ValueError(
                f"experiment_batch_size must not exceed the number of experiments ({E}); got "
                f"{self.experiment_batch_size}"
            )

    def run(self, model_fn, key, *, progress_bar, model_kwargs):
        if self.batch_size is not None or self.experiment_batch_size is not None:
            fit_kwargs = dict(model_kwargs, batch_size=self.batch_size,
                              experiment_batch_size=self.experiment_batch_size)
            if self.experiment_batch_size is not None:
                latent, _ = _site_kinds(model_fn, model_kwargs)
                if "initial_state" in latent:
                    raise ValueError(
                        "experiment_batch_size needs initial states that are not inferred "
                        "(each experiment's inferred initial state is a local variable the "
                        "guide would have to subsample); give initial_state as an array or "
                        "a function of theta returning one, or use batch_size only"
                    )
        else:
            fit_kwargs = model_kwargs
        guide = self.autoguide(model_fn)
        return _run(self, "SVI", guide, model_fn, key, progress_bar, model_kwargs,
                    self.num_particles, self._starts(model_fn, guide), fit_kwargs=fit_kwargs)

    def _starts(self, model_fn, guide):
        starts = ()
        if self.num_starts > 1:
            start_steps = self.start_steps or max(1, self.num_steps // 10)
            guides = [guide] + [self.autoguide(model_fn) for _ in range(self.num_starts - 1)]
            starts = (guides, start_steps)
        return starts


class _FlowGuide(AutoIAFNormal):
    """`AutoIAFNormal` with one hidden layer of `2 * latent_dim` units per flow (numpyro's
    default is two layers of `latent_dim`, too narrow for two or three parameters), and a
    clear error for a single parameter (a flow needs at least two)."""

    def _get_posterior(self):
        if self.latent_dim == 1:
            raise ValueError(
                "guide='flow' needs at least two unconstrained parameters; this model has "
                "one. Use guide='normal' (exact family for one Gaussian parameter) instead"
            )
        self._hidden_dims = [2 * self.latent_dim]
        return super()._get_posterior()


@dataclasses.dataclass(frozen=True)
class Laplace(AbstractMethod):
    """The Laplace approximation: the posterior mode (MAP) found by optax, and a normal
    distribution there whose covariance is the inverse Hessian of the negative log density
    in the unconstrained space (numpyro's `AutoLaplaceApproximation`).

    Exact when the posterior is normal in the unconstrained space; cheap (one optimisation
    and one Hessian), and a good start for judging a model before NUTS.

    **Main arguments:**

    - `num_steps`: optimisation steps towards the mode.
    - `learning_rate`: peak learning rate of the default optimiser (Adam on the same
      warmup-cosine schedule as `probde.SVI`).
    - `num_draws`: draws from the normal approximation in the posterior (one chain).

    **Other arguments:**

    - `optimizer`: an `optax.GradientTransformation` replacing the default one.
    - `init_radius`: the optimisation starts at a point drawn uniformly in (-r, r) in the
      unconstrained space; infeasible points are redrawn.

    Steps with a non-finite loss are skipped, the trace is stored in the `svi_trace` group
    (`loss` is the negative log density at the current point, in the unconstrained space)
    and convergence is checked by the same rule as `probde.SVI`. When the Hessian at the
    mode is not positive definite numpyro warns and the draws collapse to the mode.

    **Example:**

    ```python
    >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist, probde
    >>> def model(data):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=data)
    >>> data = jnp.array([0.9, 1.4, 1.1, 0.7, 1.2])
    >>> result = probde.infer(model, data, probde.Laplace(num_draws=500), seed=0,
    ...                       num_prior_samples=0)
    >>> post = result.idata.posterior["mu"]  # exact: N(5.3 / 6, 1 / 6)
    >>> 0.8 < float(post.mean()) < 0.96 and 0.36 < float(post.std()) < 0.46
    True

    ```
    """

    num_draws: int = 1000
    num_steps: int = 2000
    learning_rate: float = 1e-2
    optimizer: optax.GradientTransformation | None = None
    init_radius: float = 2.0

    def __post_init__(self):
        _check_common(self)

    def autoguide(self, model_fn) -> AutoLaplaceApproximation:
        """The numpyro `AutoLaplaceApproximation` these options describe, for `model_fn`."""
        return AutoLaplaceApproximation(
            model_fn, init_loc_fn=init_strategy(self.init_radius, model_fn)
        )

    def run(self, model_fn, key, *, progress_bar, model_kwargs):
        return _run(self, "Laplace", self.autoguide(model_fn), model_fn, key, progress_bar,
                    model_kwargs)


def laplace_starts(model_fn, key, num_chains, model_kwargs, init_radius, progress_bar):
    """Starting points for MCMC chains from the Laplace approximation (`NUTS(init="map")`):
    the MAP found by `probde.Laplace` (default settings), then one draw per chain from
    the normal approximation there, in the unconstrained space (the form numpyro's
    `MCMC.run(init_params=...)` takes), with a leading chain dimension when
    `num_chains > 1`. Draws whose log density is not finite are replaced by the MAP."""
    from numpyro.infer.util import unconstrain_fn

    method = Laplace(init_radius=init_radius)
    guide = method.autoguide(model_fn)
    key_fit, key_draw = random.split(key)
    params, losses, skipped, _ = _fit(
        model_fn, guide, default_optimizer(method.learning_rate, method.num_steps), 1,
        method.num_steps, key_fit, progress_bar, model_kwargs,
    )
    _check_fit("NUTS(init='map')", losses, skipped, method.num_steps)
    latent, _ = _site_kinds(model_fn, model_kwargs)
    drawn = _guide_draws(guide, params, key_draw, num_chains + 1, latent, model_kwargs)
    mode = guide.median(params)
    seeded = handlers.seed(model_fn, rng_seed=0)

    def unconstrained(sample):
        return unconstrain_fn(seeded, (), model_kwargs, sample)

    def finite(sample):
        return jnp.isfinite(log_density(seeded, (), model_kwargs, sample)[0])

    ok = np.asarray(jax.vmap(finite)({k: v[:num_chains] for k, v in drawn.items()}))
    starts = jax.vmap(unconstrained)({k: v[:num_chains] for k, v in drawn.items()})
    at_mode = unconstrained({k: mode[k] for k in latent})
    starts = {
        k: jnp.where(jnp.reshape(ok, (-1,) + (1,) * (v.ndim - 1)), v, at_mode[k][None])
        for k, v in starts.items()
    }
    if num_chains == 1:
        starts = {k: v[0] for k, v in starts.items()}
    return starts

