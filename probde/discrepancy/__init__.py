"""Model discrepancy (Kennedy-O'Hagan): GP terms for what the simulator misses."""

from .base import AbstractDiscrepancy, DiscrepancyInputs, DiscrepancyTerm
from .emulator import EmulatorDiagnostics, GPEmulator
from .deepgp import DeepGPDiscrepancy
from .deep_emulator import DeepGPEmulator
from .gp import Constraint, GPDiscrepancy, MarkovGPDiscrepancy

__all__ = ["AbstractDiscrepancy", "Constraint", "DiscrepancyInputs", "DiscrepancyTerm", "DeepGPDiscrepancy", "DeepGPEmulator", "EmulatorDiagnostics", "GPDiscrepancy", "GPEmulator", "MarkovGPDiscrepancy"]
