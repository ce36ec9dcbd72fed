"""The unrolled small-matrix Cholesky and triangular solves of the Gaussian filters'
update (`probde._small_linalg`) against NumPy, at every size they unroll and one
above (where they hand over to JAX's)."""

import jax
import numpy as np
import pytest

from probde import _small_linalg as small_linalg


@pytest.mark.parametrize("n", range(1, small_linalg.UNROLL + 2))
def test_small_algebra_is_numpys(n):
    rng = np.random.default_rng(n)
    M = rng.normal(size=(n, n))
    S = M @ M.T + n * np.eye(n)
    B = rng.normal(size=(n, 3))
    L = np.asarray(small_linalg.cholesky(S))
    np.testing.assert_allclose(L, np.linalg.cholesky(S), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(small_linalg.solve_lower(L, B), np.linalg.solve(L, B),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(small_linalg.solve_upper(L.T, B[:, 0]),
                               np.linalg.solve(L.T, B[:, 0]), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(small_linalg.cho_solve(L, B), np.linalg.solve(S, B),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(small_linalg.matmul(M, B), M @ B, rtol=1e-12, atol=1e-12)
    # Gradients against LAPACK's. The unrolled factor reads the lower triangle only and
    # JAX's symmetrises its gradient: on symmetric matrices (the filters symmetrise S
    # first) the derivative along any symmetric direction is the symmetric part.
    def f(s):
        return small_linalg.cho_solve(small_linalg.cholesky(s), B).sum()

    def g(s):
        return jax.scipy.linalg.cho_solve((jax.numpy.linalg.cholesky(s), True), B).sum()

    def sym(a):
        return 0.5 * (a + a.T)

    np.testing.assert_allclose(sym(jax.grad(f)(S)), sym(jax.grad(g)(S)), rtol=1e-9,
                               atol=1e-12)


def test_a_matrix_that_is_not_positive_definite_gives_nan():
    L = np.asarray(small_linalg.cholesky(np.array([[1.0, 2.0], [2.0, 1.0]])))
    assert np.isnan(L[1, 1])
