"""`probde.RandomWalkMetropolis`: adaptive random-walk Metropolis, exact with noisy
(pseudo-marginal) likelihood estimates."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax, random
from jax.flatten_util import ravel_pytree

import numpy as np
from numpyro import handlers
from numpyro.infer import MCMC, init_to_uniform
from numpyro.infer.hmc_util import build_adaptation_schedule
from numpyro.infer.mcmc import MCMCKernel
from numpyro.infer.util import initialize_model, potential_energy
from numpyro.util import is_prng_key

from .._checks import correlation as check_correlation
from ..model import auxiliary
from ..model.report import count_rejections
from .failures import REJECTED_TOTAL, run_total
from .initialisation import init_strategy
from .rwm_start import _start_draws, start_points
from .methods import AbstractMethod, _ChainOptions

# numpyro state fields collected per transition and the ArviZ sample_stats names they become.
_EXTRA_FIELDS = {
    "potential_energy": "lp",
    "accept_prob": "acceptance_rate",
    "step_size": "step_size",
    "rejected": "rejected",
}
# Robbins-Monro gain (t + 1)^-RM_DECAY for log(scale); 1/2 < RM_DECAY <= 1.
_RM_DECAY = 0.6
# Windowed covariance regularisation (Stan's): n/(n+5) S + 1e-3 * 5/(n+5) I.
_SHRINK_N = 5.0
_SHRINK_TARGET = 1e-3


class RWMState(NamedTuple):
    """State of `RandomWalkMetropolisKernel` (one chain; with `chain_method="vectorized"`
    every field has a leading chain dimension).

    - `i`: iteration (warmup and sampling together).
    - `z`: unconstrained latent values (a dict keyed by site names).
    - `potential_energy`: the kept estimate of -log density at `z`. With a random
      (pseudo-marginal) likelihood this is the estimate drawn when `z` was proposed; it is
      never recomputed.
    - `accept_prob`: min(1, exp(log ratio)) of the transition that produced this state.
    - `mean_accept_prob`: running mean of `accept_prob` (reset when sampling starts).
    - `step_size`: the proposal scale used by that transition.
    - `log_scale`, `log_scale_avg`, `rm_count`: Robbins-Monro adaptation of log(scale),
      its running (Polyak) average and the step count since the last reset.
    - `cov_chol`: Cholesky factor of the proposal covariance.
    - `wf_mean`, `wf_m2`, `wf_n`: Welford accumulators of the current adaptation window.
    - `aux`: the common random numbers of the kept estimate (correlated pseudo-marginal
      MCMC: a pytree of standard normals the model's particle filter runs on), or `()`.
    - `rejected`, `rejected_total`: the model evaluations rejected (a failed solve or
      filter, an impossible prediction) in this transition, and in the chain so far
      (`failures.py`).
    - `rng_key`: the chain's key.
    """

    i: Any
    z: Any
    potential_energy: Any
    accept_prob: Any
    mean_accept_prob: Any
    step_size: Any
    log_scale: Any
    log_scale_avg: Any
    rm_count: Any
    cov_chol: Any
    wf_mean: Any
    wf_m2: Any
    wf_n: Any
    aux: Any
    rejected: Any
    rejected_total: Any
    rng_key: Any


class RandomWalkMetropolisKernel(MCMCKernel):
    """numpyro `MCMCKernel` for adaptive Gaussian random-walk Metropolis on a numpyro model.

    Every log-density evaluation runs the model under a fresh PRNG key (what
    `numpyro.prng_key()` returns inside the model), and the current state's estimate is
    kept, so with an unbiased likelihood estimate the chain targets the exact posterior
    (pseudo-marginal MCMC). Use through `probde.RandomWalkMetropolis`, or directly with
    `numpyro.infer.MCMC`. The potential at unconstrained `z` with key `k` is
    `numpyro.infer.util.potential_energy(handlers.seed(model, k), args, kwargs, z)`.
    """

    sample_field = "z"

    def __init__(self, model, *, target_accept=0.234, init_strategy=None, correlation=0.0):
        self._model = model
        self._target_accept = float(target_accept)
        self._correlation = float(correlation)
        self._aux_spec = None
        self._supports = {}
        self._initial_chol = None
        self._init_strategy = init_to_uniform() if init_strategy is None else init_strategy
        self._sample_fn = None
        self._postprocess_fn = None
        self._unravel = None
        self._param_values = {}

    @property
    def model(self):
        return self._model

    @property
    def default_fields(self):
        return ("z",)

    def get_diagnostics_str(self, state):
        return f"scale {float(state.step_size):.2e}. acc. prob={float(state.mean_accept_prob):.2f}"

    def postprocess_fn(self, model_args, model_kwargs):
        if self._postprocess_fn is None:
            raise RuntimeError(
                "RandomWalkMetropolisKernel.init must be called before postprocess_fn"
            )
        return self._postprocess_fn(*model_args, **model_kwargs)

    # ------------------------------------------------------------------ log density
    def _potential(self, x, key, aux, model_args, model_kwargs):
        """-log density at flat unconstrained `x`, with the model's randomness from `key`
        and, when it asks for them, the common random numbers `aux`."""
        model = handlers.seed(self._model, rng_seed=key)
        if self._param_values:
            model = handlers.substitute(model, data=self._param_values)
        if self._aux_spec is not None:
            model = auxiliary.supply_normals(model, values=aux)
        pe = potential_energy(model, model_args, model_kwargs, self._unravel(x))
        # Non-finite values (failed solves, impossible predictions, NaN) are rejections.
        return jnp.where(jnp.isfinite(pe), pe, jnp.inf)

    # ------------------------------------------------------------------------ init
    def find_initial_params(self, rng_key, model_args=(), model_kwargs=None):
        """Feasible unconstrained starting points (a batch of them for a batch of keys), drawn
        by this kernel's `init_strategy`; numpyro's RuntimeError when there is none. Also
        prepares the kernel for this model (postprocessing, `param` sites)."""
        model_kwargs = {} if model_kwargs is None else model_kwargs
        info = initialize_model(
            rng_key,
            self._model,
            init_strategy=self._init_strategy,
            dynamic_args=True,
            model_args=model_args,
            model_kwargs=model_kwargs,
            validate_grad=False,
        )
        for name, site in info.model_trace.items():
            latent = site["type"] == "sample" and not site["is_observed"]
            if latent and site["fn"].support.is_discrete:
                raise ValueError(
                    "RandomWalkMetropolis samples continuous parameters only; the model's site "
                    f"{name!r} is a discrete latent variable"
                )
        self._postprocess_fn = info.postprocess_fn
        self._supports = {
            name: site["fn"].support for name, site in info.model_trace.items()
            if site["type"] == "sample" and not site["is_observed"]
            and name in info.param_info.z}
        self._param_values = {
            k: site["value"]
            for k, site in info.model_trace.items()
            if site["type"] in ("param", "mutable")
        }
        self._aux_spec = self._requested_normals(rng_key, model_args, model_kwargs)
        return info.param_info.z

    def start_from(self, posterior, key, num_chains: int):
        """Starting points from earlier posterior draws (`posterior`: a mapping from this
        model's latent site names to draws `(chain, draw, ...)` on the constrained scale,
        e.g. `result.idata.posterior` of a cheap fit), after `find_initial_params` prepared
        the kernel: one random draw per chain (leading chain dimension when
        `num_chains > 1`); the regularised covariance of all draws in the unconstrained
        space becomes the initial proposal covariance, in place of the identity."""
        starts, cov, n = start_points(self._supports, posterior, key, num_chains)
        self._initial_chol = np.linalg.cholesky(np.asarray(_regularised(cov, n)))
        return starts

    def _requested_normals(self, rng_key, model_args, model_kwargs):
        """The common random numbers the model asks for (traced abstractly, nothing runs),
        or None when the chain is not correlated; a ValueError when it should be and the
        model asks for none."""
        if self._correlation == 0.0:
            return None
        record = auxiliary.supply_normals()
        key = rng_key if is_prng_key(rng_key) else rng_key[0]

        def run(k):
            with record:
                handlers.trace(handlers.seed(self._model, rng_seed=k)).get_trace(
                    *model_args, **model_kwargs)

        jax.eval_shape(run, key)
        if record.spec is None:
            raise ValueError(
                f"correlation={self._correlation} needs a model whose likelihood estimate runs "
                "on common random numbers: a probde model with likelihood=ParticleFilter(...) "
                "and, for an SDE not declared linear, a fixed ParticleFilter(num_steps=...) "
                "(under the default step rule the number of random numbers follows theta). "
                "This model asks for none; use correlation=0.0")
        return record.spec

    def init(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
        model_kwargs = {} if model_kwargs is None else model_kwargs
        vectorized = not is_prng_key(rng_key)
        if vectorized:
            keys = jax.vmap(random.split)(rng_key)
            key_init, key_state = keys[:, 0], keys[:, 1]
        else:
            key_init, key_state = random.split(rng_key)
        # Given starting points and a kernel already prepared (by `find_initial_params`)
        # need no search and no further trace of the model.
        if init_params is None or self._postprocess_fn is None:
            found = self.find_initial_params(key_init, model_args, model_kwargs)
            init_params = found if init_params is None else init_params
        z0 = init_params
        proto = jax.tree.map(lambda v: v[0], z0) if vectorized else z0
        x_proto, self._unravel = ravel_pytree(proto)
        adapt = _adaptation(num_warmup, self._target_accept, int(x_proto.size), x_proto.dtype)

        spec, rho = self._aux_spec, self._correlation
        chol0 = None if self._initial_chol is None else jnp.asarray(self._initial_chol,
                                                                     x_proto.dtype)

        def init_one(z, key):
            potential = lambda x, k, u: self._potential(x, k, u, model_args, model_kwargs)  # noqa: E731
            return _initial_state(z, key, potential, adapt, spec, chol0)

        def transition(state, model_args, model_kwargs):
            potential = lambda x, k, u: self._potential(x, k, u, model_args, model_kwargs)  # noqa: E731
            new, n = count_rejections(_transition, state, potential, self._unravel, adapt, rho)
            return new._replace(rejected=n, rejected_total=state.rejected_total + n)

        if vectorized:
            state = jax.jit(jax.vmap(init_one))(z0, key_state)

            def sample_fn(state, model_args, model_kwargs):
                return jax.vmap(lambda s: transition(s, model_args, model_kwargs))(state)
        else:
            state = jax.jit(init_one)(z0, key_state)
            sample_fn = transition
        self._sample_fn = sample_fn
        return state

    def sample(self, state, model_args, model_kwargs):
        model_kwargs = {} if model_kwargs is None else model_kwargs
        return self._sample_fn(state, model_args, model_kwargs)


# ------------------------------------------------------------------ pure transition
class _Adaptation(NamedTuple):
    """Constants of one run's warmup adaptation: `num_warmup` iterations, the target
    acceptance probability, the initial `log(scale)` (`log(2.38 / sqrt(dim))`), the slow
    (covariance) windows of numpyro's schedule (first and last iteration, and the last
    iteration of each window), and the dimension and dtype of the flat parameters."""

    num_warmup: int
    target: float
    init_log_scale: float
    slow_start: int
    slow_end: int
    slow_ends: Any
    dim: int
    dtype: Any


def _adaptation(num_warmup, target, dim, dtype) -> _Adaptation:
    schedule = build_adaptation_schedule(num_warmup)
    slow = schedule[1:-1]  # the covariance windows, between the fast start and end
    return _Adaptation(
        num_warmup=num_warmup,
        target=target,
        init_log_scale=math.log(2.38 / math.sqrt(max(dim, 1))),
        slow_start=slow[0].start if slow else -1,
        slow_end=slow[-1].end if slow else -1,
        slow_ends=jnp.asarray([w.end for w in slow] or [-1], dtype=jnp.int32),
        dim=dim,
        dtype=dtype,
    )


def _initial_state(z, key, potential, adapt: _Adaptation, spec=None, chol=None) -> RWMState:
    """The state of one chain at unconstrained `z`; `potential(x, key, aux)` is -log
    density at flat `x` with common random numbers `aux` (standard normals for `spec`, a
    pytree of `jax.ShapeDtypeStruct`; `()` when None). The proposal covariance starts at
    `chol @ chol.T` (the identity when None)."""
    dtype, dim = adapt.dtype, adapt.dim
    key, key_pe, key_aux = random.split(key, 3)
    x, _ = ravel_pytree(z)
    aux = () if spec is None else auxiliary.standard_normals(key_aux, spec)
    pe = potential(x, key_pe, aux)
    zero = jnp.zeros((), dtype)
    return RWMState(
        i=jnp.zeros((), jnp.int32),
        z=z,
        potential_energy=pe,
        accept_prob=zero,
        mean_accept_prob=zero,
        step_size=jnp.exp(jnp.asarray(adapt.init_log_scale, dtype)),
        log_scale=jnp.asarray(adapt.init_log_scale, dtype),
        log_scale_avg=jnp.asarray(adapt.init_log_scale, dtype),
        rm_count=jnp.zeros((), jnp.int32),
        cov_chol=jnp.eye(dim, dtype=dtype) if chol is None else chol,
        wf_mean=jnp.zeros((dim,), dtype),
        wf_m2=jnp.zeros((dim, dim), dtype),
        wf_n=jnp.zeros((), jnp.int32),
        aux=aux,
        rejected=jnp.zeros((), jnp.int32),
        rejected_total=jnp.zeros((), jnp.int32),
        rng_key=key,
    )


def _transition(state: RWMState, potential, unravel, adapt: _Adaptation,
                correlation: float = 0.0) -> RWMState:
    """One Metropolis step of one chain, then (during warmup) the adaptation; `potential`
    as for `_initial_state`, `unravel` the inverse of the flattening.

    The common random numbers `state.aux` (if any) move by a Crank-Nicolson step
    `u' = rho u + sqrt(1 - rho^2) eps`, `rho = correlation`, with the parameters: that
    proposal is reversible for their N(0, I) law, so the acceptance ratio is the ratio of
    the estimated posterior densities alone (Deligiannidis, Doucet & Pitt 2018)."""
    dtype = adapt.dtype
    i = state.i
    key, key_eps, key_pe, key_u, key_aux = random.split(state.rng_key, 5)
    x, _ = ravel_pytree(state.z)
    scale = jnp.exp(state.log_scale)
    eps = random.normal(key_eps, x.shape, dtype)
    x_prop = x + scale * (state.cov_chol @ eps)
    fresh = auxiliary.standard_normals(key_aux, state.aux)
    keep = math.sqrt(1.0 - correlation**2)
    aux_prop = jax.tree.map(lambda u, e: correlation * u + keep * e, state.aux, fresh)
    # A fresh estimate at the proposal; the current one is kept (pseudo-marginal).
    pe_prop = potential(x_prop, key_pe, aux_prop)
    log_ratio = jnp.where(jnp.isfinite(pe_prop), state.potential_energy - pe_prop, -jnp.inf)
    accept_prob = jnp.exp(jnp.minimum(log_ratio, 0.0))
    accept = random.uniform(key_u, (), dtype) < accept_prob
    x_new = jnp.where(accept, x_prop, x)
    pe_new = jnp.where(accept, pe_prop, state.potential_energy)
    aux_new = jax.tree.map(lambda a, b: jnp.where(accept, a, b), aux_prop, state.aux)

    (log_scale, log_scale_avg, rm_count, cov_chol, wf_mean, wf_m2, wf_n) = _adapt(
        state, x_new, accept_prob, adapt
    )

    n_mean = jnp.where(i < adapt.num_warmup, i + 1, i - adapt.num_warmup + 1).astype(dtype)
    prev_mean = jnp.where(i == adapt.num_warmup, jnp.zeros((), dtype), state.mean_accept_prob)
    mean_accept_prob = prev_mean + (accept_prob - prev_mean) / n_mean

    return RWMState(
        i=i + 1,
        z=unravel(x_new),
        potential_energy=pe_new,
        accept_prob=accept_prob,
        mean_accept_prob=mean_accept_prob,
        step_size=scale,
        log_scale=log_scale,
        log_scale_avg=log_scale_avg,
        rm_count=rm_count,
        cov_chol=cov_chol,
        wf_mean=wf_mean,
        wf_m2=wf_m2,
        wf_n=wf_n,
        aux=aux_new,
        rejected=state.rejected,
        rejected_total=state.rejected_total,
        rng_key=key,
    )


def _adapt(state: RWMState, x_new, accept_prob, adapt: _Adaptation):
    """The adapted `(log_scale, log_scale_avg, rm_count, cov_chol, wf_mean, wf_m2, wf_n)`
    after iteration `state.i` (kept as they were once warmup is over)."""
    dtype = adapt.dtype
    i = state.i
    # Robbins-Monro on log(scale) toward the target acceptance probability, with a
    # running average of the iterates (frozen at the end of warmup).
    t = state.rm_count + 1
    gain = jnp.asarray(t, dtype) ** -_RM_DECAY
    log_scale = state.log_scale + gain * (accept_prob - adapt.target)
    log_scale_avg = state.log_scale_avg + (log_scale - state.log_scale_avg) / t

    # Welford accumulation of the draws in the slow (covariance) windows.
    in_slow = (i >= adapt.slow_start) & (i <= adapt.slow_end)
    wf_n = state.wf_n + in_slow.astype(jnp.int32)
    delta = x_new - state.wf_mean
    mean_upd = state.wf_mean + delta / jnp.maximum(wf_n, 1).astype(dtype)
    wf_mean = jnp.where(in_slow, mean_upd, state.wf_mean)
    m2_upd = state.wf_m2 + jnp.outer(delta, x_new - mean_upd)
    wf_m2 = jnp.where(in_slow, m2_upd, state.wf_m2)

    carry = (state.cov_chol, wf_mean, wf_m2, wf_n, log_scale, log_scale_avg, t)
    at_window_end = jnp.any(i == adapt.slow_ends)
    carry = lax.cond(at_window_end, lambda c: _end_window(c, adapt), lambda c: c, carry)
    cov_chol, wf_mean, wf_m2, wf_n, log_scale, log_scale_avg, rm_count = carry
    # Sampling uses the averaged scale of the last adaptation stretch.
    log_scale = jnp.where(i == adapt.num_warmup - 1, log_scale_avg, log_scale)

    warm = i < adapt.num_warmup
    adapted = (log_scale, log_scale_avg, rm_count, cov_chol, wf_mean, wf_m2, wf_n)
    frozen = (state.log_scale, state.log_scale_avg, state.rm_count, state.cov_chol,
              state.wf_mean, state.wf_m2, state.wf_n)
    return jax.tree.map(lambda a, b: jnp.where(warm, a, b), adapted, frozen)


def _regularised(cov, n):
    """Stan's regularisation of a covariance estimated from `n` draws:
    `n/(n+5) cov + 1e-3 * 5/(n+5) I`."""
    eye = jnp.eye(cov.shape[0], dtype=jnp.result_type(cov))
    return (n / (n + _SHRINK_N)) * cov + (_SHRINK_TARGET * _SHRINK_N / (n + _SHRINK_N)) * eye


def _end_window(carry, adapt: _Adaptation):
    """At the end of a slow window: the proposal covariance from the window's draws
    (regularised; kept as it was if its Cholesky factor is not finite), the Welford
    accumulators reset, and the scale adaptation restarted."""
    chol, mean, m2, n, _, _, _ = carry
    dtype = adapt.dtype
    nf = n.astype(dtype)
    cov = _regularised(m2 / jnp.maximum(nf - 1.0, 1.0), nf)
    new_chol = jnp.linalg.cholesky(cov)
    new_chol = jnp.where(jnp.all(jnp.isfinite(new_chol)), new_chol, chol)
    ls0 = jnp.asarray(adapt.init_log_scale, dtype)
    return (new_chol, jnp.zeros_like(mean), jnp.zeros_like(m2), jnp.zeros_like(n),
            ls0, ls0, jnp.zeros((), jnp.int32))


@dataclasses.dataclass(frozen=True)
class RandomWalkMetropolis(_ChainOptions, AbstractMethod):
    """Adaptive random-walk Metropolis: gradient-free, and exact with a noisy likelihood.

    Proposals are Gaussian steps in the unconstrained space, `z' = z + scale * L @ eps`.
    During warmup the proposal covariance `L L^T` is adapted to the draws' covariance
    (regularised, refreshed at the end of numpyro's doubling windows, starting from the
    identity) and `log(scale)` by Robbins-Monro toward `target_accept` (starting at
    `2.38 / sqrt(d)`); both are frozen for sampling.

    **When to use it:** models whose log likelihood is a random, unbiased-in-exp estimate
    — a particle filter for a stochastic model — and models that cannot be differentiated.
    Each log-density evaluation runs the model under a fresh key (`numpyro.prng_key()`
    inside the model draws from it) and the current state's estimate is kept, never
    recomputed, so with an unbiased likelihood estimate the chain targets the exact
    posterior (pseudo-marginal MCMC; Andrieu & Roberts 2009). For smooth, deterministic
    models prefer `probde.NUTS`: random-walk Metropolis needs many more log-density
    evaluations per effective draw, the more so the more parameters.

    **Main arguments:**

    - `num_chains`, `num_warmup`, `num_samples`: chains, warmup (adaptation) iterations
      and kept draws per chain. One iteration is one log-density evaluation.
    - `target_accept`: target mean acceptance probability of the scale adaptation: 0.234
      is optimal for many parameters and an exact likelihood; with a noisy likelihood the
      optimum is lower (about 0.07 when the log-likelihood estimate's standard deviation
      is the efficient 1.8, Sherlock, Thiery, Roberts & Rosenthal 2015).

    **Other arguments:**

    - `chain_method`: `"sequential"`, `"parallel"` (one chain per JAX device),
      `"vectorized"` (all chains in one vmapped program), `"sharded"` (split evenly over
      the devices with `jax.sharding`, as for `probde.NUTS`) or `"auto"` (default):
      parallel when there are as many devices as chains, else sequential.
    - `thinning`: keep every `thinning`-th draw.
    - `init_radius`: chains start at points drawn uniformly in (-r, r) in the unconstrained
      space; infeasible points are redrawn.
    - `correlation`: `rho` of correlated pseudo-marginal MCMC (below); 0 (default): a fresh,
      independent estimate at every proposal.
    - `start`: the result of a cheap fit of a model with the same parameters (a
      `probde.InferenceResult`, its `idata`, or a mapping from parameter names to draws
      `(chain, draw, ...)`), e.g. the EKF version of a particle-filter model fitted by
      `probde.Laplace()` or NUTS: the chains start at random draws of it, and the proposal
      covariance at their covariance in the unconstrained space instead of the identity
      (warmup then adapts it as usual). Saves the warmup's first windows; a fit that is
      wrong (a Gaussian filter on sparse data) still only sets the start.

    **Correlated pseudo-marginal MCMC** (`correlation > 0`; Deligiannidis, Doucet & Pitt
    2018). With a particle filter an independent estimate at each proposal makes the log of
    the acceptance ratio as noisy as two estimates, so the filter needs enough particles for
    a log-likelihood standard deviation near 1, and a chain whose estimate came out high
    sticks. With `correlation=rho` the filter's random numbers `u` (initial particles,
    Brownian increments, resampling uniforms) are part of the chain's state and move with
    each proposal by `u' = rho u + sqrt(1 - rho^2) eps`; the particles are sorted along
    their principal axis before resampling, so that correlated numbers pick similar
    ancestors. The estimates at the current and proposed parameters then share most of
    their noise, the chain still targets the exact posterior, and far fewer particles
    suffice: what matters is the spread of the difference of the two log estimates, not
    of each. Values of 0.99-0.999 are typical (closer to 1 for longer series). It needs a
    `probde.ParticleFilter` with a fixed `num_steps` for an SDE not declared linear (the
    default step rule's step counts follow theta) and costs memory for `u`: `num_particles`
    x observation times x `num_steps` x Wiener processes normals per chain.

    `sample_stats` gets `lp` (the kept log-density estimate), `acceptance_rate` (each
    transition's acceptance probability), `step_size` (the proposal scale), and
    `diverging` (always False) and `n_steps` (always 1) for compatibility with NUTS.

    **Example:**

    ```python
    >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist, probde
    >>> def model(data):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=data)
    >>> data = jnp.array([0.9, 1.4, 1.1, 0.7, 1.2])
    >>> method = probde.RandomWalkMetropolis(num_chains=1, num_warmup=1000, num_samples=5000)
    >>> result = probde.infer(model, data, method, seed=0, num_prior_samples=0)
    >>> 0.7 < float(result.idata.posterior["mu"].mean()) < 1.1  # exact: 5.3 / 6 = 0.88
    True

    ```
    """

    needs_gradient = False  # pseudo-marginal: any unbiased likelihood estimate
    # No energy, divergences or trees: R-hat, ESS and stuck chains only.
    convergence_checks = ("rhat", "ess", "stuck")

    num_chains: int = 4
    num_warmup: int = 2000
    num_samples: int = 2000
    thinning: int = 1
    target_accept: float = 0.234
    chain_method: str = "auto"
    init_radius: float = 2.0
    correlation: float = 0.0
    start: Any = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        self._check_chain_options()
        check_correlation(self.correlation)
        if self.start is not None:
            _start_draws(self.start)  # fail here, not after the first trace

    def kernel(self, model_fn) -> RandomWalkMetropolisKernel:
        """The numpyro kernel these options describe, for `model_fn`."""
        return RandomWalkMetropolisKernel(
            model_fn,
            target_accept=self.target_accept,
            init_strategy=init_strategy(self.init_radius, model_fn),
            correlation=self.correlation,
        )

    def mcmc(
        self, model_fn, *, progress_bar: bool = False, chain_method: str | None = None
    ) -> MCMC:
        """The numpyro `MCMC` object `run` uses."""
        return self._mcmc(self.kernel(model_fn), progress_bar, chain_method)

    def _mcmc(self, kernel, progress_bar, chain_method=None):
        return MCMC(
            kernel,
            num_warmup=self.num_warmup,
            num_samples=self.num_samples,
            num_chains=self.num_chains,
            thinning=self.thinning,
            **self._placement(chain_method, progress_bar),
        )

    def _initial_points(self, kernel, key, model_kwargs):
        """Feasible unconstrained starting points, one per chain (leading chain dimension
        when `num_chains > 1`); a clear RuntimeError when there are none."""
        keys = random.split(key, self.num_chains)
        try:
            return kernel.find_initial_params(
                keys if self.num_chains > 1 else keys[0], model_kwargs=model_kwargs
            )
        except RuntimeError as err:
            if "Cannot find valid initial parameters" not in str(err):
                raise
            raise RuntimeError(
                "RandomWalkMetropolis found no feasible starting point: at every one of 100 "
                f"points drawn uniformly in (-{self.init_radius}, {self.init_radius}) in the "
                "unconstrained space (for some chain) the solve failed, a prediction was "
                "impossible for the noise model, or the log density was not finite. Check the "
                "priors and initial_state against the data's scale, raise "
                "Solver(max_steps=...), or use a stiff solver such as diffrax.Kvaerno5()"
            ) from err

    def run(self, model_fn, key, *, progress_bar, model_kwargs):
        key_init, key_run = random.split(key)
        kernel = self.kernel(model_fn)
        # Starting points are found here, outside any chain transformation, so that an
        # infeasible model is a clear error with every chain method (under pmap numpyro
        # cannot check); this also prepares the kernel, so chains do not trace the model again.
        init_params = self._initial_points(kernel, key_init, model_kwargs)
        if self.start is not None:
            init_params = kernel.start_from(_start_draws(self.start), random.fold_in(key_init, 1),
                                            self.num_chains)
        mcmc = self._mcmc(kernel, progress_bar)
        mcmc.run(
            key_run, init_params=init_params, extra_fields=tuple(_EXTRA_FIELDS), **model_kwargs
        )
        samples = mcmc.get_samples(group_by_chain=True)
        extra = mcmc.get_extra_fields(group_by_chain=True)
        stats = {_EXTRA_FIELDS[k]: v for k, v in extra.items()}
        stats["lp"] = -stats["lp"]
        shape = stats["lp"].shape
        stats["diverging"] = jnp.zeros(shape, dtype=bool)
        stats["n_steps"] = jnp.ones(shape, dtype=jnp.int32)
        stats[REJECTED_TOTAL] = run_total(mcmc.last_state)
        return samples, stats
