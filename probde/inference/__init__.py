"""Inference: `infer`, methods (`NUTS`, `RandomWalkMetropolis`, `SVI`, `Laplace`), results
(`InferenceResult`, `load`) and `log_likelihood`."""

from .convergence import ConvergenceReport, ConvergenceWarning
from .filters import EKF, UKF
from .infer import infer
from .laplace import Laplace
from .latent_path import LatentPath
from .likelihood import log_likelihood
from .methods import NUTS, AbstractMethod
from .particle import ParticleFilter
from .result import InferenceResult, load
from .rwm import RandomWalkMetropolis
from .svi import SVI

__all__ = [
    "AbstractMethod",
    "ConvergenceReport",
    "ConvergenceWarning",
    "EKF",
    "LatentPath",
    "ParticleFilter",
    "UKF",
    "InferenceResult",
    "Laplace",
    "NUTS",
    "RandomWalkMetropolis",
    "SVI",
    "infer",
    "load",
    "log_likelihood",
]
