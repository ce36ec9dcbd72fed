"""probde: Bayesian calibration of dynamical models."""

from . import datasets, noise
from .design import latin_hypercube, sobol
from .discrepancy import (
    Constraint,
    EmulatorDiagnostics,
    GPDiscrepancy,
    GPEmulator,
    MarkovGPDiscrepancy,
)
from .dynamics import ODE, ForwardSensitivity, Solver, Trajectory, solve
from .inference import NUTS, InferenceResult, infer, load, log_likelihood
from .model import Model
from .observations import TimeSeries

__version__ = "0.1.0"

__all__ = [
    "Constraint",
    "EmulatorDiagnostics",
    "GPDiscrepancy",
    "GPEmulator",
    "MarkovGPDiscrepancy",
    "ODE",
    "ForwardSensitivity",
    "InferenceResult",
    "Model",
    "NUTS",
    "Solver",
    "TimeSeries",
    "Trajectory",
    "datasets",
    "infer",
    "latin_hypercube",
    "load",
    "log_likelihood",
    "noise",
    "sobol",
    "solve",
]
