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
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from statistics import NormalDist

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import numpyro.distributions as dist
import scipy.optimize
from gpjax.kernels import AbstractKernel, Matern52
from gpjax.kernels.stationary import StationaryKernel
from jaxtyping import Array, Float
from tqdm import tqdm

from .._checks import describe

__all__ = ["EmulatorDiagnostics", "GPEmulator"]

_LOG_2PI = math.log(2.0 * math.pi)
# Nominal levels of the central predictive intervals whose held-out coverage is reported.
COVERAGE_LEVELS = (0.5, 0.9, 0.95)
# Weak priors on the hyperparameters, in the emulator's scaled units: inputs in the unit
# cube, outputs standardised. (loc, scale) of LogNormal distributions.
_LENGTHSCALE_PRIOR = (0.0, 1.5)  # median 1 (the design's range), 95% within [0.05, 19]
_VARIANCE_PRIOR = (0.0, 1.5)  # median 1 (the outputs' sample variance)
_NOISE_PRIOR = (math.log(1e-4), 3.0)  # median 1e-4: a 1% noise standard deviation
# Box of the log-hyperparameters for the MAP fit (keeps L-BFGS-B away from degenerate GPs).
_LOG_BOUNDS = {
    "lengthscale": (math.log(1e-3), math.log(1e3)),
    "variance": (math.log(1e-4), math.log(1e4)),
    "noise": (math.log(1e-12), math.log(1.0)),
}


# jaxtyping shapes of the public methods (F722: ruff reads the dimension strings as code)
Scalar = Float[Array, ""]  # noqa: F722
MeanTO = Float[Array, "T O"]  # noqa: F722
CovOTT = Float[Array, "O T T"]  # noqa: F722


def _jitter(dtype) -> float:
    """Diagonal jitter relative to the signal variance, keyed by dtype."""
    return 1e-9 if jnp.dtype(dtype) == jnp.float64 else 1e-5


# --------------------------------------------------------------------- pure GP algebra
def _with_hyper(kernel, lengthscale, variance):
    """The gpjax kernel with its lengthscale and variance replaced by plain arrays."""
    return eqx.tree_at(lambda k: (k.lengthscale, k.variance), kernel, (lengthscale, variance))


def _train_cov(kernel, lengthscale, variance, noise, x):
    """`K(x, x) + (noise + jitter * variance) I` for one observable."""
    K = _with_hyper(kernel, lengthscale, variance).cross_covariance(x, x)
    nugget = noise + _jitter(K.dtype) * variance
    return K + nugget * jnp.eye(x.shape[0], dtype=K.dtype)


def _log_marginal(kernel, lengthscale, variance, noise, x, y):
    r"""$\log\mathcal N(y \mid 0, K + \text{nugget}\, I)$ of one standardised observable."""
    L = jnp.linalg.cholesky(_train_cov(kernel, lengthscale, variance, noise, x))
    a = jsl.solve_triangular(L, y, lower=True)
    return -0.5 * jnp.sum(a**2) - jnp.sum(jnp.log(jnp.diagonal(L))) - 0.5 * y.shape[0] * _LOG_2PI


def _condition(kernel, lengthscale, variance, noise, x, y):
    """Cholesky factor `L` of the training covariance and `alpha = C^{-1} y`."""
    L = jnp.linalg.cholesky(_train_cov(kernel, lengthscale, variance, noise, x))
    return L, jsl.cho_solve((L, True), y)


def _solve_lower_by_inverse(L, L_inv, B):
    """`L^{-1} B` for a lower-triangular `L (N, N)` with a precomputed inverse `L_inv`, by
    matrix products only: `X = L_inv B`, then one step of iterative refinement
    `X + L_inv (B - L X)`.

    Why not `solve_triangular`: on CPU that is a LAPACK `trsm` call into the BLAS linked by
    scipy (OpenBLAS), which multi-threads a solve of more than about 1000 entries
    (`N * columns`). At emulator sizes (N ~ 100-1000, a dozen columns) it is tens of
    microseconds of arithmetic, but the threads' hand-offs cost from a hundred microseconds
    to milliseconds when the cores are shared or busy (an MCMC chain per core, a CI runner):
    it made one gradient of a model with a 108-point emulator 20-50 times slower than the
    same model with its ODE, all of it in the two `trsm` calls (forward, and its transpose
    in the gradient). Products are XLA's own dots, and so is their gradient.

    Why the refinement step: `Kss - V^T V` cancels to a few significant digits when the
    predictive variance is far below the prior variance (near the training runs). The
    backward-stable `trsm` gives a `V` whose error cancels in `V^T V` (it is the exact `V`
    of a nearby `L`); the plain product `L_inv B` is as accurate elementwise but its error
    does not cancel, and costs about a decimal digit of the covariance. One refinement step
    against `L` itself restores `trsm`'s accuracy (checked against an 80-bit reference)."""
    hi = jax.lax.Precision.HIGHEST  # TF32 on GPUs would defeat the residual
    X = jnp.matmul(L_inv, B, precision=hi)
    return X + jnp.matmul(L_inv, B - jnp.matmul(L, X, precision=hi), precision=hi)


def _predict(kernel, lengthscale, variance, x, L, alpha, x_new, L_inv=None):
    """Posterior mean `(M,)` and covariance `(M, M)` of the latent GP at `x_new (M, D)`.

    With `L_inv` (the inverse of the Cholesky factor `L`), the triangular solve is done by
    matrix products (`_solve_lower_by_inverse`), without LAPACK; else by `trsm`."""
    k = _with_hyper(kernel, lengthscale, variance)
    Ks = k.cross_covariance(x_new, x)
    if L_inv is None:
        V = jsl.solve_triangular(L, Ks.T, lower=True)
    else:
        V = _solve_lower_by_inverse(L, L_inv, Ks.T)
    cov = k.cross_covariance(x_new, x_new) - V.T @ V
    return Ks @ alpha, 0.5 * (cov + cov.T)


def _log_prior(u, fit_noise):
    """Log density of the log-hyperparameters `u` under the LogNormal priors (Normal in u)."""
    D = u.shape[0] - (2 if fit_noise else 1)
    lp = jnp.sum(dist.Normal(*_LENGTHSCALE_PRIOR).log_prob(u[:D]))
    lp = lp + dist.Normal(*_VARIANCE_PRIOR).log_prob(u[D])
    if fit_noise:
        lp = lp + dist.Normal(*_NOISE_PRIOR).log_prob(u[D + 1])
    return lp


def _unpack(u, noise, fit_noise):
    D = u.shape[0] - (2 if fit_noise else 1)
    return jnp.exp(u[:D]), jnp.exp(u[D]), (jnp.exp(u[D + 1]) if fit_noise else noise)


# ------------------------------------------------------------------------- diagnostics
@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class EmulatorDiagnostics:
    """How well the emulator predicts simulator runs it was not trained on.

    Computed at fit time from the runs held out (whole runs, all their times): the
    hyperparameters and the conditioning use only the other runs. Predictive intervals
    include the nugget (`noise`), so they are the intervals of a new simulator output.

    **Fields:**

    - `held_out_runs`: indices of the held-out runs in the design, shape `(m,)`.
    - `simulated`, `mean`, `sd`: simulator outputs, predictive means and predictive
      standard deviations at the held-out runs, each `(m, T, O)`, original units.
    - `rmse`: root-mean-square prediction error per observable `(O,)`, original units.
    - `mean_standardised_error`: mean of `(simulated - mean) / sd` per observable (about 0
      when the emulator is unbiased); `rms_standardised_error`: its root mean square (about
      1 when the predictive variances are right, above 1 when over-confident).
    - `coverage`: dict nominal level -> `(O,)` fraction of held-out points inside the
      central predictive interval of that level, for the levels 0.5, 0.9 and 0.95.

    !!! note
        Points of one run are strongly correlated, so the coverage is about as precise as
        a binomial proportion over the number of held-out *runs*, not points.
    """

    held_out_runs: np.ndarray
    simulated: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    observables: tuple[str, ...]

    @property
    def standardised_errors(self) -> np.ndarray:
        """`(simulated - mean) / sd`, shape `(m, T, O)`."""
        return (self.simulated - self.mean) / self.sd

    @property
    def rmse(self) -> np.ndarray:
        return np.sqrt(np.mean((self.simulated - self.mean) ** 2, axis=(0, 1)))

    @property
    def mean_standardised_error(self) -> np.ndarray:
        return np.mean(self.standardised_errors, axis=(0, 1))

    @property
    def rms_standardised_error(self) -> np.ndarray:
        return np.sqrt(np.mean(self.standardised_errors**2, axis=(0, 1)))

    @property
    def coverage(self) -> dict[float, np.ndarray]:
        z = np.abs(self.standardised_errors)
        return {
            level: np.mean(z <= NormalDist().inv_cdf(0.5 + level / 2), axis=(0, 1))
            for level in COVERAGE_LEVELS
        }

    def table(self) -> str:
        """The diagnostics as a text table, one row per observable."""
        cov = self.coverage
        head = f"{'observable':<12}{'RMSE':>12}{'mean z':>9}{'rms z':>8}" + "".join(
            f"{f'cov{round(100 * lv)}':>8}" for lv in COVERAGE_LEVELS
        )
        rows = [head]
        for o, name in enumerate(self.observables):
            row = (
                f"{name:<12}{self.rmse[o]:>12.4g}{self.mean_standardised_error[o]:>9.3f}"
                f"{self.rms_standardised_error[o]:>8.3f}"
            )
            rows.append(row + "".join(f"{cov[lv][o]:>8.3f}" for lv in COVERAGE_LEVELS))
        return "\n".join(rows)

    def __repr__(self):
        m, T, _ = self.simulated.shape
        return f"EmulatorDiagnostics({m} held-out runs x {T} times)\n{self.table()}"


# ------------------------------------------------------------ shared by the emulators
@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class _EmulatorBase:
    """What `GPEmulator` and `probde.DeepGPEmulator` share: the fields of the training runs
    (`_TrainingRuns.fields`) and the diagnostics, their read-only views and the frame of
    the text report."""

    _parameter_names: tuple[str, ...]
    _observables: tuple[str, ...]
    _times: np.ndarray  # (T,)
    _lows: np.ndarray  # (P,)
    _highs: np.ndarray  # (P,)
    _design: np.ndarray  # (n, P)
    _outputs: np.ndarray  # (n, T, O)
    _loc: np.ndarray  # (O,)
    _scale: np.ndarray  # (O,)
    diagnostics: EmulatorDiagnostics | None

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """Names of the simulator's parameters, in the order of `theta` arrays."""
        return self._parameter_names

    @property
    def observables(self) -> tuple[str, ...]:
        """Names of the simulator's outputs (the columns of `predict`'s mean)."""
        return self._observables

    @property
    def state_names(self) -> tuple[str, ...]:
        """The emulated outputs play the role of states in a `probde.Model`."""
        return self.observables

    @property
    def num_states(self) -> int:
        return len(self.observables)

    @property
    def times(self) -> np.ndarray:
        """The training times `(T,)`: every run's output times."""
        return self._times

    @property
    def bounds(self) -> dict[str, tuple[float, float]]:
        """The box mapped to the unit cube: parameter name -> `(low, high)`."""
        return {
            name: (float(lo), float(hi))
            for name, lo, hi in zip(self._parameter_names, self._lows, self._highs, strict=True)
        }

    @property
    def design(self) -> np.ndarray:
        """The design points `(n, P)`, columns in `parameter_names` order."""
        return self._design

    @property
    def outputs(self) -> np.ndarray:
        """The simulator outputs `(n, T, O)` of the design's runs."""
        return self._outputs

    @property
    def output_loc(self) -> np.ndarray:
        """Per-observable mean `(O,)` subtracted in the standardisation."""
        return self._loc

    @property
    def output_scale(self) -> np.ndarray:
        """Per-observable standard deviation `(O,)` divided out in the standardisation."""
        return self._scale

    @property
    def _times_range(self) -> tuple[float, float]:
        return float(self._times[0]), float(self._times[-1])

    def summary(self) -> str:
        raise NotImplementedError

    def __repr__(self):
        return self.summary()

    def _summary_head(self) -> str:
        """The report's first line: the runs, parameters and observables."""
        n, T, _ = self._outputs.shape
        return (
            f"{type(self).__name__}: {n} runs x {T} times, parameters {self._parameter_names}, "
            f"observables {self._observables}"
        )

    def _summary_diagnostics(self, split: str) -> list[str]:
        """The report's diagnostics lines; `split` describes the held-out runs, formatted
        with `m` (held out), `fit` (the others) and `n` (all runs)."""
        if self.diagnostics is None:
            return ["  no held-out runs (held_out=0): no diagnostics"]
        n = self._outputs.shape[0]
        m = self.diagnostics.held_out_runs.shape[0]
        head = f"  held-out diagnostics ({split.format(m=m, fit=n - m, n=n)}):"
        return [head] + ["    " + row for row in self.diagnostics.table().splitlines()]


@dataclasses.dataclass(frozen=True, eq=False)
class _TrainingRuns:
    """Checked simulator runs (`_check_runs`), then (`split`) split into training and
    held-out runs, with the scalings of both emulators: inputs to the unit cube (times by
    their range, parameters by the bounds), outputs standardised by the training runs."""

    times: np.ndarray  # (T,)
    design: np.ndarray  # (n, P)
    names: tuple[str, ...]
    outputs: np.ndarray  # (n, T, O)
    observables: tuple[str, ...]
    lows: np.ndarray  # (P,)
    highs: np.ndarray  # (P,)
    held_idx: np.ndarray | None = None  # (m,) sorted
    fit_idx: np.ndarray | None = None  # (n - m,) sorted
    loc: np.ndarray | None = None  # (O,)
    scale: np.ndarray | None = None  # (O,)

    def split(self, held: int, seed: int) -> _TrainingRuns:
        """Hold out `held` runs chosen at random with `seed`; standardise by the others."""
        perm = np.random.default_rng(int(seed)).permutation(self.outputs.shape[0])
        held_idx, fit_idx = np.sort(perm[:held]), np.sort(perm[held:])
        loc = self.outputs[fit_idx].mean(axis=(0, 1))
        scale = self.outputs[fit_idx].std(axis=(0, 1))
        scale = np.where(scale > 0, scale, 1.0)
        return dataclasses.replace(
            self, held_idx=held_idx, fit_idx=fit_idx, loc=loc, scale=scale
        )

    def inputs(self, runs: np.ndarray | None = None) -> np.ndarray:
        """Scaled run-major inputs `(len(runs) * T, 1 + P)` of `runs` (default: all)."""
        span = self.times[-1] - self.times[0]
        t_scaled = (self.times - self.times[0]) / (span if span > 0 else 1.0)
        theta_scaled = (self.design - self.lows) / (self.highs - self.lows)
        return _inputs(t_scaled, theta_scaled if runs is None else theta_scaled[runs])

    def standardised(self, runs: np.ndarray | None = None) -> np.ndarray:
        """Standardised outputs `(len(runs), T, O)` of `runs` (default: all)."""
        out = self.outputs if runs is None else self.outputs[runs]
        return (out - self.loc) / self.scale

    def diagnostics(self, mean, sd) -> EmulatorDiagnostics | None:
        """Diagnostics from standardised predictive means and sds `(m, T, O)` at the
        held-out runs (`None` when none is held out)."""
        if not self.held_idx.size:
            return None
        return EmulatorDiagnostics(
            held_out_runs=self.held_idx,
            simulated=self.outputs[self.held_idx],
            mean=np.asarray(mean) * self.scale + self.loc,
            sd=np.asarray(sd) * self.scale,
            observables=self.observables,
        )

    def fields(self) -> dict:
        """The `_EmulatorBase` fields of an emulator fitted to these runs (read-only)."""
        return {
            "_parameter_names": self.names,
            "_observables": self.observables,
            "_times": _readonly(self.times),
            "_lows": _readonly(self.lows),
            "_highs": _readonly(self.highs),
            "_design": _readonly(self.design),
            "_outputs": _readonly(self.outputs),
            "_loc": _readonly(self.loc),
            "_scale": _readonly(self.scale),
        }


def _check_runs(times, design, outputs, parameter_names, observables, bounds) -> _TrainingRuns:
    """Check the runs' times, design, outputs, observables' names and bounds."""
    times = _check_times(times)
    design, names = _check_design(design, parameter_names)
    outputs = _check_outputs(outputs, design.shape[0], times)
    observables = _check_observables(observables, outputs.shape[2])
    lows, highs = _check_bounds(bounds, names, design)
    return _TrainingRuns(times, design, names, outputs, observables, lows, highs)


def _check_fit_inputs(simulator, times, design, parameter_names):
    """`fit`'s checks before any simulator run: `(times, design, names)`."""
    times = _check_times(times)
    design, names = _check_design(design, parameter_names)
    if not callable(simulator):
        raise TypeError(
            f"simulator must be a function theta -> outputs (T, O); got {describe(simulator)}"
        )
    return times, design, names


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

        diagnostics = None
        if held:
            x_held = runs.inputs(runs.held_idx).reshape(held, T, -1)
            mean, sd = _held_out_predictions(kernel, hyper, x_fit, y_fit, x_held)
            diagnostics = runs.diagnostics(
                np.transpose(mean, (1, 2, 0)), np.transpose(sd, (1, 2, 0))
            )

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
        priors = {
            "lengthscale": dist.LogNormal(
                jnp.full((n_obs, D), _LENGTHSCALE_PRIOR[0]), _LENGTHSCALE_PRIOR[1]
            ),
            "variance": dist.LogNormal(jnp.full((n_obs,), _VARIANCE_PRIOR[0]), _VARIANCE_PRIOR[1]),
        }
        if self._fit_noise:
            priors["noise"] = dist.LogNormal(jnp.full((n_obs,), _NOISE_PRIOR[0]), _NOISE_PRIOR[1])
        return priors

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
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        d = self.diagnostics
        n_obs = len(self._observables)
        fig, axes = plt.subplots(1, n_obs + 1, figsize=(3.6 * (n_obs + 1), 3.4), squeeze=False)
        z95 = NormalDist().inv_cdf(0.975)
        for o, name in enumerate(self._observables):
            ax = axes[0, o]
            sim, mu, sd = (a[..., o].ravel() for a in (d.simulated, d.mean, d.sd))
            ax.errorbar(sim, mu, yerr=z95 * sd, fmt="o", ms=3, lw=0.8, alpha=0.8)
            lims = [min(sim.min(), mu.min()), max(sim.max(), mu.max())]
            ax.plot(lims, lims, "k--", lw=0.8)
            ax.set(xlabel="simulated", ylabel="emulator (95% interval)", title=name)
        ax = axes[0, n_obs]
        levels = np.asarray(COVERAGE_LEVELS)
        for o, name in enumerate(self._observables):
            ax.plot(levels, [d.coverage[lv][o] for lv in COVERAGE_LEVELS], "o-", label=name)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set(
            xlabel="nominal coverage",
            ylabel="held-out coverage",
            xlim=(0.4, 1.0),
            ylim=(0.0, 1.02),
            title="coverage",
        )
        ax.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(path)
        return fig

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


# ------------------------------------------------- compiled cores of the public methods
# Module-level `eqx.filter_jit` functions of the emulator's arrays (passed as arguments, not
# closed over): a direct call compiles once per shape, a call inside a user's `jit` inlines.
@eqx.filter_jit
def _training_log_marginal(kernel, x, y, ls, var, noise):
    lml = jax.vmap(_log_marginal, in_axes=(None, 0, 0, 0, None, 0))(kernel, ls, var, noise, x, y)
    return jnp.sum(lml)


def _new_x(lows, highs, t_range, times, theta):
    """Scaled inputs `(T, 1 + P)` of one parameter set at `times`."""
    lo, hi = t_range
    t = (times - lo) / (hi - lo if hi > lo else 1.0)
    th = (theta - lows) / (highs - lows)
    return jnp.concatenate(
        [t[:, None], jnp.broadcast_to(th[None, :], (t.shape[0], th.shape[0]))], axis=1
    )


def _finish(kernel_out, var, noise, scaling, include_noise):
    """Add the nugget if asked, undo the standardisation: `(T, O)`, `(O, T, T)`."""
    mean, cov = kernel_out
    if include_noise:
        nugget = noise + _jitter(cov.dtype) * var
        cov = cov + nugget[:, None, None] * jnp.eye(cov.shape[-1], dtype=cov.dtype)[None]
    loc, scale = scaling
    return (mean * scale[:, None] + loc[:, None]).T, cov * (scale**2)[:, None, None]


@eqx.filter_jit
def _predict_fitted(
    state, chol, chol_inv, alpha, ls, var, noise, scaling, t_range, times, theta, include_noise
):
    kernel, x, lows, highs = state
    x_new = _new_x(lows, highs, t_range, times, theta)
    out = jax.vmap(_predict, in_axes=(None, 0, 0, None, 0, 0, None, 0))(
        kernel, ls, var, x, chol, alpha, x_new, chol_inv
    )
    return _finish(out, var, noise, scaling, include_noise)


@eqx.filter_jit
def _predict_hyper(state, y, ls, var, noise, scaling, t_range, times, theta, include_noise):
    kernel, x, lows, highs = state
    chol, alpha = jax.vmap(_condition, in_axes=(None, 0, 0, 0, None, 0))(
        kernel, ls, var, noise, x, y
    )
    x_new = _new_x(lows, highs, t_range, times, theta)
    out = jax.vmap(_predict, in_axes=(None, 0, 0, None, 0, 0, None))(
        kernel, ls, var, x, chol, alpha, x_new
    )
    return _finish(out, var, noise, scaling, include_noise)


# ------------------------------------------------------------------- fitting helpers
def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a)
    a.flags.writeable = False
    return a


def _inputs(t_scaled: np.ndarray, theta_scaled: np.ndarray) -> np.ndarray:
    """Run-major inputs `(n * T, 1 + P)`: row `i * T + j` is `(t_j, theta_i)`."""
    n, T = theta_scaled.shape[0], t_scaled.shape[0]
    t = np.tile(t_scaled, n)[:, None]
    th = np.repeat(theta_scaled, T, axis=0)
    return np.concatenate([t, th], axis=1).astype(jnp.zeros(()).dtype)


def _fit_hyper(kernel, x, y, noise, fit_noise):
    """MAP hyperparameters of each observable's GP by L-BFGS-B in log space."""
    D = x.shape[1]
    dtype = x.dtype

    def neg_log_post(u, y_o):
        ls, var, nz = _unpack(u, noise, fit_noise)
        return -(_log_marginal(kernel, ls, var, nz, x, y_o) + _log_prior(u, fit_noise))

    value_and_grad = jax.jit(jax.value_and_grad(neg_log_post))

    def objective(u, y_o):
        v, g = value_and_grad(jnp.asarray(u, dtype=dtype), y_o)
        v, g = float(v), np.asarray(g, dtype=float)
        if not (np.isfinite(v) and np.all(np.isfinite(g))):
            return 1e30, np.zeros_like(g)  # a failed Cholesky: tell L-BFGS-B to step back
        return v, g

    box = [_LOG_BOUNDS["lengthscale"]] * D + [_LOG_BOUNDS["variance"]]
    if fit_noise:
        box.append(_LOG_BOUNDS["noise"])
    starts = []
    for ls0 in (0.2, 0.5, 1.0):
        u0 = [math.log(ls0)] * D + [0.0] + ([math.log(1e-4)] if fit_noise else [])
        starts.append(np.asarray(u0))

    hyper = {"lengthscale": [], "variance": [], "noise": []}
    for o in range(y.shape[0]):
        y_o = y[o]
        u0 = min(starts, key=lambda u: objective(u, y_o)[0])
        res = scipy.optimize.minimize(
            objective,
            u0,
            args=(y_o,),
            jac=True,
            method="L-BFGS-B",
            bounds=box,
            options={"maxiter": 500},
        )
        if not np.isfinite(res.fun) or res.fun >= 1e30:
            raise RuntimeError(
                f"the emulator's hyperparameter fit failed for observable {o}: the training "
                "covariance is not positive definite; raise noise= or use noise='fit'"
            )
        ls, var, nz = _unpack(jnp.asarray(res.x, dtype=dtype), noise, fit_noise)
        hyper["lengthscale"].append(np.asarray(ls))
        hyper["variance"].append(float(var))
        hyper["noise"].append(float(nz))
    return {k: np.asarray(v, dtype=dtype) for k, v in hyper.items()}


def _condition_all(kernel, hyper, x, y):
    """Cholesky factors `(O, N, N)`, `alpha (O, N)` and the factors' inverses `(O, N, N)`."""
    ls, var, nz = (jnp.asarray(hyper[k]) for k in ("lengthscale", "variance", "noise"))

    def condition(kernel, ls, var, nz, x, y):
        L, alpha = _condition(kernel, ls, var, nz, x, y)
        eye = jnp.eye(L.shape[0], dtype=L.dtype)
        return L, alpha, jsl.solve_triangular(L, eye, lower=True)

    condition = jax.vmap(condition, in_axes=(None, 0, 0, 0, None, 0))
    return jax.jit(condition)(kernel, ls, var, nz, x, y)


def _held_out_predictions(kernel, hyper, x_fit, y_fit, x_held):
    """Standardised predictive means and sds (nugget included) at held-out runs:
    `x_held (m, T, D)` -> `(O, m, T)` each."""
    ls, var, nz = (jnp.asarray(hyper[k]) for k in ("lengthscale", "variance", "noise"))
    x_fit, y_fit = jnp.asarray(x_fit), jnp.asarray(y_fit)

    @jax.jit
    def run(ls, var, nz, y_o):
        L, alpha = _condition(kernel, ls, var, nz, x_fit, y_o)

        def one(x_new):
            mean, cov = _predict(kernel, ls, var, x_fit, L, alpha, x_new)
            return mean, jnp.sqrt(jnp.clip(jnp.diagonal(cov), 0.0) + nz + _jitter(cov.dtype) * var)

        return jax.vmap(one)(jnp.asarray(x_held))

    out = [run(ls[o], var[o], nz[o], y_fit[o]) for o in range(ls.shape[0])]
    means, sds = zip(*out, strict=True)
    return np.stack(means), np.stack(sds)


def _run_simulator(simulator, times, design, names, progress_bar) -> np.ndarray:
    """Run `simulator` at every design point (a plain loop, never traced); the outputs
    `(n, T, O)`, checked run by run."""
    runs = []
    width = None
    for i in tqdm(range(design.shape[0]), desc="simulator runs", disable=not progress_bar):
        theta = {name: float(design[i, p]) for p, name in enumerate(names)}
        raw = simulator(theta)
        try:
            out = np.asarray(raw, dtype=float)
        except (TypeError, ValueError):
            raise TypeError(
                f"simulator run {i} (theta={theta}) returned {describe(raw)}; expected an "
                "array of numbers (T, O)"
            ) from None
        if out.ndim == 1:
            out = out[:, None]
        where = f"simulator run {i} (theta={theta})"
        if out.ndim != 2 or out.shape[0] != times.shape[0]:
            raise ValueError(
                f"{where} returned outputs of shape {np.shape(raw)}; expected "
                f"(T, O) or (T,) with T = {times.shape[0]} times"
            )
        if width is not None and out.shape[1] != width:
            raise ValueError(
                f"{where} returned {out.shape[1]} observables, but run 0 returned {width}; "
                "every run must return the same (T, O) shape"
            )
        width = out.shape[1]
        if not np.all(np.isfinite(out)):
            j, o = np.argwhere(~np.isfinite(out))[0]
            raise ValueError(
                f"{where} returned a non-finite output {out[j, o]} at time {times[j]} "
                f"(observable {o}); the emulator needs finite outputs"
            )
        runs.append(out)
    return np.stack(runs)


def _new_inputs(names, dtype, times, theta):
    """`times (T,)` and `theta (P,)` (a dict with the keys `names`, or an array) as arrays
    of `dtype` (shape checks only, so that it works on traced values)."""
    times = jnp.asarray(times)
    if times.ndim != 1:
        raise ValueError(f"times must be a 1-D array (T,); got shape {times.shape}")
    if isinstance(theta, Mapping):
        missing = [n for n in names if n not in theta]
        if missing:
            raise ValueError(
                f"theta is missing the emulator's parameters {missing}; the emulator "
                f"takes {names}"
            )
        values = [jnp.asarray(theta[n]) for n in names]
        for n, v in zip(names, values, strict=True):
            if v.shape != ():
                raise ValueError(f"theta[{n!r}] must be a scalar; got shape {v.shape}")
        theta = jnp.stack(values)
    else:
        theta = jnp.asarray(theta)
        if theta.shape != (len(names),):
            raise ValueError(
                f"theta must be a dict of {names} or an array of shape ({len(names)},); "
                f"got shape {theta.shape}"
            )
    return times.astype(dtype), theta.astype(dtype)


# ------------------------------------------------------------------------ validation
def _check_times(times) -> np.ndarray:
    try:
        times = np.asarray(times, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"times must be a 1-D array of numbers; got {describe(times)}") from None
    if times.ndim != 1 or times.shape[0] < 1:
        raise ValueError(f"times must be a non-empty 1-D array (T,); got shape {times.shape}")
    if not np.all(np.isfinite(times)):
        raise ValueError(f"times must be finite; got {times[~np.isfinite(times)][0]}")
    bad = np.flatnonzero(np.diff(times) <= 0)
    if bad.size:
        i = bad[0] + 1
        raise ValueError(
            f"times must be strictly increasing; got {times[i]} after {times[i - 1]} at index {i}"
        )
    return times


def _check_design(design, parameter_names) -> tuple[np.ndarray, tuple[str, ...]]:
    """The design as an `(n, P)` float array and its parameter names."""
    if parameter_names is not None:
        if isinstance(parameter_names, str) or not isinstance(parameter_names, Sequence):
            raise TypeError(
                f"parameter_names must be a sequence of names; got {describe(parameter_names)}"
            )
        parameter_names = tuple(parameter_names)
        if not all(isinstance(n, str) for n in parameter_names) or len(set(parameter_names)) != len(
            parameter_names
        ):
            raise ValueError(f"parameter_names must be distinct strings; got {parameter_names}")
    if isinstance(design, Mapping):
        keys = tuple(design)
        if parameter_names is not None and set(parameter_names) != set(keys):
            raise ValueError(f"design names {keys} do not match parameter_names {parameter_names}")
        names = parameter_names if parameter_names is not None else keys
        if not all(isinstance(n, str) for n in names):
            raise TypeError(f"design keys must be parameter names (str); got {keys}")
        columns = []
        for name in names:
            col = np.asarray(design[name])
            if col.ndim != 1:
                raise ValueError(
                    f"design[{name!r}] must be a 1-D array (n,) of values; got shape {col.shape}"
                )
            columns.append(col)
        lengths = {c.shape[0] for c in columns}
        if len(lengths) > 1:
            raise ValueError(
                "design arrays must all have the same length n; got lengths "
                + ", ".join(f"{n}: {c.shape[0]}" for n, c in zip(names, columns, strict=True))
            )
        array = np.stack(columns, axis=1) if columns else np.zeros((0, 0))
    else:
        try:
            array = np.asarray(design)
        except (TypeError, ValueError):
            array = None
        if array is None or array.ndim != 2:
            raise TypeError(
                "design must be a dict of parameter name -> (n,) values or an (n, P) array with "
                f"parameter_names; got {describe(design)}"
            )
        if parameter_names is None:
            raise ValueError(
                f"an array design of shape {array.shape} needs parameter_names= naming its "
                f"{array.shape[1]} columns"
            )
        if array.shape[1] != len(parameter_names):
            raise ValueError(
                f"design has {array.shape[1]} columns (shape {array.shape}) but "
                f"parameter_names has {len(parameter_names)} names {parameter_names}"
            )
        names = parameter_names
    if len(names) == 0:
        raise ValueError("design must have at least one parameter; got none")
    if not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"design values must be numbers; got dtype {array.dtype}")
    array = array.astype(float)
    if array.shape[0] < 3:
        raise ValueError(
            f"the emulator needs at least 3 simulator runs (design points); got {array.shape[0]}"
        )
    if not np.all(np.isfinite(array)):
        i, p = np.argwhere(~np.isfinite(array))[0]
        raise ValueError(f"design must be finite; got {array[i, p]} for {names[p]!r} at run {i}")
    _, first, counts = np.unique(array, axis=0, return_index=True, return_counts=True)
    if np.any(counts > 1):
        i = int(first[np.argmax(counts > 1)])
        raise ValueError(
            f"design has repeated points (run {i} appears {int(counts.max())} times); "
            "a deterministic simulator gives nothing new at a repeated point, remove duplicates"
        )
    return array, names


def _check_outputs(outputs, n, times) -> np.ndarray:
    try:
        outputs = np.asarray(outputs, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"outputs must be an array (n, T, O); got {describe(outputs)}") from None
    if outputs.ndim == 2:
        outputs = outputs[:, :, None]
    T = times.shape[0]
    if outputs.ndim != 3 or outputs.shape[:2] != (n, T):
        raise ValueError(
            f"outputs must have shape (n, T, O) = ({n}, {T}, O) for {n} runs at {T} times; "
            f"got shape {outputs.shape}"
        )
    if not np.all(np.isfinite(outputs)):
        i, j, o = np.argwhere(~np.isfinite(outputs))[0]
        raise ValueError(
            f"outputs must be finite; run {i} has {outputs[i, j, o]} at time {times[j]} "
            f"(observable {o})"
        )
    return outputs


def _check_observables(observables, n_obs) -> tuple[str, ...]:
    if observables is None:
        return tuple(f"y{o}" for o in range(n_obs))
    if isinstance(observables, str) or not isinstance(observables, Sequence):
        raise TypeError(f"observables must be a sequence of names; got {describe(observables)}")
    observables = tuple(observables)
    if len(observables) != n_obs:
        raise ValueError(
            f"observables names {len(observables)} outputs {observables}, but the simulator "
            f"returns {n_obs} per time"
        )
    if not all(isinstance(n, str) for n in observables) or len(set(observables)) != n_obs:
        raise ValueError(f"observables must be distinct strings; got {observables}")
    return observables


def _check_bounds(bounds, names, design) -> tuple[np.ndarray, np.ndarray]:
    if bounds is None:
        lows, highs = design.min(axis=0), design.max(axis=0)
        flat = np.flatnonzero(highs <= lows)
        if flat.size:
            raise ValueError(
                f"parameter {names[flat[0]]!r} takes a single value in the design "
                f"({lows[flat[0]]}); vary it or leave it out of the emulator"
            )
        return lows, highs
    if not isinstance(bounds, Mapping):
        raise TypeError(
            f"bounds must be a dict of parameter name -> (low, high); got {describe(bounds)}"
        )
    if set(bounds) != set(names):
        raise ValueError(
            f"bounds names {tuple(bounds)} do not match the design's parameters {names}"
        )
    lows, highs = np.empty(len(names)), np.empty(len(names))
    for p, name in enumerate(names):
        try:
            lows[p], highs[p] = (float(v) for v in bounds[name])
        except (TypeError, ValueError):
            raise TypeError(
                f"bounds[{name!r}] must be a pair of numbers (low, high); "
                f"got {describe(bounds[name])}"
            ) from None
        if not (np.isfinite(lows[p]) and np.isfinite(highs[p]) and lows[p] < highs[p]):
            raise ValueError(
                f"bounds[{name!r}] must be finite with low < high; got ({lows[p]}, {highs[p]})"
            )
        outside = (design[:, p] < lows[p]) | (design[:, p] > highs[p])
        if np.any(outside):
            i = int(np.flatnonzero(outside)[0])
            raise ValueError(
                f"design point {i} has {name}={design[i, p]}, outside bounds[{name!r}] = "
                f"({lows[p]}, {highs[p]})"
            )
    return lows, highs


def _check_kernel(kernel, D) -> AbstractKernel:
    if kernel is None:
        return Matern52()
    if not isinstance(kernel, AbstractKernel):
        raise TypeError(
            "kernel must be a gpjax kernel such as gpjax.kernels.Matern52(); "
            f"got {describe(kernel)}"
        )
    if not (
        isinstance(kernel, StationaryKernel)
        and hasattr(kernel, "lengthscale")
        and hasattr(kernel, "variance")
    ):
        raise TypeError(
            "kernel must be a stationary gpjax kernel with a lengthscale and a variance "
            "(RBF, Matern12, Matern32, Matern52, RationalQuadratic, PoweredExponential); "
            f"got {describe(kernel)}"
        )
    if kernel.active_dims not in (slice(None), None) or kernel.n_dims not in (None, D):
        raise ValueError(
            f"kernel must act on all {D} inputs (time and each parameter), with one "
            f"lengthscale each; got active_dims={kernel.active_dims}, n_dims={kernel.n_dims}"
        )
    return kernel


def _check_noise(noise) -> tuple[bool, float]:
    if isinstance(noise, str):
        if noise != "fit":
            raise ValueError(f'noise must be a number >= 0 or "fit"; got {noise!r}')
        return True, float("nan")
    if isinstance(noise, numbers.Real) and not isinstance(noise, bool):
        if not (np.isfinite(noise) and noise >= 0):
            raise ValueError(f'noise must be a finite number >= 0 or "fit"; got {noise!r}')
        return False, float(noise)
    raise TypeError(f'noise must be a number >= 0 or "fit"; got {describe(noise)}')


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(f"seed must be a non-negative integer; got {describe(seed)}")


def _check_held_out(held_out, n) -> int:
    if not isinstance(held_out, numbers.Real) or isinstance(held_out, bool):
        raise TypeError(f"held_out must be a fraction in [0, 1); got {describe(held_out)}")
    if not 0 <= held_out < 1:
        raise ValueError(f"held_out must be a fraction in [0, 1); got {held_out}")
    held = max(1, round(held_out * n)) if held_out > 0 else 0
    if n - held < 3:
        raise ValueError(
            f"held_out={held_out} holds out {held} of {n} runs, leaving {n - held} to fit; "
            "the emulator needs at least 3: lower held_out (0 for none) or add runs"
        )
    return held
