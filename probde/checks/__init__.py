"""Workflow checks on a model or a result: simulation-based calibration (`sbc`), the
identifiability report (`identifiability`) and leave-future-out cross-validation
(`lfo`)."""

from .calibration import SBCResult, sbc
from .identifiability import Identifiability, identifiability
from .leave_future_out import LFOResult, lfo

__all__ = ["Identifiability", "LFOResult", "SBCResult", "identifiability", "lfo", "sbc"]
