"""`GPDiscrepancy`: a Gaussian-process model-discrepancy term (Kennedy & O'Hagan 2001).

The data are modelled as `y(t) = h(eta(t, theta)) + delta(t) + noise` (on the link scale of
the noise model: additive for Normal/StudentT noise, multiplicative, i.e. additive on the
log scale, for LogNormal/Poisson/NegativeBinomial), with `delta ~ GP(0, k)` and `k` a gpjax
kernel. With Gaussian noise on the link scale (Normal, LogNormal) `delta` is integrated out
analytically; otherwise it is a latent, non-centred GP.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from gpjax.kernels.base import AbstractKernel, CombinationKernel
from gpjax.parameters import val

from .._checks import describe
from . import dense, gp_terms
from .base import AbstractDiscrepancy, DiscrepancyInputs, DiscrepancyTerm

_NOT_HYPERPARAMETERS = {"active_dims", "compute_engine", "n_dims", "name"}


@dataclasses.dataclass(frozen=True)
class Constraint:
    r"""Prior knowledge of the discrepancy: $\delta^{(d)}(t) = v$ exactly.

    **Arguments:** `at` (the input $t$), `value` ($v$, default 0), `derivative` ($d$: 0 for
    the value, 1 for the slope).

    Conditioning the GP on such values is what makes $\theta$ identifiable when the
    discrepancy could otherwise absorb the simulator's effect (Brynjarsdóttir & O'Hagan
    2014): e.g. `Constraint(0.0)` and `Constraint(0.0, derivative=1)` say that the simulator
    is right, to first order, at $t = 0$.
    """

    at: float
    value: float = 0.0
    derivative: int = 0

    def __post_init__(self):
        for name in ("at", "value"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v):
                raise ValueError(f"Constraint.{name} must be a finite number; got {describe(v)}")
        if self.derivative not in (0, 1):
            raise ValueError(
                f"Constraint.derivative must be 0 (value) or 1 (slope); got {self.derivative!r}"
            )


def check_observables(chosen: Sequence[str] | None, observables: Sequence[str]) -> None:
    """A discrepancy's `observables` (None: all) must name observables of the model."""
    for name in chosen or ():
        if name not in observables:
            raise ValueError(
                f"discrepancy observables names {name!r}, which is not an observable; "
                f"observables are {tuple(observables)}"
            )


def observable_index(chosen: Sequence[str] | None, observables: Sequence[str]) -> np.ndarray:
    """Positions in `observables` of the discrepancy's observables (None: all)."""
    names = observables if chosen is None else chosen
    return np.array([list(observables).index(n) for n in names], dtype=int)


def _kernel_parameters(kernel) -> dict[str, tuple]:
    """Hyperparameter names of a gpjax kernel -> path (`(index or None, attribute)`)."""
    if isinstance(kernel, CombinationKernel):
        out = {}
        for i, k in enumerate(kernel.kernels):
            if isinstance(k, CombinationKernel):
                raise TypeError(
                    "kernel: nested sums/products of sums/products are not supported; flatten "
                    f"them into one sum or product; got {describe(kernel)}"
                )
            for name in _kernel_parameters(k):
                out[f"{name}_{i}"] = (i, name)
        return out
    return {
        f.name: (None, f.name)
        for f in dataclasses.fields(kernel)
        if f.name not in _NOT_HYPERPARAMETERS and not f.name.startswith("_")
        and _is_numeric(getattr(kernel, f.name, None))
    }


def _is_numeric(value) -> bool:
    try:
        v = val(value)
    except Exception:  # noqa: BLE001 - anything that is not a parameter
        return False
    return isinstance(v, (jax.Array, np.ndarray, float, int)) and not isinstance(v, bool)


def _with_values(kernel, paths: dict[str, tuple], values: Mapping[str, jax.Array]):
    """The kernel with some hyperparameters replaced by (possibly traced) values."""
    import equinox as eqx

    for name, v in values.items():
        index, attr = paths[name]
        if index is None:
            kernel = eqx.tree_at(lambda k, a=attr: getattr(k, a), kernel, v)
        else:
            kernel = eqx.tree_at(lambda k, i=index, a=attr: getattr(k.kernels[i], a), kernel, v)
    return kernel


class GPDiscrepancy(AbstractDiscrepancy):
    r"""Gaussian-process model discrepancy $\delta(t) \sim \mathcal{GP}(0, k)$, dense algebra.

    Passed as `probde.Model(..., discrepancy=probde.GPDiscrepancy(...))`, it models the data
    as $y = h(\eta(t, \theta)) + \delta(t) + \varepsilon$ on the noise model's link scale
    (the log scale for LogNormal, Poisson and NegativeBinomial noise). Each observable and
    each experiment has its own independent draw of $\delta$; hyperparameters are shared
    across observables unless their prior has shape `(O,)`.

    **Arguments:**

    - `kernel`: a gpjax kernel on the time axis (`gpjax.kernels.RBF()`, `Matern32()`,
      `Periodic()`, sums and products). Its numbers are the fixed hyperparameter values.
    - `**hyperparameters`: a number (fixed) or a numpyro distribution (inferred with
      $\theta$; the posterior variable has the argument's name, prefixed `discrepancy_` if a
      parameter already has it) for each hyperparameter to override, e.g.
      `lengthscale=dist.LogNormal(0.0, 1.0), variance=dist.HalfNormal(1.0)`. In a sum or
      product the names carry the index of the term: `lengthscale_0`, `period_1`.
    - `observables`: the observables that have a discrepancy (default: all).
    - `constraints`: `probde.Constraint`s, known values or slopes of $\delta$ (see there).
    - `marginalise`: `"auto"` (integrate $\delta$ out when the noise is Gaussian on the link
      scale, i.e. Normal or LogNormal), `True`, or `False` (latent non-centred GP, needed
      for Poisson, NegativeBinomial and StudentT noise).
    - `jitter`: diagonal jitter relative to the kernel variance (default `1e-8`).

    Dense algebra costs $O(T^3)$ per evaluation for $T$ time points; for long series use
    `probde.MarkovGPDiscrepancy` ($O(T)$, Matern and periodic kernels).

    **Example:**

    ```python
    >>> import gpjax as gpx, numpyro.distributions as dist, probde
    >>> d = probde.GPDiscrepancy(gpx.kernels.RBF(), lengthscale=dist.LogNormal(0.0, 1.0),
    ...                          variance=dist.HalfNormal(1.0),
    ...                          constraints=[probde.Constraint(0.0)])
    >>> sorted(d.priors)
    ['lengthscale', 'variance']

    ```
    """

    def __init__(
        self,
        kernel,
        *,
        observables: Sequence[str] | None = None,
        constraints: Sequence[Constraint] = (),
        marginalise: bool | str = "auto",
        jitter: float = 1e-8,
        **hyperparameters,
    ):
        if not isinstance(kernel, AbstractKernel):
            raise TypeError(
                "kernel must be a gpjax kernel such as gpjax.kernels.RBF() or "
                f"gpjax.kernels.Matern32(); got {describe(kernel)}"
            )
        self.kernel = kernel
        self._paths = _kernel_parameters(kernel)
        for name, value in hyperparameters.items():
            if name not in self._paths:
                raise ValueError(
                    f"{name!r} is not a hyperparameter of {type(kernel).__name__}; its "
                    f"hyperparameters are {sorted(self._paths)}"
                )
            if isinstance(value, dist.Distribution):
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
                raise ValueError(
                    f"hyperparameter {name} must be a positive number (fixed) or a numpyro "
                    f"distribution (inferred); got {describe(value)}"
                )
        fixed = {k: float(v) for k, v in hyperparameters.items() if not isinstance(v, dist.Distribution)}
        self.kernel = _with_values(kernel, self._paths, {k: jnp.asarray(v) for k, v in fixed.items()})
        self.priors = {k: v for k, v in hyperparameters.items() if isinstance(v, dist.Distribution)}
        if observables is not None:
            observables = (observables,) if isinstance(observables, str) else tuple(observables)
        self.observables = observables
        constraints = tuple(constraints)
        for i, c in enumerate(constraints):
            if not isinstance(c, Constraint):
                raise TypeError(f"constraints[{i}] must be a probde.Constraint; got {describe(c)}")
        self.constraints = constraints
        if marginalise not in ("auto", True, False):
            raise ValueError(f"marginalise must be 'auto', True or False; got {marginalise!r}")
        self.marginalise = marginalise
        if not isinstance(jitter, numbers.Real) or not 0 <= jitter < 1:
            raise ValueError(f"jitter must be a number in [0, 1); got {describe(jitter)}")
        self.jitter = float(jitter)
        if any(c.derivative for c in constraints):
            self._check_differentiable()

    def __repr__(self):
        return (
            f"{type(self).__name__}(kernel={type(self.kernel).__name__}, "
            f"priors={sorted(self.priors)}, constraints={len(self.constraints)})"
        )

    # ------------------------------------------------------------------ checks
    def _check_differentiable(self):
        k11 = _derivative_kernel(self.kernel, 1, 1)
        value = k11(jnp.asarray(0.0), jnp.asarray(0.0))
        near = k11(jnp.asarray(0.0), jnp.asarray(1e-3))
        if not (np.isfinite(value) and value > 0 and abs(value - near) < 0.5 * value):
            raise ValueError(
                "constraints on the derivative need a kernel that is differentiable under "
                "autodiff at coincident inputs (RBF, RationalQuadratic, Periodic, and their "
                f"sums and products); got {type(self.kernel).__name__}"
            )

    def check_model(self, observables: Sequence[str], observation) -> None:
        """Validate against the model (called by `probde.Model`)."""
        check_observables(self.observables, observables)
        if self.marginalise is True and not observation.gaussian_link:
            raise ValueError(
                "marginalise=True needs noise that is Gaussian on its link scale "
                f"(noise.Normal or noise.LogNormal); got {type(observation).__name__}: use "
                "marginalise='auto' or False"
            )

    def check_times(self, start: float, end: float) -> None:
        """Constraints must lie inside the modelled time range `[start, end]`."""
        for i, c in enumerate(self.constraints):
            if not start <= c.at <= end:
                raise ValueError(
                    f"constraints[{i}].at must lie in the modelled time range [{start}, {end}] "
                    f"(the initial time to the last observation); got {c.at}"
                )

    def is_marginal(self, observation) -> bool:
        if self.marginalise == "auto":
            return bool(observation.gaussian_link)
        return bool(self.marginalise)

    accepts_covariance = True

    def site_names(self, taken: set[str]) -> dict[str, str]:
        names = {k: (f"discrepancy_{k}" if k in taken else k) for k in self.priors}
        # the standardised values of a latent GP (used when it is not integrated out)
        names["z"] = "discrepancy_z" if "discrepancy_z" not in taken else "discrepancy_latent_z"
        return names

    def term(self, inputs: DiscrepancyInputs) -> DiscrepancyTerm:
        """Integrated out when the noise is Gaussian on the link scale, else latent."""
        if self.is_marginal(inputs.observation):
            return gp_terms.marginal_term(self, inputs)
        return gp_terms.latent_term(self, inputs)

    def observable_index(self, observables: Sequence[str]) -> np.ndarray:
        return observable_index(self.observables, observables)

    # ---------------------------------------------------------------- algebra
    def kernel_with(self, values: Mapping[str, jax.Array]):
        """The kernel with the inferred hyperparameters set to `values` (one observable)."""
        return _with_values(self.kernel, self._paths, values)

    def _prior_moments(self, values, times, query=None):
        """Prior mean and covariance of delta at `times` (and `query`), given the constraints.

        Conditioning on exact values of a Gaussian process is a Gaussian conditional; for
        slopes the covariances come from differentiating the kernel (autodiff).
        """
        k = self.kernel_with(values)
        pts = times if query is None else jnp.concatenate([times, query])
        K = dense.gram(k, pts)
        mean = jnp.zeros(pts.shape, dtype=K.dtype)
        if not self.constraints:
            return mean, K
        at = jnp.asarray([c.at for c in self.constraints], dtype=K.dtype)
        v = jnp.asarray([c.value for c in self.constraints], dtype=K.dtype)
        d = [c.derivative for c in self.constraints]
        Kcc = jnp.stack([
            jnp.stack([_derivative_kernel(k, di, dj)(at[i], at[j]) for j, dj in enumerate(d)])
            for i, di in enumerate(d)
        ])
        Kpc = jnp.stack(
            [jax.vmap(lambda t, a=at[j], dj=dj: _derivative_kernel(k, 0, dj)(t, a))(pts)
             for j, dj in enumerate(d)],
            axis=1,
        )
        zeros = jnp.zeros(len(d), dtype=bool)
        mean, cov = dense.conditional(Kcc, Kpc, K, v, 0.0, ~zeros, self.jitter)
        return mean, cov

    def _moments(self, values, times, query=None, extra=None):
        mean, K = self._prior_moments(values, times, query)
        if extra is not None:  # e.g. an emulator's predictive covariance at the data times
            n = times.shape[0]
            K = K.at[:n, :n].add(extra)
        return mean, K

    def log_marginal(self, values, times, residuals, noise_var, mask, extra=None):
        mean, K = self._moments(values, times, extra=extra)
        return dense.log_marginal(K, residuals - mean, noise_var, mask, self.jitter)

    def loo_pointwise(self, values, times, residuals, noise_var, mask, extra=None):
        mean, K = self._moments(values, times, extra=extra)
        return dense.loo_pointwise(K, residuals - mean, noise_var, mask, self.jitter)

    def posterior_sample(self, key, values, times, residuals, noise_var, mask, query, extra=None):
        """One joint draw of delta at `times` and `query` given residuals at `times`.

        `extra (T, T)`: further covariance of the residuals that is not delta's (an
        emulator's uncertainty); it enters the conditioning as correlated noise.
        """
        n = times.shape[0]
        mean, K = self._prior_moments(values, times, query)
        Kr = K[:n, :n] if extra is None else K[:n, :n] + extra
        pts_mean, cov = dense.conditional(
            Kr, K[:, :n], K, residuals - mean[:n], noise_var, mask, self.jitter
        )
        draw = dense.sample_mvn(key, mean + pts_mean, cov)
        return draw[:n], draw[n:]

    def prior_sample(self, key, values, times, extra=None):
        mean, K = self._moments(values, times, extra=extra)
        return dense.sample_mvn(key, mean, K)

    def latent(self, z, values, times):
        """Non-centred latent GP: `delta = mean + chol(K) z` for standard normal `z`."""
        mean, K = self._prior_moments(values, times)
        eye = jnp.eye(K.shape[0], dtype=K.dtype)
        L = jnp.linalg.cholesky(K + (self.jitter * jnp.mean(jnp.diagonal(K)) + _tiny(K)) * eye)
        return mean + L @ z

    def conditional_on_latent(self, key, values, times, delta, query):
        """Draw delta at `query` given its exact values at `times` (latent GP)."""
        n = times.shape[0]
        mean, K = self._prior_moments(values, times, query)
        m, cov = dense.conditional(K[:n, :n], K[n:, :n], K[n:, n:], delta - mean[:n], 0.0,
                                   None, self.jitter)
        return dense.sample_mvn(key, mean[n:] + m, cov)


def _tiny(K):
    return 10 * jnp.finfo(K.dtype).eps * jnp.max(jnp.abs(jnp.diagonal(K)))


def _derivative_kernel(kernel, di: int, dj: int):
    """`(s, t) -> d^di/ds d^dj/dt k(s, t)` for scalar inputs, by autodiff."""

    def k(s, t):
        return kernel(jnp.reshape(s, (1,)), jnp.reshape(t, (1,)))

    f = k
    if di:
        f = jax.grad(f, argnums=0)
    if dj:
        f = jax.grad(f, argnums=1)
    return f


class NoDiscrepancy(GPDiscrepancy):
    """delta = 0: the marginal-likelihood machinery without a discrepancy, used for models
    whose simulator output is itself uncertain (an emulator's predictive covariance)."""

    def __init__(self, jitter: float = 1e-8):
        self.kernel = None
        self._paths = {}
        self.priors = {}
        self.observables = None
        self.constraints = ()
        self.marginalise = True
        self.jitter = jitter

    def _prior_moments(self, values, times, query=None):
        n = times.shape[0] + (0 if query is None else query.shape[0])
        return jnp.zeros(n, times.dtype), jnp.zeros((n, n), times.dtype)


class MarkovGPDiscrepancy(GPDiscrepancy):
    r"""The GP discrepancy of `GPDiscrepancy` in $O(T)$: Kalman filtering of its
    state-space form.

    Matern-1/2, 3/2, 5/2 and periodic kernels (and the sums and products gpjax's
    `gpjax.state_space.to_sde` supports) are the covariances of linear SDEs, so the marginal
    likelihood, the leave-one-out terms and posterior draws of $\delta$ cost $O(T)$ instead
    of $O(T^3)$ (Hartikainen & Särkkä 2010; Särkkä & Solin 2019, ch. 12). The results equal
    those of `GPDiscrepancy` with the same kernel (to rounding; periodic kernels use gpjax's
    truncated series). Use it for long series (thousands to 100,000 points).

    **Arguments:** as `GPDiscrepancy`, without `constraints` and `marginalise` (the noise
    must be Gaussian on its link scale: `noise.Normal` or `noise.LogNormal`).

    **Example:**

    ```python
    >>> import gpjax as gpx, numpyro.distributions as dist, probde
    >>> d = probde.MarkovGPDiscrepancy(gpx.kernels.Matern32(), variance=dist.HalfNormal(1.0))
    >>> d
    MarkovGPDiscrepancy(kernel=Matern32, priors=['variance'], constraints=0)

    ```
    """

    def __init__(self, kernel, *, observables=None, jitter: float = 1e-8, **hyperparameters):
        for name in ("constraints", "marginalise"):
            if name in hyperparameters:
                raise ValueError(
                    f"MarkovGPDiscrepancy takes no {name!r}; use GPDiscrepancy for "
                    "constrained or latent (non-Gaussian noise) discrepancies"
                )
        from . import markov

        markov.check_markov_kernel(kernel)
        super().__init__(kernel, observables=observables, marginalise=True, jitter=jitter,
                         **hyperparameters)

    def check_model(self, observables, observation) -> None:
        if not observation.gaussian_link:
            raise ValueError(
                "MarkovGPDiscrepancy needs noise that is Gaussian on its link scale "
                f"(noise.Normal or noise.LogNormal); got {type(observation).__name__}: use "
                "GPDiscrepancy (a latent GP) for other noise"
            )
        super().check_model(observables, observation)

    accepts_covariance = False

    @staticmethod
    def _no_extra(extra):
        if extra is not None:
            raise ValueError("MarkovGPDiscrepancy cannot be combined with an emulator")

    def log_marginal(self, values, times, residuals, noise_var, mask, extra=None):
        from . import markov

        self._no_extra(extra)
        return markov.log_marginal(self.kernel_with(values), times, residuals, noise_var, mask)

    def loo_pointwise(self, values, times, residuals, noise_var, mask, extra=None):
        from . import markov

        self._no_extra(extra)
        return markov.loo_pointwise(self.kernel_with(values), times, residuals, noise_var, mask)

    def posterior_sample(self, key, values, times, residuals, noise_var, mask, query, extra=None):
        from . import markov

        self._no_extra(extra)
        return markov.sample_posterior(key, self.kernel_with(values), times, residuals,
                                       noise_var, mask, query)

    def prior_sample(self, key, values, times, extra=None):
        from . import markov

        self._no_extra(extra)
        zeros = jnp.zeros(times.shape, times.dtype)
        draw, _ = markov.sample_posterior(key, self.kernel_with(values), times, zeros, 1.0,
                                          jnp.zeros(times.shape, bool), times[:0])
        return draw
