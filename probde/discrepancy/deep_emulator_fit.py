"""Fitting `DeepGPEmulator`: the numpyro model of the standardised training outputs, the
near-zero initialisation of the weights, the SVI run (Adam on a warmup-cosine schedule,
steps with a non-finite loss undone, `probde._optim`), the checks of its loss trace (the
rules of `probde.SVI`, `probde._loss_rules`) and the draws kept from the fitted guide;
also the checks of the deep-GP options.
"""

from __future__ import annotations

import functools
import numbers
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import init_to_median, init_to_uniform

from .._checks import describe
from .._loss_rules import (
    _MIN_STEPS,
    SKIP_WARN_FRACTION,
    best_window,
    best_window_start,
    describe_rise,
    loss_converged,
    loss_rose,
    rise_window,
    track_best,
)
from .._optim import SMALL_INIT_RADIUS, default_optimizer, svi_step
from .deepgp import SMALL_INIT, DeepGPDiscrepancy, base_frequencies, forward
from .emulator_checks import _check_seed

# Priors in the emulator's scaled units (inputs in the unit cube, outputs standardised).
_LENGTHSCALE_PRIOR = (np.log(0.3), 0.75)  # LogNormal, per layer (as DeepGPDiscrepancy)
_VARIANCE_PRIOR = 1.0  # HalfNormal scale of the output layer's variance
_HIDDEN_VARIANCE_PRIOR = 0.2  # HalfNormal scale of the hidden layers' variances
_NOISE_PRIOR = 0.1  # HalfNormal scale of the noise sd per observable (10% of the output sd)
# Weights start in (-0.1, 0.1) (see probde._optim.SMALL_INIT); the guide's
# initial scale is small so that its first draws are near that start.
_INIT_SCALE = 0.01


def _init_small_or_median(site=None):
    """Weights near zero, the other sites at their prior medians."""
    if site is None:
        return _init_loc
    if (site.get("infer") or {}).get(SMALL_INIT, False):
        return init_to_uniform(site, radius=SMALL_INIT_RADIUS)
    return init_to_median(site, num_samples=15)


# numpyro expects init strategies to be `functools.partial` objects
_init_loc = functools.partial(_init_small_or_median)


def _deep_gp_model(x, y, omegas, out_dims, batch_size):
    """numpyro model of the standardised training outputs `y (N, O)` at inputs `x (N, D)`."""
    L = len(omegas)
    ls = numpyro.sample(
        "lengthscale", dist.LogNormal(*_LENGTHSCALE_PRIOR).expand([L]).to_event(1)
    )
    var = numpyro.sample("variance", dist.HalfNormal(_VARIANCE_PRIOR))
    hidden = jnp.ones((1,), x.dtype)
    if L > 1:
        hidden = numpyro.sample(
            "hidden_variance", dist.HalfNormal(_HIDDEN_VARIANCE_PRIOR).expand([L - 1]).to_event(1)
        )
    weights = [
        numpyro.sample(
            f"w{layer}",
            dist.Normal(0.0, 1.0).expand([omega.shape[0] * 2, d]).to_event(2),
            infer={SMALL_INIT: True},
        )
        for layer, (omega, d) in enumerate(zip(omegas, out_dims, strict=True))
    ]
    n_obs = y.shape[1]
    noise = numpyro.sample("noise", dist.HalfNormal(_NOISE_PRIOR).expand([n_obs]).to_event(1))
    with numpyro.plate("points", x.shape[0], subsample_size=batch_size) as idx:
        f = forward(x[idx], omegas, weights, ls, var, hidden)
        numpyro.sample("y", dist.Normal(f, noise[None, :]).to_event(1), obs=y[idx])



def _fit_deep_gp(runs, disc, num_steps, learning_rate, batch_size, num_draws, seed,
                 progress_bar):
    """Fit the deep GP to the training runs of `runs` (a split `_TrainingRuns`) by SVI and
    draw `num_draws` weights and hyperparameters from the guide: `(omegas, width, draws,
    losses)`, with the frequencies `omegas` (one `(F, D_l)` per layer) and the hidden
    width."""
    from numpyro.infer.autoguide import AutoNormal

    x_fit, y_fit = _training_points(runs, batch_size)
    dtype = x_fit.dtype
    D = 1 + len(runs.names)
    w = disc.width or D
    in_dims = [D] + [w] * (disc.layers - 1)
    out_dims = [w] * (disc.layers - 1) + [y_fit.shape[1]]
    omegas = tuple(
        jnp.asarray(
            base_frequencies(disc.kernel, disc.num_features, d, int(seed) * 1000 + layer),
            dtype=dtype,
        )
        for layer, d in enumerate(in_dims)
    )

    def model_fn():
        _deep_gp_model(x_fit, y_fit, omegas, out_dims, batch_size)

    guide = AutoNormal(model_fn, init_loc_fn=_init_loc, init_scale=_INIT_SCALE)
    key_fit, key_draws = jax.random.split(jax.random.PRNGKey(int(seed)))
    optimizer = default_optimizer(float(learning_rate), int(num_steps))
    params, losses, skipped, returned = _run_svi(model_fn, guide, optimizer, int(num_steps),
                                                 key_fit, progress_bar)
    if not np.any(np.isfinite(losses)) or skipped.all():
        raise RuntimeError(
            "the deep-GP emulator's SVI fit failed: no step had a finite loss and update"
        )
    _check_loss_trace(losses, skipped, returned)
    draws = _draw_posterior(guide, params, key_draws, num_draws, disc.layers, dtype)
    return omegas, w, draws, losses


def _training_points(runs, batch_size):
    """Scaled inputs `(N, D)` and standardised outputs `(N, O)` of the training runs,
    run-major; checks that `batch_size` is at most `N`."""
    _, T, n_obs = runs.outputs.shape
    N = runs.fit_idx.shape[0] * T
    if batch_size is not None and batch_size > N:
        raise ValueError(
            f"batch_size must be at most the {N} training points "
            f"({runs.fit_idx.shape[0]} runs x {T} times); got {batch_size}"
        )
    x_fit = jnp.asarray(runs.inputs(runs.fit_idx))  # (N, D), run-major
    y_fit = jnp.asarray(runs.standardised(runs.fit_idx).reshape(N, n_obs), dtype=x_fit.dtype)
    return x_fit, y_fit


def _draw_posterior(guide, params, key, num_draws, layers, dtype):
    """`num_draws` draws from the fitted guide: lengthscale `(S, L)`, variance `(S,)`,
    hidden_variance `(S, L - 1)` (ones `(S, 1)` for one layer), noise `(S, O)` and
    weights, a tuple of `(S, 2F, D_{l+1})`."""

    # numpyro broadcasts the draws against the guide's scales by rank promotion
    @jax.jit
    def draw(key, params):
        with jax.numpy_rank_promotion("allow"):
            return guide.sample_posterior(key, params, sample_shape=(int(num_draws),))

    samples = draw(key, params)
    draws = {
        "lengthscale": samples["lengthscale"],
        "variance": samples["variance"],
        "hidden_variance": samples.get(
            "hidden_variance", jnp.ones((int(num_draws), 1), dtype)
        ),
        "noise": samples["noise"],
        "weights": tuple(samples[f"w{layer}"] for layer in range(layers)),
    }
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), draws)


def _run_svi(model_fn, guide, optimizer, num_steps, key, progress_bar):
    """`num_steps` SVI steps in jit-compiled `lax.scan`s; `(params, losses, skipped,
    returned)`: the loss and whether the step was skipped, per step, and the first step of
    the window whose averaged parameters are returned instead of the last ones (`None`
    when they are not), as `probde.SVI` does: when the loss rose (`loss_rose`), the
    guide averaged over the window of lowest median loss (`track_best`).

    The initialisation is compiled too: numpyro's is op-by-op in Python otherwise (a few
    hundred small compilations, a minute on a busy CPU). A step whose loss or new
    parameters are not finite is undone (`probde._optim.svi_step`, as in `probde.SVI`)."""
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.optim import optax_to_numpyro

    svi = SVI(model_fn, guide, optax_to_numpyro(optimizer), Trace_ELBO())
    step = svi_step(svi, {})

    def body(carry, i):
        state, tracker = carry
        state, (loss, skipped) = step(state, None)
        tracker = track_best(tracker, i, jnp.where(skipped, jnp.nan, loss),
                             svi.optim.get_params(state.optim_state), num_steps)
        return (state, tracker), (loss, skipped)

    state = jax.jit(svi.init)(key)
    carry = (state, best_window_start(svi.optim.get_params(state.optim_state), num_steps))
    run = jax.jit(lambda c, i: jax.lax.scan(body, c, i))
    steps = jnp.arange(num_steps)
    chunk = max(1, num_steps // 20) if progress_bar else num_steps
    parts = []
    with _bar(progress_bar, num_steps) as bar:
        for done in range(0, num_steps, chunk):
            carry, part = run(carry, steps[done:done + chunk])
            parts.append([np.asarray(x) for x in part])
            if bar is not None:
                bar.update(part[0].shape[0])
                bar.set_postfix_str(f"loss {float(part[0][-1]):.4g}", refresh=False)
    losses, skipped = (np.concatenate([p[j] for p in parts]) for j in range(2))
    state, tracker = carry
    params, returned = svi.get_params(state), None
    best = best_window(tracker, losses, skipped, num_steps)
    if best is not None:
        params, returned = svi.constrain_fn(best[0]), best[1]
    return params, losses, skipped.astype(bool), returned


def _bar(progress_bar, total):
    """A tqdm bar over the SVI steps, or a context holding `None`."""
    import contextlib

    if not progress_bar:
        return contextlib.nullcontext()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="SVI (deep-GP emulator)")


def _check_loss_trace(losses, skipped, returned):
    """The checks of `probde.SVI` on the fit's loss trace, with warnings pointing at the
    caller of `DeepGPEmulator.fit` or `.from_runs`: too many skipped steps, a loss that
    ended higher than it had been (`loss_rose`; `returned` as from `_run_svi`), a loss
    still falling (`loss_converged`). The emulator keeps the trace (`loss_trace`)."""
    n, n_skip = losses.shape[0], int(skipped.sum())
    trace = np.where(skipped, np.nan, losses)
    where = "the emulator's loss_trace"
    if n_skip > SKIP_WARN_FRACTION * n:
        _warn(f": {n_skip} of {n} steps were skipped because the loss or the update was not "
              "finite; the fit used the rest. Lower learning_rate")
    rose = loss_rose(trace)
    if rose is not None:
        start, best, last = rose
        w = rise_window(n)
        kept = ("the emulator keeps the guide averaged over steps "
                f"{returned}-{returned + w - 1}" if returned is not None
                else "the emulator keeps where it ended")
        _warn(f" ended at a worse loss than it had reached: "
              f"{describe_rise(start, best, last, w)} (see {where}); {kept}, but it had "
              "not converged there. Lower learning_rate, or "
              "compare fits from other seeds")
    elif not loss_converged(trace):
        why = (f"{n} steps are too few to tell (at least {_MIN_STEPS} are needed)"
               if n < _MIN_STEPS else
               f"the loss was still falling at the end of the {n} steps (see {where})")
        _warn(f" has not converged: {why}; raise num_steps or learning_rate")


def _warn(message: str) -> None:
    # the first frame outside probde: the caller of DeepGPEmulator.fit or .from_runs
    warnings.warn(f"DeepGPEmulator's SVI fit{message}",
                  skip_file_prefixes=(str(pathlib.Path(__file__).parents[1]),))


# ---------------------------------------------------------------------- validation
def _positive_int(name, value):
    """Check that the option `name` is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive integer; got {describe(value)}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value}")


def _check_options(layers, num_features, width, kernel, num_steps, learning_rate, batch_size,
                   num_draws, seed) -> DeepGPDiscrepancy:
    """Check the deep-GP options; the layers, features, width and kernel are checked by
    `DeepGPDiscrepancy` (same messages), whose validated settings are returned."""
    _check_seed(seed)
    disc = DeepGPDiscrepancy(layers, num_features=num_features, kernel=kernel, width=width,
                             seed=int(seed))
    _positive_int("num_steps", num_steps)
    _positive_int("num_draws", num_draws)
    if num_draws < 2:
        raise ValueError(f"num_draws must be at least 2 (a covariance); got {num_draws}")
    if batch_size is not None:
        _positive_int("batch_size", batch_size)
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, numbers.Real)
        or not (np.isfinite(learning_rate) and learning_rate > 0)
    ):
        raise ValueError(
            f"learning_rate must be a positive finite number; got {describe(learning_rate)}"
        )
    return disc
