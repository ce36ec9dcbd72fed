"""`probde.Model`: the user's statement, validated, and assembled into one numpyro program
from parts: a trajectory source (`sources.py`, `filtered.py`), the observation (noise
model), a discrepancy (`probde.discrepancy`), and the experiments' data
(`experiments.py`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import numpyro.distributions as dist

from .._checks import describe
from ..discrepancy.base import AbstractDiscrepancy
from ..dynamics import ODE, Solver
from ..noise import AbstractObservation
from . import common, experiments, population, sites, validate
from .experiments import PreparedData
from .filtered import FilterSource
from .sources import AbstractSource, EmulatorSource, ODESource

#: The trajectory source of each kind of dynamics (looked up along the class's MRO).
SOURCES: dict[type, type[AbstractSource]] = {
    kind: source for source in (ODESource, EmulatorSource, FilterSource) for kind in source.kinds
}


def source_for(dynamics) -> AbstractSource:
    for cls in type(dynamics).__mro__:
        if cls in SOURCES:
            return SOURCES[cls](dynamics)
    raise TypeError(
        "dynamics must be a probde.ODE, a probde.SDE or a probde.GPEmulator (or "
        f"probde.DeepGPEmulator); got {describe(dynamics)}"
    )


class Model:
    r"""A Bayesian model of a dynamical system observed with noise.

    $$\theta \sim p(\theta),\quad y_0 \sim p(y_0 \mid \theta),\quad
    \dot y = f(t, y, \theta),\quad
    \text{data}_{t,o} \sim \text{noise}\big(h(y(t), \theta)_o\big).$$

    **Main arguments:**

    - `dynamics`: a `probde.ODE`, a `probde.SDE` (then give `likelihood`), or a
      `probde.GPEmulator` or `probde.DeepGPEmulator` standing in for an expensive
      simulator.
    - `params`: dict mapping parameter names to numpyro distributions (the priors), or to
      `probde.PerExperiment(...)` for a parameter with one value per experiment drawn from
      a population distribution (hierarchical models). The names are the posterior
      variables and the keys of `theta` in the vector field.
    - `initial_state`: the state at `t0`: a fixed array `(S,)` (or `(E, S)`, one row per
      experiment), a numpyro distribution (sampled per experiment, posterior variable
      `initial_state`), or a function `theta -> array or distribution`.
    - `observation`: a noise model from `probde.noise`.
    - `observe`: state names that are observed directly (default: all states), or a
      function `h(y, theta) -> (O,)`; then the data's observable names are used.

    **Other arguments:**

    - `solver`: a `probde.Solver`.
    - `t0`: time of the initial state (default: the first data time).
    - `derived`: dict of name -> `fn(theta)`, deterministic quantities such as
      `R0 = beta / gamma` that land in the posterior.
    - `dims`: dict of site name -> dim names, overriding the automatic naming (a parameter
      of size S gets dim `state`).
    - `discrepancy`: a model-discrepancy term, `probde.GPDiscrepancy(...)` or
      `probde.MarkovGPDiscrepancy(...)`: the data are then
      `h(y(t), theta) + delta(t) + noise` on the noise model's link scale (Kennedy &
      O'Hagan 2001). See the guide "Model discrepancy and emulators".
    - `likelihood`: for an SDE, the filter that integrates out the latent path:
      `probde.EKF()` or `probde.UKF()` (Gaussian; sampled with NUTS) or
      `probde.ParticleFilter(...)` (any noise model and initial distribution; sampled with
      `probde.RandomWalkMetropolis`); or `probde.LatentPath(...)`, which samples the path
      on a grid with the parameters (any noise model; NUTS or SVI). The initial state is
      then the distribution of `x(t0)` (integrated out or, under `LatentPath`, part of the
      path, not a posterior variable): a fixed array, a numpyro
      `Normal`/`MultivariateNormal` (any distribution for the particle filter and the
      latent path), or a function of theta returning one. The Gaussian filters need `noise.Normal` or
      `noise.LogNormal` (Gaussian on the log scale). No discrepancy term. See the tutorial
      "Stochastic models and filtering".
    - `inputs`: names of known per-experiment inputs (a dose, a body weight, a
      condition's settings), whose values each `TimeSeries(inputs={...})` gives; the
      vector field, initial state and observation function read them from `theta`.
    - `emulation`: with `dynamics=probde.GPEmulator(...)` (an emulator of an expensive
      simulator, `initial_state=None`): `"modular"` (default) fixes the emulator's
      hyperparameters at their fitted values; `"joint"` infers them with theta, the
      simulator runs entering the likelihood (the full Kennedy-O'Hagan model). A
      `probde.DeepGPEmulator` is modular only.

    **Example:**

    ```python
    >>> import jax.numpy as jnp, numpyro.distributions as dist, probde
    >>> decay = probde.ODE(lambda t, y, th: -th["k"] * y, state_names=("x",))
    >>> model = probde.Model(decay, params={"k": dist.LogNormal(0.0, 1.0)},
    ...                      initial_state=jnp.array([1.0]),
    ...                      observation=probde.noise.Normal(sigma=0.1))
    >>> model.observables
    ('x',)

    ```
    """

    def __init__(
        self,
        dynamics: ODE,
        params: Mapping[str, dist.Distribution],
        initial_state,
        observation: AbstractObservation,
        observe: Sequence[str] | Callable | None = None,
        *,
        discrepancy=None,
        likelihood=None,
        solver: Solver | None = None,
        t0: float | None = None,
        derived: Mapping[str, Callable] | None = None,
        dims: Mapping[str, Sequence[str]] | None = None,
        emulation: str = "modular",
        inputs: Sequence[str] | None = None,
    ):
        self.source = source_for(dynamics)
        self.dynamics = dynamics
        self.sde = self.source.sde
        self.emulator = self.source.emulator
        self.emulation = validate.emulation(emulation)
        self.params, self.per_experiment = population.split(validate.params(params))
        self.inputs = validate.inputs(inputs, params)
        if population.varies(self) and not self.source.per_experiment_values:
            raise ValueError(
                "per-experiment parameters and inputs are supported for ODE models only; "
                f"this model's dynamics is a {type(dynamics).__name__}")
        self.observation = validate.observation(observation)
        self._check_noise_functions(discrepancy)
        self.observe = validate.observe(observe, tuple(dynamics.state_names))
        if discrepancy is not None and not isinstance(discrepancy, AbstractDiscrepancy):
            raise TypeError(
                "discrepancy must be None, probde.GPDiscrepancy(...), "
                "probde.MarkovGPDiscrepancy(...) or probde.DeepGPDiscrepancy(...); got "
                f"{describe(discrepancy)}"
            )
        self.discrepancy = discrepancy
        self.likelihood = likelihood
        self.initial_state = self.source.check_arguments(self, initial_state, discrepancy,
                                                         likelihood)
        if discrepancy is not None and self.observables is not None:
            discrepancy.check_model(self.observables, self.observation)
        self.solver = validate.solver(solver)
        self.t0 = validate.t0(t0)
        self.derived = validate.derived(derived)
        self.dims = {} if dims is None else {k: tuple(v) for k, v in dims.items()}
        self._name_sites()
        population_reads = self._population_reads()
        self.source_reads = validate.traced(lambda th: self.source.trace(self, th),
                                            self.example_theta())
        self.source_reads |= population_reads
        self.source_reads |= self._noise_function_reads()
        validate.warn_unused(dict(self.params, **self.per_experiment), self.source_reads)

    def _check_noise_functions(self, discrepancy) -> None:
        names = sorted(common.noise_functions(self))
        if not names:
            return
        if not isinstance(self.source, ODESource):
            raise ValueError(
                f"a noise parameter given as a function of the state ({names}) needs ODE "
                f"dynamics; this model's dynamics is a {type(self.dynamics).__name__}")
        if discrepancy is not None:
            raise ValueError(
                f"a noise parameter given as a function of the state ({names}) cannot be "
                "combined with a discrepancy term; give it as a number or a distribution")

    def _noise_function_reads(self) -> set[str]:
        """Check the noise functions' outputs; the parameters they read."""
        read = set()
        theta = self.example_theta()
        state = self.source.example_state(self, theta)
        for name, fn in common.noise_functions(self).items():
            out = jax.eval_shape(fn, state, theta)
            if len(out.shape) > 1:
                raise ValueError(
                    f"observation {name}(y, theta) must return a number or a 1-D array (one "
                    f"value per observable); got shape {out.shape}")
            read |= validate.trace_reads(lambda th, fn=fn: fn(state, th), theta)
        return read

    def _population_reads(self) -> set[str]:
        """The shared parameters that the population distributions read."""
        shared = self.example_shared_theta()
        read = set()
        for name, p in self.per_experiment.items():
            if isinstance(p.prior, dist.Distribution):
                continue
            try:
                read |= validate.trace_reads(lambda th, p=p, name=name: p.distribution(th, name)
                                             .sample(jax.random.PRNGKey(0)), shared)
            except KeyError as err:
                raise ValueError(
                    f"params[{name!r}]'s population prior reads {err.args[0]!r}, which is "
                    f"not a shared parameter; shared parameters are {sorted(shared)}"
                ) from None
        return read

    def _name_sites(self) -> None:
        """Site names of the noise and discrepancy hyperparameters, free of clashes."""
        self.hyper_names = {
            arg: f"noise_{arg}" if arg in self.params else arg
            for arg, value in self.observation.hyperparameters().items()
            if isinstance(value, dist.Distribution)
        }
        taken = (set(self.params) | set(self.per_experiment) | set(self.inputs)
                 | set(self.hyper_names.values()))
        self.discrepancy_names = (
            {} if self.discrepancy is None else self.discrepancy.site_names(taken)
        )
        if sites.INITIAL_STATE in self.params and self._samples_initial_state():
            raise ValueError(
                f"params name {sites.INITIAL_STATE!r} is taken by the uncertain initial state "
                "(a distribution given as initial_state); name the parameter otherwise, or "
                "give initial_state=lambda theta: theta[...]"
            )
        names = taken | set(self.discrepancy_names.values())
        clash = set(self.derived) & names
        if clash:
            raise ValueError(f"derived names clash with parameter names: {sorted(clash)}")

    def _samples_initial_state(self) -> bool:
        return self.sde is None and isinstance(self.initial_state, dist.Distribution)

    # ----------------------------------------------------------------- pieces
    @property
    def observables(self) -> tuple[str, ...] | None:
        """Names of the observables, or `None` when `observe` is a function (then the data
        names them)."""
        return None if callable(self.observe) else self.observe

    def example_shared_theta(self) -> dict:
        """A draw of the shared parameters from their priors (seed 0)."""
        key = jax.random.PRNGKey(0)
        return {name: prior.sample(key) for name, prior in self.params.items()}

    def example_theta(self) -> dict:
        """One experiment's theta drawn from the priors (seed 0), inputs set to 1, for
        tracing the user's functions."""
        return population.example(self, self.example_shared_theta())

    def prepare(self, data) -> PreparedData:
        """Validate `data` (a TimeSeries or a list of them) against the model and align it."""
        return experiments.prepare(self, data)

    def active(self, data: PreparedData):
        """`(E, T)`: `True` where time is at or after the experiment's initial time."""
        return experiments.active(self, data)

    def numpyro_model(self, data: PreparedData, *, on_failure: Callable | None = None,
                      predict_times=None):
        """The numpyro model function `fn(observed, conditional=False, ...)` for prepared data.

        `fn(True)` conditions on the data; `fn(False)` samples the observations (prior and
        posterior predictive). With a discrepancy, `fn(False, conditional=True)` draws the
        discrepancy from its posterior given the data and the other latent values and then
        the observations, the posterior predictive of the Kennedy-O'Hagan model.
        `predict_times` adds sites at those times in the conditional mode (the
        `probde.model.sites.new` names of the mean, discrepancy, corrected mean and
        observations). `on_failure(rejected)` is called on the host (a `jax.pure_callback`)
        with the per-evaluation rejection flag (used by `probde.infer` to count failures).
        Bookkeeping sites are named in `probde.model.sites`.
        """
        return self.source.program(self, data, on_failure=on_failure,
                                   predict_times=predict_times)
