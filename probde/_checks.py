"""Small validation helpers shared by the boundary classes (outside jit only)."""

from __future__ import annotations

import numbers

from numpyro.distributions import Distribution


def describe(value) -> str:
    """`repr` shortened, with the type, for error messages."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} of type {type(value).__name__}"


def integer_at_least(name: str, value, least: int = 1) -> int:
    """`value` as an `int` if it is an integer (a NumPy one too, not a bool) of at least
    `least`; otherwise a `ValueError` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ValueError(f"{name} must be an integer of at least {least}; got {value!r}")
    return int(value)


def correlation(value) -> float:
    """`value` as a `float` if it is a real number in [0, 1) (the Crank-Nicolson correlation
    of correlated pseudo-marginal MCMC); otherwise a `ValueError` naming `correlation`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(
            f"correlation must be a number in [0, 1) (0: independent estimates, about "
            f"0.99: correlated pseudo-marginal MCMC); got {value!r}")
    return float(value)


def check_number_or_distribution(name: str, value, *, positive: bool = True,
                                 function: bool = False):
    """Accept a fixed positive number or a numpyro distribution (or, with `function=True`,
    a function `fn(y, theta)` of the state and the parameters)."""
    if isinstance(value, Distribution):
        return value
    if function and callable(value):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if positive and not value > 0:
            raise ValueError(f"{name} must be positive; got {value!r}")
        return float(value)
    also = ", or a function (y, theta) -> value per observable" if function else ""
    raise TypeError(
        f"{name} must be a positive number (fixed) or a numpyro distribution (inferred)"
        f"{also}; got {describe(value)}"
    )
