"""`diffrax.diffeqsolve` as probde calls it: without equinox's runtime-error callbacks.

diffrax checks some of its inputs at run time with `equinox.error_if` (for instance that
`SaveAt(ts=...)` lies between `t0` and `t1`). Under equinox's default
(`EQX_ON_ERROR=raise`) each check is a `jax.pure_callback` into Python, and JAX never
writes a program with a host callback to its persistent compilation cache. One such check
in a model's solve keeps the whole compiled sampler out of the cache, so a second process
compiles it again (tens of seconds).

probde solves with `throw=False` and turns every failure into a rejected proposal, so it
has no use for the raising form: inside `diffeqsolve` below, a check that fails makes its
value NaN instead (equinox's `EQX_ON_ERROR=nan` behaviour), the solve's result is then
non-finite, and the proposal is rejected like any failed solve. This is scoped to the
solves probde traces, not set for the process: a user's own diffrax code keeps equinox's
behaviour. If the user sets `EQX_ON_ERROR` (to debug with `breakpoint`, say), probde
leaves equinox alone.

How: equinox resolves the mode of a traced check when it traces it, in
`branched_error_if_impl`, which it reaches through one jit-compiled wrapper,
`branched_error_if_impl_jit`. That wrapper caches the traces it made, so changing equinox's
mode while tracing would leak: a user's later program with a check of the same shapes
would reuse probde's NaN trace. Instead, while probde traces a solve, the wrapper is
replaced by a function that passes `on_error="nan"` explicitly and caches nothing; the
wrapper and its cache are untouched. Checks equinox resolves at trace time (a concretely
bad input) still raise there. If equinox changes these names, probde warns once and
solves with equinox's default (correct, only not cacheable).
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings

import diffrax

_LOCK = threading.RLock()
_depth = 0


def _nan_checks(x, pred, index, msgs, *, on_error):
    from equinox import _errors

    mode = "nan" if on_error == "default" else on_error
    return _errors.branched_error_if_impl(x, pred, index, msgs, on_error=mode)


@contextlib.contextmanager
def _checks_as_nan():
    global _depth
    if os.environ.get("EQX_ON_ERROR"):
        yield
        return
    try:
        from equinox import _errors

        original = _errors.branched_error_if_impl_jit
        _errors.branched_error_if_impl  # noqa: B018 - the function the swap calls
    except (ImportError, AttributeError):  # pragma: no cover - another equinox layout
        warnings.warn("probde could not turn equinox's runtime checks into NaNs (equinox's "
                      "internals changed); compiled samplers will not be cached",
                      RuntimeWarning, stacklevel=3)
        yield
        return
    with _LOCK:
        _depth += 1
        _errors.branched_error_if_impl_jit = _nan_checks
        try:
            yield
        finally:
            _depth -= 1
            if not _depth:
                _errors.branched_error_if_impl_jit = original


def diffeqsolve(*args, **kwargs):
    """`diffrax.diffeqsolve(*args, **kwargs)` with equinox's runtime checks as NaNs
    (module docstring). Use with `throw=False`."""
    with _checks_as_nan():
        return diffrax.diffeqsolve(*args, **kwargs)
