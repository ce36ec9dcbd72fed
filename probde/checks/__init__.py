"""Workflow checks on a model or a result: simulation-based calibration (`sbc`)."""

from .calibration import SBCResult, sbc

__all__ = ["SBCResult", "sbc"]
