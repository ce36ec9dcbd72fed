"""Dynamics: ODE definitions, solver options and `solve`."""

from .ode import ODE
from .solve import Trajectory, solve
from .solver import ForwardSensitivity, Solver

__all__ = ["ODE", "ForwardSensitivity", "Solver", "Trajectory", "solve"]
