r"""`DeepGPDiscrepancy`: a deep Gaussian process of random-feature layers as the model
discrepancy (Cutajar et al. 2017; Marmin & Filippone 2022 for calibration).

Each layer is a Gaussian process approximated by $F$ random Fourier features (Rahimi &
Recht 2007): with frequencies $\omega_j$ drawn from the kernel's spectral density,

$$f(x) = \sqrt{\sigma^2 / F}\,\big[\cos(x\,\Omega^\top / \ell),\ \sin(x\,\Omega^\top / \ell)\big]\,W,
\qquad W_{jk} \sim \mathcal N(0, 1),$$

so $\operatorname{Cov}(f(x), f(x')) = \sigma^2 F^{-1} \sum_j \cos(\omega_j^\top (x - x') /
\ell) \to \sigma^2 k(x - x')$ as $F \to \infty$ (error $O(F^{-1/2})$). Stacking such layers
gives a deep GP whose layer weights $W$ are ordinary latent variables: every noise model
works, the likelihood factorises over time points given the weights (so SVI can minibatch),
and predictions at new times are the same function evaluated there.

Why it is written here: gpjax's `RFF` kernel draws the frequencies (we use the kernel's
`spectral_density` for that) but builds a single-layer approximation with fixed
hyperparameters; a deep, Bayesian random-feature network whose lengthscales are inferred
with the simulator's parameters is not in gpjax, numpyro or any maintained JAX package
(Marmin & Filippone's code is an unmaintained PyTorch release).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from gpjax.kernels.stationary.base import StationaryKernel

from .._checks import describe
from .._optim import SMALL_INIT
from .base import AbstractDiscrepancy, DiscrepancyInputs, DiscrepancyTerm
from .gp import check_observables, observable_index

INPUTS = ("time", "time+output")


def base_frequencies(kernel, num_features: int, num_dims: int, seed: int) -> np.ndarray:
    """`(num_features, num_dims)` frequencies drawn from the spectral density of `kernel`
    at lengthscale 1 (a fixed draw for a given seed); divide by the lengthscale to use
    them."""
    # Concrete even when called while a sampler traces the model (then it is a constant).
    # gpjax's sampler relies on rank promotion; allow it here (users may forbid it).
    with jax.ensure_compile_time_eval(), jax.numpy_rank_promotion("allow"):
        k = type(kernel)(lengthscale=1.0, variance=1.0, n_dims=num_dims)
        draws = k.spectral_density.sample(jax.random.PRNGKey(seed), (num_features,))
    return np.asarray(draws, dtype=float).reshape(num_features, num_dims)


def features(x, frequencies, lengthscale, variance):
    """Random Fourier features `(N, 2F)` of inputs `x (N, D)`, scaled so that
    `features(x) @ features(x').T` approximates `variance * k(x - x')`."""
    z = (x @ frequencies.T) / lengthscale
    scale = jnp.sqrt(variance / frequencies.shape[0])
    return scale * jnp.concatenate([jnp.cos(z), jnp.sin(z)], axis=-1)


def forward(x, frequencies, weights, lengthscales, variance, hidden_variance=1.0):
    """The deep GP's output `(N, D_out)` at inputs `x (N, D_in)`.

    `frequencies[l] (F, D_l)`, `weights[l] (2F, D_{l+1})`, `lengthscales (L,)`; hidden
    layers have variance `hidden_variance` (a number or `(L - 1,)`) and the identity mean
    function (their input, cut or padded
    with zeros to their width: Salimbeni & Deisenroth 2017, which keeps deep GPs from
    collapsing to constant functions), the last layer has variance `variance` and mean 0.
    """
    h = x
    last = len(weights) - 1
    hidden_variance = jnp.broadcast_to(jnp.asarray(hidden_variance, x.dtype), (max(last, 1),))
    for layer, (omega, w) in enumerate(zip(frequencies, weights)):
        var = variance if layer == last else hidden_variance[layer]
        f = features(h, omega, lengthscales[layer], var) @ w
        if layer == last:
            return f
        width = w.shape[1]
        d = h.shape[1]
        mean = h[:, :width] if d >= width else jnp.pad(h, ((0, 0), (0, width - d)))
        h = mean + f
    raise AssertionError("unreachable")


def _per_layer(prior, n: int):
    """A prior of shape `()` (each of `n` layers independently) or `(n,)` as one
    `(n,)`-vector site."""
    if not prior.batch_shape and not prior.event_shape:
        return prior.expand([n]).to_event(1)
    return prior if prior.event_shape else prior.to_event(1)


def _check_sizes(layers, num_features, seed, width) -> None:
    for name, value in (("layers", layers), ("num_features", num_features), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer; got {describe(value)}")
    if layers < 1:
        raise ValueError(f"layers must be at least 1; got {layers}")
    if num_features < 1:
        raise ValueError(f"num_features must be a positive integer; got {num_features}")
    if width is not None and (
        isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1
    ):
        raise ValueError(f"width must be None or a positive integer; got {describe(width)}")


def _check_kernel(kernel):
    if not isinstance(kernel, StationaryKernel):
        raise TypeError(
            "kernel must be a stationary gpjax kernel with a spectral density "
            f"(RBF, Matern12, Matern32, Matern52); got {describe(kernel)}"
        )
    try:
        base_frequencies(kernel, 2, 1, 0)
    except Exception as err:  # noqa: BLE001 - gpjax raises various errors here
        raise TypeError(
            "kernel must have a spectral density (RBF, Matern12, Matern32, Matern52); "
            f"{type(kernel).__name__} has none usable: {err}"
        ) from None
    return kernel


class DeepGPDiscrepancy(AbstractDiscrepancy):
    r"""Deep-GP model discrepancy from random-feature layers (Cutajar et al. 2017), as in
    Marmin & Filippone's deep-GP calibration.

    Passed as `probde.Model(..., discrepancy=probde.DeepGPDiscrepancy(...))`, the data are
    $y = h(\eta(t, \theta)) + \delta(x) + \varepsilon$ on the noise model's link scale,
    where $\delta$ is a deep GP of

    - $x = t$ (`inputs="time"`, the additive Kennedy-O'Hagan discrepancy), or
    - $x = (t, \eta(t, \theta))$ (`inputs="time+output"`): the simulator's predictions of
      all observables (on the link scale) are inputs too, so the correction can depend on
      the state the simulator is in, e.g. a missing nonlinear term.

    Inputs are standardised with the data: times to $[0, 1]$ over the data's span, outputs
    by the mean and sd of the observed values (link scale) per observable. The weights of
    every layer are latent variables (sites `discrepancy_w0`, `discrepancy_w1`, ... with
    standard normal priors), inferred jointly with $\theta$: by `probde.SVI` (which can
    minibatch over time points, as the likelihood factorises given the weights), or by
    NUTS for small sizes (a few hundred weights). One function per observable, shared by
    all experiments (with `"time+output"` it sees each experiment's own simulator output).

    **Arguments:**

    - `layers`: number of GP layers (1: a single random-feature GP; 2 or 3: a deep GP).
    - `num_features`: random frequencies $F$ per layer (each gives a cosine and a sine).
    - `kernel`: the stationary gpjax kernel whose spectral density the frequencies come
      from: `gpjax.kernels.RBF()` (default), `Matern12()`, `Matern32()`, `Matern52()`.
      Its own lengthscale and variance are ignored: see the next two arguments.
    - `lengthscale`: prior (or fixed positive number) of the layers' lengthscales in
      standardised input units; a prior of shape `()` is given to each layer
      independently, one of shape `(layers,)` layer by layer. Default
      `LogNormal(log 0.3, 0.75)`.
    - `variance`: prior (or fixed number) of the output layer's variance on the link scale.
      Default `HalfNormal(1.0)`.
    - `hidden_variance`: prior (or fixed number) of the hidden layers' variances, i.e. how
      far each hidden layer may warp its input away from the identity (standardised
      units); shape `()` (each layer independently) or `(layers - 1,)`. Default
      `HalfNormal(0.2)`: a unit variance lets the guide's initial noise in the warp swamp
      the output layer, and SVI then switches the discrepancy off.
    - `width`: units of each hidden layer (default: the input dimension).
    - `inputs`: `"time"` or `"time+output"` (see above).
    - `observables`: the observables that have a discrepancy (default: all).
    - `seed`: the seed of the frequency draws (fixed, not inferred).

    **Example:**

    ```python
    >>> import probde
    >>> d = probde.DeepGPDiscrepancy(layers=2, num_features=50, inputs="time+output")
    >>> d
    DeepGPDiscrepancy(layers=2, num_features=50, kernel=RBF, inputs='time+output')

    ```
    """

    def __init__(
        self,
        layers: int = 2,
        *,
        num_features: int = 100,
        kernel=None,
        lengthscale=None,
        variance=None,
        hidden_variance=None,
        width: int | None = None,
        inputs: str = "time",
        observables: Sequence[str] | None = None,
        seed: int = 0,
    ):
        import gpjax as gpx

        _check_sizes(layers, num_features, seed, width)
        kernel = _check_kernel(gpx.kernels.RBF() if kernel is None else kernel)
        if inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {INPUTS}; got {inputs!r}")
        self.layers = int(layers)
        self.num_features = int(num_features)
        self.kernel = kernel
        self.width = None if width is None else int(width)
        self.inputs = inputs
        self.seed = int(seed)
        if observables is not None:
            observables = (observables,) if isinstance(observables, str) else tuple(observables)
        self.observables = observables
        lengthscale = dist.LogNormal(np.log(0.3), 0.75) if lengthscale is None else lengthscale
        variance = dist.HalfNormal(1.0) if variance is None else variance
        if hidden_variance is None:
            hidden_variance = dist.HalfNormal(0.2)
        self.priors, self.fixed = {}, {}
        options = [("lengthscale", lengthscale), ("variance", variance)]
        if self.layers > 1:
            options.append(("hidden_variance", hidden_variance))
        for name, value in options:
            if isinstance(value, dist.Distribution):
                shape = tuple(value.batch_shape) + tuple(value.event_shape)
                allowed = {"lengthscale": ((), (self.layers,)), "variance": ((),),
                           "hidden_variance": ((), (self.layers - 1,))}[name]
                if shape not in allowed:
                    raise ValueError(
                        f"the prior of {name} must have shape "
                        + (" or ".join(str(s) for s in allowed))
                        + f"; got {shape}"
                    )
                self.priors[name] = value
            elif isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
                raise ValueError(
                    f"{name} must be a positive number (fixed) or a numpyro distribution "
                    f"(inferred); got {describe(value)}"
                )
            else:
                self.fixed[name] = float(value)
        self.constraints = ()
        self.marginalise = False

    # Given its weights the deep GP is a function: the likelihood factorises over time
    # points, so SVI may minibatch them.
    minibatch = True

    def __repr__(self):
        return (
            f"{type(self).__name__}(layers={self.layers}, num_features={self.num_features}, "
            f"kernel={type(self.kernel).__name__}, inputs={self.inputs!r})"
        )

    # ------------------------------------------------------------------ model hooks
    def check_model(self, observables, observation) -> None:
        check_observables(self.observables, observables)

    def check_times(self, start, end) -> None:
        return None

    def is_marginal(self, observation) -> bool:
        return False

    def site_names(self, taken: set[str]) -> dict[str, str]:
        names = {k: (f"discrepancy_{k}" if k in taken else k) for k in self.priors}
        for layer in range(self.layers):
            names[f"w{layer}"] = f"discrepancy_w{layer}"
        return names

    def observable_index(self, observables) -> np.ndarray:
        return observable_index(self.observables, observables)

    def setup(self, times, link_values, mask):
        return self.standardiser(times, link_values, mask)

    def weight_sites(self, names) -> set[str]:
        return {v for k, v in names.items() if k.startswith("w")}

    def site_dims(self, name, value_shape, names) -> list[str]:
        if name in self.weight_sites(names):
            return ["discrepancy_feature", f"{name}_unit"]
        if name == names.get("hidden_variance"):
            return ["discrepancy_hidden_layer"]
        return ["discrepancy_layer"] if value_shape else []

    def term(self, inputs: DiscrepancyInputs) -> DiscrepancyTerm:
        """The weights are latent sites; delta is a deterministic function of them,
        evaluated anew at predicted times."""
        fn = self.sample(inputs.names, inputs.loc.shape[-1], inputs.index.size)
        standardiser = inputs.setup
        d_data = self.delta(fn, inputs.times, inputs.loc, standardiser)
        return DiscrepancyTerm(delta=d_data,
                               delta_new=lambda t, loc: self.delta(fn, t, loc, standardiser))

    def input_dim(self, num_observables: int) -> int:
        return 1 + (num_observables if self.inputs == "time+output" else 0)

    def frequencies(self, num_observables: int) -> list[np.ndarray]:
        """The fixed standard frequencies of every layer, `(F, D_l)`."""
        d_in = self.input_dim(num_observables)
        width = self.width or d_in
        dims = [d_in] + [width] * (self.layers - 1)
        return [
            base_frequencies(self.kernel, self.num_features, d, self.seed * 1000 + layer)
            for layer, d in enumerate(dims)
        ]

    def standardiser(self, times, link_values, mask):
        """`(t0, t_scale, out_mean (O,), out_sd (O,))` from the data (numpy)."""
        times = np.asarray(times, dtype=float)
        span = float(times.max() - times.min()) or 1.0
        out_mean = np.zeros(link_values.shape[-1])
        out_sd = np.ones(link_values.shape[-1])
        for o in range(link_values.shape[-1]):
            v = link_values[..., o][mask[..., o]]
            v = v[np.isfinite(v)]
            if v.size:
                out_mean[o] = v.mean()
                out_sd[o] = v.std() if v.size > 1 and v.std() > 0 else 1.0
        return float(times.min()), span, out_mean, out_sd

    def sample(self, site_names, num_observables: int, num_outputs: int):
        """Sample the hyperparameters and weights (numpyro sites); return the deep GP as a
        function `(times (T,), loc (E, T, O)) -> delta (E, T, num_outputs)` of unscaled
        inputs once `bind`-ed to the standardiser."""
        omegas = [jnp.asarray(o) for o in self.frequencies(num_observables)]
        L = self.layers
        if "lengthscale" in self.priors:
            prior = _per_layer(self.priors["lengthscale"], L)
            ls = numpyro.sample(site_names["lengthscale"], prior, infer={SMALL_INIT: "median"})
        else:
            ls = jnp.full((L,), self.fixed["lengthscale"])
        if "variance" in self.priors:
            var = numpyro.sample(site_names["variance"], self.priors["variance"],
                                 infer={SMALL_INIT: "median"})
        else:
            var = self.fixed["variance"]
        hidden = self.fixed.get("hidden_variance", 1.0)
        if "hidden_variance" in self.priors:
            prior = _per_layer(self.priors["hidden_variance"], L - 1)
            hidden = numpyro.sample(site_names["hidden_variance"], prior,
                                    infer={SMALL_INIT: "median"})
        d_in = self.input_dim(num_observables)
        width = self.width or d_in
        outs = [width] * (L - 1) + [num_outputs]
        weights = [
            numpyro.sample(
                site_names[f"w{layer}"],
                dist.Normal(0.0, 1.0).expand([2 * self.num_features, d]).to_event(2),
                infer={SMALL_INIT: True},
            )
            for layer, d in enumerate(outs)
        ]
        return lambda x: forward(x, omegas, weights, ls, var, hidden)

    def inputs_of(self, times, loc, standardiser):
        """Standardised inputs `(E, T, D)` from times `(T,)` and link-scale outputs
        `(E, T, O)`."""
        t0, span, out_mean, out_sd = standardiser
        E, T, _ = loc.shape
        t = jnp.broadcast_to(((times - t0) / span)[None, :, None], (E, T, 1)).astype(loc.dtype)
        if self.inputs == "time":
            return t
        mean = jnp.asarray(out_mean, loc.dtype).reshape(1, 1, -1)
        z = (loc - mean) / jnp.asarray(out_sd, loc.dtype).reshape(1, 1, -1)
        return jnp.concatenate([t, z], axis=-1)

    def delta(self, fn, times, loc, standardiser):
        """`delta (E, T, O_d)` of the sampled deep GP `fn` at `times` given `loc`."""
        x = self.inputs_of(times, loc, standardiser)
        E, T, D = x.shape
        return fn(x.reshape(E * T, D)).reshape(E, T, -1)
