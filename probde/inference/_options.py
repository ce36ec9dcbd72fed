"""Checks of the inference methods' option fields, shared by the method classes (outside
jit only)."""

from __future__ import annotations

import math

import optax

from .._checks import describe


def positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")


def is_real(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_init_radius(value):
    if not is_real(value) or not 0 < value < math.inf:
        raise ValueError(f"init_radius must be a positive finite number; got {value!r}")


def check_fit_options(method):
    """Checks shared by the methods fitted by optax, `SVI` and `Laplace` (fields
    num_steps, num_draws, learning_rate, optimizer, init_radius)."""
    positive_int("num_steps", method.num_steps)
    positive_int("num_draws", method.num_draws)
    if not is_real(method.learning_rate) or not 0 < method.learning_rate < math.inf:
        raise ValueError(
            f"learning_rate must be a positive finite number; got {method.learning_rate!r}"
        )
    if method.optimizer is not None and not isinstance(
        method.optimizer, optax.GradientTransformation
    ):
        raise TypeError(
            "optimizer must be an optax.GradientTransformation (e.g. optax.adam(1e-2)) "
            f"or None; got {describe(method.optimizer)}"
        )
    check_init_radius(method.init_radius)
