"""`probde.Laplace`: the posterior mode found by optax and a normal approximation there.

Fitted by the same code as `probde.SVI` (`guide_fit`); the draws come back as one chain,
`(1, num_draws, ...)`, and the optimisation trace as the DataTree group `svi_trace`.
"""

from __future__ import annotations

import dataclasses

import optax
from numpyro.infer.autoguide import AutoLaplaceApproximation

from ._options import check_fit_options
from .guide_fit import fit_and_draw
from .guides import laplace_guide
from .methods import AbstractMethod


@dataclasses.dataclass(frozen=True)
class Laplace(AbstractMethod):
    """The Laplace approximation: the posterior mode (MAP) found by optax, and a normal
    distribution there whose covariance is the inverse Hessian of the negative log density
    in the unconstrained space (numpyro's `AutoLaplaceApproximation`).

    Exact when the posterior is normal in the unconstrained space; cheap (one optimisation
    and one Hessian), and a good start for judging a model before NUTS.

    **Main arguments:**

    - `num_steps`: optimisation steps towards the mode.
    - `learning_rate`: peak learning rate of the default optimiser (Adam on the same
      warmup-cosine schedule as `probde.SVI`).
    - `num_draws`: draws from the normal approximation in the posterior (one chain).

    **Other arguments:**

    - `optimizer`: an `optax.GradientTransformation` replacing the default one.
    - `init_radius`: the optimisation starts at a point drawn uniformly in (-r, r) in the
      unconstrained space; infeasible points are redrawn.

    Steps with a non-finite loss are skipped, the trace is stored in the `svi_trace` group
    (`loss` is the negative log density at the current point, in the unconstrained space)
    and convergence is checked by the same rule as `probde.SVI`. When the Hessian at the
    mode is not positive definite numpyro warns and the draws collapse to the mode.

    **Example:**

    ```python
    >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist, probde
    >>> def model(data):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=data)
    >>> data = jnp.array([0.9, 1.4, 1.1, 0.7, 1.2])
    >>> result = probde.infer(model, data, probde.Laplace(num_draws=500), seed=0,
    ...                       num_prior_samples=0)
    >>> post = result.idata.posterior["mu"]  # exact: N(5.3 / 6, 1 / 6)
    >>> 0.8 < float(post.mean()) < 0.96 and 0.36 < float(post.std()) < 0.46
    True

    ```
    """

    num_draws: int = 1000
    num_steps: int = 2000
    learning_rate: float = 1e-2
    optimizer: optax.GradientTransformation | None = None
    init_radius: float = 2.0

    def __post_init__(self):
        check_fit_options(self)

    def autoguide(self, model_fn) -> AutoLaplaceApproximation:
        """The numpyro `AutoLaplaceApproximation` these options describe, for `model_fn`."""
        return laplace_guide(model_fn, self.init_radius)

    def run(self, model_fn, key, *, progress_bar, model_kwargs):
        return fit_and_draw(self, "Laplace", self.autoguide(model_fn), model_fn, key,
                            progress_bar, model_kwargs)
