"""Lynx-hare: Lotka-Volterra calibrated to Hudson's Bay Company pelts, 1900-1920.

Reproduces Carpenter's Stan case study "Predator-Prey Population Dynamics: the
Lotka-Volterra model in Stan": LogNormal noise, the 1900 pelts observing the initial state.

    python case_studies/lynx_hare/run.py --out results/lynx_hare [--quick] [--method svi]

`--method svi` fits a full-rank Gaussian variational approximation (`probde.SVI`) instead
of sampling with NUTS.
"""

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import _common  # noqa: E402

if __name__ == "__main__":
    _common.main(__doc__, HERE, lambda probde: probde.datasets.lynx_hare(),
                 methods=("nuts", "svi"))
