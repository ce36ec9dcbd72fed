"""`probde.SVI`: stochastic variational inference as an inference method.

It fits a numpyro autoguide (`guides`) by optax on the model's own log density (one log
density, ARCHITECTURE.md invariant 3; the fitting loop is `guide_fit`), then draws from
the fitted guide (`guide_draws`). The draws come back with a single chain,
`(1, num_draws, ...)`, and go through the same posterior predictive, log-likelihood and
DataTree steps as NUTS draws, so ArviZ works on them unchanged; the optimisation trace
becomes an extra DataTree group, `svi_trace` (`loss_trace`). `probde.Laplace` lives in
`laplace`, the mode search of `NUTS(init="map")` in `mode`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import optax

from .._optim import default_optimizer
from ._options import check_fit_options, is_real, positive_int
from .guide_draws import site_kinds
from .guide_fit import fit_and_draw
from .guides import GUIDES, laplace_start, make_guide
from .initialisation import _has_marked_sites
from .loss_trace import loss_converged
from .methods import AbstractMethod
from .mode import laplace_gaussians, laplace_starts

# Kept importable from here: `loss_converged` and `laplace_starts` (tests, docs), and
# `default_optimizer` (model terms fitted by SVI; its home is `probde._optim`).
__all__ = ["SVI", "default_optimizer", "laplace_starts", "loss_converged"]

INITS = ("laplace", "prior")


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
    - `init`: where the guide starts.
        - `"laplace"` (default): at the Laplace approximation. The posterior mode is
          found by L-BFGS (optax's `lbfgs`, zoom line search, at most 1000 iterations) from
          a point drawn as for `init_radius` (from `num_starts` points, the best mode
          kept) and the Hessian H of the negative log
          density in the unconstrained space is taken there (autodiff, exact). The
          full-rank guide starts at N(mode, H^-1); the mean-field guide at the mode with
          sds `1 / sqrt(H_ii)`, the mean-field optimum for a Gaussian posterior (not the
          marginal sds `sqrt((H^-1)_ii)`, which are wider when parameters are
          correlated); the low-rank guide with the top-`rank` eigenvectors of H^-1 as
          its factor and the rest of H^-1's diagonal as its diagonal. A Gaussian
          posterior is then fitted from the first step, and the optimiser only corrects
          the non-Gaussian part. Where H is not positive definite (a saddle, a flat
          direction) a warning names the parameters concerned and the guide starts as
          with `"prior"`; so it does, with a warning, where the mode search ended at a
          point with a non-finite log density (a failed solve). The flow guide, fits
          with minibatches (the mode search would use all the data) and models with
          sites marked to start near zero (a deep GP's hundreds of weights, whose mode
          overfits the discrepancy; see `probde.DeepGPDiscrepancy`) always start as
          with `"prior"`.
          `svi_trace.attrs["init"]` says which start was used.
        - `"prior"`: centred at a point drawn uniformly in (-`init_radius`,
          `init_radius`) in the unconstrained space, with scale `init_scale`.
    - `init_scale`: with `init="prior"`, the initial standard deviation of the Gaussian
      guides in the unconstrained space (numpyro's default, 0.1). Measured on a
      one-parameter linear-Gaussian problem with posterior sd 0.0047: from 0.1, 3000
      steps of the default schedule ended with sd 0.0186, four times too wide; from the
      Laplace start, exact.
    - `init_radius`: the guide (`init="prior"`) or the mode search (`init="laplace"`)
      starts at a point drawn uniformly in (-r, r) in the unconstrained space;
      infeasible points (failed solves, non-finite density) are redrawn.
    - `num_starts`, `start_steps`: several starting points, for posteriors with local
      optima. The ELBO of an ODE model can have local optima that a single start does not
      escape: on the lynx-hare model, single starts (the default Laplace start among them:
      its mode search ended at the same place) end at a fit with about 2.5 times the noise
      sd and a log-likelihood 43 lower than at the posterior mean NUTS finds (see the
      lynx-hare tutorial).
        - With the Laplace start, the mode search runs from `num_starts` points and the
          guide starts at the Laplace approximation of the best mode found (lowest
          negative log density); `start_steps` is unused.
        - With the prior start, that many guides are each optimised for `start_steps`
          steps (default a tenth of `num_steps`), and the one with the lowest loss over
          its last fifth continues to `num_steps` in all; `svi_trace.start_loss` holds
          every start's score.

    A step whose loss is not finite (the guide drew a point where the solve failed or the
    prediction is impossible, so the log density is -inf) is skipped: the parameters and
    the optimiser state stay as they were. The result's `svi_trace` group holds `loss` (the
    negative ELBO estimate) and `skipped` per `step`, and the attribute `skipped_steps`.
    More than 10% skipped steps give a warning: the kept steps' gradients come from the
    feasible draws only, which biases the fit when the infeasible region holds a good share
    of the guide's mass (harmless when failures are confined to the posterior's tails).

    From the Laplace start the ELBO's gradient is estimated with the "sticking the
    landing" estimator (the guide's log density with its parameters held fixed; the loss
    is numpyro's `Trace_ELBO` estimate): it has the same expectation and no noise where
    the guide equals the posterior, so a full-rank fit of a Gaussian posterior stays exact
    to the end. From the prior start, far from the optimum, numpyro's `Trace_ELBO`
    gradient is used (less noisy there).

    From the Laplace start (single start, default optimiser) the location steps in units
    of the guide's current sds (the Laplace sds at the start): Adam's steps are about the
    learning rate in absolute units, two posterior sds a step for a parameter with sd
    0.005 at the default peak rate, and the location would end wherever the decaying rate
    froze that jitter. The fitted guide is
    the average of the optimiser's parameters over the last 10% of the steps (Polyak
    averaging; Gaussian guides).

    **Convergence check:** after fitting, a warning says to raise `num_steps` or
    `learning_rate` when
    - the loss was still falling: the mean loss over the last 10% of the steps (at least
      10 steps, at most half the run) is below the mean over the preceding as many steps
      by more than two standard errors of the difference plus
      `1e-3 * max(1, |preceding mean|)`; or
    - (Gaussian guides) the guide's parameters were still moving: for some parameter, the
      mean location over the last window differs from that over the preceding one by more
      than 0.02 of its scale plus twice the location's spread within the windows, or the
      mean log scale by more than 0.01 plus twice its spread; or
    - (Gaussian guides) the guide is off its optimum by the ELBO's gradient: at 1000 draws
      of the fitted guide the model's gradient gives the derivative of the ELBO along a
      shift of the location and a stretch of each coordinate's scale, moves that stay in
      the guide's family and so are zero at its optimum, for any posterior (see
      `probde.inference.stationarity`). The location's offset (its Newton step, in sds)
      or the scale's (half the stretch derivative, about its relative error) must be
      within 0.1 plus a Bonferroni z (1% false alarms over all coordinates) times its
      Monte Carlo standard error (about 0.03 and 0.02 for a Gaussian posterior). This
      rule sees a fit that stopped short while its parameters barely moved: a 1-D fit from
      `init="prior"`, 3000 steps, ended with an sd five times the exact one, its scale
      moving by about 1% per window (within its jitter, so the parameter rule passed it),
      and this rule warned "scale of theta (about 5 times the optimum's)". On the
      four-point predator-prey example of the model guide (8 parameters, the priors doing
      most of the work), 5000 default steps from the Laplace start ended 3.8 nats above the
      optimum's loss with sds about half the optimum's, the loss flat by the loss rule;
      this rule named them (20,000 steps: no warning).

    The warning names the parameters concerned; `svi_trace` holds, per unconstrained
    parameter (`latent`), the fitted `loc` and `scale`, their `loc_change`,
    `scale_change`, `loc_spread` and `scale_spread` (parameter rule), and `loc_offset`,
    `scale_offset`, `loc_offset_se` and `scale_offset_se` (gradient rule).

    Runs of fewer than 100 steps always warn: too short to tell.

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
    init: str = "laplace"

    def __post_init__(self):
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}; got {self.init!r}")
        if not is_real(self.init_scale) or not 0 < self.init_scale < math.inf:
            raise ValueError(
                f"init_scale must be a positive finite number; got {self.init_scale!r}"
            )
        if self.guide == "flow" and self.init_scale != 0.1:
            raise ValueError(
                "init_scale applies to the Gaussian guides; guide='flow' starts from its own "
                f"scale; got init_scale={self.init_scale!r}"
            )
        positive_int("num_starts", self.num_starts)
        for name in ("batch_size", "experiment_batch_size"):
            if getattr(self, name) is not None:
                positive_int(name, getattr(self, name))
        if self.start_steps is not None:
            positive_int("start_steps", self.start_steps)
            if self.start_steps >= self.num_steps:
                raise ValueError(
                    f"start_steps must be below num_steps ({self.num_steps}); got "
                    f"{self.start_steps}"
                )
        if not isinstance(self.guide, str) or self.guide not in GUIDES:
            raise ValueError(f"guide must be one of {GUIDES}; got {self.guide!r}")
        check_fit_options(self)
        positive_int("num_particles", self.num_particles)
        if self.rank is not None:
            if self.guide != "low_rank":
                raise ValueError(
                    f"rank applies to guide='low_rank' only; got rank={self.rank!r} with "
                    f"guide={self.guide!r}"
                )
            positive_int("rank", self.rank)

    def autoguide(self, model_fn):
        """The numpyro autoguide these options describe, for `model_fn`."""
        return make_guide(self.guide, model_fn, self.init_radius, self.init_scale, self.rank)

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
                latent, _ = site_kinds(model_fn, model_kwargs)
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
        why = self._why_prior_start(model_fn, model_kwargs)
        if why:
            starts, start = self._starts(model_fn, guide), lambda key: (None, f"prior ({why})")
        else:
            starts, start = (), self._laplace_start(model_fn, guide, model_kwargs)
        return fit_and_draw(self, "SVI", guide, model_fn, key, progress_bar, model_kwargs,
                            self.num_particles, starts, fit_kwargs=fit_kwargs, start=start)

    def _laplace_start(self, model_fn, guide, model_kwargs):
        """The `start` of `fit_and_draw` for `init="laplace"`: the Laplace approximation at
        the best of `num_starts` modes (lowest negative log density) as the guide's initial
        parameters; the prior start (with the reason) where it cannot be used."""

        def start(key):
            found = laplace_gaussians(model_fn, key, model_kwargs, self.init_radius,
                                      self.num_starts)
            usable = [g for g in found if g.usable]
            gaussian = (min(usable, key=lambda g: g.energy) if usable else
                        next((g for g in found if g.finite), found[0]))
            if not gaussian.finite:
                # stacklevel 7: start < fit_and_draw < run < ... < the caller of infer
                warnings.warn(
                    "SVI(init='laplace'): the mode search ended where the log density is "
                    "not finite (a failed solve or an impossible prediction), so the guide "
                    "starts as with init='prior' (at a random point, scale "
                    f"init_scale={self.init_scale}); check the priors against the data, "
                    "raise Solver(max_steps=...), or pass init='prior'",
                    stacklevel=7,
                )
                return None, "prior (log density not finite at the mode found)"
            if not gaussian.usable:
                names = ", ".join(gaussian.flat_directions[:10])
                more = len(gaussian.flat_directions) - 10
                names += f" and {more} more" if more > 0 else ""
                warnings.warn(
                    "SVI(init='laplace'): the Hessian of the negative log density at the "
                    "mode is not positive definite along " + names + " (a saddle, or a "
                    "posterior flat in that direction), so the guide starts as with "
                    f"init='prior' (at a random point, scale init_scale={self.init_scale}); "
                    "tighten the priors of these parameters, or pass init='prior'",
                    stacklevel=7,
                )
                return None, "prior (Hessian at the mode not positive definite)"
            chosen = laplace_start(self.guide, guide.prefix, gaussian)
            chosen = dataclasses.replace(chosen, mode_energies=tuple(g.energy for g in found))
            return chosen, "laplace"

        return start

    def _why_prior_start(self, model_fn, model_kwargs):
        """Why the guide starts from the prior start under these options, or ''."""
        if self.init == "prior":
            return "init='prior'"
        if self.guide == "flow":
            return "guide='flow' has no Gaussian start"
        if self.batch_size is not None or self.experiment_batch_size is not None:
            return "minibatches: the mode search would use all the data"
        if _has_marked_sites(model_fn, model_kwargs):
            return "sites marked to start near zero (deep GP weights)"
        return ""

    def _starts(self, model_fn, guide):
        starts = ()
        if self.num_starts > 1:
            start_steps = self.start_steps or max(1, self.num_steps // 10)
            guides = [guide] + [self.autoguide(model_fn) for _ in range(self.num_starts - 1)]
            starts = (guides, start_steps)
        return starts
