"""Model discrepancy (Kennedy-O'Hagan): GP terms for what the simulator misses."""

from .gp import Constraint, GPDiscrepancy

__all__ = ["Constraint", "GPDiscrepancy"]
