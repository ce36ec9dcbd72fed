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
    the same key: the count is only read, never fed back.

    Two additions let one warmup run in two parts (`probde.NUTS`'s screen, then the rest):
    `warmup_schedule` (keyword) builds the adaptation schedule for that many warmup
    iterations whatever `MCMC`'s `num_warmup` (the part it runs), and `init` given a
    `CountedHMCState` as `init_params` resumes that state (iteration counter, random key,
    step size, dual averaging, mass-matrix windows) with its counts reset: a warmup run in
    two parts is the warmup run at once, draw for draw. numpyro's
    `post_warmup_state` resumes a state only to sample, never to go on adapting."""

    def __init__(self, *args, warmup_schedule: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.warmup_schedule = warmup_schedule

    def _init_state(self, rng_key, model_args, model_kwargs, init_params):
        init_params = super()._init_state(rng_key, model_args, model_kwargs, init_params)
        # numpyro builds the one-chain transition here and, for vectorized chains, maps it
        # over the chains in `init`; count inside the map, so each chain has its counter.
        if self._sample_fn is not None and not getattr(self._sample_fn, "counts_rejections",
                                                       False):
            self._sample_fn = _counting(self._sample_fn)
        return init_params

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs={}):  # noqa: B006 - numpyro's signature
        resume = init_params if isinstance(init_params, CountedHMCState) else None
        if resume is not None:
            init_params = resume.z
        if self.warmup_schedule is not None:
            num_warmup = self.warmup_schedule
        # Always numpyro's init: it sets up the transition (the potential, the adaptation
        # schedule) that the resumed state then goes on with.
        state = super().init(rng_key, num_warmup, init_params, model_args, model_kwargs)
        zero = jnp.zeros(jnp.shape(state.i), jnp.int32)
        if resume is not None:
            return resume._replace(rejected=zero, rejected_total=zero)
        return CountedHMCState(*state, zero, zero)


def run_total(last_state) -> np.ndarray:
    """Per-chain totals (warmup and sampling) from a run's last state, flat."""
    return np.asarray(getattr(last_state, REJECTED_TOTAL)).reshape(-1)
