"""probde: Bayesian calibration of dynamical models."""

# `_xla` first of all: it sets an XLA option that only counts before JAX's backends start.
from . import _xla  # noqa: I001
from . import _cache, _imports, datasets, noise
from ._cache import compilation_cache
from .checks import (
    FilterCheck,
    FilterWarning,
    Identifiability,
    LFOResult,
    SBCResult,
    check_filter,
    identifiability,
    lfo,
    sbc,
)
from .design import latin_hypercube, sobol
from .discrepancy import (
    Constraint,
    DeepGPDiscrepancy,
    DeepGPEmulator,
    EmulatorDiagnostics,
    GPDiscrepancy,
    GPEmulator,
    MarkovGPDiscrepancy,
)
from .dynamics import ODE, SDE, Dose, Event, ForwardSensitivity, Solver, Trajectory, simulate, solve
from .inference import (
    EKF,
    ConvergenceReport,
    ConvergenceWarning,
    NUTS,
    UKF,
    SVI,
    InferenceResult,
    Laplace,
    LatentPath,
    ParticleFilter,
    RandomWalkMetropolis,
    infer,
    load,
    log_likelihood,
)
from .model import Model, PerExperiment
from .observations import TimeSeries

__version__ = "0.1.0"


def __getattr__(name):
    # `probde.petab` needs the optional PEtab dependencies (petab, python-libsbml, sympy):
    # imported on first use, so that `import probde` works without them.
    if name == "petab":
        import importlib

        return importlib.import_module(".petab", __name__)
    raise AttributeError(f"module 'probde' has no attribute {name!r}")


_cache.configure_on_import()
_imports.attach_numpyro_submodules()  # after arviz was imported first (see there)

__all__ = [
    "check_filter",
    "compilation_cache",
    "Constraint",
    "ConvergenceReport",
    "ConvergenceWarning",
    "DeepGPDiscrepancy",
    "Dose",
    "Event",
    "DeepGPEmulator",
    "EKF",
    "EmulatorDiagnostics",
    "FilterCheck",
    "FilterWarning",
    "GPDiscrepancy",
    "GPEmulator",
    "Identifiability",
    "MarkovGPDiscrepancy",
    "ODE",
    "ParticleFilter",
    "SDE",
    "ForwardSensitivity",
    "InferenceResult",
    "Laplace",
    "LatentPath",
    "LFOResult",
    "Model",
    "NUTS",
    "PerExperiment",
    "RandomWalkMetropolis",
    "SBCResult",
    "SVI",
    "Solver",
    "TimeSeries",
    "UKF",
    "Trajectory",
    "datasets",
    "identifiability",
    "infer",
    "latin_hypercube",
    "lfo",
    "load",
    "log_likelihood",
    "noise",
    "sbc",
    "simulate",
    "sobol",
    "solve",
]
