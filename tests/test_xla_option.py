"""`import probde` compiles small loops as one kernel on the CPU (`probde/_xla.py`).

Each case runs in a fresh interpreter, since the option only counts before JAX's backends
start. What is checked is the compiled program, not the environment variable alone: a
loop whose body touches more than XLA's default 1,024 bytes per iteration is hoisted into
one call (XLA marks it `xla_cpu_small_call`) when probde set the option, and is not when
the user's own `XLA_FLAGS` (or an already started backend) left it out.
"""

import os
import subprocess
import sys

PROGRAM = """
import sys
{before}
import jax, jax.numpy as jnp
import probde

def loss(x):
    def step(carry, _):  # a 8 x 8 matrix in the carry: 512 bytes, over 1,024 with its use
        a, b = carry
        return (jnp.sin(a) @ b + a, b * 1.01), None
    return jax.lax.scan(step, (x, jnp.eye(8) * x[0]), None, length=50)[0][0].sum()

text = jax.jit(jax.grad(loss)).lower(jnp.ones(8)).compile().as_text()
print("RESULT", probde._xla.applied(), "xla_cpu_small_call" in text, "while(" in text)
"""


def _run(before: str = "", xla_flags: str | None = None) -> tuple[bool, bool, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    proc = subprocess.run([sys.executable, "-c", PROGRAM.format(before=before)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    applied, hoisted, has_loop = (w == "True" for w in line.split()[1:])
    assert has_loop  # the loop was compiled (hoisted or not), not unrolled away
    return applied, hoisted, proc.stderr


def test_import_sets_the_option_and_small_loops_are_one_kernel():
    applied, hoisted, stderr = _run()
    assert applied
    assert hoisted
    assert "Warning" not in stderr, stderr


def test_the_users_xla_flags_stand():
    flags = "--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=1024"
    applied, hoisted, stderr = _run(xla_flags=flags)
    assert not applied
    assert not hoisted
    assert "Warning" not in stderr, stderr  # the user's choice: nothing to warn about


def test_too_late_after_the_backend_started():
    applied, hoisted, stderr = _run(before="import jax; jax.numpy.zeros(1).block_until_ready()")
    assert not applied
    assert not hoisted
    assert "Import probde before gpjax and before any JAX computation" in stderr, stderr
