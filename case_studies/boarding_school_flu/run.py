"""Boarding-school influenza, 1978: SIR with negative binomial counts.

Reproduces the model of Grinsztajn, Semenova, Margossian & Riou (2021), "Bayesian workflow
for disease transmission modeling in Stan".

    python case_studies/boarding_school_flu/run.py --out results/flu [--quick]
"""

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import _common  # noqa: E402

if __name__ == "__main__":
    _common.main(__doc__, HERE, lambda probde: probde.datasets.boarding_school_influenza())
