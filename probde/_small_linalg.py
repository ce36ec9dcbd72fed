"""Cholesky factorisation and triangular solves of small matrices, unrolled.

A Gaussian filter's scan step multiplies, factorises and solves with matrices of the size of the
observation vector (and the state): 1 to a few rows. On a CPU, `jnp.linalg.cholesky` and
`jax.scipy.linalg.solve_triangular` are LAPACK calls, each a separate kernel with a fixed
cost of about a microsecond, several times the arithmetic, and XLA cannot fuse across
them (so is a `dot` of tiny matrices); under forward-mode differentiation each brings
more such calls. For matrices of at most `UNROLL` rows the same algorithms are written out
element by element here (the shapes are static), which XLA fuses into the scan's loop
body. Larger matrices use JAX's.
"""

from __future__ import annotations

import jax.numpy as jnp
import jax.scipy.linalg as jsl

UNROLL = 6


def matmul(a, b):
    """`a @ b` (2-d) for small matrices as a broadcast product and sum, which XLA fuses
    with the elementwise work around it (a `dot` of tiny matrices is a kernel of its own
    on a CPU, batched or not)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] * a.shape[1] * b.shape[1] > 512:
        return a @ b
    return jnp.sum(a[:, :, None] * b[None, :, :], axis=1)


def cholesky(S):
    """Lower Cholesky factor of the symmetric positive definite `S` `(n, n)` (NaN where `S`
    is not positive definite, like `jnp.linalg.cholesky`)."""
    n = S.shape[-1]
    if n > UNROLL:
        return jnp.linalg.cholesky(S)
    L = [[None] * n for _ in range(n)]
    for j in range(n):
        d = S[j, j] - sum((L[j][k] ** 2 for k in range(j)), jnp.zeros((), S.dtype))
        d = jnp.sqrt(jnp.where(d > 0, d, jnp.nan))
        L[j][j] = d
        for i in range(j + 1, n):
            L[i][j] = (S[i, j] - sum((L[i][k] * L[j][k] for k in range(j)),
                                     jnp.zeros((), S.dtype))) / d
    zero = jnp.zeros((), S.dtype)
    return jnp.stack([jnp.stack([L[i][j] if j <= i else zero for j in range(n)])
                      for i in range(n)])


def solve_lower(L, B):
    """`L^{-1} B` for lower-triangular `L` `(n, n)` and `B` `(n,)` or `(n, k)`."""
    n = L.shape[-1]
    if n > UNROLL:
        return jsl.solve_triangular(L, B, lower=True)
    rows = []
    for i in range(n):
        acc = B[i] - sum((L[i, k] * rows[k] for k in range(i)), jnp.zeros_like(B[i]))
        rows.append(acc / L[i, i])
    return jnp.stack(rows)


def solve_upper(U, B):
    """`U^{-1} B` for upper-triangular `U` `(n, n)` and `B` `(n,)` or `(n, k)`."""
    n = U.shape[-1]
    if n > UNROLL:
        return jsl.solve_triangular(U, B, lower=False)
    rows = [None] * n
    for i in reversed(range(n)):
        acc = B[i] - sum((U[i, k] * rows[k] for k in range(i + 1, n)), jnp.zeros_like(B[i]))
        rows[i] = acc / U[i, i]
    return jnp.stack(rows)


def cho_solve(L, B):
    """`S^{-1} B` from the lower Cholesky factor `L` of `S`."""
    return solve_upper(L.T, solve_lower(L, B))


def gaussian_log_density(r, L, n_obs):
    """`log N(r | 0, S)` from the lower Cholesky factor `L` of `S`, for `n_obs` observed
    components (masked ones carry a zero residual and a unit variance)."""
    z = solve_lower(L, r)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))
    return -0.5 * (z @ z + logdet + n_obs * jnp.log(2.0 * jnp.pi))


# ------------------------------------------------ batched over a leading axis (T intervals)
# Written as `R` elementwise multiply-adds: a `sum` over the inner axis or an `einsum` is a
# reduction kernel, which on a CPU costs tens of times more on such short axes (measured
# on all intervals' transitions of a linear SDE, `moments._matrix_transitions`).
def batched_matmul(a, b):
    """`a @ b` for `a` `(T, S, R)`, `b` `(T, R, U)`."""
    out = a[:, :, 0, None] * b[:, None, 0, :]
    for k in range(1, a.shape[2]):
        out = out + a[:, :, k, None] * b[:, None, k, :]
    return out


def batched_matmul_t(a, b):
    """`a @ b'` for `a` `(T, S, R)`, `b` `(T, U, R)`."""
    out = a[:, :, 0, None] * b[:, None, :, 0]
    for k in range(1, a.shape[2]):
        out = out + a[:, :, k, None] * b[:, None, :, k]
    return out


def batched_matvec(a, v):
    """`a @ v` for `a` `(T, S, R)`, `v` `(T, R)`."""
    return batched_matmul(a, v[:, :, None])[:, :, 0]
