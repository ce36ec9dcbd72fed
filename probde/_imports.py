"""Repairs to the import state that probde relies on."""

from __future__ import annotations

import sys


def attach_numpyro_submodules() -> None:
    """Make every loaded `numpyro.*` module an attribute of its parent package.

    ArviZ (arviz_base) registers numpyro with `lazy_loader.load("numpyro")`. When arviz
    is imported before numpyro, numpyro's submodules then load without being attached to
    their packages, and `numpyro.factor` (which reads
    `numpyro.distributions.distribution.Unit`) fails with an AttributeError: every
    probde model rejects failed solves with `numpyro.factor`. Attaching them restores
    what a plain `import numpyro` gives.
    """
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("numpyro."):
            continue
        parent, _, child = name.rpartition(".")
        package = sys.modules.get(parent)
        if package is not None and child not in vars(package):
            setattr(package, child, module)
