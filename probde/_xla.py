"""One XLA option for the CPU that probde sets when it is imported: small loops as one kernel.

XLA's CPU runtime runs a compiled program as a sequence of "thunks", one per fused kernel,
and a `while` loop (every `lax.scan`, `lax.while_loop`, diffrax solve and NUTS tree) as a
thunk that runs its body's thunks once per iteration, each dispatch costing tens of
nanoseconds to a microsecond. A loop whose body touches few bytes is instead compiled into a
single function ("small while loop hoisting"), with no dispatch inside; XLA's default limit
is 1,024 bytes accessed per iteration. probde's loops are small but over that limit: an ODE
step with its forward sensitivities, a Kalman filter step with its tangents, a
leapfrog step. Measured on this project's benchmarks (`benchmarks/RESULTS.md`, "Small
loops as one kernel"), raising the limit to 64 KiB made one lynx-hare solve and its
gradient 2.1 times faster, a Kalman filter's value and gradient on 10,000 observations 11
times, and a whole lynx-hare NUTS run's core time per gradient 4 times smaller, with the
same results up to floating-point rounding.

The option lives in `XLA_FLAGS` (as `--xla_backend_extra_options=...`), which XLA reads
once, when JAX first starts its CPU backend; `jax.jit`'s `compiler_options` cannot set it.
So `import probde` appends it to `XLA_FLAGS` when

- JAX's backends are not started yet (in a process that ran a JAX computation, or imported
  a package that does so on import, such as gpjax, before probde, it is too late: nothing
  changes, `applied()` says so, and a warning says how to get it: import probde first, or
  set the option in `XLA_FLAGS` before Python starts), and
- `XLA_FLAGS` does not already set `xla_backend_extra_options` (the user's choice stands;
  `XLA_FLAGS=--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=1024`
  restores XLA's default).

It is a process-wide setting: other JAX code in the same process compiles its small loops
the same way (its results do not change, only how loops are dispatched). GPUs ignore it.
"""

from __future__ import annotations

import os
import warnings

OPTION = "xla_cpu_small_while_loop_byte_threshold"
THRESHOLD = 65536  # bytes accessed per loop iteration (XLA's default: 1024)

_applied = False


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - a JAX without this module: assume started
        return True
    check = getattr(xla_bridge, "backends_are_initialized", None)
    return True if check is None else bool(check())


def configure_on_import() -> bool:
    """Append the option to `XLA_FLAGS` where it can still take effect (module docstring).
    Returns whether it did."""
    global _applied
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_extra_options" in flags:
        return False
    if _backends_started():
        warnings.warn(
            "JAX's backend started before probde was imported (gpjax, for one, starts it on "
            "import), too late for probde's XLA option that compiles small loops as one "
            "kernel; on a CPU its ODE solves, filters and NUTS then run 2-4 times slower. "
            "Import probde before gpjax and before any JAX computation, or start Python with "
            f"XLA_FLAGS=--xla_backend_extra_options={OPTION}={THRESHOLD}", stacklevel=4)
        return False
    os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_extra_options={OPTION}={THRESHOLD}".strip()
    _applied = True
    return True


def applied() -> bool:
    """Whether `import probde` set the small-loop option in this process."""
    return _applied


# On import: `probde/__init__.py` imports this module before anything that can start JAX.
configure_on_import()
