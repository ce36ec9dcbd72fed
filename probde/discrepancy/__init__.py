"""Model discrepancy (Kennedy-O'Hagan): GP terms for what the simulator misses."""

from .emulator import EmulatorDiagnostics, GPEmulator
from .gp import Constraint, GPDiscrepancy, MarkovGPDiscrepancy

__all__ = ["Constraint", "EmulatorDiagnostics", "GPDiscrepancy", "GPEmulator", "MarkovGPDiscrepancy"]
