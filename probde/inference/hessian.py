"""The Hessian of a log density, also where forward-mode differentiation cannot pass.

`jax.hessian` differentiates the gradient in forward mode. Through a solve differentiated
by a reverse adjoint (diffrax's `RecursiveCheckpointAdjoint`, which `Solver(adjoint="auto")`
picks for implicit solvers and for many inputs) that fails: the checkpointed loops are
`jax.custom_vjp` functions, which have no forward mode, and reverse-over-reverse through
them is not supported either. Then the Hessian is taken by central differences of the
(exact, reverse-mode) gradient, 2 d gradient evaluations for d coordinates. Neither JAX nor
numpyro offers this fallback, hence this module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

#: The smallest relative step of the central differences. The rounding-optimal step of a
#: central difference of an exact gradient is eps^(1/3) (6e-6 in float64), but the
#: gradient of an adaptive solve is accurate only to about the solver's tolerance
#: (1e-6 relative by default), an error that a step h amplifies by 1/h; at h = 1e-3 that
#: stays near 1e-3 relative while the truncation error (h^2 times the third derivative)
#: is about 1e-6.
MIN_STEP = 1e-3


def _no_forward_mode(err: Exception) -> bool:
    return isinstance(err, TypeError) and "forward-mode autodiff" in str(err)


def hessian(f, x):
    """The Hessian of the scalar function `f` at the vector `x`: `jax.hessian(f)(x)` when
    `f` can be differentiated in forward mode over reverse mode, else central differences
    of `jax.grad(f)` (symmetrised). The signature of numpyro's `hessian_fn`.

    **Example:**

    ```python
    >>> import jax.numpy as jnp
    >>> from probde.inference.hessian import hessian
    >>> hessian(lambda x: x[0] ** 2 * x[1], jnp.array([1.0, 2.0])).tolist()
    [[4.0, 2.0], [2.0, 0.0]]

    ```
    """
    try:
        return jax.hessian(f)(x)
    except TypeError as err:
        if not _no_forward_mode(err):
            raise
    return central_difference_hessian(jax.grad(f), x)


def central_difference_hessian(grad, x):
    """`(grad(x + h_i e_i) - grad(x - h_i e_i)) / (2 h_i)` for each coordinate i, as the
    columns of a matrix, symmetrised; `h_i = max(eps^(1/3), MIN_STEP) * max(1, |x_i|)`.
    The 2 d gradients run one after another (`lax.map`): batched, the solves' loops would
    get batched predicates, which compile slowly."""
    x = jnp.asarray(x)
    d = x.shape[0]
    rel = max(float(jnp.finfo(x.dtype).eps) ** (1 / 3), MIN_STEP)
    h = rel * jnp.maximum(1.0, jnp.abs(x))
    steps = jnp.eye(d, dtype=x.dtype) * h[:, None]
    points = jnp.concatenate([x[None, :] + steps, x[None, :] - steps])
    grads = jax.lax.map(grad, points)
    columns = (grads[:d] - grads[d:]) / (2 * h[:, None])  # row i: d grad / d x_i
    return 0.5 * (columns + columns.T)
