r"""The Fisher information of the data about the parameters, and its eigen-directions.

Where the observations are independent given the parameters and their distribution is
one of a few families, the *expected* Fisher information is assembled from the forward
sensitivities of that distribution's parameters (its mean and scale) to the analysis
coordinates $z$:

$$J = \sum_n \sum_k w_{nk}\, \frac{\partial \eta_{nk}}{\partial z}
      \frac{\partial \eta_{nk}}{\partial z}^\top,$$

with $\eta_{n}$ the distribution parameters of observation $n$ and $w_{nk}$ the Fisher
information of the family in its own parameters (diagonal for these families): a Normal
(or LogNormal, Normal on the log scale) with mean $\mu$ and standard deviation $\sigma$
has $w = (1/\sigma^2, 2/\sigma^2)$; a Poisson with rate $\lambda$ has $w = 1/\lambda$. For
Gaussian noise of fixed $\sigma$ this is $S^\top W S$ with $S$ the sensitivities of the
mean and $W$ the noise precision. It does not depend on the observed values.

For every other observation (Student-t or negative binomial noise, a marginal GP
discrepancy, an SDE filter's likelihood) it is the *observed* information, the negative
Hessian of `probde.log_likelihood` in $z$; the two agree at the maximum-likelihood estimate
as the data grow, and exactly for a model linear in its parameters with Gaussian noise.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro import handlers

from ..inference.hessian import _no_forward_mode
from ..inference.hessian import hessian as hessian_of
from ..model.sites import OBSERVED


def _gaussian(d):
    return (d.loc, d.scale), lambda loc, scale: (1.0 / scale**2, 2.0 / scale**2)


def _poisson(d):
    return (d.rate,), lambda rate: (1.0 / rate,)


#: The families whose expected information is assembled from sensitivities: the
#: distribution parameters to differentiate, and their Fisher weights as a function of them.
EXPECTED = {dist.Normal: _gaussian, dist.LogNormal: _gaussian, dist.Poisson: _poisson}


def _family(d):
    # masks, plates and `to_event` wrap the observation's distribution
    while isinstance(d, (dist.MaskedDistribution, dist.ExpandedDistribution,
                         dist.Independent)):
        d = d.base_dist
    rule = next((EXPECTED[c] for c in type(d).__mro__ if c in EXPECTED), None)
    return d, rule


def fisher_information(coords, log_likelihood, mask, z) -> tuple[np.ndarray, str, float]:
    """`(J, kind, ll)`: the Fisher information in the analysis coordinates at `z`, `kind`
    `"expected"` or `"observed"` (module docstring), and the log-likelihood at `z` (from
    the same compiled function). `log_likelihood(z)` is the model's; `mask` the data's
    `(E, T, O)` mask of observed values."""
    kwargs = coords.kwargs

    def observation(z):
        with handlers.block():
            tr = handlers.trace(handlers.substitute(coords.model_fn, data=coords.params(z)))
            tr = tr.get_trace(**kwargs)
        return _family(tr[OBSERVED]["fn"])

    found = {}

    def probe(z):
        d, rule = observation(z)
        found["rule"], found["shape"] = rule, tuple(d.batch_shape)
        return jnp.zeros(())

    jax.eval_shape(probe, z)
    rule, shape = found["rule"], found["shape"]
    if rule is None or shape != np.shape(mask):
        hess, ll = jax.jit(lambda z: (hessian_of(log_likelihood, z), log_likelihood(z)))(z)
        return -np.asarray(hess), "observed", float(ll)

    def parameters(z):
        d, _ = observation(z)
        return tuple(jnp.broadcast_to(p, shape) for p in rule(d)[0])

    def assemble(z):
        try:
            jac = jax.jacfwd(parameters)(z)
        except TypeError as err:  # a solve differentiated by a custom VJP
            if not _no_forward_mode(err):
                raise
            jac = jax.jacrev(parameters)(z)
        values = parameters(z)
        d, _ = observation(z)
        weights = rule(d)[1](*values)
        m = jnp.asarray(mask, z.dtype)
        info = sum(jnp.einsum("...,...i,...j->ij", m * w, g, g)
                   for w, g in zip(weights, jac, strict=True))
        return info, log_likelihood(z)

    info, ll = jax.jit(assemble)(z)
    return np.asarray(info), "expected", float(ll)


@dataclasses.dataclass(frozen=True)
class Direction:
    """An eigen-direction of the Fisher information that the data barely determine.

    - `eigenvalue`: its Fisher information (the inverse variance along it);
    - `relative`: the eigenvalue over the largest;
    - `vector`: the unit eigenvector in the analysis coordinates (its first entry of the
      largest magnitude positive);
    - `combination`: the direction in words, `"0.707 log k1 - 0.707 log k2"` (entries of
      magnitude below `MIN_LOADING` left out): moving the parameters along it changes the
      fit by about `eigenvalue * step**2 / 2` in log-likelihood.
    """

    eigenvalue: float
    relative: float
    vector: np.ndarray
    combination: str


#: Entries of an eigenvector smaller than this are left out of its name.
MIN_LOADING = 0.05


def combination(vector, axis_labels) -> str:
    """`"0.707 log k1 - 0.707 log k2"`: the entries of magnitude `MIN_LOADING` or more."""
    text = ""
    for v, lab in zip(vector, axis_labels, strict=True):
        if abs(v) < MIN_LOADING:
            continue
        sign = ("-" if v < 0 else "") if not text else (" - " if v < 0 else " + ")
        text += f"{sign}{abs(v):.3g} {lab}"
    return text


def spectrum(fisher, axis_labels, sloppy_rtol):
    """`(eigenvalues, eigenvectors, sloppy)`: eigenvalues largest first, the eigenvectors
    as columns in the same order, and a `Direction` for each eigenvalue below
    `sloppy_rtol` times the largest (smallest first)."""
    values, vectors = np.linalg.eigh(0.5 * (fisher + fisher.T))
    values, vectors = values[::-1], vectors[:, ::-1]
    # the sign: the first entry of (nearly, to rounding) the largest magnitude is positive,
    # so that a tie such as (0.707, -0.707) is named the same way every time
    mag = np.abs(vectors)
    lead = np.argmax(mag >= (1 - 1e-6) * mag.max(axis=0, initial=0.0), axis=0)
    sign = np.sign(vectors[lead, np.arange(len(values))])
    vectors = vectors * np.where(sign == 0, 1.0, sign)
    top = max(float(values[0]), np.finfo(float).tiny) if len(values) else 1.0
    sloppy = [Direction(float(v), float(v / top), vectors[:, i].copy(),
                        combination(vectors[:, i], axis_labels))
              for i, v in enumerate(values) if v < sloppy_rtol * top]
    return values, vectors, tuple(sloppy[::-1])


def standard_errors(values, vectors, dtype) -> np.ndarray:
    """Standard errors of the coordinates from the Fisher information (its eigen-pairs):
    `sqrt(diag(J^-1))`, infinite for a coordinate that loads (above 1e-6) on an eigenvalue
    that is zero to the rank tolerance `d * eps * max eigenvalue` of the computation's
    dtype (a direction the data do not inform at all)."""
    d = len(values)
    if d == 0:
        return np.zeros(0)
    tol = d * float(np.finfo(dtype).eps) * max(abs(float(values[0])), np.finfo(float).tiny)
    null = values <= tol
    with np.errstate(divide="ignore"):
        var = (vectors[:, ~null] ** 2) @ (1.0 / values[~null])
    unidentified = np.any(np.abs(vectors[:, null]) > 1e-6, axis=1)
    return np.where(unidentified, np.inf, np.sqrt(var))
