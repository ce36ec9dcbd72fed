"""Fitting a numpyro guide by optax: the SVI loop under jit-compiled `lax.scan` (with
several starts, a progress bar, non-finite steps skipped, a given start, and a Gaussian
guide's location and scale summed over the last windows for the convergence check), and
the fit-check-draw run shared by `probde.SVI` and `probde.Laplace`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax, random
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.infer import SVI as _NumpyroSVI
from numpyro.infer import Trace_ELBO
from numpyro.infer.elbo import ELBO
from numpyro.infer.util import log_density
from numpyro.optim import optax_to_numpyro

from .._loss_rules import best_window, best_window_start, track_best
from .._optim import default_optimizer, svi_step
from ..model.report import count_rejections, vmap_counted
from . import stationarity
from .failures import REJECTED_TOTAL
from .guide_draws import draws, flat_labels, unconstrained_shapes
from .guides import guide_moments, location_units
from .loss_trace import (
    TRACE_GROUP,
    ParameterWindows,
    check_fit,
    trace_group,
    window_size,
)


class StickingTheLandingELBO(ELBO):
    """numpyro's `Trace_ELBO` estimate of the negative ELBO, with the "sticking the
    landing" gradient (Roeder, Wu and Duvenaud 2017): the guide's log density is evaluated
    with its parameters held fixed (`stop_gradient`), so the gradient flows only through
    the reparameterised draws. That drops the score term, whose expectation is zero, and
    with it most of the gradient's noise near the optimum: where the guide equals the
    posterior, log q - log p is constant in the draw and every one-draw gradient is
    exactly zero. Used from the Laplace start (`fit(init_params=...)`), near the optimum.
    Measured on a linear-Gaussian calibration (5 correlated parameters,
    full-rank guide started at the exact posterior, default schedule, 5000 steps): with
    `Trace_ELBO` the fitted sds ended 1-3% off the exact ones (the optimiser's jitter),
    with this estimator at the exact ones. The loss values are the same estimator."""

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        frozen = lax.stop_gradient(param_map)

        def one(key):
            model_seed, guide_seed = random.split(key)
            seeded_guide = seed(guide, guide_seed)
            guide_trace = trace(substitute(seeded_guide, data=param_map)).get_trace(
                *args, **kwargs
            )
            log_q, _ = log_density(replay(seeded_guide, guide_trace), args, kwargs, frozen)
            log_p, _ = log_density(replay(seed(model, model_seed), guide_trace), args,
                                   kwargs, param_map)
            return log_q - log_p

        losses = vmap_counted(one, random.split(rng_key, self.num_particles))
        return {"loss": jnp.mean(losses), "mutable_state": None}


def fit(model_fn, guide, optimizer, num_particles, num_steps, key, progress_bar, model_kwargs,
        starts=(), init_params=None, moments=None, units=None):
    """Fit `guide` by `num_steps` SVI steps under one jit-compiled `lax.scan`.

    A step whose loss is not finite (a failed solve or an impossible prediction makes the
    model's log density -inf at the guide's draw), or whose update would make a parameter
    non-finite, is skipped: the optimiser state (parameters, moments, schedule count) is
    kept as it was and only the random key moves on. (`optax.apply_if_finite` is not
    enough: it looks at the gradient only, and the model's `-inf` factor for a failed
    solve, `jnp.where(rejected, -inf, 0)`, has a finite, zero gradient under an infinite
    loss; and after `max_consecutive_errors` it applies the bad update.) Returns
    `(params, losses, skipped, start_losses, windows, rejected, returned)`:
    the constrained guide parameters, the loss at every step (inf/NaN where skipped), a
    boolean per step, the score of every start (empty without `starts`), the guide's
    location and scale over the last two windows (`loss_trace.ParameterWindows`, `None`
    without `moments`), the number of model evaluations rejected (a failed solve, an
    impossible prediction) over every step of every start (`failures.py`), and the first
    step of the window whose parameters were returned instead of the last ones (`None`
    when they were not; see below).

    **When the loss rose** (`loss_trace.loss_rose`: the last window's median loss well
    above the lowest earlier window's), the parameters returned are the optimiser's
    (unconstrained) parameters averaged over that lowest window, not where the run ended:
    the fit had left the basin it was in, and the loss it optimises says the earlier
    guide is the better one. The scan keeps the best window so far (`track_best`: the
    window's losses and a running sum of the parameters, two copies of the parameters
    in all), so nothing is stored per step.

    `init_params`: a function from the guide's default initial parameters (constrained)
    to the ones to start from (`guides.GuideStart.params`); the first start only. With
    it the gradient is `StickingTheLandingELBO`'s, without it `Trace_ELBO`'s: from a
    start far from the optimum (a random centre at scale 0.1, a deep GP's hundreds of
    weights near zero) the sticking-the-landing gradient is the noisier one (it replaces
    the exact gradient of the Gaussian guide's entropy by a one-draw estimate; the deep-GP
    discrepancy fits of tests/test_deepgp.py failed with it).

    `units`: with a Gaussian guide's `guides.location_units`, the location steps in the
    guide's current sds (`scaled_location_steps`).

    `moments`: a function from the constrained parameters to the guide's location and
    marginal scale, flat (`guides.guide_moments`). With it every step adds the location
    and the log scale to running sums over the last two windows of the run (the windows
    of `loss_trace.loss_converged`): memory of a few vectors, however long the run.

    `starts = (guides, start_steps)`: several starting points. Every guide in `guides`
    (`guide` first, then more of the same family, each initialised from its own key, hence
    its own starting point) is optimised for `start_steps` steps; the one with the lowest
    mean loss over its last fifth continues for the remaining `num_steps - start_steps`
    steps, so the returned trace is that start's whole path. The guides differ only in
    their starting values, so one compiled step serves them all.
    """
    elbo = StickingTheLandingELBO if init_params is not None else Trace_ELBO
    if units is not None:
        # the step units read the guide's current sds through `svi.constrain_fn`, which
        # exists once `svi` is initialised (before the first update)
        holder = {}
        optimizer = scaled_location_steps(optimizer, units,
                                          lambda p: holder["svi"].constrain_fn(p))
    # the particles' evaluations are vmapped; `vmap_counted` keeps their rejections counted
    svi = _NumpyroSVI(model_fn, guide, optax_to_numpyro(optimizer),
                      elbo(num_particles, vectorize_particles=vmap_counted))
    if units is not None:
        holder["svi"] = svi
    body = _body(svi_step(svi, model_kwargs), svi, moments, num_steps)
    start_losses = np.zeros((0,))
    head_losses = head_skipped = np.zeros((0,))
    head_rejected = 0
    if starts:
        carry, head_losses, head_skipped, start_losses, head_rejected = _best_start(
            svi, model_fn, optimizer, num_particles, key, model_kwargs, starts, body,
            init_params, moments, num_steps,
        )
        done = starts[1]
    else:
        carry = _initial_carry(_init(svi, key, model_kwargs, init_params), moments, svi,
                               num_steps)
        done = 0
    steps = jnp.arange(done, num_steps)
    if not progress_bar:
        carry, (losses, skipped, counts) = jax.jit(lambda c, i: lax.scan(body, c, i))(carry,
                                                                                     steps)
    else:
        carry, losses, skipped, counts = _scan_with_progress(body, carry, steps)
    rejected = head_rejected + int(np.sum(counts))
    losses = np.concatenate([head_losses, np.asarray(losses)])
    skipped = np.concatenate([head_skipped.astype(bool), np.asarray(skipped)])
    state, sums, tracker = carry
    params, returned = svi.get_params(state), None
    best = best_window(tracker, losses, skipped, num_steps)
    if best is not None:
        params, returned = svi.constrain_fn(best[0]), best[1]
    windows = None
    if moments is not None:
        *sums, total = sums
        count = float(sums[3][1])
        if count >= 1 and returned is None:
            params = svi.constrain_fn(jax.tree.map(lambda t: t / count, total))
        loc, scale = moments(params)
        windows = ParameterWindows.from_sums(np.asarray(loc), np.asarray(scale),
                                             *(np.asarray(x) for x in sums),
                                             window_size(num_steps))
    return params, losses, skipped, start_losses, windows, rejected, returned


def _init(svi, key, model_kwargs, init_params):
    """`svi.init`, then, with `init_params`, again from the parameters it makes of the
    default ones (the first init sets up the guide and gives their shapes)."""
    state = svi.init(key, **model_kwargs)
    if init_params is None:
        return state
    return svi.init(key, init_params=init_params(svi.get_params(state)), **model_kwargs)


def _initial_carry(state, moments, svi, num_steps):
    """`(state, sums, tracker)`: the running sums of `_body` start at zero, shifted by the
    guide's starting location and log scale (keeps the sums of squares free of
    cancellation), with a zero sum of the optimiser's (unconstrained) parameters for their
    average over the last window; `tracker`, the best window so far (`track_best`), none
    yet."""
    zeros = jax.tree.map(jnp.zeros_like, svi.optim.get_params(state.optim_state))
    tracker = best_window_start(zeros, num_steps)
    if moments is None:
        return state, (), tracker
    loc, scale = moments(svi.get_params(state))
    shift = jnp.stack([loc, jnp.log(scale)])
    return state, (shift, jnp.zeros((2,) + shift.shape), jnp.zeros((2,) + shift.shape),
                   jnp.zeros((2,)), zeros), tracker


def _body(step, svi, moments, num_steps):
    """The scan body over step indices: one SVI step and, with `moments`, the guide's
    location and log scale added to the sums of the window the step falls in (previous
    or last, `window_size(num_steps)` steps each). Its output per step: the loss, whether
    the step was skipped, and the model evaluations rejected in it (`failures.py`)."""

    def counted(state, tracker, i):
        (state, (loss, skipped)), rejected = count_rejections(step, state, None)
        tracker = track_best(tracker, i, jnp.where(skipped, jnp.nan, loss),
                             svi.optim.get_params(state.optim_state), num_steps)
        return state, tracker, (loss, skipped, rejected)

    if moments is None:
        def plain(carry, i):
            state, sums, tracker = carry
            state, tracker, out = counted(state, tracker, i)
            return (state, sums, tracker), out

        return plain
    w = window_size(num_steps)

    def tracked(carry, i):
        (state, (shift, s1, s2, count, total), tracker) = carry
        state, tracker, out = counted(state, tracker, i)
        loc, scale = moments(svi.get_params(state))
        x = jnp.stack([loc, jnp.log(scale)]) - shift
        which = jnp.stack([(i >= num_steps - 2 * w) & (i < num_steps - w), i >= num_steps - w])
        m = which.astype(x.dtype)
        s1 = s1 + m[:, None, None] * x[None]
        s2 = s2 + m[:, None, None] * x[None] ** 2
        total = jax.tree.map(lambda t, p: t + m[1].astype(p.dtype) * p, total,
                             svi.optim.get_params(state.optim_state))
        return (state, (shift, s1, s2, count + m, total), tracker), out

    return tracked


def _best_start(svi, model_fn, optimizer, num_particles, key, model_kwargs, starts, body,
                init_params, moments, num_steps):
    """The first phase of `fit` with several starts: every guide optimised for
    `start_steps` steps; `(carry, losses, skipped, start_losses, rejected)`: those of the
    best one (lowest mean finite loss over its last fifth), every start's score, and the
    rejected evaluations of all starts."""
    guides, start_steps = starts
    keys = random.split(key, len(guides))
    scan = jax.jit(lambda c: lax.scan(body, c, jnp.arange(start_steps)))
    runs = []
    for i, (g, k) in enumerate(zip(guides, keys, strict=True)):
        # the first start initialises `svi` itself (its guide's prototype and the
        # constraining transforms `get_params` uses), from `init_params` if given; the
        # others only lend a state
        if i == 0:
            state = _init(svi, k, model_kwargs, init_params)
        else:
            other = _NumpyroSVI(model_fn, g, optax_to_numpyro(optimizer),
                                type(svi.loss)(num_particles, vectorize_particles=vmap_counted))
            state = other.init(k, **model_kwargs)
        runs.append(scan(_initial_carry(state, moments, svi, num_steps)))
    tail = max(1, start_steps // 5)
    start_losses = np.array([_mean_finite(np.asarray(out[0])[-tail:]) for _, out in runs])
    best = int(np.argmin(np.where(np.isnan(start_losses), np.inf, start_losses)))
    carry, (losses, skipped, _) = runs[best]
    rejected = sum(int(np.sum(out[2])) for _, out in runs)
    return carry, np.asarray(losses), np.asarray(skipped), start_losses, rejected


def _scan_with_progress(body, carry, steps):
    """The scan of `body` over `steps` in compiled chunks of about a twentieth each, with
    a tqdm bar updated between chunks (no host callback in the compiled program);
    `(carry, losses, skipped, rejected)`, the last three per step."""
    from tqdm.auto import tqdm

    num_steps = steps.shape[0]
    chunk = max(1, num_steps // 20)
    run_chunk = jax.jit(lambda c, i: lax.scan(body, c, i))
    parts = []
    with tqdm(total=num_steps, desc="SVI") as bar:
        done = 0
        while done < num_steps:
            n = min(chunk, num_steps - done)
            carry, out = run_chunk(carry, steps[done:done + n])
            parts.append(out)
            done += n
            bar.update(n)
            bar.set_postfix_str(f"loss {float(out[0][-1]):.4g}", refresh=False)
    losses, skipped, rejected = (jnp.concatenate([p[j] for p in parts]) for j in range(3))
    return carry, losses, skipped, rejected


def _mean_finite(x):
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else np.nan


def scaled_location_steps(optimizer, units, constrain):
    """`optimizer` followed by a multiplication of the location parameters' updates by
    the guide's current marginal sds: `units(constrain(params))` (`guides.location_units`;
    `constrain` maps the optimiser's unconstrained parameters to the guide's). The location
    then steps in units of the guide's own spread, as the scales (log-like parametrisations
    in numpyro's Gaussian guides) already step in relative units.

    Why: Adam's steps are about the learning rate in absolute units. For a parameter
    whose posterior sd in the unconstrained space is 0.005, the default peak rate (0.01)
    is two sds a step, and the location ends wherever the decaying rate froze its
    jitter: a mean-field fit of a correlated 5-parameter Gaussian posterior, started at
    its optimum, ended with means 0.03-0.14 sd off (0.06-0.09 in sd units). The current
    sds, not the start's: a posterior much wider than its Laplace approximation at the
    mode (a handful of data, priors doing most of the work) needs the location's steps to
    grow with the guide."""

    def scale(updates, params):
        sd = jax.tree.map(lax.stop_gradient, units(constrain(params)))
        return {k: (u * sd[k].astype(u.dtype) if k in sd else u) for k, u in updates.items()}

    return optax.chain(optimizer, optax.stateless(scale))


def fit_and_draw(method, name, guide, model_fn, key, progress_bar, model_kwargs,
                 num_particles=1, starts=(), fit_kwargs=None, start=None):
    """Fit (with `fit_kwargs`, e.g. minibatch sizes; default `model_kwargs`), check, and
    draw (with `model_kwargs`, all the data): a `run` of `SVI` or `Laplace` (the `method`,
    called `name` in messages). `start`: a function of a key returning
    `(guides.GuideStart or None, description)` for the guide's start
    (`SVI(init="laplace")`; see `fit`), run before the fit. With a `GuideStart`, a single
    start and the default optimiser, the location steps in the guide's current sds
    (`scaled_location_steps`). A Gaussian guide's parameters are tracked for the
    convergence check (`loss_trace.ParameterWindows`) and the ELBO's gradient along its
    family is estimated at the end (`stationarity.check`). Returns
    `(samples, stats, {"svi_trace": trace})`."""
    key_fit, key_draw = random.split(key)
    shapes = unconstrained_shapes(model_fn, model_kwargs)
    moments = guide_moments(guide, list(shapes))
    guide_start, init = None, None
    try:
        if start is not None:
            guide_start, init = start(random.fold_in(key_fit, 1))
        optimizer = method.optimizer
        units = None
        if optimizer is None:
            optimizer = default_optimizer(method.learning_rate, method.num_steps)
            if guide_start is not None and not starts:
                units = location_units(guide)
        params, losses, skipped, start_losses, windows, rejected, returned = fit(
            model_fn, guide, optimizer, num_particles, method.num_steps, key_fit,
            progress_bar, model_kwargs if fit_kwargs is None else fit_kwargs, starts,
            None if guide_start is None else guide_start.params, moments, units,
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
    labels = flat_labels(shapes)
    gradient = None
    if moments is not None:
        gradient = stationarity.check(model_fn, guide, params, shapes,
                                      random.fold_in(key_fit, 2), model_kwargs)
    check_fit(name, losses, skipped, method.num_steps, windows, labels, gradient, returned)
    samples, stats = draws(model_fn, guide, params, method.num_draws, key_draw, model_kwargs)
    stats[REJECTED_TOTAL] = np.array([rejected])
    trace = trace_group(losses, skipped, start_losses, windows, labels, init, gradient,
                        returned)
    if guide_start is not None and guide_start.mode_energies:
        trace["mode_energy"] = ("start", np.asarray(guide_start.mode_energies, dtype=float))
    return samples, stats, {TRACE_GROUP: trace}
