"""Continuous-discrete Gaussian filters and smoothers: `probde.EKF`, `probde.UKF`.

Between observations the mean and covariance of X follow the moment equations
(Jazwinski 1970; Särkkä & Solin 2019, ch. 9-10)

    dm/dt = E[f(X)],   dP/dt = Cov(X, f(X)) + Cov(f(X), X) + E[L L'],

with the expectations taken by linearisation at the mean (EKF) or by sigma points (UKF).
They are solved with diffrax (the model's `probde.Solver`), one solve per interval inside
a `lax.scan`, so the cost is linear in the number of observations. A declared linear SDE
(`probde.SDE(..., linear=True)`) is discretised exactly instead (Van Loan 1978).

At each observation the Gaussian update uses the Joseph form (EKF) or the sigma-point
update (UKF); covariances are symmetrised after every step. Missing components are masked
with static shapes (their rows of the observation Jacobian are zeroed and their residuals
set to 0, and their constant is removed from the log-likelihood).

The smoother is the Rauch-Tung-Striebel recursion on the transition's linearisation
`Phi = d m(t_{k+1}) / d m(t_k)`, solved with the moments (`dPhi/dt = A Phi`, with `A` the
drift's Jacobian at the mean for the EKF and its statistical linearisation
`Cov(f(X), X) P^{-1}` for the UKF); exact for linear SDEs.

No JAX library we depend on has continuous-discrete filters (gpjax's Kalman filter is for
its own discretised GP state-space models, linear and time-invariant), hence this module.
"""

from __future__ import annotations

import dataclasses
import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jax.flatten_util import ravel_pytree

from .. import _small_linalg as small_linalg
from ..dynamics.affine import is_affine_map
from ..dynamics.sde import AbstractLikelihood, FilterInputs, FilterOutput
from . import parallel_kalman
from .moments import (  # noqa: F401 (_exact_linear: tests compare with it)
    _ekf_rhs,
    _exact_linear,
    _forward_gradient,
    _forward_mode,
    _jitter,
    _SigmaRule,
    _solve_moments,
    _sym,
    _ukf_rhs,
    _unit_scale,
    linear_transitions,
)


# ------------------------------------------------------------------------- update steps
def _ekf_update(m, P, y, mask, h, noise_var):
    mm = small_linalg.matmul
    hx = h(m)
    H = jax.jacfwd(h)(m)
    H = jnp.where(mask[:, None], H, 0.0)
    r = jnp.where(mask, y - hx, 0.0)
    R = jnp.diag(jnp.where(mask, noise_var, 1.0))
    HP = mm(H, P)
    S = _sym(mm(HP, H.T) + R)
    chol = small_linalg.cholesky(S)
    K = small_linalg.cho_solve(chol, HP).T  # P H' S^{-1}
    IKH = jnp.eye(m.shape[0], dtype=m.dtype) - mm(K, H)
    Rm = jnp.where(mask, noise_var, 0.0)
    P_new = _sym(mm(mm(IKH, P), IKH.T) + mm(K * Rm[None, :], K.T))  # Joseph form
    ll = small_linalg.gaussian_log_density(r, chol, jnp.sum(mask))
    return m + mm(K, r[:, None])[:, 0], P_new, ll


def _ukf_update(rule: _SigmaRule):
    def update(m, P, y, mask, h, noise_var):
        X, wm, wc = rule.points(m, P)
        Y = jax.vmap(h)(X)
        yhat = wm @ Y
        dY = jnp.where(mask[None, :], Y - yhat[None], 0.0)
        r = jnp.where(mask, y - yhat, 0.0)
        R = jnp.diag(jnp.where(mask, noise_var, 1.0))
        S = _sym((dY * wc[:, None]).T @ dY + R)
        C = ((X - m[None]) * wc[:, None]).T @ dY  # Cov(X, h(X))
        chol = small_linalg.cholesky(S)
        K = small_linalg.cho_solve(chol, C.T).T
        Sm = S - jnp.diag(jnp.where(mask, 0.0, 1.0))  # the masked unit entries carry no gain
        P_new = _sym(P - K @ Sm @ K.T)
        ll = small_linalg.gaussian_log_density(r, chol, jnp.sum(mask))
        return m + K @ r, P_new, ll

    return update


# ----------------------------------------------------------------------------- filter
def gaussian_filter(predict, update, m0, P0, inputs: FilterInputs, *, with_phi: bool,
                    per_step=None):
    """Run a continuous-discrete Gaussian filter.

    `predict(m, P, t_start, t_end, extra) -> ((m, P[, Phi]), ok, steps)`, where `extra` is
    the step's slice of `per_step` (a pytree with leading dim T computed before the scan,
    e.g. all intervals' transitions at once; `None` when not given); `update(m, P, y, mask,
    h, var) -> (m, P, loglik)`. Returns the filtered and predicted moments, the transition
    linearisations (when `with_phi`), the per-time log-likelihood increments, ok and steps.
    """
    times = inputs.times
    starts = interval_starts(inputs)

    def step(carry, inp):
        m, P, ok, steps = carry
        ta, tb, y, mask, extra = inp
        state, ok_k, n = predict(m, P, ta, tb, extra)
        mp, Pp = state[0], _sym(state[1])
        Phi = state[2] if with_phi else None
        mf, Pf, ll = update(mp, Pp, y, mask, inputs.observe, inputs.noise_var)
        finite = jnp.isfinite(ll) & jnp.all(jnp.isfinite(mf)) & jnp.all(jnp.isfinite(Pf))
        ok_new = ok & ok_k & finite
        # After a failure the carry is reset to finite values so that later steps (and
        # their gradients) stay finite; the whole evaluation is rejected through `ok`.
        mf = jnp.where(ok_new, mf, m)
        Pf = jnp.where(ok_new, Pf, P)
        out = (mf, Pf, mp, Pp, ll) + ((Phi,) if with_phi else ())
        return (mf, Pf, ok_new, steps + n), out

    init = (m0, _sym(P0), jnp.array(True), jnp.array(0, dtype=jnp.int32))
    (_, _, ok, steps), outs = jax.lax.scan(
        step, init, (starts, times, inputs.values, inputs.mask, per_step)
    )
    return ok, steps, outs


def interval_starts(inputs: FilterInputs):
    """The start of each observation's interval: `t0`, then the previous time."""
    return jnp.concatenate([inputs.t0[None], inputs.times[:-1]])


def rts_smoother(mf, Pf, mp, Pp, Phi):
    """Rauch-Tung-Striebel smoother from filtered `(mf, Pf)`, predicted `(mp, Pp)` and the
    transition linearisations `Phi[k]` (from time k-1 to k); all with leading dim T."""

    def step(carry, inp):
        ms_next, Ps_next = carry
        m_f, P_f, m_p_next, P_p_next, Phi_next = inp
        Pj = _sym(P_p_next) + _jitter(P_p_next)
        G = jsl.cho_solve(jsl.cho_factor(Pj), Phi_next @ P_f).T  # P_f Phi' P_p^{-1}
        ms = m_f + G @ (ms_next - m_p_next)
        Ps = _sym(P_f + G @ (Ps_next - P_p_next) @ G.T)
        return (ms, Ps), (ms, Ps)

    last = (mf[-1], Pf[-1])
    _, (ms, Ps) = jax.lax.scan(
        step, last, (mf[:-1], Pf[:-1], mp[1:], Pp[1:], Phi[1:]), reverse=True
    )
    ms = jnp.concatenate([ms, mf[-1:]], axis=0)
    Ps = jnp.concatenate([Ps, Pf[-1:]], axis=0)
    return ms, Ps


def _loo(mean, var, y, mask, noise_var):
    """Leave-one-out predictive log densities from the smoothed moments of the predicted
    observation `(mean, var)` (each `(T, O)`): remove the observation's own information,
    `1/v_loo = 1/v - 1/r`, `m_loo = v_loo (m/v - y/r)`, then `y ~ N(m_loo, v_loo + r)`."""
    r = noise_var[None, :]  # (1, O), aligned with the (T, O) moments explicitly
    v_s = jnp.minimum(var, r * (1.0 - 1e-9))  # the posterior variance is below the noise's
    v_loo = 1.0 / (1.0 / v_s - 1.0 / r)
    m_loo = v_loo * (mean / v_s - y / r)
    total = v_loo + r
    lp = -0.5 * (jnp.log(2.0 * jnp.pi * total) + (y - m_loo) ** 2 / total)
    return jnp.where(mask, lp, 0.0)


@dataclasses.dataclass(frozen=True)
class _GaussianFilter(AbstractLikelihood):
    exact_linear: bool = True
    parallel: bool = False

    gaussian = True

    def __post_init__(self):
        for name in ("exact_linear", "parallel"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False; got {value!r}")
        if self.parallel and not self.exact_linear:
            raise ValueError("parallel=True needs the exact discretisation of a linear SDE; "
                             "got exact_linear=False")

    def _predictor(self, sde, theta, solver, with_phi):
        raise NotImplementedError

    def _update(self):
        raise NotImplementedError

    def _observation_moments(self, m, P, h):
        raise NotImplementedError

    def run(self, sde, theta, initial, inputs, solver, key, *, smooth=False):
        noise_var = inputs.noise_var
        args = (theta, initial, noise_var)
        num_inputs = ravel_pytree(args)[0].shape[0]
        # With the exact discretisation there are no solves in the scan, only small algebra:
        # reverse mode through it is cheaper than one forward tangent per input (on
        # 10,000 observations: 1.4 against 1.7 ms for OU, 8 against 10 ms for Matern-3/2).
        exact = self.exact_linear and sde.is_linear(theta, initial[0])
        if self.parallel:
            return self._run_parallel(sde, theta, initial, inputs, smooth=smooth, exact=exact)
        if not smooth and not exact and _forward_mode(solver, num_inputs):
            # The data are arguments of the custom_vjp too, never closed over: under `vmap`
            # (experiments) they are tracers, which a custom_vjp must not capture.
            data = (inputs.times, inputs.t0, inputs.values, inputs.mask)

            def fn(a, differentiating):
                (th, init, var), data = a
                inp = eqx.tree_at(lambda i: (i.times, i.t0, i.values, i.mask, i.noise_var),
                                  inputs, (*data, var))
                out = self._run(sde, th, init, inp, solver, diffrax.ForwardMode(), smooth=False,
                                exact=False)
                return (out.log_lik, out.ok, out.num_steps, out.filtered_mean, out.filtered_cov)

            log_lik, ok, steps, mf, Pf = _forward_gradient(fn, (args, data))
            return FilterOutput(log_lik=log_lik, ok=ok, num_steps=steps, filtered_mean=mf,
                                filtered_cov=Pf)
        adjoint = solver.adjoint
        if not isinstance(adjoint, diffrax.AbstractAdjoint):
            adjoint = diffrax.RecursiveCheckpointAdjoint()
        return self._run(sde, theta, initial, inputs, solver, adjoint, smooth=smooth,
                         exact=exact)

    def _run_parallel(self, sde, theta, initial, inputs, *, smooth, exact):
        m0, P0 = initial
        name = type(self).__name__
        if not exact:
            raise ValueError(f"{name}(parallel=True) needs a linear SDE (drift affine in x, "
                             "diffusion free of x and t); this SDE is not known to be linear")
        if not is_affine_map(inputs.observe, m0):
            raise ValueError(f"{name}(parallel=True) needs observations affine in the state "
                             "(on the noise model's link scale); the observation function "
                             "is not affine (a nonlinear `observe` or a log link?)")
        transitions = linear_transitions(sde, theta, inputs.times - interval_starts(inputs),
                                         m0)
        zero = jnp.zeros_like(m0)
        H, d = jax.jacfwd(inputs.observe)(zero), inputs.observe(zero)
        mf, Pf, mp, Pp, ll = parallel_kalman.kalman_filter(
            transitions, H, d, inputs.noise_var, m0, _sym(P0), inputs.values, inputs.mask)
        log_lik = jnp.sum(ll)
        ok = jnp.isfinite(log_lik) & jnp.all(jnp.isfinite(mf)) & jnp.all(jnp.isfinite(Pf))
        result = dict(log_lik=jnp.where(ok, log_lik, -jnp.inf), ok=ok,
                      num_steps=jnp.array(0, dtype=jnp.int32), filtered_mean=mf,
                      filtered_cov=Pf)
        if smooth:
            ms, Ps = parallel_kalman.rts_smoother(transitions[0], mf, Pf, mp, Pp)
            result.update(self._smoothed(ms, Ps, inputs))
        return FilterOutput(**result)

    def _smoothed(self, ms, Ps, inputs):
        mean, var = jax.vmap(lambda m, P: self._observation_moments(m, P, inputs.observe))(
            ms, Ps)
        return dict(smoothed_mean=ms, smoothed_cov=Ps,
                    pointwise=_loo(mean, var, inputs.values, inputs.mask, inputs.noise_var))

    def _run(self, sde, theta, initial, inputs, solver, adjoint, *, smooth, exact):
        m0, P0 = initial
        with_phi = bool(smooth)
        per_step = None
        if exact:
            # A linear SDE's drift and diffusion do not depend on x or t (declared and
            # checked on a prior draw, or read off the traced program), so every
            # interval's exact transition depends on its length only: all of them are
            # computed at once, batched, before the scan, which then
            # only moves the moments (a scan step is per-step overhead on a CPU; the
            # matrix exponentials inside it made it most of the filter's cost).
            per_step = linear_transitions(sde, theta, inputs.times - interval_starts(inputs),
                                          m0)

            def predict(m, P, ta, tb, transition):
                F, offset, Q = transition
                mm = small_linalg.matmul
                state = ((mm(F, m[:, None])[:, 0] + offset, _sym(mm(mm(F, P), F.T) + Q))
                         + ((F,) if with_phi else ()))
                return state, jnp.array(True), jnp.array(0, dtype=jnp.int32)
        else:
            rhs = self._rhs(sde, theta, with_phi)

            def predict(m, P, ta, tb, _):
                state = (m, P) + ((jnp.eye(m.shape[0], dtype=m.dtype),) if with_phi else ())
                out, ok, n = _solve_moments(rhs, state, ta, tb, solver, adjoint)
                return out, ok, n.astype(jnp.int32)

        ok, steps, outs = gaussian_filter(predict, self._update(), m0, P0, inputs,
                                          with_phi=with_phi, per_step=per_step)
        mf, Pf, mp, Pp, ll = outs[:5]
        log_lik = jnp.sum(ll)
        result = dict(log_lik=jnp.where(ok, log_lik, -jnp.inf), ok=ok & jnp.isfinite(log_lik),
                      num_steps=steps, filtered_mean=mf, filtered_cov=Pf)
        if smooth:
            ms, Ps = rts_smoother(mf, Pf, mp, Pp, outs[5])
            result.update(self._smoothed(ms, Ps, inputs))
        return FilterOutput(**result)


@dataclasses.dataclass(frozen=True)
class EKF(_GaussianFilter):
    r"""Continuous-discrete extended Kalman filter (and RTS smoother) as the likelihood.

    Between observations, $m$ and $P$ follow $\dot m = f(t, m)$,
    $\dot P = F P + P F^\top + L L^\top$ ($F$ the drift's Jacobian at $m$), solved with
    the model's `probde.Solver`; at observations, the Joseph-form Kalman update with the
    observation function linearised at the predicted mean. Exact for linear-Gaussian models
    (up to the solver's tolerance); for declared linear SDEs the transition is computed
    exactly by matrix exponentials (`exact_linear=True`).

    Needs Gaussian observation noise on the noise model's link scale (`noise.Normal`, or
    `noise.LogNormal`, which is Gaussian in the log) and a Gaussian (or fixed) initial state.

    `parallel=True` runs the filter and smoother as associative scans over time
    (Särkkä & García-Fernández 2021; `probde.inference.parallel_kalman`): O(log T)
    dependent steps instead of T, for long series on a GPU. It needs a linear SDE and
    observations affine in the state on the link scale (a `ValueError` says which is
    missing); on a CPU the sequential filter is faster.

    **Example:**

    ```python
    >>> import probde
    >>> probde.EKF()
    EKF(exact_linear=True, parallel=False)

    ```
    """

    def _rhs(self, sde, theta, with_phi):
        return _ekf_rhs(sde, theta, with_phi)

    def _update(self):
        return _ekf_update

    def _observation_moments(self, m, P, h):
        H = jax.jacfwd(h)(m)
        return h(m), jnp.einsum("os,st,ot->o", H, P, H)


@dataclasses.dataclass(frozen=True)
class UKF(_GaussianFilter):
    r"""Continuous-discrete unscented (sigma-point) Kalman filter and smoother.

    The moment equations' expectations $E[f(X)]$, $\mathrm{Cov}(X, f(X))$ and
    $E[L L^\top]$ are computed with $2n + 1$ sigma points of the current Gaussian
    (Särkkä 2007), and so is the update. The default `alpha=1, beta=0, kappa=0` is the
    spherical cubature rule (equal positive weights, no centre point; Arasaratnam & Haykin
    2009), which keeps covariances positive; the classic unscented choice is
    `alpha=1e-3, beta=2, kappa=0`.

    Same requirements as `probde.EKF`; more accurate than the EKF when the drift or the
    observation function is strongly nonlinear over the spread of the state.

    **Example:**

    ```python
    >>> import probde
    >>> probde.UKF().alpha
    1.0

    ```
    """

    alpha: float = 1.0
    beta: float = 0.0
    kappa: float = 0.0

    def __post_init__(self):
        for name in ("alpha", "beta", "kappa"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise TypeError(f"{name} must be a finite number; got {v!r}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be positive; got {self.alpha!r}")
        super().__post_init__()

    @property
    def _rule(self):
        return _SigmaRule(float(self.alpha), float(self.beta), float(self.kappa))

    def _rhs(self, sde, theta, with_phi):
        return _ukf_rhs(sde, theta, self._rule, with_phi)

    def _update(self):
        return _ukf_update(self._rule)

    def _observation_moments(self, m, P, h):
        X, wm, wc = self._rule.points(m, P)
        Y = jax.vmap(h)(X)
        mean = wm @ Y
        return mean, wc @ (Y - mean[None]) ** 2
