"""Counting rejected proposals (failed solves, impossible predictions) during sampling.

numpyro's samplers keep no record of the points they reject inside a trajectory, and a
failed solve must never stop the run, so the model reports each rejection to the host
through `jax.debug.callback`. The callback sits in the `True` branch of a `lax.cond`, so
on sequential and parallel chains it only runs when a proposal is rejected; the hot path
pays nothing. (With vectorized chains `cond` becomes `select` and the callback runs on
every evaluation with the batch of flags.)
"""

from __future__ import annotations

import threading

import numpy as np


class FailureCounter:
    """A thread-safe host-side counter of rejected evaluations."""

    def __init__(self):
        self._lock = threading.Lock()
        self.count = 0

    def __call__(self, rejected) -> None:
        n = int(np.sum(np.asarray(rejected)))
        with self._lock:
            self.count += n

    def reset(self) -> int:
        with self._lock:
            n, self.count = self.count, 0
        return n
