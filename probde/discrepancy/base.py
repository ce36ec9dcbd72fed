"""The one interface every model-discrepancy kind implements (`AbstractDiscrepancy`).

`probde.Model` assembles its numpyro program from parts. The discrepancy part is asked for
its *term* given the simulator's prediction on the noise model's link scale
(`DiscrepancyInputs`), and answers with a `DiscrepancyTerm`: either a distribution of all
the data (the discrepancy integrated out, e.g. a marginal GP), or the discrepancy's values
`delta` at the data times (and at new times, for predictions), which the model adds to the
prediction before independent noise. A new kind of discrepancy is one new class; the model
never switches on the kind.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import numpyro.distributions as dist


@dataclasses.dataclass(frozen=True)
class DiscrepancyInputs:
    """What the model hands a discrepancy when it assembles the program.

    - `names`: the numpyro site names of the discrepancy's latent variables (from
      `site_names`), plus `"z"` for a latent GP's standardised values.
    - `times (T,)`: the data times (a minibatch of them under SVI subsampling).
    - `loc (E, T, O)`: the simulator's prediction on the link scale.
    - `index (O_d,)`: the observables that have a discrepancy.
    - `observation`: the noise model; `hyper`: its hyperparameter values.
    - `values (E, T, O)`, `mask (E, T, O)`: the data (missing values filled) and where
      they were observed.
    - `observed`: the program conditions on the data (else it samples them);
      `conditional`: a posterior predictive draw of the discrepancy given the data.
    - `new_times (M,)` or `None`: times at which predictions are wanted.
    - `extra (O, T, T)` or `None`: a further covariance of the prediction (an emulator's).
    - `setup`: what `setup` returned for these data (e.g. input standardisation).
    - `key`: a function returning a fresh random key (numpyro's `prng_key`).
    """

    names: Mapping[str, str]
    times: jax.Array
    loc: jax.Array
    index: np.ndarray
    observation: Any
    hyper: Mapping[str, jax.Array]
    values: jax.Array
    mask: jax.Array
    observed: bool
    conditional: bool
    new_times: jax.Array | None
    extra: jax.Array | None
    setup: Any
    key: Callable[[], jax.Array]


@dataclasses.dataclass(frozen=True)
class DiscrepancyTerm:
    """A discrepancy's answer: `joint`, a distribution of all the data `(E, T, O)` that
    replaces independent noise; or `delta (E, T, O_d)` on the link scale at the data times,
    with `delta_new`: its values `(E, M, O_d)` at the new times, or a function
    `(new_times, loc_new) -> (E, M, O_d)`, or `None`."""

    joint: dist.Distribution | None = None
    delta: jax.Array | None = None
    delta_new: jax.Array | Callable | None = None


class AbstractDiscrepancy(abc.ABC):
    """A model-discrepancy term $\\delta$ on the noise model's link scale.

    Concrete kinds: `GPDiscrepancy` (marginal or latent), `MarkovGPDiscrepancy`,
    `DeepGPDiscrepancy`. The model calls the checks once, at construction and on data,
    and `term` inside the numpyro program.
    """

    #: observables with a discrepancy (`None`: all)
    observables: Sequence[str] | None = None
    #: the likelihood factorises over time points given the latent values (SVI may
    #: subsample time points)
    minibatch: bool = False
    #: the discrepancy can take a further covariance of the prediction (an emulator's)
    accepts_covariance: bool = False

    @abc.abstractmethod
    def check_model(self, observables: Sequence[str], observation) -> None:
        """Raise a clear error if the discrepancy does not fit the model's observables or
        noise model."""

    def check_times(self, start: float, end: float) -> None:
        """Raise if something of the discrepancy lies outside the time range `[start, end]`."""

    @abc.abstractmethod
    def site_names(self, taken: set[str]) -> dict[str, str]:
        """Site names of the latent variables, avoiding the names in `taken`."""

    @abc.abstractmethod
    def observable_index(self, observables: Sequence[str]) -> np.ndarray:
        """Positions in `observables` of the observables with a discrepancy."""

    def is_marginal(self, observation) -> bool:
        """Whether the discrepancy is integrated out analytically under this noise."""
        return False

    def setup(self, times, link_values, mask) -> Any:
        """Precompute what `term` needs from the data (numpy, outside the program)."""
        return None

    def site_dims(self, name: str, value_shape: tuple, names: Mapping[str, str]) -> list[str]:
        """Dim names of the latent site `name` (one of `names.values()`) for the ArviZ
        posterior, without chain and draw."""
        return ["discrepancy_observable"] if value_shape else []

    def weight_sites(self, names: Mapping[str, str]) -> set[str]:
        """Latent sites that are weights rather than interpretable parameters."""
        return set()

    @abc.abstractmethod
    def term(self, inputs: DiscrepancyInputs) -> DiscrepancyTerm:
        """Sample the discrepancy's latent variables (numpyro sites) and return its term."""
