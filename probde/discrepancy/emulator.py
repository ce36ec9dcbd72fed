r"""Gaussian-process emulator of an expensive simulator (Kennedy & O'Hagan 2001).

When one run of the simulator costs minutes (an external code, a PDE solve), the posterior
of its parameters cannot call it inside MCMC. The emulator replaces it by a Gaussian process
$\eta(t, \theta)$ trained on a few dozen runs at a space-filling design
(`probde.design.latin_hypercube`), whose predictive mean and covariance then stand in for
the simulator in the model: the calibration data are
$y = \eta(t, \theta) + \delta(t) + \varepsilon$, with the emulator's uncertainty carried
into the likelihood.

The GP algebra here is dense ($O(N^3)$ in the number $N$ = runs $\times$ times of training
points; up to about 1500 points is practical on a CPU). The kernel is a stationary gpjax
kernel evaluated through its public `cross_covariance`; its `lengthscale` (one per input
dimension) and `variance` are replaced by the emulator's hyperparameters.

This module holds `GPEmulator` and re-exports `EmulatorDiagnostics`; the parts live in
`emulator_runs` (training runs and scaling), `emulator_checks` (input validation),
`emulator_gp` (the GP algebra), `emulator_fit` (hyperparameter fit),
`emulator_diagnostics` (held-out diagnostics) and `emulator_base` (what `GPEmulator` shares
with `DeepGPEmulator`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from gpjax.kernels import AbstractKernel
from jaxtyping import Array, Float

from .._checks import describe
from ._linalg import _solve_lower_by_inverse  # noqa: F401  (re-exported: tests import it here)
from .emulator_base import _EmulatorBase
from .emulator_checks import _check_held_out, _check_kernel, _check_noise, _check_seed
from .emulator_diagnostics import EmulatorDiagnostics, plot_diagnostics
from .emulator_fit import (
    _condition_all,
    _fit_hyper,
    _held_out_diagnostics,
    _hyperparameter_priors,
)
from .emulator_gp import _jitter, _predict_fitted, _predict_hyper, _training_log_marginal
from .emulator_runs import _check_fit_inputs, _check_runs, _new_inputs, _readonly, _run_simulator

__all__ = ["EmulatorDiagnostics", "GPEmulator"]

# jaxtyping shapes of the public methods (F722: ruff reads the dimension strings as code)
Scalar = Float[Array, ""]  # noqa: F722
MeanTO = Float[Array, "T O"]  # noqa: F722
CovOTT = Float[Array, "O T T"]  # noqa: F722


# ---------------------------------------------------------------------------- emulator
@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class GPEmulator(_EmulatorBase):
    r"""A Gaussian-process emulator of a simulator $\eta(t, \theta)$, one GP per observable.

    $$\eta_o(t, \theta) \sim \mathcal{GP}\big(m_o,\ s_o^2\, k_o((t, \theta), (t', \theta'))\big),
    \qquad z_{ij o} = \eta_o(t_j, \theta_i) + \epsilon_{ijo},\quad
    \epsilon \sim \mathcal N(0, s_o^2\,\text{noise}_o),$$

    with inputs $(t, \theta_1, \dots, \theta_P)$ scaled to the unit cube (times by the
    range of the training times, parameters by `bounds`), $m_o, s_o$ the mean and standard
    deviation of observable $o$ over the runs that are not held out (standardisation), $k_o$ a
    stationary kernel with one lengthscale per input dimension and a variance.

    Build it with `GPEmulator.fit` (runs the simulator) or `GPEmulator.from_runs` (runs
    already made); the constructor is internal.

    **Fitting.** A fraction `held_out` of the runs (whole runs, chosen at random with
    `seed`) is held out. The hyperparameters maximise the log marginal likelihood of the
    remaining runs plus the log density of weak LogNormal priors on the log-hyperparameters
    (`hyperparameter_priors()`), by L-BFGS-B from the best of a few starting points. The
    held-out runs give the `diagnostics`; then the GP is conditioned on *all* runs with
    those hyperparameters (no refit, so the diagnostics describe the hyperparameters in
    use; the final emulator has more data and is, if anything, slightly better).

    **Use in calibration.** `predict(times, theta)` is a pure JAX function of `theta`
    (jit, grad, vmap); with `hyper=None` it uses the fitted hyperparameters (modular or
    two-stage Kennedy–O'Hagan). For the full Kennedy–O'Hagan posterior, sample `hyper`
    from `hyperparameter_priors()`, add `training_log_marginal(hyper)` (the density
    $p(z \mid \psi)$ of the simulator runs) to the log density, and pass the same `hyper`
    to `predict`. The emulator object is immutable and hashed by identity: close over it
    or pass it as a static argument; its arrays become constants of the compiled program.

    **Example:**

    ```python
    >>> import numpy as np
    >>> from probde.design import latin_hypercube
    >>> from probde.discrepancy.emulator import GPEmulator
    >>> times = np.linspace(0.0, 1.0, 5)
    >>> design = latin_hypercube({"k": (0.5, 2.0)}, 6, seed=0)
    >>> emu = GPEmulator.fit(lambda theta: theta["k"] * times, times, design,
    ...                      held_out=0.0, progress_bar=False)
    >>> mean, cov = emu.predict(np.array([0.25, 0.75]), {"k": 1.2})
    >>> mean.shape, cov.shape
    ((2, 1), (1, 2, 2))
    >>> bool(np.allclose(mean[:, 0], [0.3, 0.9], atol=0.02))
    True

    ```
    """

    # and the fields of _EmulatorBase: names, times, bounds, design, outputs, scaling,
    # diagnostics
    _kernel: AbstractKernel
    _fit_noise: bool
    _noise: float  # the fixed nugget when not fitted
    _hyper: dict  # constrained, fitted: lengthscale (O, D), variance (O,), noise (O,)
    _x: jax.Array  # (N, D) scaled inputs of all runs, run-major
    _y: jax.Array  # (O, N) standardised outputs of all runs
    _chol: jax.Array  # (O, N, N) at the fitted hyperparameters
    _chol_inv: jax.Array  # (O, N, N) its inverse (predict solves by products; see _predict)
    _alpha: jax.Array  # (O, N)

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
        kernel: AbstractKernel | None = None,
        held_out: float = 0.2,
        noise: float | str = 1e-6,
        seed: int = 0,
        progress_bar: bool = True,
    ) -> GPEmulator:
        r"""Run the simulator at every design point and fit the emulator to the runs.

        **Main arguments:**

        - `simulator`: `theta -> outputs`, called once per design point with a dict of
          parameter name -> float; returns an array `(T, O)` (or `(T,)` for one observable)
          of outputs at `times`. It may be any Python code (numpy, an external program);
          it is called in a plain loop, never traced.
        - `times`: the `T` output times of every run, strictly increasing.
        - `design`: dict of parameter name -> `(n,)` values (as from
          `probde.design.latin_hypercube`), or an `(n, P)` array with `parameter_names`.

        **Other arguments:**

        - `parameter_names`: names of the design's columns (required for an array design;
          for a dict design, the order of the parameters).
        - `observables`: names of the `O` outputs (default `y0, y1, ...`).
        - `bounds`: dict name -> `(low, high)` that maps each parameter to [0, 1] (default:
          the design's range). Use the box the design was drawn in.
        - `kernel`: a stationary gpjax kernel (default `gpjax.kernels.Matern52()`); its
          lengthscale and variance are replaced by the fitted ones, one lengthscale per
          input dimension (time and each parameter); other parameters stay fixed.
        - `held_out`: fraction of runs held out for `diagnostics` (0 for none).
        - `noise`: nugget variance in standardised units (a fraction of each output's
          variance), a number >= 0, or `"fit"` to estimate one per observable (for
          simulators with numerical noise).
        - `seed`: seed of the choice of held-out runs.
        - `progress_bar`: show a tqdm progress bar over the simulator runs.

        **Returns:**

        A `GPEmulator`.
        """
        times, design, names = _check_fit_inputs(simulator, times, design, parameter_names)
        return cls.from_runs(
            times,
            design,
            _run_simulator(simulator, times, design, names, progress_bar),
            parameter_names=names,
            observables=observables,
            bounds=bounds,
            kernel=kernel,
            held_out=held_out,
            noise=noise,
            seed=seed,
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
        kernel: AbstractKernel | None = None,
        held_out: float = 0.2,
        noise: float | str = 1e-6,
        seed: int = 0,
    ) -> GPEmulator:
        """Fit the emulator to simulator runs already made.

        `outputs` has shape `(n, T, O)` (or `(n, T)`): run `i` at design point `i`; the
        other arguments are those of `GPEmulator.fit`.
        """
        runs = _check_runs(times, design, outputs, parameter_names, observables, bounds)
        kernel = _check_kernel(kernel, 1 + len(runs.names))
        fit_noise, noise = _check_noise(noise)
        held = _check_held_out(held_out, runs.design.shape[0])
        _check_seed(seed)

        runs = runs.split(held, seed)
        n, T, n_obs = runs.outputs.shape
        x_all = runs.inputs()  # (n * T, D)
        y_all = runs.standardised().reshape(n * T, n_obs).T  # (O, n * T)
        rows = (runs.fit_idx[:, None] * T + np.arange(T)).ravel()
        x_fit, y_fit = x_all[rows], y_all[:, rows]

        hyper = _fit_hyper(kernel, jnp.asarray(x_fit), jnp.asarray(y_fit), noise, fit_noise)

        diagnostics = _held_out_diagnostics(runs, kernel, hyper, x_fit, y_fit) if held else None

        x_all, y_all = jnp.asarray(x_all), jnp.asarray(y_all)
        chol, alpha, chol_inv = _condition_all(kernel, hyper, x_all, y_all)
        if not bool(jnp.all(jnp.isfinite(chol))):
            raise RuntimeError(
                "the training covariance of the emulator is not positive definite at the fitted "
                "hyperparameters (duplicate or nearly duplicate runs?); raise noise= or use "
                "noise='fit'"
            )
        return cls(
            **runs.fields(),
            _kernel=kernel,
            _fit_noise=fit_noise,
            _noise=noise,
            _hyper={k: _readonly(np.asarray(v)) for k, v in hyper.items()},
            _x=x_all,
            _y=y_all,
            _chol=chol,
            _chol_inv=chol_inv,
            _alpha=alpha,
            diagnostics=diagnostics,
        )

    # ------------------------------------------------------------------- properties
    @property
    def kernel(self) -> AbstractKernel:
        """The gpjax kernel (its lengthscale and variance are not the fitted ones)."""
        return self._kernel

    @property
    def hyperparameters(self) -> dict[str, np.ndarray]:
        """The fitted hyperparameters (constrained, standardised units): `lengthscale`
        `(O, D)` with `D = 1 + P` (time first), `variance` `(O,)`, and `noise` `(O,)` when
        it was fitted."""
        keys = ("lengthscale", "variance") + (("noise",) if self._fit_noise else ())
        return {k: self._hyper[k] for k in keys}

    @property
    def noise(self) -> np.ndarray:
        """The nugget variance per observable `(O,)`, in standardised units (fitted or fixed),
        not counting the jitter."""
        return self._hyper["noise"]

    @property
    def jitter(self) -> float:
        """The diagonal jitter added to the nugget, relative to each GP's variance."""
        return _jitter(self._x.dtype)

    # ------------------------------------------------------------ the GP, as JAX functions
    def hyperparameter_priors(self) -> dict[str, dist.Distribution]:
        """Weak priors of the hyperparameters, the ones used by the fit (standardised units).

        **Returns:**

        dict with `lengthscale` (LogNormal, batch shape `(O, D)`, unit-cube inputs, time
        first), `variance` (LogNormal, `(O,)`, relative to the standardised outputs) and,
        with `noise="fit"`, `noise` (LogNormal, `(O,)`). The keys are those `predict` and
        `training_log_marginal` take in `hyper`.
        """
        n_obs, D = len(self._observables), 1 + len(self._parameter_names)
        return _hyperparameter_priors(n_obs, D, self._fit_noise)

    def training_log_marginal(self, hyper: Mapping[str, Array] | None = None) -> Scalar:
        r"""Log density of all simulator runs given the hyperparameters, $\log p(z \mid \psi)$.

        The sum over observables of $\log\mathcal N(\tilde z_o \mid 0, K_o + (\text{noise}_o +
        \text{jitter}\cdot\text{variance}_o) I)$ of the standardised outputs
        $\tilde z_o = (z_o - m_o)/s_o$, plus the Jacobian $-N \sum_o \log s_o$ of the
        standardisation, so that it is the density of the outputs in their own units (the
        Jacobian is a constant: it does not change inference on $\psi$). Jit/grad-safe.

        **Arguments:**

        - `hyper`: dict of constrained hyperparameters with the keys of
          `hyperparameter_priors()`; `None` for the fitted ones.
        """
        ls, var, noise = self._hyper_arrays(hyper)
        n = self._x.shape[0]
        return _training_log_marginal(self._kernel, self._x, self._y, ls, var, noise) - n * float(
            np.sum(np.log(self._scale))
        )

    def predict(
        self,
        times,
        theta,
        hyper: Mapping[str, Array] | None = None,
        *,
        include_noise: bool = False,
    ) -> tuple[MeanTO, CovOTT]:
        r"""Predictive mean and covariance of the simulator outputs at `times` for `theta`.

        Pure JAX: jit, vmap and grad in `theta` (and `hyper`) work.

        **Arguments:**

        - `times`: `(T,)` output times (any times; the emulator interpolates between the
          training times, and reverts to the mean outside their range).
        - `theta`: dict of parameter name -> scalar (extra keys are ignored, so a model's
          whole parameter dict can be passed), or a `(P,)` array in `parameter_names`
          order.
        - `hyper`: `None` for the fitted hyperparameters, or a dict of constrained values
          with the keys of `hyperparameter_priors()` (joint inference); then the training
          covariance is factorised again, at $O(N^3)$ per call.
        - `include_noise`: add the nugget to the covariance (the predictive of a new run,
          rather than of the latent simulator output).

        **Returns:**

        `(mean, cov)`: `mean (T, O)` and `cov (O, T, T)` (independent observables), in the
        simulator's units.
        """
        times, theta = self._check_new_inputs(times, theta)
        state = (self._kernel, self._x, jnp.asarray(self._lows), jnp.asarray(self._highs))
        scaling = (jnp.asarray(self._loc), jnp.asarray(self._scale))
        if hyper is None:
            ls, var, noise = self._hyper_arrays(None)
            return _predict_fitted(
                state,
                self._chol,
                self._chol_inv,
                self._alpha,
                ls,
                var,
                noise,
                scaling,
                self._times_range,
                times,
                theta,
                include_noise,
            )
        ls, var, noise = self._hyper_arrays(hyper)
        return _predict_hyper(
            state,
            self._y,
            ls,
            var,
            noise,
            scaling,
            self._times_range,
            times,
            theta,
            include_noise,
        )

    # --------------------------------------------------------------- reports and plots
    def summary(self) -> str:
        """A text report: data, kernel, fitted hyperparameters and held-out diagnostics."""
        noise = "fitted" if self._fit_noise else f"fixed at {self._noise:g}"
        dims = ("t",) + self._parameter_names
        lines = [
            self._summary_head(),
            f"  kernel {type(self._kernel).__name__}, nugget {noise} (standardised units)",
            "  hyperparameters (lengthscales in unit-cube inputs, variances standardised):",
        ]
        for o, name in enumerate(self._observables):
            ls = ", ".join(
                f"{d}={v:.3g}" for d, v in zip(dims, self._hyper["lengthscale"][o], strict=True)
            )
            lines.append(
                f"    {name}: lengthscale {ls}; variance {self._hyper['variance'][o]:.3g}; "
                f"noise {self._hyper['noise'][o]:.3g}"
            )
        lines += self._summary_diagnostics(
            "{m} runs held out; fitted on {fit}, then conditioned on all {n}"
        )
        return "\n".join(lines)

    def plot_diagnostics(self, path=None):
        """Held-out diagnostics: predicted vs simulated with 95% error bars, one panel per
        observable, and empirical vs nominal coverage. Returns the matplotlib figure; saves
        it to `path` when given."""
        if self.diagnostics is None:
            raise ValueError(
                "this emulator has no diagnostics: it was fitted with held_out=0; "
                "fit with held_out > 0 (e.g. 0.2)"
            )
        return plot_diagnostics(self.diagnostics, path)

    # ------------------------------------------------------------------------ helpers
    def _check_new_inputs(self, times, theta):
        """`times (T,)` and `theta (P,)` as arrays of the emulator's dtype (shape checks only,
        so that it works on traced values)."""
        return _new_inputs(self._parameter_names, self._x.dtype, times, theta)

    def _hyper_arrays(self, hyper):
        n_obs, D = len(self._observables), 1 + len(self._parameter_names)
        if hyper is None:
            return tuple(jnp.asarray(self._hyper[k]) for k in ("lengthscale", "variance", "noise"))
        if not isinstance(hyper, Mapping):
            raise TypeError(
                "hyper must be a dict of hyperparameters with the keys of "
                f"hyperparameter_priors(), or None; got {describe(hyper)}"
            )
        expected = set(self.hyperparameter_priors())
        if set(hyper) != expected:
            raise ValueError(
                f"hyper must have exactly the keys {sorted(expected)} (those of "
                f"hyperparameter_priors()); got {sorted(hyper)}"
            )
        shapes = {"lengthscale": (n_obs, D), "variance": (n_obs,), "noise": (n_obs,)}
        out = {}
        for key in expected:
            value = jnp.asarray(hyper[key])
            try:
                out[key] = jnp.broadcast_to(value, shapes[key]).astype(self._x.dtype)
            except ValueError:
                raise ValueError(
                    f"hyper[{key!r}] must have shape {shapes[key]} (or broadcast to it); "
                    f"got shape {value.shape}"
                ) from None
        noise = out["noise"] if self._fit_noise else jnp.asarray(self._hyper["noise"])
        return out["lengthscale"], out["variance"], noise
