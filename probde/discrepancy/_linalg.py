"""Dense linear algebra shared by the GP emulators: a lower-triangular solve by matrix
products (no LAPACK call), for prediction inside a sampler's gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _solve_lower_by_inverse(L, L_inv, B):
    """`L^{-1} B` for a lower-triangular `L (N, N)` with a precomputed inverse `L_inv`, by
    matrix products only: `X = L_inv B`, then one step of iterative refinement
    `X + L_inv (B - L X)`.

    Why not `solve_triangular`: on CPU that is a LAPACK `trsm` call into the BLAS linked by
    scipy (OpenBLAS), which multi-threads a solve of more than about 1000 entries
    (`N * columns`). At emulator sizes (N ~ 100-1000, a dozen columns) it is tens of
    microseconds of arithmetic, but the threads' hand-offs cost from a hundred microseconds
    to milliseconds when the cores are shared or busy (an MCMC chain per core, a CI runner):
    it made one gradient of a model with a 108-point emulator 20-50 times slower than the
    same model with its ODE, all of it in the two `trsm` calls (forward, and its transpose
    in the gradient). Products are XLA's own dots, and so is their gradient.

    Why the refinement step: `Kss - V^T V` cancels to a few significant digits when the
    predictive variance is far below the prior variance (near the training runs). The
    backward-stable `trsm` gives a `V` whose error cancels in `V^T V` (it is the exact `V`
    of a nearby `L`); the plain product `L_inv B` is as accurate elementwise but its error
    does not cancel, and costs about a decimal digit of the covariance. One refinement step
    against `L` itself restores `trsm`'s accuracy (checked against an 80-bit reference)."""
    hi = jax.lax.Precision.HIGHEST  # TF32 on GPUs would defeat the residual
    X = jnp.matmul(L_inv, B, precision=hi)
    return X + jnp.matmul(L_inv, B - jnp.matmul(L, X, precision=hi), precision=hi)
