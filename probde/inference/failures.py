"""Counting rejected proposals (failed solves, impossible predictions) during sampling.

numpyro's samplers keep no record of the points they reject inside a trajectory, and a
failed solve must never stop the run, so the model reports each rejection to the host
(`probde.model.report.report`, a pure callback that calls the `FailureCounter` passed
in from here; its module docstring says why it is built the way it is).
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
