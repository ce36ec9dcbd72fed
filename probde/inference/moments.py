"""Prediction of a continuous-discrete Gaussian filter between observations.

The mean and covariance of X follow the moment equations (Jazwinski 1970; Särkkä & Solin
2019, ch. 9-10), with the expectations taken by linearisation at the mean (EKF) or by
sigma points (UKF), solved with diffrax over each interval; the transition's linearisation
`Phi` is solved with them for the smoother. A declared linear SDE is discretised exactly
instead (Van Loan 1978, with scaling and squaring). Used by `filters.py`; the particle
filter draws its transitions of a linear SDE from the same discretisation
(`linear_transition`).
"""

from __future__ import annotations

import dataclasses
import math

import diffrax
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from ..dynamics.sde import SDE
from ..dynamics.solver import ForwardSensitivity


def _sym(P):
    return 0.5 * (P + jnp.swapaxes(P, -1, -2))


def _jitter(P):
    """A relative jitter for Cholesky factors of covariances that may be singular."""
    S = P.shape[-1]
    eps = jnp.finfo(P.dtype).eps
    return (eps * (1.0 + jnp.trace(P) / S)) * jnp.eye(S, dtype=P.dtype)


# --------------------------------------------------------------------------- sigma points
@dataclasses.dataclass(frozen=True)
class _SigmaRule:
    alpha: float
    beta: float
    kappa: float

    def weights(self, n: int, dtype):
        lam = self.alpha**2 * (n + self.kappa) - n
        c = n + lam
        wm = jnp.concatenate([jnp.array([lam / c]), jnp.full(2 * n, 0.5 / c)]).astype(dtype)
        wc = wm.at[0].add(1.0 - self.alpha**2 + self.beta)
        return wm, wc, math.sqrt(c)

    def points(self, m, P):
        """Sigma points `(2n + 1, n)` and weights for N(m, P)."""
        n = m.shape[0]
        wm, wc, scale = self.weights(n, m.dtype)
        chol = jnp.linalg.cholesky(_sym(P) + _jitter(P))
        offsets = scale * jnp.concatenate([chol.T, -chol.T], axis=0)  # (2n, n)
        X = jnp.concatenate([m[None], m[None] + offsets], axis=0)
        return X, wm, wc


# ---------------------------------------------------------------------- moment equations
def _ekf_rhs(sde: SDE, theta, with_phi: bool):
    jac = jax.jacfwd(sde.drift, argnums=1)

    def rhs(t, state, args):
        m, P = state[0], state[1]
        F = jac(t, m, theta)
        L = sde.noise_matrix(t, m, theta)
        dP = F @ P + P @ F.T + L @ L.T
        out = (sde.drift(t, m, theta), _sym(dP))
        if with_phi:
            out = out + (F @ state[2],)
        return out

    return rhs


def _ukf_rhs(sde: SDE, theta, rule: _SigmaRule, with_phi: bool):
    def rhs(t, state, args):
        m, P = state[0], state[1]
        X, wm, wc = rule.points(m, P)
        fX = jax.vmap(lambda x: sde.drift(t, x, theta))(X)
        Ef = wm @ fX
        dX = X - m[None]
        C = (dX * wc[:, None]).T @ (fX - Ef[None])  # Cov(X, f(X))
        LX = jax.vmap(lambda x: sde.noise_matrix(t, x, theta))(X)
        # E[L L^T]: an expectation, so the mean weights (the covariance weights wc add
        # 1 - alpha^2 + beta at the centre and would scale a constant L L^T by that much).
        LL = jnp.einsum("k,kij,klj->il", wm, LX, LX)
        out = (Ef, _sym(C + C.T + LL))
        if with_phi:
            # Statistical linearisation of the drift, A = Cov(f, X) P^{-1}.
            Pj = _sym(P) + _jitter(P)
            A = jsl.cho_solve(jsl.cho_factor(Pj), C).T
            out = out + (A @ state[2],)
        return out

    return rhs


def _solve_moments(rhs, state, t_start, t_end, solver, adjoint):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(rhs),
        solver.solver,
        t_start,
        t_end,
        solver.dt0,
        state,
        stepsize_controller=solver.controller(),
        saveat=diffrax.SaveAt(t1=True),
        max_steps=solver.max_steps,
        adjoint=adjoint,
        throw=False,
    )
    out = jax.tree.map(lambda a: a[-1], sol.ys)
    ok = sol.result == diffrax.RESULTS.successful
    return out, ok, sol.stats["num_steps"]


def _forward_mode(solver, num_inputs: int) -> bool:
    """Differentiate the whole filter in forward mode (see `_forward_gradient`)?"""
    adj = solver.resolve_adjoint(num_inputs)
    return isinstance(adj, ForwardSensitivity)


def _forward_gradient(fn, args):
    """`fn(args) -> (log_lik, *aux)` with the gradient of `log_lik` computed in forward mode.

    The filter is a scan of small adaptive solves. Reverse mode through it (diffrax's
    checkpointed adjoint, per interval) costs many times the forward pass; with few inputs
    (parameters, initial moments, noise variances) one forward pass carrying all their
    tangents at once is cheaper. Only inputs that are being differentiated carry a tangent
    (`symbolic_zeros` tells which: a fixed initial state or noise level costs nothing).
    The Jacobian is kept and `grad` costs one product with it, as for
    `probde.ForwardSensitivity` on ODE solves. The auxiliary outputs are not
    differentiable through this function (their gradients are stopped).
    """
    leaves, treedef = jax.tree.flatten(args)

    @jax.custom_vjp
    def call(*xs):
        return fn(jax.tree.unflatten(treedef, xs))

    def call_fwd(*primals):
        values = [p.value for p in primals]
        idx = [i for i, p in enumerate(primals) if p.perturbed]

        def value(sub):
            full = list(values)
            for i, v in zip(idx, sub):
                full[i] = v
            out = fn(jax.tree.unflatten(treedef, full))
            return out[0], out

        jac, out = jax.jacfwd(value, has_aux=True)([values[i] for i in idx])
        return out, (jac, idx)

    def call_bwd(res, cotangents):
        jac, idx = res
        grads = [None] * len(leaves)
        for i, j in zip(idx, jac):
            grads[i] = cotangents[0] * j
        return tuple(grads)

    call.defvjp(call_fwd, call_bwd, symbolic_zeros=True)
    out = call(*leaves)
    return (out[0],) + tuple(jax.lax.stop_gradient(o) for o in out[1:])


def _exact_linear(sde: SDE, theta, m, P, t_start, t_end):
    """Exact transition of a linear SDE over `[t_start, t_end]`: `(m', P', Phi)`.

    `F = expm(A dt)`, offset from the augmented matrix `[[A, b], [0, 0]]`, and
    `Q = int_0^dt expm(A s) L L' expm(A s)' ds` from Van Loan's block matrix
    (`linear_transition`).
    """
    F, offset, Q = linear_transition(sde, theta, t_start, t_end, m)
    return F @ m + offset, _sym(F @ P @ F.T + Q), F


def linear_transition(sde: SDE, theta, t_start, t_end, like):
    """The exact Gaussian transition of a linear SDE over `[t_start, t_end]`:
    `x(t_end) | x(t_start) = x ~ N(F x + offset, Q)`, as `(F, offset, Q)`.

    `like` is a state `(S,)` that gives the shape and dtype. Shared by the Gaussian
    filters (`_exact_linear`, which moves a mean and covariance) and the particle filter
    (which moves each particle by `F x + offset + Q^{1/2} eps`).
    """
    S = like.shape[0]
    zero = jnp.zeros_like(like)
    A = jax.jacfwd(sde.drift, argnums=1)(t_start, zero, theta)
    b = sde.drift(t_start, zero, theta)
    L = sde.noise_matrix(t_start, zero, theta)
    dt = t_end - t_start
    # The offset and Q are linear in b and L L': both are scaled to unit size before the
    # matrix exponentials and back after, so that the exponentials' norms (and JAX's
    # scaling-and-squaring limit) depend on A dt only, not on the units of x.
    b_scale = jax.lax.stop_gradient(_unit_scale(b))
    top = jnp.concatenate([A, (b / b_scale)[:, None]], axis=1)
    aug = jnp.concatenate([top, jnp.zeros((1, S + 1), like.dtype)], axis=0)
    E = jsl.expm(aug * dt)
    F, offset = E[:S, :S], E[:S, S] * b_scale
    QC = L @ L.T
    q_scale = jax.lax.stop_gradient(_unit_scale(QC))
    Q = _van_loan_doubling(A, QC / q_scale, dt) * q_scale
    return F, offset, Q


_MAX_HALVINGS = 40


def _van_loan_doubling(A, QC, dt):
    """`int_0^dt expm(A s) QC expm(A s)' ds` without overflow.

    Van Loan's block matrix `[[-A, QC], [0, A']] dt` contains `expm(-A dt)`, which
    overflows for a fast-decaying `A` (e.g. `exp(k dt)`, `k dt > 709`) although the result
    is finite. So the block exponential is taken over `h = dt / 2^n` with `|A| h <= 1/2`,
    and the interval is doubled back `n` times with `Q(2h) = Q(h) + F(h) Q(h) F(h)'`,
    `F(2h) = F(h)^2` (a fixed number of masked steps, so it differentiates in both modes).
    """
    S = A.shape[0]
    norm = jnp.max(jnp.sum(jnp.abs(A), axis=1)) * jnp.abs(dt)
    n = jnp.ceil(jnp.log2(jnp.maximum(norm, jnp.finfo(A.dtype).tiny) / 0.5))
    n = jax.lax.stop_gradient(jnp.clip(n, 0, _MAX_HALVINGS))
    h = dt / 2.0**n
    M = jnp.block([[-A, QC], [jnp.zeros_like(A), A.T]]) * h
    G = jsl.expm(M)
    F = G[S:, S:].T
    Q = _sym(F @ G[:S, S:])

    def double(i, carry):
        F, Q = carry
        use = i < n
        return jnp.where(use, F @ F, F), jnp.where(use, _sym(Q + F @ Q @ F.T), Q)

    _, Q = jax.lax.fori_loop(0, _MAX_HALVINGS, double, (F, Q))
    return Q


def _unit_scale(x):
    """The largest absolute entry of `x`, or 1 where `x` is zero (or not finite)."""
    c = jnp.max(jnp.abs(x))
    return jnp.where((c > 0) & jnp.isfinite(c), c, 1.0)
