"""Reading PEtab problems (SBML models with calibration tables) into probde.

```python
problem = probde.petab.load("Boehm_JProteomeRes2014.yaml")
problem.log_likelihood()                 # at the nominal parameters
result = probde.infer(problem.model, problem.data, probde.NUTS())
```

Needs the optional dependencies `petab`, `python-libsbml` and `sympy`
(`pip install 'probde[petab]'`).
"""

from .problem import PEtabError, Problem, default_solver, load
from .sbml import SBMLError

__all__ = ["load", "Problem", "PEtabError", "SBMLError", "default_solver"]
