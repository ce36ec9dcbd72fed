"""Inference: `infer`, methods (`NUTS`), results (`InferenceResult`, `load`) and
`log_likelihood`."""

from .infer import infer
from .likelihood import log_likelihood
from .methods import NUTS, AbstractMethod
from .result import InferenceResult, load

__all__ = ["AbstractMethod", "InferenceResult", "NUTS", "infer", "load", "log_likelihood"]
