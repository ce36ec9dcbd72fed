"""Model discrepancy (Kennedy-O'Hagan): GP terms for what the simulator misses."""

from .emulator import EmulatorDiagnostics, GPEmulator
from .deepgp import DeepGPDiscrepancy
from .deep_emulator import DeepGPEmulator
from .gp import Constraint, GPDiscrepancy, MarkovGPDiscrepancy

__all__ = ["Constraint", "DeepGPDiscrepancy", "DeepGPEmulator", "EmulatorDiagnostics", "GPDiscrepancy", "GPEmulator", "MarkovGPDiscrepancy"]
