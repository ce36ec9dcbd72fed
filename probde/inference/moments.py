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

from ..dynamics._diffeqsolve import diffeqsolve
from ..dynamics.sde import SDE
from ..dynamics.solver import ForwardSensitivity
from . import small_linalg


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
    sol = diffeqsolve(
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
    """`fn(args, differentiating) -> (log_lik, *aux)` with the gradient of `log_lik`
    computed in forward mode (`differentiating` is True where `fn` runs under that
    forward pass, False for a value alone).

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
        return fn(jax.tree.unflatten(treedef, xs), False)

    def call_fwd(*primals):
        values = [p.value for p in primals]
        idx = [i for i, p in enumerate(primals) if p.perturbed]

        def value(sub):
            full = list(values)
            for i, v in zip(idx, sub):
                full[i] = v
            out = fn(jax.tree.unflatten(treedef, full), True)
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

    `like` is a state `(S,)` that gives the shape and dtype. The particle filter moves
    each particle by `F x + offset + Q^{1/2} eps`; the Gaussian filters use
    `linear_transitions`, all intervals at once.
    """
    dts = jnp.reshape(jnp.asarray(t_end - t_start, like.dtype), (1,))
    return jax.tree.map(lambda a: a[0], linear_transitions(sde, theta, dts, like))


def linear_transitions(sde: SDE, theta, dts, like):
    """`linear_transition` over intervals of lengths `dts` `(T,)`, batched: `(F, offset,
    Q)` with leading dim T.

    A linear SDE's drift `A x + b` and diffusion `L` depend on neither x nor t (checked
    when the model is built), so they are evaluated once. `F = expm(A dt)`, the offset
    `int_0^dt expm(A s) b ds` from the augmented matrix `[[A, b], [0, 0]]`, and
    `Q = int_0^dt expm(A s) L L' expm(A s)' ds` from Van Loan's block matrix
    `[[-A, L L'], [0, A']]` (Van Loan 1978). The offset and Q are linear in b and L L':
    both are scaled to unit size before the exponentials and back after, so that the
    exponentials depend on A dt only, not on the units of x.
    """
    zero = jnp.zeros_like(like)
    t = jnp.zeros((), like.dtype)
    A = jax.jacfwd(sde.drift, argnums=1)(t, zero, theta)
    b = sde.drift(t, zero, theta)
    L = sde.noise_matrix(t, zero, theta)
    QC = L @ L.T
    dts = jnp.asarray(dts, like.dtype)
    if like.shape[0] == 1:
        return _scalar_transitions(A[0, 0], b[0], QC[0, 0], dts)
    b_scale = jax.lax.stop_gradient(_unit_scale(b))
    q_scale = jax.lax.stop_gradient(_unit_scale(QC))
    b, QC = b / b_scale, QC / q_scale
    norm = (jnp.max(jnp.sum(jnp.abs(A), axis=1)) + jnp.max(jnp.sum(jnp.abs(QC), axis=1))
            + jnp.max(jnp.abs(b)))
    n = jnp.ceil(jnp.log2(jnp.maximum(norm * jnp.abs(dts), jnp.finfo(dts.dtype).tiny) / 0.5))
    n = jax.lax.stop_gradient(jnp.clip(n, 0, _MAX_HALVINGS))
    # In chunks of CHUNK intervals (vmapped within a chunk): the block exponentials'
    # intermediates of all intervals at once do not stay in the CPU's caches (on a
    # Matern-3/2 SDE, 1,000 intervals at once cost 23 times 100; in chunks of 16, 6
    # times, values and forward-mode Jacobians alike; chunks of 4 to 256 were tried).
    n_max = jnp.max(n)
    F, offset, Q = jax.lax.map(lambda a: _scaled_transition(A, b, QC, a[0], a[1], n_max),
                               (dts, n), batch_size=min(CHUNK, dts.shape[0]))
    return F, offset * b_scale, Q * q_scale


def _scalar_transitions(a, b, q, dts):
    """One state, `dx = (a x + b) dt + sqrt(q) dW`: `F = exp(a dt)`, `offset = b dt
    phi(a dt)`, `Q = q dt phi(2 a dt)` with `phi(z) = (exp(z) - 1) / z`, in closed form
    (elementwise over all intervals, no matrix exponential)."""
    F = jnp.exp(a * dts)
    offset = b * dts * _phi1(a * dts)
    Q = q * dts * _phi1(2.0 * a * dts)
    return F[:, None, None], offset[:, None], Q[:, None, None]


def _phi1(z):
    """`(exp(z) - 1) / z`, 1 at 0, with its derivatives right near 0 (a series below
    |z| = 1e-3, where its truncation error z^4 / 120 is below 1e-14; `expm1` above)."""
    small = jnp.abs(z) < 1e-3
    safe = jnp.where(small, 1.0, z)
    series = 1.0 + z / 2.0 + z**2 / 6.0 + z**3 / 24.0
    return jnp.where(small, series, jnp.expm1(safe) / safe)


_MAX_HALVINGS = 40
_TAYLOR_DEGREE = 18
CHUNK = 16


def _scaled_transition(A, b, QC, dt, n, n_max):
    """`(F, offset, Q)` over `dt` for `|b|, |QC| <= 1`, by scaling and squaring.

    The interval is halved `n` times, to `h = dt / 2^n` with the block matrices' norms
    times `h` at most 1/2 (`n_max`: the largest `n` of the batch of intervals); there
    their exponentials are Taylor polynomials of degree 18
    (truncation error below 0.5^19 / 19!, about 1e-23 relative), and the interval is
    doubled back `n` times: `F(2h) = F(h)^2`, `offset(2h) = F(h) offset(h) + offset(h)`,
    `Q(2h) = Q(h) + F(h) Q(h) F(h)'`. Van Loan's block matrix holds `expm(-A dt)`, which
    overflows for a fast-decaying A (`k dt > 709`) although the transition is finite: at
    `h` it does not. Why not `jax.scipy.linalg.expm`: under `vmap` over intervals (and
    under forward-mode tangents) its data-dependent choice of Padé degree and number of
    squarings becomes a select over all of them, every one computed; here the norm is
    bounded by construction, so one polynomial serves. The doubling is a scan of
    `_MAX_HALVINGS` steps (so it differentiates in both modes) whose steps past the
    batch's `n_max` are skipped by a `cond` on that unbatched count, and masked per
    interval below it.
    """
    S = A.shape[0]
    h = dt / 2.0**n
    row = jnp.zeros((1, S + 1), A.dtype)
    E = _expm_taylor(jnp.concatenate([jnp.concatenate([A, b[:, None]], axis=1), row]) * h)
    F, offset = E[:S, :S], E[:S, S]
    G = _expm_taylor(jnp.block([[-A, QC], [jnp.zeros_like(A), A.T]]) * h)
    Q = _sym(small_linalg.matmul(G[S:, S:].T, G[:S, S:]))

    mm = small_linalg.matmul

    def double(carry, i):
        def step(carry):
            F, offset, Q = carry
            use = i < n
            return (jnp.where(use, mm(F, F), F),
                    jnp.where(use, mm(F, offset[:, None])[:, 0] + offset, offset),
                    jnp.where(use, _sym(Q + mm(mm(F, Q), F.T)), Q))

        return jax.lax.cond(i < n_max, step, lambda c: c, carry), None

    steps = jnp.arange(_MAX_HALVINGS, dtype=n.dtype)
    return jax.lax.scan(double, (F, offset, Q), steps)[0]


def _expm_taylor(M):
    """`expm(M)` for `|M| <= 1/2` by Horner's rule on the degree-18 Taylor polynomial."""
    eye = jnp.eye(M.shape[0], dtype=M.dtype)
    E = eye + M / _TAYLOR_DEGREE
    for k in range(_TAYLOR_DEGREE - 1, 0, -1):
        E = eye + small_linalg.matmul(M, E) / k
    return E


def _unit_scale(x):
    """The largest absolute entry of `x`, or 1 where `x` is zero (or not finite)."""
    c = jnp.max(jnp.abs(x))
    return jnp.where((c > 0) & jnp.isfinite(c), c, 1.0)
