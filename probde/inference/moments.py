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
import functools
import math

import diffrax
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jax.custom_derivatives import SymbolicZero

from ..dynamics._diffeqsolve import diffeqsolve
from ..dynamics.sde import SDE
from ..dynamics.solver import ForwardSensitivity
from .._small_linalg import batched_matmul, batched_matmul_t, batched_matvec


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
    `int_0^dt expm(A s) b ds` and `Q = int_0^dt expm(A s) L L' expm(A s)' ds`, from one
    block matrix exponential (`_matrix_transitions`; in closed form for one state).

    Differentiated (either mode), the matrix route's derivatives are its Jacobian in the
    parameters, computed once by forward mode with one tangent per parameter, times the
    parameters' tangents (`_matrix_route`): the filter's forward-mode gradient pushes one
    tangent per differentiated input (parameters, initial moments, noise variances), and
    through the exponentials those tangents were most of its cost; reverse mode through
    the doubling loop would need a loop of fixed length.
    """
    like = jax.lax.stop_gradient(like)
    dts = jnp.asarray(dts, like.dtype)
    if like.shape[0] == 1:
        A, b, QC = _linear_parts(sde, theta, like)
        return _scalar_transitions(A[0, 0], b[0], QC[0, 0], dts)
    leaves, treedef = jax.tree.flatten(theta)
    real = [i for i, x in enumerate(leaves) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    fixed = [jax.lax.stop_gradient(x) for x in leaves]

    def parts(xs):
        full = list(fixed)
        for i, x in zip(real, xs):
            full[i] = x
        return _linear_parts(sde, jax.tree.unflatten(treedef, full), like)

    xs = [leaves[i] for i in real]
    # Values the SDE's functions close over that may carry derivatives (traced) become
    # inputs of the custom derivative too (`jax.closure_convert`), so none is lost.
    converted, consts = jax.closure_convert(parts, xs)
    n = len(xs)
    return _matrix_route(lambda ins: converted(ins[:n], *ins[n:]), xs + list(consts), dts)


def _linear_parts(sde: SDE, theta, like):
    """`(A, b, L L')` of a linear SDE's drift `A x + b` and diffusion `L`."""
    zero = jnp.zeros_like(like)
    t = jnp.zeros((), like.dtype)
    A = jax.jacfwd(sde.drift, argnums=1)(t, zero, theta)
    b = sde.drift(t, zero, theta)
    L = sde.noise_matrix(t, zero, theta)
    return A, b, L @ L.T


def _scaled_transitions(A, b, QC, dts):
    """`_matrix_transitions` with `b` and `QC` scaled to unit size before and back after
    (the offset and Q are linear in them), so that the exponential depends on A dt only,
    not on the units of x."""
    b_scale = jax.lax.stop_gradient(_unit_scale(b))
    q_scale = jax.lax.stop_gradient(_unit_scale(QC))
    F, offset, Q = _matrix_transitions(A, b / b_scale, QC / q_scale, dts)
    return F, offset * b_scale, Q * q_scale


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _matrix_route(parts, xs, dts):
    return _scaled_transitions(*parts(xs), dts)


def _matrix_route_jvp(parts, primals, tangents):
    xs, dts = primals
    t_xs, t_dts = tangents

    def value(xs):
        out = _scaled_transitions(*parts(xs), dts)
        return out, out

    jac, out = jax.jacfwd(value, has_aux=True)(xs)  # per output, a list over xs
    F, offset, Q = out

    def contract(js, like):
        # scalar parameters as products, not `tensordot` (a dot kernel per leaf)
        total = jnp.zeros_like(like)
        for j, t in zip(js, t_xs):
            if not isinstance(t, SymbolicZero):  # an input nobody differentiates
                total = total + (j * t if jnp.ndim(t) == 0 else
                                 jnp.tensordot(j, t, axes=jnp.ndim(t)))
        return total

    t_out = tuple(contract(js, o) for js, o in zip(jac, out))
    if isinstance(t_dts, SymbolicZero):  # the usual case: the times are data
        return out, t_out
    # The intervals' lengths: d/d dt of (F, offset, Q) is (A F, F b, F L L' F').
    A, b, QC = parts(xs)
    A, b, QC = (jax.lax.stop_gradient(x) for x in (A, b, QC))
    dF = batched_matmul(jnp.broadcast_to(A, F.shape), F)
    d_offset = batched_matvec(F, jnp.broadcast_to(b, offset.shape))
    dQ = batched_matmul_t(batched_matmul(F, jnp.broadcast_to(QC, F.shape)), F)
    t_dts = t_dts[:, None]
    t_out = (t_out[0] + dF * t_dts[:, :, None], t_out[1] + d_offset * t_dts,
             t_out[2] + dQ * t_dts[:, :, None])
    return out, t_out


# Symbolic zeros: no work for the tangents of inputs that are not differentiated.
_matrix_route.defjvp(_matrix_route_jvp, symbolic_zeros=True)


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
_TAYLOR_DEGREE = 16


def _matrix_transitions(A, b, QC, dts):
    """`(F, offset, Q)` over each interval of `dts` `(T,)` for `|b|, |QC| <= 1`, all
    intervals at once, by scaling and squaring.

    One block matrix holds all three (Van Loan 1978, with a column for the offset),

        M = [[A, QC,  b],        expm(M h) = [[F, G12, offset],
             [0, -A', 0],                     [0,   .,      0],
             [0,  0,  0]]                     [0,   0,      1]],

    with `Q = G12 F'`; only its first block row is needed. All intervals are halved the
    same number of times `n`, to `h = dt / 2^n` with `|M| h <= 1/2` for the longest,
    where that row is the Taylor polynomial `sum_k h^k E' M^k / k!` (degree 16: truncation
    error below 0.5^17 / 17!, about 2e-20 relative). The matrices `E' M^k / k!` do not
    depend on the interval, so they are computed once and the polynomials of all
    intervals are one matrix product `(T, 17) x (17, S (2S + 1))`. Then all intervals are
    doubled back `n` times together, `F(2h) = F(h)^2`, `offset(2h) = F(h) offset(h) +
    offset(h)`, `Q(2h) = Q(h) + F(h) Q(h) F(h)'`, elementwise: halving the short intervals
    more than they need costs rounding errors of order `n` machine epsilons, and saves
    masking each interval's own count. The loop has as many steps as `n`, so it
    differentiates in forward mode only (`_matrix_route` sees to that). `expm(-A' dt)`
    overflows for a fast-decaying A (`k dt > 709`) although the transition is finite: at
    `h` it does not. Why not `jax.scipy.linalg.expm`: under `vmap` over intervals (and
    under forward-mode tangents) its data-dependent choice of Pade degree and number of
    squarings becomes a select over all of them, every one computed; here the norm is
    bounded by construction, so one polynomial serves.
    """
    S = A.shape[0]
    dtype = A.dtype
    M = jnp.concatenate([
        jnp.concatenate([A, QC, b[:, None]], axis=1),
        jnp.concatenate([jnp.zeros((S, S), dtype), -A.T, jnp.zeros((S, 1), dtype)], axis=1),
        jnp.zeros((1, 2 * S + 1), dtype),
    ])
    norm = jnp.max(jnp.sum(jnp.abs(M), axis=1))
    longest = jnp.max(jnp.abs(dts))
    n = jnp.ceil(jnp.log2(jnp.maximum(norm * longest, jnp.finfo(dtype).tiny) / 0.5))
    n = jax.lax.stop_gradient(jnp.clip(n, 0, _MAX_HALVINGS))
    h = dts / 2.0**n
    row = jnp.eye(2 * S + 1, dtype=dtype)[:S]  # E': the first block row
    terms = [row]
    for k in range(1, _TAYLOR_DEGREE + 1):
        terms.append(terms[-1] @ M / k)
    powers = jnp.stack(terms)  # (K + 1, S, 2S + 1)
    hk = [jnp.ones_like(h)]
    for _ in range(_TAYLOR_DEGREE):
        hk.append(hk[-1] * h)
    rows = jnp.einsum("tk,ksd->tsd", jnp.stack(hk, axis=1), powers)
    F, G12, offset = rows[:, :, :S], rows[:, :, S:2 * S], rows[:, :, 2 * S]
    Q = _sym(batched_matmul_t(G12, F))

    def double(_, carry):
        F, offset, Q = carry
        return batched_matmul(F, F), batched_matvec(F, offset) + offset, _sym(Q + batched_matmul_t(batched_matmul(F, Q), F))

    return jax.lax.fori_loop(0, n.astype(jnp.int32), double, (F, offset, Q))


def _unit_scale(x):
    """The largest absolute entry of `x`, or 1 where `x` is zero (or not finite)."""
    c = jnp.max(jnp.abs(x))
    return jnp.where((c > 0) & jnp.isfinite(c), c, 1.0)
