"""Workflow checks on a model or a result: simulation-based calibration (`sbc`) and the
identifiability report (`identifiability`)."""

from .calibration import SBCResult, sbc
from .identifiability import Identifiability, identifiability

__all__ = ["Identifiability", "SBCResult", "identifiability", "sbc"]
