"""The model layer: `probde.Model` assembled into one numpyro program from small parts.

- `core.py`: `Model`, validation of the statement, and the choice of trajectory source;
- `sources.py`: trajectory sources (ODE solve, emulator); `filtered.py`: the SDE filter;
- `program.py`: the simulate-then-observe program with the discrepancy's term;
- `experiments.py`: the experiments' data (`PreparedData`), inputs and doses;
- `population.py`: per-experiment parameters (`PerExperiment`) and inputs in theta;
- `initial.py`: initial states; `validate.py`: argument checks and tracing;
- `common.py`: steps every program shares; `report.py`: rejected-proposal reports;
- `sites.py`: names of the bookkeeping sites (under a prefix no user name can take).
"""

from . import sites
from .core import Model
from .experiments import PreparedData
from .population import PerExperiment

__all__ = ["Model", "PerExperiment", "PreparedData", "sites"]
