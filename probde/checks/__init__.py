"""Workflow checks on a model or a result: simulation-based calibration (`sbc`), the
identifiability report (`identifiability`), leave-future-out cross-validation (`lfo`)
and a Gaussian filter against a particle filter (`check_filter`)."""

from .calibration import SBCResult, sbc
from .filter_adequacy import FilterCheck, FilterWarning, check_filter
from .identifiability import Identifiability, identifiability
from .leave_future_out import LFOResult, lfo

__all__ = ["FilterCheck", "FilterWarning", "Identifiability", "LFOResult", "SBCResult",
           "check_filter", "identifiability", "lfo", "sbc"]
