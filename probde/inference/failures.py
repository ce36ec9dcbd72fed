"""Counting rejected proposals (failed solves, impossible predictions) during sampling.

numpyro's samplers keep no record of the points they reject inside a trajectory, and a
failed solve must never stop the run, so every transition counts the model's rejections
(`probde.model.report.count_rejections`, whose docstring says how, without a host
callback) and the kernel carries the count in its state:

- `rejected`: the model evaluations rejected in the transition that produced this state
  (kept per draw, sample_stats `rejected`);
- `rejected_total`: the same summed over the chain so far, warmup included (the run's
  total is read from the last state).

`CountingNUTS` adds the two fields to numpyro's NUTS; `RandomWalkMetropolisKernel` and the
SVI loop carry theirs themselves. A method hands the run's total to `probde.infer` as
`stats[REJECTED_TOTAL]`, one number per chain (`AbstractMethod.run`).
"""

from __future__ import annotations

from collections import namedtuple

import jax.numpy as jnp
import numpy as np
from numpyro.infer import NUTS as _NumpyroNUTS
from numpyro.infer.hmc import HMCState

from ..model.report import count_rejections

REJECTED_TOTAL = "rejected_total"

CountedHMCState = namedtuple("CountedHMCState", HMCState._fields + ("rejected", REJECTED_TOTAL))
CountedHMCState.__doc__ = "numpyro's `HMCState` and the counts of `failures.py`."


def _counting(sample_fn):
    """One chain's NUTS transition `sample_fn(HMCState, args, kwargs)` as a transition
    of `CountedHMCState`s."""
    def sample(state, model_args, model_kwargs):
        inner = HMCState(*state[:len(HMCState._fields)])
        new, n = count_rejections(sample_fn, inner, model_args, model_kwargs)
        return CountedHMCState(*new, n, getattr(state, REJECTED_TOTAL) + n)

    sample.counts_rejections = True
    return sample


class CountingNUTS(_NumpyroNUTS):
    """numpyro's NUTS whose state (`CountedHMCState`) also counts the model evaluations
    rejected in each transition (`failures.py`). Draws are those of numpyro's NUTS with
    the same key: the count is only read, never fed back."""

    def _init_state(self, rng_key, model_args, model_kwargs, init_params):
        init_params = super()._init_state(rng_key, model_args, model_kwargs, init_params)
        # numpyro builds the one-chain transition here and, for vectorized chains, maps it
        # over the chains in `init`; count inside the map, so each chain has its counter.
        if self._sample_fn is not None and not getattr(self._sample_fn, "counts_rejections",
                                                       False):
            self._sample_fn = _counting(self._sample_fn)
        return init_params

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs={}):  # noqa: B006 - numpyro's signature
        state = super().init(rng_key, num_warmup, init_params, model_args, model_kwargs)
        zero = jnp.zeros(jnp.shape(state.i), jnp.int32)
        return CountedHMCState(*state, zero, zero)


def run_total(last_state) -> np.ndarray:
    """Per-chain totals (warmup and sampling) from a run's last state, flat."""
    return np.asarray(getattr(last_state, REJECTED_TOTAL)).reshape(-1)
