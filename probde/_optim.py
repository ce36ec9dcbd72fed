"""Optimisation helpers shared by the inference layer and model terms fitted by SVI, kept
below both so that neither imports the other."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from numpyro.infer.svi import SVIState

# The `infer` key with which a model term marks sample sites to start near zero or at their
# prior median (a deep GP's weights and hyperparameters); read by the samplers' and
# optimisers' init strategy (`probde.inference.initialisation`).
SMALL_INIT = "probde_small_init"
# Marked weights start uniform in (-SMALL_INIT_RADIUS, SMALL_INIT_RADIUS), unconstrained.
SMALL_INIT_RADIUS = 0.1


def svi_step(svi, model_kwargs):
    """One step of the numpyro `SVI` object `svi` for `lax.scan`, undone when its loss or
    its new parameters are not finite.

    A skipped step keeps the optimiser state (parameters, moments, schedule count) as it
    was and only moves the random key on. The step returns `(state, (loss, skipped))`.
    """

    def step(state, _):
        new, loss = svi.update(state, **model_kwargs)
        flat, _ = ravel_pytree(svi.optim.get_params(new.optim_state))
        ok = jnp.isfinite(loss) & jnp.all(jnp.isfinite(flat))
        optim_state = jax.tree.map(
            lambda a, b: jnp.where(ok, a, b), new.optim_state, state.optim_state
        )
        return SVIState(optim_state, new.mutable_state, new.rng_key), (loss, ~ok)

    return step


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
