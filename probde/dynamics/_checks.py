"""Checks of the user's dynamics functions (`vector_field`, `drift`, `diffusion`).

A function that returns a Python list, or calls NumPy on a traced value, fails deep inside
diffrax or JAX with a message about pytrees or tracers that names neither the function nor
the fix. `check_vector_field` evaluates the function once with `jax.eval_shape` (tracing
only: no FLOPs, no compilation) and turns those failures into a `TypeError`, and a wrong
output shape into a `ValueError`, that name the function, what was expected and the fix.

It is abstract, so it gives the same answer on concrete inputs and on tracers (inside `jit`,
`vmap` or `grad`): `probde.solve`, `probde.simulate`, `SDE.check` and the model layer call it
before anything is solved. Errors other than these (a `KeyError` for a parameter `theta`
lacks, a bug in the user's code) propagate unchanged.
"""

from __future__ import annotations

import numbers
import weakref
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def _own_name(fn) -> str | None:
    """The function's own name, where it has one (not a lambda)."""
    own = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if not isinstance(own, str) or own.endswith("<lambda>"):
        return None
    return own


def _as_arrays(tree):
    # Numbers and NumPy arrays become JAX arrays so that eval_shape traces them (as diffrax
    # and jit will); other leaves (strings, callables) are left as static values.
    def convert(v):
        if isinstance(v, (numbers.Number, np.ndarray, np.generic)) and not isinstance(v, bool):
            return jnp.asarray(v)
        return v

    return jax.tree.map(convert, tree)


# Checks that passed, per function: {signature: output ShapeDtypeStruct}. An eager loop of
# solves (simulator runs) would otherwise trace the function again at every call (~0.5 ms).
_PASSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _signature(name, expected_shape, states, args):
    """A hashable key of what the check depends on besides `fn`, or None."""
    leaves, treedef = jax.tree.flatten(args)
    parts = tuple(
        ("array", jax.typeof(leaf)) if isinstance(leaf, (jax.Array, jax.core.Tracer))
        else ("static", leaf)
        for leaf in leaves
    )
    key = (name, expected_shape, states, treedef, parts)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _cached(fn, key):
    if key is None:
        return None
    try:
        return _PASSED.get(fn, {}).get(key)
    except TypeError:  # fn cannot be weakly referenced
        return None


def _remember(fn, key, out):
    if key is None:
        return
    try:
        _PASSED.setdefault(fn, {})[key] = out
    except TypeError:
        pass


def _describe_output(out) -> str:
    if isinstance(out, (list, tuple)):
        n = len(out)
        return f"a Python {type(out).__name__} of {n} element{'' if n == 1 else 's'}"
    if isinstance(out, dict):
        return f"a dict with keys {sorted(map(str, out))}"
    return f"a value of type {type(out).__name__}"


def check_vector_field(
    fn: Callable,
    name: str,
    t,
    y,
    theta,
    expected_shape: tuple[int, ...] | None,
    *,
    states: tuple[str, ...] | None = None,
) -> jax.ShapeDtypeStruct:
    """Check that `fn(t, y, theta)` traces and returns one JAX array of `expected_shape`.

    **Arguments:**

    - `fn`: the user's function `f(t, y, theta)` (a `vector_field`, `drift` or `diffusion`).
    - `name`: what the user calls it (`"vector_field"`, `"drift"`, `"diffusion"`); it
      starts every message.
    - `t`, `y`, `theta`: example arguments (concrete values or tracers; only their shapes
      and dtypes are used).
    - `expected_shape`: the required output shape, e.g. `(S,)`; `None` skips the shape check
      (the caller checks the returned shape itself).
    - `states`: the state names, quoted in the shape message.

    **Returns:** the output's `jax.ShapeDtypeStruct`.

    **Raises:**

    - `TypeError` when `fn` returns a list, tuple or anything other than one array (diffrax
      needs one array of fixed shape: "return jnp.stack([...])"), calls NumPy on a traced
      value ("use jax.numpy (jnp.exp) instead of numpy"), or turns a traced value into a
      Python one (a Python `if`, `float()` or `int()` on `y`, `t` or `theta`).
    - `ValueError` when the shape is not `expected_shape`.
    - Anything else `fn` raises, unchanged (a `KeyError` for a parameter missing from
      `theta`).

    **Example:**

    ```python
    >>> import jax.numpy as jnp, numpy as np
    >>> from probde.dynamics import check_vector_field
    >>> def f(t, y, theta):
    ...     return [-theta["k"] * y[0]]
    >>> check_vector_field(f, "vector_field", 0.0, jnp.ones(1), {"k": 0.5}, (1,))
    Traceback (most recent call last):
    ...
    TypeError: vector_field must return one JAX array of shape (1,); got a Python list of 1
    element from `f`. Return jnp.stack([...]) or jnp.array([...]) instead of a Python list ...
    >>> def g(t, y, theta):
    ...     return -np.exp(theta["k"]) * y
    >>> check_vector_field(g, "vector_field", 0.0, jnp.ones(1), {"k": 0.5}, (1,))
    Traceback (most recent call last):
    ...
    TypeError: vector_field calls NumPy on a traced value in `g` (JAX raised
    TracerArrayConversionError). Use jax.numpy instead of numpy inside vector_field (jnp.exp,
    not np.exp): ...
    >>> check_vector_field(lambda t, y, th: -th["k"] * y, "vector_field", 0.0, jnp.ones(1),
    ...                    {"k": 0.5}, (1,)).shape
    (1,)

    ```
    """
    own = _own_name(fn)
    origin = "" if own is None else f" from `{own}`"
    inside = "" if own is None else f" in `{own}`"
    t, y, theta = _as_arrays((t, y, theta))
    expected_shape = None if expected_shape is None else tuple(expected_shape)
    states = None if states is None else tuple(states)
    key = _signature(name, expected_shape, states, (t, y, theta))
    hit = _cached(fn, key)
    if hit is not None:
        return hit
    try:
        out = eqx.filter_eval_shape(fn, t, y, theta)
    except jax.errors.TracerArrayConversionError as err:
        raise TypeError(
            f"{name} calls NumPy on a traced value{inside} (JAX raised {type(err).__name__}). Use "
            f"jax.numpy instead of numpy inside {name} (jnp.exp, not np.exp): y, t and theta "
            "are traced so that the solve can be compiled and differentiated."
        ) from err
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError) as err:
        raise TypeError(
            f"{name} turns a traced value into a Python value{inside} (JAX raised "
            f"{type(err).__name__}): a Python `if`, `float()`, `int()` or `math` function on "
            f"y, t or theta. Inside {name} use jnp.where or jax.lax.cond instead of `if`, and "
            "jax.numpy functions instead of math: y, t and theta are traced so that the solve "
            "can be compiled and differentiated."
        ) from err
    if not isinstance(out, jax.ShapeDtypeStruct):
        shape = "" if expected_shape is None else f" of shape {expected_shape}"
        fix = (
            "Return jnp.stack([...]) or jnp.array([...]) instead of a Python list or tuple: "
            if isinstance(out, (list, tuple))
            else "Return a jax.numpy array: "
        )
        raise TypeError(
            f"{name} must return one JAX array{shape}; got {_describe_output(out)}{origin}. "
            f"{fix}diffrax needs a single array of fixed shape."
        )
    if expected_shape is not None and out.shape != tuple(expected_shape):
        per_state = "" if states is None else f" (one value per state {states})"
        raise ValueError(
            f"{name} must return shape {expected_shape}{per_state}; got shape "
            f"{out.shape}{origin}"
        )
    _remember(fn, key, out)
    return out
