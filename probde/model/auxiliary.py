"""Standard normals that a sampler hands to the model program: the common random numbers of
correlated pseudo-marginal MCMC.

A random likelihood estimate (the particle filter's) is a function of the parameters and of
its random numbers `u`. Correlated pseudo-marginal Metropolis-Hastings (Deligiannidis, Doucet
& Pitt 2018) keeps `u` in the chain's state and proposes `u' = rho u + sqrt(1 - rho^2) eps`,
so that the estimates at the current and proposed parameters share most of their noise and
their ratio is far less variable than that of two independent estimates.

numpyro's only effect for randomness, `numpyro.prng_key()`, yields keys: draws from two keys
are independent, so a sampler cannot correlate them. Hence this effect: the program asks for
normals of a given shape (`auxiliary_normals`), and a handler (`supply_normals`), installed by
the sampler around the model, answers with the chain's `u` or records what was asked. Without
that handler the request returns None and the program draws from its key as before.
"""

from __future__ import annotations

import jax
from numpyro.primitives import _PYRO_STACK, Messenger, apply_stack

MESSAGE = "probde_auxiliary_normals"


def auxiliary_normals(spec):
    """In a model program: the standard normals a sampler supplies for `spec` (a pytree of
    `jax.ShapeDtypeStruct`), or None when no handler supplies them."""
    if not _PYRO_STACK:
        return None
    msg = {"type": MESSAGE, "fn": lambda: None, "args": (), "kwargs": {}, "value": None,
           "spec": spec}
    return apply_stack(msg)["value"]


class supply_normals(Messenger):
    """numpyro handler answering `auxiliary_normals`.

    With `values` (a pytree of arrays with the requested structure and shapes) the request
    gets them; with `values=None` it gets None (the program draws from its key) and the
    requested spec is recorded in `self.spec` (None when nothing was requested). A model
    program asks at most once per run.
    """

    def __init__(self, fn=None, values=None):
        self.values = values
        self.spec = None
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != MESSAGE:
            return
        self.spec = msg["spec"]
        if self.values is None:
            return
        want = jax.tree.map(lambda s: tuple(s.shape), self.spec)
        got = jax.tree.map(lambda v: tuple(v.shape), self.values)
        if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
            raise ValueError(
                f"the supplied auxiliary normals do not match the model's request: expected "
                f"shapes {want}, got {got}")
        msg["value"] = self.values


def standard_normals(key, spec):
    """Independent standard normals for every leaf of `spec`."""
    leaves, tree = jax.tree.flatten(spec)
    keys = jax.random.split(key, max(len(leaves), 1))
    return jax.tree.unflatten(tree, [jax.random.normal(k, s.shape, s.dtype)
                                     for k, s in zip(keys, leaves)])
