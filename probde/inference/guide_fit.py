"""Fitting a numpyro guide by optax: the SVI loop under jit-compiled `lax.scan` (with
several starts, a progress bar, and non-finite steps skipped), and the fit-check-draw run
shared by `probde.SVI` and `probde.Laplace`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax, random

from numpyro.infer import SVI as _NumpyroSVI
from numpyro.infer import Trace_ELBO
from numpyro.optim import optax_to_numpyro

from .._optim import default_optimizer, svi_step
from .guide_draws import draws
from .loss_trace import TRACE_GROUP, check_fit, trace_group


def fit(model_fn, guide, optimizer, num_particles, num_steps, key, progress_bar, model_kwargs,
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
    its own starting point) is optimised for `start_steps` steps; the one with the lowest
    mean loss over its last fifth continues for the remaining `num_steps - start_steps`
    steps, so the returned trace is that start's whole path. The guides differ only in
    their starting values, so one compiled step serves them all.
    """
    svi = _NumpyroSVI(model_fn, guide, optax_to_numpyro(optimizer), Trace_ELBO(num_particles))
    start_losses = np.zeros((0,))
    head_losses = head_skipped = np.zeros((0,))
    if starts:
        state, head_losses, head_skipped, start_losses = _best_start(
            svi, model_fn, optimizer, num_particles, key, model_kwargs, starts
        )
        num_steps = num_steps - starts[1]
    else:
        state = svi.init(key, **model_kwargs)
    step = svi_step(svi, model_kwargs)
    if not progress_bar:
        state, (losses, skipped) = jax.jit(
            lambda s: lax.scan(step, s, None, length=num_steps)
        )(state)
    else:
        state, losses, skipped = _scan_with_progress(step, state, num_steps)
    losses = np.concatenate([head_losses, np.asarray(losses)])
    skipped = np.concatenate([head_skipped.astype(bool), np.asarray(skipped)])
    return svi.get_params(state), losses, skipped, start_losses


def _best_start(svi, model_fn, optimizer, num_particles, key, model_kwargs, starts):
    """The first phase of `fit` with several starts: every guide optimised for
    `start_steps` steps; `(state, losses, skipped, start_losses)` of the best one (lowest
    mean finite loss over its last fifth) and every start's score."""
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
    state, (losses, skipped) = runs[best]
    return state, np.asarray(losses), np.asarray(skipped), start_losses


def _scan_with_progress(step, state, num_steps):
    """`num_steps` steps in compiled chunks of about a twentieth each, with a tqdm bar
    updated between chunks (no host callback in the compiled program);
    `(state, losses, skipped)`."""
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
    return state, losses, skipped


def _mean_finite(x):
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else np.nan


def fit_and_draw(method, name, guide, model_fn, key, progress_bar, model_kwargs,
                 num_particles=1, starts=(), fit_kwargs=None):
    """Fit (with `fit_kwargs`, e.g. minibatch sizes; default `model_kwargs`), check, and
    draw (with `model_kwargs`, all the data): a `run` of `SVI` or `Laplace` (the `method`,
    called `name` in messages). Returns `(samples, stats, {"svi_trace": trace})`."""
    optimizer = method.optimizer
    if optimizer is None:
        optimizer = default_optimizer(method.learning_rate, method.num_steps)
    key_fit, key_draw = random.split(key)
    try:
        params, losses, skipped, start_losses = fit(
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
    check_fit(name, losses, skipped, method.num_steps)
    samples, stats = draws(model_fn, guide, params, method.num_draws, key_draw, model_kwargs)
    return samples, stats, {TRACE_GROUP: trace_group(losses, skipped, start_losses)}
