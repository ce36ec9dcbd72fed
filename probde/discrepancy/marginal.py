"""The observation distribution with a GP discrepancy integrated out.

For each experiment `e` and each observable `o` with a discrepancy, the data on the link
scale satisfy `z[e, :, o] ~ N(loc[e, :, o], K_o + noise_var[o] I)` over the observed times;
observables without a discrepancy keep independent Normal noise. numpyro has no distribution
for a masked, block-structured Gaussian like this one, so it is written here; the algebra is
the discrepancy's own (`GPDiscrepancy.log_marginal`, dense or Markovian).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints


class MarginalGP(dist.Distribution):
    """`y (E, T, O)` given the simulator's prediction, with the discrepancy integrated out.

    `loc (E, T, O)`: the prediction on the link scale; `noise_var (O,)`; `hyper`: dict of
    `(O_d,)` discrepancy hyperparameters; `index (O_d,)`: the observables with a discrepancy;
    `mask (E, T, O)`: observed values; `log`: the data are modelled on the log scale
    (LogNormal noise; the log-density then includes the Jacobian `-log y`).
    """

    support = constraints.independent(constraints.real, 2)

    def __init__(self, discrepancy, times, loc, noise_var, hyper, index, mask, log=False,
                 extra=None):
        self.discrepancy = discrepancy
        # (O, T, T) further covariance per observable (an emulator's uncertainty), or None.
        self.extra = extra
        self.times = times
        self.loc = loc
        self.noise_var = noise_var
        self.hyper = hyper
        self.index = np.asarray(index, dtype=int)
        self.observed = jnp.asarray(mask)
        self.log = log
        O = loc.shape[-1]
        self.other = np.array([o for o in range(O) if o not in set(self.index.tolist())], dtype=int)
        super().__init__(batch_shape=loc.shape[:1], event_shape=loc.shape[1:])

    def _residuals(self, value):
        z = jnp.log(jnp.where(self.observed, value, 1.0)) if self.log else value
        return jnp.where(self.observed, z - self.loc, 0.0)

    def _per_series(self, fn, r):
        """Apply `fn(hyper_o, r_eo, var_o, mask_eo, extra_o)` to every (experiment, GP
        observable)."""
        idx = self.index
        r_d = jnp.moveaxis(r[..., idx], -1, 1)  # (E, O_d, T)
        m_d = jnp.moveaxis(self.observed[..., idx], -1, 1)
        var_d = self.noise_var[idx]
        extra = None if self.extra is None else self.extra[idx]

        def per_obs(h, r_o, var, m_o, ex):
            return jax.vmap(lambda rr, mm: fn(h, rr, var, mm, ex))(r_o, m_o)

        out = jax.vmap(per_obs, in_axes=(0, 1, 0, 1, None if extra is None else 0), out_axes=1)(
            self.hyper, r_d, var_d, m_d, extra
        )
        return out  # (E, O_d, ...)

    def _independent(self, r):
        """Pointwise Normal log-densities of the observables without a discrepancy."""
        var = self.noise_var[self.other][None, None, :]
        lp = -0.5 * (jnp.log(2 * jnp.pi * var) + r[..., self.other] ** 2 / var)
        return jnp.where(self.observed[..., self.other], lp, 0.0)

    def _jacobian(self, value):
        if not self.log:
            return jnp.zeros(value.shape, dtype=self.loc.dtype)
        return jnp.where(self.observed, -jnp.log(jnp.where(self.observed, value, 1.0)), 0.0)

    def log_prob(self, value):
        r = self._residuals(value)
        gp = self._per_series(
            lambda h, rr, var, mm, ex: self.discrepancy.log_marginal(h, self.times, rr, var, mm, ex),
            r,
        )
        lp = jnp.sum(gp, axis=1)
        if self.other.size:
            lp = lp + jnp.sum(self._independent(r), axis=(1, 2))
        return lp + jnp.sum(self._jacobian(value), axis=(1, 2))

    def loo_pointwise(self, value):
        """`(E, T, O)`: leave-one-out predictive log densities `log p(y_i | y_-i, theta)`.

        These are the pointwise terms PSIS-LOO needs for a correlated likelihood; they do not
        sum to `log_prob`.
        """
        r = self._residuals(value)
        gp = self._per_series(
            lambda h, rr, var, mm, ex: self.discrepancy.loo_pointwise(h, self.times, rr, var, mm, ex),
            r,
        )  # (E, O_d, T)
        out = jnp.zeros(r.shape, dtype=self.loc.dtype)
        out = out.at[..., self.index].set(jnp.moveaxis(gp, 1, -1))
        if self.other.size:
            out = out.at[..., self.other].set(self._independent(r))
        return out + self._jacobian(value)

    def sample(self, key, sample_shape=()):
        if sample_shape != ():
            raise NotImplementedError("MarginalGP draws one sample per call")
        E, T, O = self.loc.shape
        k_delta, k_noise = jax.random.split(key)
        keys = jax.random.split(k_delta, (E, self.index.size))

        def per_obs(h, ks, ex):
            return jax.vmap(lambda k: self.discrepancy.prior_sample(k, h, self.times, ex))(ks)

        extra = None if self.extra is None else self.extra[self.index]
        delta_d = jax.vmap(per_obs, in_axes=(0, 1, None if extra is None else 0), out_axes=2)(
            self.hyper, keys, extra
        )  # (E, T, O_d)
        delta = jnp.zeros((E, T, O), dtype=self.loc.dtype).at[..., self.index].set(delta_d)
        eps = jax.random.normal(k_noise, (E, T, O), dtype=self.loc.dtype) * jnp.sqrt(self.noise_var)[None, None, :]
        z = self.loc + delta + eps
        return jnp.exp(z) if self.log else z
