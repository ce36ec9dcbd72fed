"""probde's persistent compilation cache: JAX's, in a folder probde owns.

Compiling a sampler for an ODE model takes seconds to tens of seconds; JAX can keep
compiled programs on disk and reuse them in the next process that compiles the same
program (same model, data shapes, options, JAX version and machine). probde turns this on
when it is imported, in `~/.cache/probde/jax` (or `$XDG_CACHE_HOME/probde/jax`), unless

- the environment variable `PROBDE_COMPILATION_CACHE` is `0`, `false`, `off` or `no`
  (opt out before importing probde), or names another folder to use;
- JAX's cache folder was already set (`jax_compilation_cache_dir`): then the user's
  choice stands.

`probde.compilation_cache(path)` changes or turns it off at run time.

When probde turns the cache on, it also has JAX keep every program, not only those that
took a second or more to compile (`jax_persistent_cache_min_compile_time_secs` 0 instead
of 1, unless the user set it): a run compiles a few big programs (the sampler) and
hundreds of small ones (initialisation, predictive draws, eager steps), which on the
lynx-hare case took 7 of the 18 s of compiling together. Reading one back takes a few
milliseconds; the entries are small (the whole lynx-hare run: about 2 MB).

JAX does not store programs that call back into Python. probde's compiled programs have
none: its count of rejected proposals is carried in the sampler's state, its solves turn
equinox's runtime checks into NaNs (`dynamics/_diffeqsolve.py`), and its progress bars
update between compiled chunks (NUTS: `inference/chunks.py`; numpyro's own progress bar
calls back from inside its loop).
"""

from __future__ import annotations

import os
import pathlib

import jax

_OFF = ("0", "false", "off", "no")
_MIN_TIME_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"
_JAX_MIN_TIME = 1.0  # JAX's default; another value was the user's choice


def default_folder() -> pathlib.Path:
    """The folder probde uses by default: `$XDG_CACHE_HOME/probde/jax` (`~/.cache/...`)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "probde" / "jax"


def compilation_cache(path: str | os.PathLike | None | bool = None) -> pathlib.Path | None:
    """Turn JAX's persistent compilation cache on in `path`, or off.

    **Arguments:**

    - `path`: a folder; `None` or `True`: probde's default folder (`default_folder()`);
      `False`: off (programs are compiled anew in every process).

    Turned on, every compiled program is kept, however quickly it compiled (module
    docstring), unless `jax_persistent_cache_min_compile_time_secs` was set otherwise.

    **Returns:** the folder in use, or `None` when off.

    **Example:**

    ```python
    >>> import probde
    >>> probde.compilation_cache(False) is None    # off
    True
    >>> probde.compilation_cache().name            # on again, in probde's folder
    'jax'

    ```
    """
    if path is False:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    if path is None or path is True:
        folder = default_folder()
    elif isinstance(path, (str, os.PathLike)):
        folder = pathlib.Path(path).expanduser()
    else:
        raise TypeError(f"path must be a folder, None, True or False; got {path!r}")
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_enable_compilation_cache", True)
    if (_MIN_TIME_ENV not in os.environ
            and jax.config.jax_persistent_cache_min_compile_time_secs == _JAX_MIN_TIME):
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    try:  # JAX reads the folder when it first compiles; later changes need a reset.
        from jax.experimental.compilation_cache import compilation_cache as _cc

        _cc.reset_cache()
    except (ImportError, AttributeError):  # pragma: no cover - older/newer JAX layouts
        pass
    return folder


def configure_on_import() -> None:
    """What `import probde` does (see the module docstring)."""
    setting = os.environ.get("PROBDE_COMPILATION_CACHE", "").strip()
    if setting.lower() in _OFF:
        return
    if jax.config.jax_compilation_cache_dir:
        return
    compilation_cache(setting or None)
