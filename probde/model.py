"""`probde.Model`: dynamics + priors + observation model -> one numpyro model function."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers

from ._checks import describe
from .discrepancy.deepgp import DeepGPDiscrepancy
from .discrepancy.deep_emulator import DeepGPEmulator
from .discrepancy.emulator import GPEmulator
from .discrepancy.gp import GPDiscrepancy, MarkovGPDiscrepancy, NoDiscrepancy
from .discrepancy.marginal import MarginalGP
from .dynamics import ODE, Solver, solve
from .dynamics.sde import SDE, AbstractLikelihood
from .inference.failures import report as report_failure
from .noise import AbstractObservation
from .observations import TimeSeries
from ._sde_model import check_sde_model, gaussian_initial, initial_mean, sde_initial, sde_model_fn

# Names of the bookkeeping sites the model records; `probde.infer` moves them out of the
# posterior (solver statistics go to sample_stats, trajectories to the predictive groups).
SOLVER_OK = "_solver_ok"
SOLVER_STEPS = "_solver_steps"
VALID = "_valid"
REJECTED = "_rejected"
TRAJECTORY = "trajectory"
MEAN = "mu"
OBSERVED = "y"
INITIAL_STATE = "initial_state"
DELTA = "discrepancy"
CORRECTED = "corrected"
DELTA_Z = "discrepancy_z"


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """Data of one or several experiments aligned on the union of their times.

    `values` has shape `(E, T, O)` with NaN wherever an experiment has no value (missing, or
    not observed at that time); `mask` is `True` where a value was observed; `starts[e]` is
    the first time of experiment `e` (its initial time unless the model sets `t0`).
    """

    times: np.ndarray
    starts: np.ndarray
    values: np.ndarray
    mask: np.ndarray
    observables: tuple[str, ...]
    experiments: tuple[str, ...]
    single: bool

    @property
    def num_experiments(self) -> int:
        return self.values.shape[0]


class Model:
    r"""A Bayesian model of a dynamical system observed with noise.

    $$\theta \sim p(\theta),\quad y_0 \sim p(y_0 \mid \theta),\quad
    \dot y = f(t, y, \theta),\quad
    \text{data}_{t,o} \sim \text{noise}\big(h(y(t), \theta)_o\big).$$

    **Main arguments:**

    - `dynamics`: a `probde.ODE`, a `probde.SDE` (then give `likelihood`), or a
      `probde.GPEmulator` or `probde.DeepGPEmulator` standing in for an expensive
      simulator.
    - `params`: dict mapping parameter names to numpyro distributions (the priors). The
      names are the posterior variables and the keys of `theta` in the vector field.
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
      `probde.RandomWalkMetropolis`). The initial state is then the distribution of
      `x(t0)` (integrated out, not a posterior variable): a fixed array, a numpyro
      `Normal`/`MultivariateNormal` (any distribution for the particle filter), or a
      function of theta returning one. The Gaussian filters need `noise.Normal` or
      `noise.LogNormal` (Gaussian on the log scale). No discrepancy term. See the tutorial
      "Stochastic models and filtering".
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
    ):
        if not isinstance(dynamics, (ODE, SDE, GPEmulator, DeepGPEmulator)):
            raise TypeError(
                "dynamics must be a probde.ODE, a probde.SDE or a probde.GPEmulator (or "
                f"probde.DeepGPEmulator); got {describe(dynamics)}"
            )
        self.dynamics = dynamics
        self.sde = dynamics if isinstance(dynamics, SDE) else None
        self.emulator = dynamics if isinstance(dynamics, (GPEmulator, DeepGPEmulator)) else None
        if emulation not in ("modular", "joint"):
            raise ValueError(f"emulation must be 'modular' or 'joint'; got {emulation!r}")
        if emulation == "joint" and isinstance(dynamics, DeepGPEmulator):
            raise ValueError(
                "emulation='joint' needs a probde.GPEmulator (its hyperparameters have a "
                "closed-form training likelihood); a probde.DeepGPEmulator is fitted once by "
                "SVI and takes emulation='modular'"
            )
        self.emulation = emulation
        self.params = self._check_params(params)
        self.observation = self._check_observation(observation)
        self.observe = self._check_observe(observe)
        if discrepancy is not None and not isinstance(
            discrepancy, (GPDiscrepancy, DeepGPDiscrepancy)
        ):
            raise TypeError(
                "discrepancy must be None, probde.GPDiscrepancy(...), "
                "probde.MarkovGPDiscrepancy(...) or probde.DeepGPDiscrepancy(...); got "
                f"{describe(discrepancy)}"
            )
        self.discrepancy = discrepancy
        if self.emulator is not None:
            self._check_emulator(initial_state, discrepancy)
        if discrepancy is not None and self.observables is not None:
            discrepancy.check_model(self.observables, self.observation)
        if self.sde is None and likelihood is not None:
            raise ValueError(
                "likelihood is for SDE models (a filter integrating out the latent path); "
                f"an ODE model takes likelihood=None; got {describe(likelihood)}"
            )
        if self.sde is not None and not isinstance(likelihood, AbstractLikelihood):
            raise TypeError(
                "an SDE model needs likelihood=probde.EKF(), probde.UKF() or "
                f"probde.ParticleFilter(...); got {describe(likelihood)}"
            )
        self.likelihood = likelihood
        solver = Solver() if solver is None else solver
        if not isinstance(solver, Solver):
            raise TypeError(f"solver must be a probde.Solver; got {describe(solver)}")
        self.solver = solver
        if t0 is not None and not isinstance(t0, (int, float, np.floating, np.integer)):
            raise TypeError(f"t0 must be a number or None; got {describe(t0)}")
        if t0 is not None and not np.isfinite(t0):
            raise ValueError(f"t0 must be finite; got {t0}")
        self.t0 = None if t0 is None else float(t0)
        derived = {} if derived is None else dict(derived)
        for name, fn in derived.items():
            if not isinstance(name, str) or not callable(fn):
                raise TypeError(
                    "derived must map names to functions fn(theta); "
                    f"got {name!r}: {describe(fn)}"
                )
        self.derived = derived
        self.initial_state = (
            None if self.emulator is not None else self._check_initial_state(initial_state)
        )
        self.hyper_names = self._hyper_site_names()
        taken = set(self.params) | set(self.hyper_names.values())
        self.discrepancy_names = (
            {} if discrepancy is None else discrepancy.site_names(taken | {DELTA_Z})
        )
        self.dims = {} if dims is None else {k: tuple(v) for k, v in dims.items()}
        if self.sde is not None:
            check_sde_model(self)
        clash = set(self.derived) & (taken | set(self.discrepancy_names.values()))
        if clash:
            raise ValueError(f"derived names clash with parameter names: {sorted(clash)}")
        self._check_traces()

    # ----------------------------------------------------------------- validation
    @staticmethod
    def _check_params(params):
        if not isinstance(params, Mapping):
            raise TypeError(
                f"params must be a dict mapping names to numpyro distributions; got {describe(params)}"
            )
        reserved = {OBSERVED, INITIAL_STATE, TRAJECTORY, MEAN, DELTA, CORRECTED, DELTA_Z}
        for name, prior in params.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"params keys must be identifiers; got {name!r}")
            if name in reserved or name.startswith("_"):
                raise ValueError(f"params name {name!r} is reserved; choose another name")
            if not isinstance(prior, dist.Distribution):
                raise TypeError(
                    f"params[{name!r}] must be a numpyro distribution (the prior); "
                    f"got {describe(prior)}"
                )
        return dict(params)

    @staticmethod
    def _check_observation(observation):
        if not isinstance(observation, AbstractObservation):
            raise TypeError(
                "observation must be a probde.noise model such as probde.noise.Normal(sigma=...); "
                f"got {describe(observation)}"
            )
        return observation

    def _check_observe(self, observe):
        if observe is None:
            return self.dynamics.state_names
        if callable(observe):
            return observe
        if isinstance(observe, str):
            observe = (observe,)
        if not isinstance(observe, Sequence):
            raise TypeError(
                f"observe must be state names or a function h(y, theta); got {describe(observe)}"
            )
        observe = tuple(observe)
        for name in observe:
            if name not in self.dynamics.state_names:
                raise ValueError(
                    f"observe names {name!r}, which is not a state; states are "
                    f"{self.dynamics.state_names}"
                )
        if len(set(observe)) != len(observe):
            raise ValueError(f"observe must not repeat a state; got {observe}")
        return observe

    def _check_initial_state(self, initial_state):
        if callable(initial_state) and not isinstance(initial_state, dist.Distribution):
            return initial_state
        if isinstance(initial_state, dist.Distribution):
            self._check_initial_distribution(initial_state)
            return initial_state
        try:
            arr = np.asarray(initial_state, dtype=float)
        except (TypeError, ValueError) as err:
            raise TypeError(
                "initial_state must be an array, a numpyro distribution or a function "
                f"theta -> array/distribution; got {describe(initial_state)}"
            ) from err
        self._check_initial_array(arr)
        return jnp.asarray(arr)

    def _check_initial_array(self, arr):
        S = self.dynamics.num_states
        if arr.ndim not in (1, 2) or arr.shape[-1] != S:
            raise ValueError(
                f"initial_state must have shape ({S},) (one value per state "
                f"{self.dynamics.state_names}) or (num_experiments, {S}); got shape {arr.shape}"
            )

    def _check_initial_distribution(self, d):
        S = self.dynamics.num_states
        shape = tuple(d.batch_shape) + tuple(d.event_shape)
        if shape != (S,):
            raise ValueError(
                f"initial_state distribution must have shape ({S},) (batch + event), one value "
                f"per state {self.dynamics.state_names}; got batch_shape {d.batch_shape} and "
                f"event_shape {d.event_shape}"
                + (f". Use .expand([{S}])" if shape == () else "")
            )

    def _hyper_site_names(self) -> dict[str, str]:
        names = {}
        for arg, value in self.observation.hyperparameters().items():
            if isinstance(value, dist.Distribution):
                names[arg] = f"noise_{arg}" if arg in self.params else arg
        return names

    def _example_theta(self):
        key = jax.random.PRNGKey(0)
        return {name: prior.sample(key) for name, prior in self.params.items()}

    def _check_emulator(self, initial_state, discrepancy):
        emu = self.emulator
        if initial_state is not None:
            raise ValueError(
                f"initial_state must be None when dynamics is a probde.{type(emu).__name__} "
                f"(the emulator predicts the outputs directly); got {describe(initial_state)}"
            )
        if self.observation.hyperparameters().keys() != {"sigma"} or self.observation.log_link:
            raise ValueError(
                "an emulated simulator needs probde.noise.Normal observation noise (its "
                "uncertainty is Gaussian and adds to the noise covariance); got "
                f"{type(self.observation).__name__}"
            )
        if isinstance(discrepancy, DeepGPDiscrepancy):
            raise ValueError(
                "an emulated simulator takes a GPDiscrepancy (its covariance joins the "
                "emulator's); DeepGPDiscrepancy needs a simulator (probde.ODE)"
            )
        if isinstance(discrepancy, MarkovGPDiscrepancy):
            raise ValueError(
                "an emulator's dense covariance cannot use MarkovGPDiscrepancy; use "
                "GPDiscrepancy"
            )
        if discrepancy is not None and discrepancy.observables is not None:
            raise ValueError(
                "with an emulator the discrepancy must cover all observables "
                f"(observables=None); got {discrepancy.observables}"
            )
        missing = [n for n in emu.parameter_names if n not in self.params]
        if missing:
            raise ValueError(
                f"the emulator takes parameters {list(emu.parameter_names)} but params has no "
                f"prior for {missing}; params has {sorted(self.params)}"
            )

    def _check_traces(self):
        """Trace the user's functions once with prior draws: name missing parameters."""
        theta = self._example_theta()
        if self.emulator is not None:
            for fn in self.derived.values():
                jax.eval_shape(fn, theta)
            return
        try:
            if self.sde is not None:
                self._check_sde_traces(theta)
                return
            y0 = handlers.seed(self._initial_state, 0)(theta, None)
            S = self.dynamics.num_states
            out = jax.eval_shape(
                lambda y, th: self.dynamics.vector_field(0.0, y, th), y0[0], theta
            )
            if out.shape != (S,):
                raise ValueError(
                    f"vector_field must return shape ({S},) (one derivative per state); "
                    f"got shape {out.shape}"
                )
            if callable(self.observe):
                h = jax.eval_shape(self.observe, y0[0], theta)
                if len(h.shape) != 1:
                    raise ValueError(f"observe(y, theta) must return a 1-D array; got shape {h.shape}")
            for name, fn in self.derived.items():
                jax.eval_shape(fn, theta)
        except KeyError as err:
            missing = err.args[0]
            raise ValueError(
                f"the model reads parameter {missing!r} (in vector_field, observe, derived or "
                f"initial_state) but params defines no prior for it; params has "
                f"{sorted(self.params)}"
            ) from None

    def _check_sde_traces(self, theta):
        x0 = initial_mean(self, theta)
        self.sde.check(x0, theta)
        if self.likelihood.gaussian:
            gaussian_initial(sde_initial(self, theta), self.sde.num_states,
                             type(self.likelihood).__name__)
        if callable(self.observe):
            h = jax.eval_shape(self.observe, x0, theta)
            if len(h.shape) != 1:
                raise ValueError(f"observe(y, theta) must return a 1-D array; got shape {h.shape}")
        for fn in self.derived.values():
            jax.eval_shape(fn, theta)

    # --------------------------------------------------------------------- pieces
    @property
    def observables(self) -> tuple[str, ...] | None:
        """Names of the observables, or `None` when `observe` is a function (then the data
        names them)."""
        return None if callable(self.observe) else self.observe

    def _initial_state(self, theta, num_experiments: int | None):
        """Initial states, shape `(E, S)`; samples the `initial_state` site if needed.

        `num_experiments=None` accepts any number of rows (used when tracing the model
        before data are known).
        """
        value = self.initial_state
        if callable(value) and not isinstance(value, dist.Distribution):
            value = value(theta)
            if not isinstance(value, dist.Distribution):
                value = jnp.asarray(value)
                self._check_initial_array(value)
        if isinstance(value, dist.Distribution):
            self._check_initial_distribution(value)
            if not value.event_shape:
                value = value.to_event(1)  # one draw is one state vector
            E = 1 if num_experiments is None else num_experiments
            if E == 1:
                return numpyro.sample(INITIAL_STATE, value)[None]
            with numpyro.plate("experiment", E, dim=-1):
                return numpyro.sample(INITIAL_STATE, value)
        value = jnp.asarray(value, dtype=jnp.result_type(float))
        if value.ndim == 1:
            E = 1 if num_experiments is None else num_experiments
            return jnp.broadcast_to(value, (E, value.shape[0]))
        if num_experiments is not None and value.shape[0] != num_experiments:
            raise ValueError(
                f"initial_state has {value.shape[0]} rows but the data has {num_experiments} "
                "experiments; give one row per experiment or a single row"
            )
        return value

    def _observe(self, ys, theta):
        """Noise-free predictions of the observables, `(E, T, S) -> (E, T, O)`."""
        if callable(self.observe):
            h = jax.vmap(jax.vmap(self.observe, in_axes=(0, None)), in_axes=(0, None))
            return h(ys, theta)
        idx = np.array([self.dynamics.state_names.index(n) for n in self.observe])
        return ys[..., idx]

    def _sample_hyper(self, num_observables: int):
        hyper = {}
        for arg, value in self.observation.hyperparameters().items():
            if isinstance(value, dist.Distribution):
                shape = tuple(value.batch_shape) + tuple(value.event_shape)
                if shape not in ((), (num_observables,)):
                    raise ValueError(
                        f"the prior of noise parameter {arg!r} must have shape () (shared) or "
                        f"({num_observables},) (one per observable); got {shape}"
                    )
                hyper[arg] = numpyro.sample(self.hyper_names[arg], value)
            else:
                hyper[arg] = value
        return hyper

    # ------------------------------------------------------------------- data
    def prepare(self, data) -> PreparedData:
        """Validate `data` (a TimeSeries or a list of them) against the model and align it."""
        single = isinstance(data, TimeSeries)
        series = [data] if single else data
        if not isinstance(series, (list, tuple)) or not series:
            raise TypeError(
                f"data must be a probde.TimeSeries or a non-empty list of them; got {describe(data)}"
            )
        for i, ts in enumerate(series):
            if not isinstance(ts, TimeSeries):
                raise TypeError(f"data[{i}] must be a probde.TimeSeries; got {describe(ts)}")
        observables = self.observables or series[0].observables
        for i, ts in enumerate(series):
            where = "data" if single else f"data[{i}]"
            if set(ts.observables) != set(observables):
                raise ValueError(
                    f"{where}.observables must match the model's observables {observables}; "
                    f"got {ts.observables}"
                )
            self.observation.check_data(ts.values, f"{where}.values")
        times = np.unique(np.concatenate([ts.times for ts in series]))
        if self.t0 is not None and self.t0 > times[0]:
            raise ValueError(
                f"t0 must not be after the first observation time {times[0]}; got t0={self.t0}"
            )
        values = np.full((len(series), len(times), len(observables)), np.nan)
        for e, ts in enumerate(series):
            rows = np.searchsorted(times, ts.times)
            cols = [ts.observables.index(o) for o in observables]
            values[e, rows, :] = ts.values[:, cols]
        names = [ts.name if ts.name is not None else str(i) for i, ts in enumerate(series)]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment names must be unique; got {names}")
        if callable(self.observe):
            theta = self._example_theta()
            if self.sde is not None:
                y0 = initial_mean(self, theta)[None]
            else:
                y0 = handlers.seed(self._initial_state, 0)(theta, None)
            h = jax.eval_shape(self.observe, y0[0], theta)
            if h.shape != (len(observables),):
                raise ValueError(
                    f"observe(y, theta) returns shape {h.shape} but the data has "
                    f"{len(observables)} observables {observables}"
                )
        if self.initial_state is not None and not isinstance(
            self.initial_state, dist.Distribution
        ) and not callable(self.initial_state):
            arr = self.initial_state
            if arr.ndim == 2 and arr.shape[0] != len(series):
                raise ValueError(
                    f"initial_state has {arr.shape[0]} rows but the data has {len(series)} "
                    "experiments; give one row per experiment or a single row"
                )
        starts = np.array([ts.times[0] for ts in series])
        if self.discrepancy is not None:
            self.discrepancy.check_model(tuple(observables), self.observation)
            start = self.t0 if self.t0 is not None else float(starts.min())
            if self.emulator is not None:  # the emulator knows the simulator from its runs
                start = min(start, float(np.min(self.emulator.times)))
            self.discrepancy.check_times(start, float(times[-1]))
        return PreparedData(
            times=times,
            starts=starts,
            values=values,
            mask=~np.isnan(values),
            observables=tuple(observables),
            experiments=tuple(names),
            single=single,
        )

    def active(self, data: PreparedData) -> np.ndarray:
        """`(E, T)`: `True` where time is at or after the experiment's initial time."""
        starts = np.full(data.num_experiments, self.t0) if self.t0 is not None else data.starts
        return data.times[None, :] >= starts[:, None]

    # ----------------------------------------------------------- numpyro model
    def _sample_discrepancy_hyper(self, disc, num: int):
        """Discrepancy hyperparameters, each broadcast to `(O_d,)` (one per GP observable)."""
        out = {}
        for arg, prior in disc.priors.items():
            shape = tuple(prior.batch_shape) + tuple(prior.event_shape)
            if shape not in ((), (num,)):
                raise ValueError(
                    f"the prior of discrepancy hyperparameter {arg!r} must have shape () "
                    f"(shared) or ({num},) (one per observable with a discrepancy); got {shape}"
                )
            value = numpyro.sample(self.discrepancy_names[arg], prior)
            out[arg] = jnp.broadcast_to(value, (num,))
        return out

    def _solve_all(self, theta, y0, starts, times):
        def one(y, t0):
            return solve(self.dynamics, y, theta, jnp.maximum(times, t0), solver=self.solver, t0=t0)

        if y0.shape[0] == 1:
            # One experiment: no vmap. A vmapped solver loop runs every step under a
            # batched predicate, with a select on every carried value: about twice the
            # time per step for a batch of one.
            return jax.tree.map(lambda x: x[None], one(y0[0], starts[0]))
        return jax.vmap(one)(y0, starts)

    def numpyro_model(
        self,
        data: PreparedData,
        *,
        on_failure: Callable | None = None,
        predict_times=None,
    ):
        """The numpyro model function `fn(observed, conditional=False)` for prepared data.

        `fn(True)` conditions on the data; `fn(False)` samples the observations (prior and
        posterior predictive). With a discrepancy, `fn(False, conditional=True)` draws the
        discrepancy from its posterior given the data and the other latent values (records
        `discrepancy` and `corrected`) and then the observations, the posterior predictive of the
        Kennedy-O'Hagan model. `predict_times` adds sites `*_new` (`mu_new`, `discrepancy_new`,
        `corrected_new`, `y_new`) at those times in the conditional mode.
        `on_failure(rejected)` is called on the host (a `jax.pure_callback`) with the per-evaluation
        rejection flag (used by `probde.infer` to count failures).
        """
        if self.sde is not None:
            return sde_model_fn(self, data, on_failure=on_failure, predict_times=predict_times)
        times = jnp.asarray(data.times, dtype=jnp.result_type(float))
        # Each experiment starts at its own first time (or the model's t0). Save times before
        # an experiment's start are clipped to it; they are masked (no data there).
        starts = np.full(data.num_experiments, self.t0) if self.t0 is not None else data.starts
        starts = jnp.asarray(starts, dtype=times.dtype)
        values = jnp.asarray(np.where(data.mask, data.values, 1.0), dtype=times.dtype)
        mask = jnp.asarray(data.mask)
        E = data.num_experiments
        O = len(data.observables)
        disc = self.discrepancy
        if disc is None and self.emulator is not None:
            disc = NoDiscrepancy()  # the emulator's covariance still needs the GP algebra
        if disc is not None:
            index = disc.observable_index(data.observables)
            marginal = disc.is_marginal(self.observation)
        deep = isinstance(disc, DeepGPDiscrepancy)
        if deep:
            link_values = np.asarray(self.observation.link(jnp.asarray(data.values)))
            standardiser = disc.standardiser(data.times, link_values, data.mask)
        new_times = None if predict_times is None else jnp.asarray(predict_times, dtype=times.dtype)

        def model_fn(observed: bool = True, conditional: bool = False,
                     batch_size: int | None = None, experiment_batch_size: int | None = None):
            # Minibatches (SVI): a random subset of the time points and/or experiments,
            # drawn by numpyro's subsampling plates, which also scale the log-likelihood by
            # size / subsample size (an unbiased estimate of the full one). Only the chosen
            # experiments are solved, and only at the chosen times (sorted for the solver).
            times_, values_, mask_, plates, rows = times, values, mask, [], None
            if experiment_batch_size is not None:
                eplate = numpyro.plate("experiments", E, subsample_size=experiment_batch_size,
                                       dim=-3)
                with eplate as rows:
                    rows = jnp.sort(rows)
                values_, mask_ = values_[rows], mask_[rows]
                plates.append(eplate)
            if batch_size is not None:
                tplate = numpyro.plate("times", times.shape[0], subsample_size=batch_size,
                                       dim=-2)
                with tplate as cols:
                    cols = jnp.sort(cols)
                times_, values_, mask_ = times_[cols], values_[:, cols], mask_[:, cols]
                plates.append(tplate)
            theta = {name: numpyro.sample(name, prior) for name, prior in self.params.items()}
            for name, fn in self.derived.items():
                numpyro.deterministic(name, fn(theta))
            simulate = self._simulator(theta, starts, rows)
            ys, ok, steps, extra = simulate(times_)
            ys = jnp.where(ok[:, None, None], ys, 1.0)
            mu = self._observe(ys, theta)
            valid = ok
            if self.observation.positive_mean:
                valid = valid & jnp.all(mu > 0, axis=(1, 2))
            mu = jnp.where(valid[:, None, None], mu, 1.0)
            hyper = self._sample_hyper(O)
            numpyro.deterministic(SOLVER_OK, ok)
            numpyro.deterministic(VALID, valid)
            numpyro.deterministic(SOLVER_STEPS, steps)
            numpyro.deterministic(TRAJECTORY, ys)
            numpyro.deterministic(MEAN, mu)
            rejected = ~jnp.all(valid)
            penalty = jnp.where(rejected, -jnp.inf, 0.0)
            if on_failure is not None:
                penalty = penalty + report_failure(on_failure, rejected)
            numpyro.factor(REJECTED, penalty)
            # Per-observable hyperparameters (shape (O,)) are aligned with mu's last axis
            # explicitly, so the model also runs under jax_numpy_rank_promotion="raise".
            hyper = {
                k: jnp.reshape(v, (1,) * (mu.ndim - jnp.ndim(v)) + jnp.shape(v)) if jnp.ndim(v) else v
                for k, v in hyper.items()
            }
            def observe_independent(prediction, index=None, d_new=None):
                """Independent noise around `prediction`; predictions at new times."""
                noise = self.observation.distribution(prediction, hyper)
                if observed:
                    with contextlib.ExitStack() as stack:
                        for plate in plates:
                            stack.enter_context(plate)
                        stack.enter_context(handlers.mask(mask=mask_))
                        numpyro.sample(OBSERVED, noise, obs=values_)
                else:
                    numpyro.sample(OBSERVED, noise)
                if conditional and new_times is not None:
                    self._predict_new(simulate, theta, new_times, hyper, index, d_new)

            if disc is None:
                observe_independent(mu)
                return
            loc = self.observation.link(mu)
            if deep:
                # A deep GP of random features: its weights are latent sites, delta is a
                # deterministic function of them, evaluated anew at predicted times.
                fn = disc.sample(self.discrepancy_names, O, index.size)
                d_data = disc.delta(fn, times_, loc, standardiser)
                delta = jnp.zeros(mu.shape, mu.dtype).at[..., index].set(d_data)
                corrected = self.observation.inverse_link(loc + delta)
                numpyro.deterministic(DELTA, delta)
                numpyro.deterministic(CORRECTED, corrected)
                observe_independent(
                    corrected, index, lambda t, l: disc.delta(fn, t, l, standardiser)
                )
                return
            dh = self._sample_discrepancy_hyper(disc, index.size)
            if marginal:
                noise_var = jnp.broadcast_to(jnp.reshape(hyper["sigma"], (-1,)) ** 2, (O,))
                gp = MarginalGP(disc, times, loc, noise_var, dh, index, mask,
                                log=self.observation.log_link, extra=extra)
                if observed:
                    numpyro.sample(OBSERVED, gp, obs=values)
                    return
                if not conditional:
                    numpyro.sample(OBSERVED, gp)
                    return
                query = jnp.zeros((0,), times.dtype) if new_times is None else new_times
                r = jnp.where(mask, self.observation.link(values) - loc, 0.0)
                keys = jax.random.split(numpyro.prng_key(), (E, index.size))

                def draw(k, h, r_eo, var, m_eo, ex):
                    return disc.posterior_sample(k, h, times, r_eo, var, m_eo, query, ex)

                ex = None if extra is None else extra[index]
                per_obs = jax.vmap(draw, in_axes=(0, None, 0, None, 0, None))  # experiments
                d_data, d_new = jax.vmap(
                    per_obs, in_axes=(1, 0, 2, 0, 2, None if ex is None else 0), out_axes=2
                )(keys, dh, r[..., index], noise_var[index], mask[..., index], ex)
                # (E, T, O_d), (E, M, O_d)
            else:
                # One experiment: no experiment axis in the posterior (as for initial_state).
                shape = ([] if E == 1 else [E]) + [index.size, times.shape[0]]
                z = numpyro.sample(DELTA_Z, dist.Normal(0.0, 1.0).expand(shape).to_event(len(shape)))
                z = jnp.reshape(z, (E, index.size, times.shape[0]))
                d_data = jax.vmap(
                    jax.vmap(lambda zz, h: disc.latent(zz, h, times), in_axes=(0, 0)),
                    in_axes=(0, None),
                    out_axes=0,
                )(z, dh)  # (E, O_d, T)
                d_data = jnp.moveaxis(d_data, 1, 2)
                d_new = None
                if conditional and new_times is not None:
                    keys = jax.random.split(numpyro.prng_key(), (E, index.size))
                    d_new = jax.vmap(
                        jax.vmap(lambda k, h, dd: disc.conditional_on_latent(k, h, times, dd, new_times),
                                 in_axes=(0, 0, 1)),
                        in_axes=(0, None, 0),
                    )(keys, dh, d_data)  # (E, O_d, M)
                    d_new = jnp.moveaxis(d_new, 1, 2)
            delta = jnp.zeros(mu.shape, mu.dtype).at[..., index].set(d_data)
            corrected = self.observation.inverse_link(loc + delta)
            numpyro.deterministic(DELTA, delta)
            numpyro.deterministic(CORRECTED, corrected)
            observe_independent(corrected, index, d_new)

        return model_fn

    def _sample_emulator_hyper(self):
        """Joint Kennedy-O'Hagan: the emulator's hyperparameters are inferred with theta, and
        the simulator runs enter the likelihood; modular: fixed at their fitted values."""
        if self.emulation != "joint":
            return None
        hyper = {
            k: numpyro.sample(f"emulator_{k}", prior)
            for k, prior in self.emulator.hyperparameter_priors().items()
        }
        numpyro.factor("emulator_runs", self.emulator.training_log_marginal(hyper))
        return hyper

    def _simulator(self, theta, starts, rows=None):
        """`times -> (ys (E, T, S), ok (E,), solver steps (E,), covariance (O, T, T) | None)`.

        An ODE is solved from each experiment's initial state (sampled here); an emulator
        predicts the outputs with their covariance (its hyperparameters sampled here in
        joint emulation).
        """
        E = starts.shape[0]
        if self.emulator is None:
            y0 = self._initial_state(theta, E)
            if rows is not None:  # a minibatch of experiments
                y0, starts = y0[rows], starts[rows]

            def simulate(times):
                traj = self._solve_all(theta, y0, starts, times)
                return traj.ys, traj.ok, traj.num_steps, None

            return simulate
        emulator_hyper = self._sample_emulator_hyper()

        def simulate(times):
            m, cov = self.emulator.predict(times, theta, emulator_hyper)
            ok = jnp.broadcast_to(jnp.all(jnp.isfinite(m)), (E,))
            return jnp.broadcast_to(m, (E,) + m.shape), ok, jnp.zeros(E, jnp.int32), cov

        return simulate

    def _predict_new(self, simulate, theta, new_times, hyper, index, d_new):
        """Sites `mu_new`, `discrepancy_new`, `corrected_new`, `y_new` at `new_times`."""
        ys, ok, _, cov = simulate(new_times)
        ys = jnp.where(ok[:, None, None], ys, jnp.nan)
        if cov is not None:
            # The emulator's uncertainty at the new times is added to the noise variance of
            # y_new (its correlation with the uncertainty at the data times is dropped).
            var = jnp.diagonal(cov, axis1=1, axis2=2).T[None]  # (1, M, O)
            hyper = dict(hyper, sigma=jnp.sqrt(hyper["sigma"] ** 2 + var))
        mu = self._observe(ys, theta)
        numpyro.deterministic(MEAN + "_new", mu)
        delta = jnp.zeros(mu.shape, mu.dtype)
        if callable(d_new):  # a deep GP: the function of the new times and predictions
            d_new = d_new(new_times, self.observation.link(mu))
        if index is not None:
            delta = delta.at[..., index].set(d_new)
        corrected = self.observation.inverse_link(self.observation.link(mu) + delta)
        numpyro.deterministic(DELTA + "_new", delta)
        numpyro.deterministic(CORRECTED + "_new", corrected)
        safe = jnp.where(jnp.isfinite(corrected), corrected, 1.0)
        y = numpyro.sample(OBSERVED + "_new", self.observation.distribution(safe, hyper))
        del y
