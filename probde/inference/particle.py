"""`probde.ParticleFilter`: a bootstrap particle filter on diffrax SDE paths.

Particles are propagated between observations by diffrax's fixed-step SDE solvers
(Euler-Maruyama by default) and weighted by the observation density of any probde noise
model. The product over observation times of the mean unnormalised weights is an unbiased
estimate of p(y | theta) (Del Moral 2004); with it, `probde.RandomWalkMetropolis` is an
exact pseudo-marginal MCMC sampler (Andrieu & Roberts 2009). The estimate is random and
not differentiable, so NUTS cannot use it.

Neither diffrax nor numpyro ships a particle filter for SDEs, hence this module.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from ..dynamics.sde import AbstractLikelihood, FilterOutput, sde_step

_RESAMPLING = ("systematic", "stratified", "multinomial")


def _resample(key, log_w, method: str):
    """Ancestor indices `(N,)` drawn with probabilities `softmax(log_w)`."""
    N = log_w.shape[0]
    w = jax.nn.softmax(log_w)
    cdf = jnp.cumsum(w)
    cdf = cdf.at[-1].set(1.0)
    if method == "multinomial":
        u = jnp.sort(jax.random.uniform(key, (N,), dtype=w.dtype))
    elif method == "stratified":
        u = (jnp.arange(N, dtype=w.dtype) + jax.random.uniform(key, (N,), dtype=w.dtype)) / N
    else:  # systematic
        u = (jnp.arange(N, dtype=w.dtype) + jax.random.uniform(key, (), dtype=w.dtype)) / N
    return jnp.minimum(jnp.searchsorted(cdf, u, side="right"), N - 1)


@dataclasses.dataclass(frozen=True)
class ParticleFilter(AbstractLikelihood):
    """Bootstrap particle filter: an unbiased, random estimate of the likelihood.

    **Main arguments:**

    - `num_particles`: particles; the variance of the log-likelihood estimate falls like
      `1 / num_particles`. For pseudo-marginal MCMC aim for a standard deviation of the
      log-likelihood estimate of about 1-1.5 at the posterior mean (Doucet et al. 2015).
    - `num_steps`: fixed SDE steps between consecutive observation times.

    **Other arguments:**

    - `resampling`: `"systematic"` (default), `"stratified"` or `"multinomial"`;
      resampling happens at every observation time.
    - `solver`: a diffrax SDE solver for fixed steps (default `diffrax.Euler()`,
      Euler-Maruyama).

    Any noise model and any initial-state distribution work. Use it with
    `probde.RandomWalkMetropolis` (pseudo-marginal MCMC), to check the Gaussian filters on
    a model, or through `probde.log_likelihood(model, data, params, seed=...)`. The
    filtered moments are the weighted particle moments; there is no smoother.

    **Example:**

    ```python
    >>> import probde
    >>> probde.ParticleFilter(num_particles=500).num_particles
    500

    ```
    """

    num_particles: int = 1000
    num_steps: int = 20
    resampling: str = "systematic"
    solver: object = None

    gaussian = False
    needs_key = True

    def __post_init__(self):
        for name in ("num_particles", "num_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {v!r}")
        if self.resampling not in _RESAMPLING:
            raise ValueError(f"resampling must be one of {_RESAMPLING}; got {self.resampling!r}")

    def run(self, sde, theta, initial, inputs, solver, key, *, smooth=False):
        if key is None:
            raise ValueError(
                "the particle filter needs a random key: run the model under a seed "
                "(probde.infer and probde.log_likelihood(..., seed=...) do this)"
            )
        N = self.num_particles
        if not isinstance(initial, dist.Distribution):
            raise TypeError(f"initial must be a numpyro distribution; got {type(initial).__name__}")
        key_init, key_run = jax.random.split(key)
        x = initial.sample(key_init, (N,))
        x = jnp.broadcast_to(x, (N, sde.num_states)).astype(inputs.times.dtype)
        times = inputs.times
        starts = jnp.concatenate([inputs.t0[None], times[:-1]])
        keys = jax.random.split(key_run, times.shape[0])

        def log_weights(xs, y, mask):
            pred = jax.vmap(inputs.observe)(xs)
            lp = jax.vmap(lambda p: inputs.log_density(p, y))(pred)
            return jnp.sum(jnp.where(mask[None, :], lp, 0.0), axis=1)

        def step(carry, inp):
            xs, ok = carry
            ta, tb, y, mask, k = inp
            k_move, k_res = jax.random.split(k)
            move = jax.vmap(
                lambda x, kk: sde_step(sde, theta, x, ta, tb, kk, self.num_steps, self.solver)
            )
            xs, ok_p = move(xs, jax.random.split(k_move, N))
            lw = log_weights(xs, y, mask)
            # A particle whose path failed (or left the noise model's support) gets weight 0.
            lw = jnp.where(ok_p & jnp.isfinite(lw), lw, -jnp.inf)
            inc = jax.scipy.special.logsumexp(lw) - jnp.log(N)
            w = jax.nn.softmax(lw)
            mean = w @ xs
            d = xs - mean[None]
            cov = (d * w[:, None]).T @ d
            idx = _resample(k_res, lw, self.resampling)
            ok = ok & jnp.isfinite(inc)
            return (xs[idx], ok), (inc, mean, cov)

        (_, ok), (incs, mean, cov) = jax.lax.scan(
            step, (x, jnp.array(True)), (starts, times, inputs.values, inputs.mask, keys)
        )
        log_lik = jnp.sum(incs)
        return FilterOutput(
            log_lik=jnp.where(ok, log_lik, -jnp.inf),
            ok=ok,
            num_steps=jnp.array(self.num_steps * times.shape[0], dtype=jnp.int32),
            filtered_mean=mean,
            filtered_cov=cov,
        )
