"""Names of the numpyro sites the model program records for its own bookkeeping.

They live under the prefix `_probde/`, which no user name can take (parameter names are
identifiers not starting with `_`), so bookkeeping never forbids a natural parameter name
such as `mu` or `y`. `probde.infer` moves these sites out of the posterior (solver
statistics to `sample_stats`, predictions to the predictive groups) and names them there
with `public`: `y`, `mu`, `trajectory`, `discrepancy`, `corrected`, ...
"""

from __future__ import annotations

PREFIX = "_probde/"


def internal(name: str) -> str:
    """The bookkeeping site name of `name`."""
    return PREFIX + name


def public(site: str) -> str:
    """The name a bookkeeping site has in the DataTree (user names pass unchanged)."""
    return site[len(PREFIX):] if site.startswith(PREFIX) else site


def is_bookkeeping(site: str) -> bool:
    return site.startswith(PREFIX)


SOLVER_OK = internal("solver_ok")
SOLVER_STEPS = internal("solver_steps")
VALID = internal("valid")
REJECTED = internal("rejected")
TRAJECTORY = internal("trajectory")
MEAN = internal("mu")
OBSERVED = internal("y")
DELTA = internal("discrepancy")
CORRECTED = internal("corrected")
EMULATOR_RUNS = internal("emulator_runs")
FILTERED_MEAN = internal("filtered_mean")
FILTERED_COV = internal("filtered_cov")
SMOOTHED_MEAN = internal("smoothed_mean")
SMOOTHED_COV = internal("smoothed_cov")
STATE_SITES = (FILTERED_MEAN, FILTERED_COV, SMOOTHED_MEAN, SMOOTHED_COV)
# The latent path of an SDE under `probde.LatentPath`: its standardised Brownian increments
# and initial state (latent sample sites kept out of the parameter posterior; `probde.infer`
# puts them in the DataTree group `latent_path`).
PATH_INCREMENTS = internal("path_increments")
PATH_INITIAL = internal("path_initial")
PATH_SITES = (PATH_INCREMENTS, PATH_INITIAL)
# plates (numpyro plates are sites too)
EXPERIMENT_PLATE = internal("experiment")
EXPERIMENT_BATCH = internal("experiments")
TIME_BATCH = internal("times")

# Latent sites that users see in the posterior under these names, when the model has them
# (a distribution as initial state; a latent GP's standardised values).
INITIAL_STATE = "initial_state"


def new(site: str) -> str:
    """The site of `site`'s prediction at new times (`InferenceResult.predict`)."""
    return site + "_new"
