"""Model discrepancy (Kennedy-O'Hagan): GP terms for what the simulator misses."""

from .emulator import EmulatorDiagnostics, GPEmulator
from .deepgp import DeepGPDiscrepancy
from .gp import Constraint, GPDiscrepancy, MarkovGPDiscrepancy

__all__ = ["Constraint", "DeepGPDiscrepancy", "EmulatorDiagnostics", "GPDiscrepancy", "GPEmulator", "MarkovGPDiscrepancy"]
