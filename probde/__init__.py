"""probde: Bayesian calibration of dynamical models."""

from . import datasets, noise
from .discrepancy import Constraint, GPDiscrepancy
from .dynamics import ODE, ForwardSensitivity, Solver, Trajectory, solve
from .inference import NUTS, InferenceResult, infer, load, log_likelihood
from .model import Model
from .observations import TimeSeries

__version__ = "0.1.0"

__all__ = [
    "Constraint",
    "GPDiscrepancy",
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
    "load",
    "log_likelihood",
    "noise",
    "solve",
]
