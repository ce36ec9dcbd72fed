"""Dynamics: ODE and SDE definitions, sample paths, solver options and `solve`."""

from ._checks import check_vector_field
from .doses import Dose
from .events import Event
from .ode import ODE
from .sde import SDE, AbstractLikelihood, simulate
from .solve import Trajectory, solve
from .solver import ForwardSensitivity, Solver

__all__ = [
    "AbstractLikelihood",
    "Dose",
    "Event",
    "ODE",
    "SDE",
    "check_vector_field",
    "simulate",
    "ForwardSensitivity",
    "Solver",
    "Trajectory",
    "solve",
]
