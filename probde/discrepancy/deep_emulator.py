r"""Deep-GP emulator of an expensive simulator: the random-feature deep GP of
`probde.discrepancy.deepgp` trained on simulator runs (modular: fitted once, before
calibration).

Where `GPEmulator` is exact GP algebra ($O(N^3)$ in the training points), this emulator
is a Bayesian network of random-feature GP layers whose weights are fitted by stochastic
variational inference (minibatches of training points when asked), so it scales to many
runs and can follow simulators whose behaviour changes across the parameter space
(non-stationary responses), at the price of an approximate posterior.

This module holds `DeepGPEmulator` and its predictive moments; the SVI fit is in
`deep_emulator_fit`, and what it shares with `GPEmulator` in `emulator_base`,
`emulator_runs` and `emulator_checks`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._checks import describe
from .deep_emulator_fit import _check_options, _fit_deep_gp
from .deepgp import forward
from .emulator_base import _EmulatorBase
from .emulator_checks import _check_held_out
from .emulator_runs import (
    _check_fit_inputs,
    _check_runs,
    _new_inputs,
    _new_x,
    _readonly,
    _run_simulator,
)

__all__ = ["DeepGPEmulator"]

MeanTO = Float[Array, "T O"]  # noqa: F722
CovOTT = Float[Array, "O T T"]  # noqa: F722


def _jitter(dtype) -> float:
    """Diagonal jitter of the predictive covariance, in standardised units."""
    return 1e-6 if jnp.dtype(dtype) == jnp.float64 else 1e-4


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class DeepGPEmulator(_EmulatorBase):
    r"""A deep-GP emulator of a simulator $\eta(t, \theta)$: random-feature GP layers
    (Cutajar et al. 2017) fitted to simulator runs by SVI.

    $$\tilde z_{ij} = f_L \circ \dots \circ f_1(t_j, \theta_i) + \epsilon_{ij},\quad
    \epsilon_{ijo} \sim \mathcal N(0, \sigma_o^2),$$

    with inputs $(t, \theta_1, \dots, \theta_P)$ scaled to the unit cube exactly as in
    `GPEmulator` (times by the range of the training times, parameters by `bounds`), and
    outputs $\tilde z$ standardised per observable by their mean and sd over the training
    runs. Each layer is the random-feature GP of `probde.DeepGPDiscrepancy`: hidden layers
    have the identity mean and variance `hidden_variance`, the last layer has variance
    `variance`, mean 0 and one output column per observable. Priors (scaled units):
    standard normal weights, lengthscale per layer `LogNormal(log 0.3, 0.75)`, `variance`
    `HalfNormal(1)`, `hidden_variance` `HalfNormal(0.2)`, noise sd per observable
    $\sigma_o$ `HalfNormal(0.1)`.

    Build it with `DeepGPEmulator.fit` (runs the simulator) or `DeepGPEmulator.from_runs`
    (runs already made); the constructor is internal.

    **Fitting.** A fraction `held_out` of the runs (whole runs, chosen at random with
    `seed`) is held out; the deep GP is fitted to the others by `num_steps` SVI steps with
    a mean-field normal guide (`numpyro.infer.autoguide.AutoNormal`, weights started near
    zero), Adam on a warmup-cosine schedule, minibatches of `batch_size` training points
    when given; `loss_trace` keeps the loss (negative ELBO) of every step. Then
    `num_draws` sets of weights and hyperparameters are drawn from the
    guide once (fixed by `seed`) and kept: they *are* the emulator. The held-out runs give
    the `diagnostics`. Unlike `GPEmulator`, the emulator is **not** refitted on all runs:
    refitting a deep GP costs a whole SVI run, and this way the diagnostics describe the
    emulator in use (the held-out runs are simply not used for training; use `held_out=0`
    to train on every run, without diagnostics). The emulator interpolates: beyond the
    training runs' range of the parameters it extrapolates, and there its error is larger
    and its intervals (from a mean-field guide) too narrow: draw the design over the
    whole support of the calibration's prior.

    **Use in calibration.** `predict(times, theta)` is the mean and covariance over the
    kept draws of the deep GP at `(times, theta)`: a pure JAX function of `theta` (jit,
    grad, vmap). `probde.Model(emulator, ..., initial_state=None)` calibrates with it in
    modular (two-stage) Kennedy–O'Hagan, `emulation="modular"`; joint inference of the
    emulator with $\theta$ (`emulation="joint"`) needs `GPEmulator`. The emulator is
    immutable and hashed by identity.

    **Example:**

    ```python
    >>> import numpy as np
    >>> from probde.design import latin_hypercube
    >>> from probde.discrepancy.deep_emulator import DeepGPEmulator
    >>> times = np.linspace(0.0, 1.0, 6)
    >>> design = latin_hypercube({"k": (0.5, 2.0)}, 10, seed=0)
    >>> emu = DeepGPEmulator.fit(lambda theta: theta["k"] * times, times, design,
    ...                          num_features=20, num_steps=1500, num_draws=16,
    ...                          held_out=0.0, progress_bar=False)
    >>> mean, cov = emu.predict(np.array([0.25, 0.75]), {"k": 1.2})
    >>> mean.shape, cov.shape
    ((2, 1), (1, 2, 2))
    >>> bool(np.allclose(mean[:, 0], [0.3, 0.9], atol=0.15))
    True

    ```
    """

    # and the fields of _EmulatorBase: names, times, bounds, design, outputs, scaling,
    # diagnostics
    _kernel: object
    _layers: int
    _num_features: int
    _width: int
    _omegas: tuple  # (F, D_l) per layer
    _draws: dict  # lengthscale (S, L), variance (S,), hidden_variance (S, L-1), noise (S, O),
    #               weights: tuple of (S, 2F, D_{l+1})
    _fit_runs: np.ndarray  # indices of the training runs
    _settings: dict  # num_steps, learning_rate, batch_size, seed
    loss_trace: np.ndarray

    # ------------------------------------------------------------------- constructors
    @classmethod
    def fit(
        cls,
        simulator: Callable[[dict[str, float]], np.ndarray],
        times,
        design,
        *,
        parameter_names: Sequence[str] | None = None,
        observables: Sequence[str] | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        layers: int = 2,
        num_features: int = 100,
        width: int | None = None,
        kernel=None,
        held_out: float = 0.2,
        num_steps: int = 5000,
        learning_rate: float = 1e-2,
        batch_size: int | None = None,
        num_draws: int = 64,
        seed: int = 0,
        progress_bar: bool = True,
    ) -> DeepGPEmulator:
        r"""Run the simulator at every design point and fit the deep-GP emulator to the runs.

        **Main arguments:**

        - `simulator`: `theta -> outputs`, called once per design point with a dict of
          parameter name -> float; returns an array `(T, O)` (or `(T,)` for one observable)
          of outputs at `times`. Any Python code; called in a plain loop, never traced.
        - `times`: the `T` output times of every run, strictly increasing.
        - `design`: dict of parameter name -> `(n,)` values (as from
          `probde.design.latin_hypercube`), or an `(n, P)` array with `parameter_names`.

        **Other arguments:**

        - `parameter_names`, `observables`, `bounds`: as in `GPEmulator.fit`.
        - `layers`: number of random-feature GP layers (1: a single GP; 2 or 3: deep).
        - `num_features`: random frequencies $F$ per layer (each gives a cosine and a sine).
        - `width`: units of each hidden layer (default: the input dimension `1 + P`).
        - `kernel`: stationary gpjax kernel whose spectral density gives the frequencies
          (default `gpjax.kernels.RBF()`); its lengthscale and variance are ignored.
        - `held_out`: fraction of runs held out for `diagnostics` (0 for none); they are
          never trained on.
        - `num_steps`, `learning_rate`: SVI steps and Adam's peak learning rate.
        - `batch_size`: training points per SVI step (default: all).
        - `num_draws`: draws of the weights and hyperparameters kept from the fitted guide.
        - `seed`: seed of the held-out runs, the frequencies, SVI and the kept draws.
        - `progress_bar`: show progress bars over the simulator runs and the SVI steps.

        **Returns:**

        A `DeepGPEmulator`.
        """
        times, design, names = _check_fit_inputs(simulator, times, design, parameter_names)
        # the deep-GP options are checked before the (expensive) simulator runs
        _check_options(layers, num_features, width, kernel, num_steps, learning_rate,
                       batch_size, num_draws, seed)
        outputs = _run_simulator(simulator, times, design, names, progress_bar)
        return cls.from_runs(
            times, design, outputs, parameter_names=names, observables=observables,
            bounds=bounds, layers=layers, num_features=num_features, width=width,
            kernel=kernel, held_out=held_out, num_steps=num_steps,
            learning_rate=learning_rate, batch_size=batch_size, num_draws=num_draws,
            seed=seed, progress_bar=progress_bar,
        )

    @classmethod
    def from_runs(
        cls,
        times,
        design,
        outputs,
        *,
        parameter_names: Sequence[str] | None = None,
        observables: Sequence[str] | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        layers: int = 2,
        num_features: int = 100,
        width: int | None = None,
        kernel=None,
        held_out: float = 0.2,
        num_steps: int = 5000,
        learning_rate: float = 1e-2,
        batch_size: int | None = None,
        num_draws: int = 64,
        seed: int = 0,
        progress_bar: bool = True,
    ) -> DeepGPEmulator:
        """Fit the deep-GP emulator to simulator runs already made.

        `outputs` has shape `(n, T, O)` (or `(n, T)`): run `i` at design point `i`; the
        other arguments are those of `DeepGPEmulator.fit`.
        """
        runs = _check_runs(times, design, outputs, parameter_names, observables, bounds)
        held = _check_held_out(held_out, runs.design.shape[0])
        disc = _check_options(layers, num_features, width, kernel, num_steps, learning_rate,
                              batch_size, num_draws, seed)
        runs = runs.split(held, seed)
        omegas, w, draws, losses = _fit_deep_gp(runs, disc, num_steps, learning_rate,
                                                batch_size, num_draws, seed, progress_bar)
        diagnostics = _held_out_diagnostics(runs, draws, omegas) if held else None
        return cls(
            **runs.fields(),
            _kernel=disc.kernel,
            _layers=disc.layers,
            _num_features=disc.num_features,
            _width=w,
            _omegas=omegas,
            _draws=draws,
            _fit_runs=_readonly(runs.fit_idx),
            _settings={"num_steps": int(num_steps), "learning_rate": float(learning_rate),
                       "batch_size": batch_size, "seed": int(seed)},
            loss_trace=_readonly(np.asarray(losses)),
            diagnostics=diagnostics,
        )

    # ------------------------------------------------------------------- properties
    @property
    def kernel(self):
        """The gpjax kernel whose spectral density gave the frequencies."""
        return self._kernel

    @property
    def layers(self) -> int:
        return self._layers

    @property
    def num_features(self) -> int:
        return self._num_features

    @property
    def num_draws(self) -> int:
        """Number of kept draws of the weights and hyperparameters."""
        return int(self._draws["variance"].shape[0])

    @property
    def training_runs(self) -> np.ndarray:
        """Indices of the runs the deep GP was trained on (all but the held-out ones)."""
        return self._fit_runs

    @property
    def hyperparameters(self) -> dict[str, np.ndarray]:
        """Posterior means over the kept draws (scaled units): `lengthscale (L,)`,
        `variance ()`, `hidden_variance (L - 1,)` (deep GPs only) and the noise sd
        `noise (O,)` (standardised outputs)."""
        keys = ("lengthscale", "variance", "noise") + (
            ("hidden_variance",) if self._layers > 1 else ()
        )
        return {k: np.asarray(self._draws[k]).mean(axis=0) for k in keys}

    @property
    def noise(self) -> np.ndarray:
        """The fitted noise variance per observable `(O,)`, standardised units (the mean
        over the draws of the squared noise sd)."""
        return np.mean(np.asarray(self._draws["noise"]) ** 2, axis=0)

    @property
    def jitter(self) -> float:
        """The diagonal jitter of the predictive covariance (standardised units)."""
        return _jitter(self._draws["variance"].dtype)

    # ---------------------------------------------------------------------- predict
    def predict(
        self, times, theta, hyper=None, *, include_noise: bool = False
    ) -> tuple[MeanTO, CovOTT]:
        r"""Predictive mean and covariance of the simulator outputs at `times` for `theta`:
        the mean and covariance over the kept draws of the deep GP.

        Pure JAX: jit, vmap and grad in `theta` work.

        **Arguments:**

        - `times`: `(T,)` output times (the emulator is trained over the training times'
          range; outside it, it extrapolates with no guarantee).
        - `theta`: dict of parameter name -> scalar (extra keys are ignored, so a model's
          whole parameter dict can be passed), or a `(P,)` array in `parameter_names`
          order.
        - `hyper`: must be `None` (the signature is `GPEmulator.predict`'s; a deep GP's
          hyperparameters are not inferred with theta).
        - `include_noise`: add the fitted noise variance to the diagonal (the predictive
          of a new run, rather than of the latent simulator output).

        **Returns:**

        `(mean, cov)`: `mean (T, O)` and `cov (O, T, T)` (independent observables), in the
        simulator's units. The covariance has rank at most `num_draws - 1` plus a small
        diagonal jitter.
        """
        if hyper is not None:
            raise ValueError(
                "DeepGPEmulator.predict takes hyper=None: its hyperparameters are fixed by the "
                "fit (modular calibration); joint Kennedy-O'Hagan inference of the emulator's "
                f"hyperparameters needs GPEmulator; got {describe(hyper)}"
            )
        dtype = self._draws["variance"].dtype
        times, theta = _new_inputs(self._parameter_names, dtype, times, theta)
        return _predict(
            self._draws,
            self._omegas,
            (jnp.asarray(self._lows, dtype), jnp.asarray(self._highs, dtype)),
            (jnp.asarray(self._loc, dtype), jnp.asarray(self._scale, dtype)),
            self._times_range,
            times,
            theta,
            bool(include_noise),
        )

    # ---------------------------------------------------------------------- reports
    def summary(self) -> str:
        """A text report: data, deep-GP architecture, fit, hyperparameters and held-out
        diagnostics."""
        h = self.hyperparameters
        s = self._settings
        batch = "all points" if s["batch_size"] is None else f"batches of {s['batch_size']}"
        tail = self.loss_trace[-max(1, len(self.loss_trace) // 10):]
        tail = tail[np.isfinite(tail)]
        final = f"{tail.mean():.4g}" if tail.size else "nan"
        lines = [
            self._summary_head(),
            f"  deep GP: {self._layers} layer(s) of {self._num_features} random features "
            f"({type(self._kernel).__name__}), hidden width {self._width}",
            f"  SVI: {s['num_steps']} steps ({batch}), learning rate {s['learning_rate']:g}, "
            f"trained on {self._fit_runs.shape[0]} runs; final loss {final}; "
            f"{self.num_draws} draws kept",
            "  hyperparameters (means over the draws; unit-cube inputs, standardised outputs):",
            "    lengthscale per layer "
            + ", ".join(f"{v:.3g}" for v in np.atleast_1d(h["lengthscale"]))
            + f"; variance {float(h['variance']):.3g}"
            + (
                "; hidden variance " + ", ".join(f"{v:.3g}" for v in h["hidden_variance"])
                if "hidden_variance" in h else ""
            ),
            "    noise sd "
            + ", ".join(f"{o}={v:.3g}" for o, v in zip(self._observables, h["noise"], strict=True)),
        ]
        lines += self._summary_diagnostics(
            "{m} runs held out and never trained on; the emulator in use is trained on the "
            "other {fit}"
        )
        return "\n".join(lines)


# ----------------------------------------------------------------------- JAX cores
def _moments(draws, omegas, x, include_noise):
    """Standardised mean `(T, O)` and covariance `(O, T, T)` over the draws at `x (T, D)`."""
    f = jax.vmap(
        lambda w, ls, var, hidden: forward(x, omegas, list(w), ls, var, hidden)
    )(draws["weights"], draws["lengthscale"], draws["variance"], draws["hidden_variance"])
    S = f.shape[0]
    mean = jnp.mean(f, axis=0)
    c = f - mean[None]
    cov = jnp.einsum("sto,suo->otu", c, c) / max(S - 1, 1)
    diag = jnp.full((mean.shape[1],), _jitter(f.dtype), f.dtype)
    if include_noise:
        diag = diag + jnp.mean(draws["noise"] ** 2, axis=0)
    eye = jnp.eye(x.shape[0], dtype=f.dtype)
    return mean, 0.5 * (cov + jnp.swapaxes(cov, 1, 2)) + diag[:, None, None] * eye[None]


@eqx.filter_jit
def _predict(draws, omegas, box, scaling, t_range, times, theta, include_noise):
    lows, highs = box
    x = _new_x(lows, highs, t_range, times, theta)
    mean, cov = _moments(draws, omegas, x, include_noise)
    loc, scale = scaling
    return mean * scale[None, :] + loc[None, :], cov * (scale**2)[:, None, None]



def _held_out_diagnostics(runs, draws, omegas):
    """`EmulatorDiagnostics` of the deep GP's kept `draws` at the held-out runs of `runs`
    (a split `_TrainingRuns`), noise included."""
    held, T = runs.held_idx.shape[0], runs.times.shape[0]
    x_held = jnp.asarray(runs.inputs(runs.held_idx).reshape(held, T, -1))  # (m, T, D)
    mean, var = jax.jit(jax.vmap(lambda x: _moments(draws, omegas, x, True)))(x_held)
    sd = np.sqrt(np.asarray(jnp.diagonal(var, axis1=-2, axis2=-1))).transpose(0, 2, 1)
    return runs.diagnostics(mean, sd)
