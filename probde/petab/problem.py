"""A PEtab problem as a `probde.Model` and its data.

How PEtab's concepts map onto probde's (so that everything runs through the model layer:
experiments, inputs, noise, failure handling):

- each (pre-equilibration condition, simulation condition) pair of the measurement table is
  an experiment (a `TimeSeries` named `"sim"` or `"pre->sim"`), simulated from `t = 0`;
- the condition table's settings are the experiments' known *inputs*: a number is the
  input's value; a parameter id is picked from theta by an index input;
- each data column is an observable together with its measurement-specific observable and
  noise parameters (and a replicate number), so that every measurement is one value of the
  data array; `Measurements` gives each column its distribution, transformation and
  noise formula;
- estimated parameters are the model's `params`, sampled under their PEtab ids on the
  linear scale with the PEtab prior (`priors.py`);
- pre-equilibration is the initial-state function: a solve to steady state under the
  pre-equilibration condition, then the simulation condition's re-initialisations.
"""

from __future__ import annotations

import math
import re

import diffrax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import sympy as sp

from ..dynamics import ODE, Solver
from ..dynamics._diffeqsolve import diffeqsolve
from ..model import Model
from ..observations import TimeSeries
from . import events, priors, sbml
from .noise import DISTRIBUTIONS, TRANSFORMATIONS, Measurements
from .tables import INPUT, PEtabError, Tables, is_number, petab_module, split_overrides


def default_solver() -> Solver:
    """Kvaerno5 (stiff, L-stable) with tight tolerances: reaction networks are often stiff,
    and PEtab's reference values are computed at relative tolerances of 1e-8 or below."""
    return Solver(diffrax.Kvaerno5(), rtol=1e-8, atol=1e-10, max_steps=100_000)


def _placeholder_index(name: str, oid: str) -> int:
    """`n` for observable `oid`'s placeholder `observableParameter{n}_{oid}` or
    `noiseParameter{n}_{oid}`, else 0 (an id such as `noiseParameter1` alone is a
    parameter of the parameter table)."""
    match = re.fullmatch(rf"(?:observable|noise)Parameter(\d+)_{re.escape(oid)}", name)
    return int(match.group(1)) if match else 0


def _real(expr: sp.Expr) -> sp.Expr:
    """Symbols as real symbols (the SBML side's convention)."""
    return expr.xreplace({s: sp.Symbol(s.name, real=True) for s in expr.free_symbols
                          if not s.is_real})


class _Experiment:
    def __init__(self, pre: str | None, sim: str, steady: bool = False):
        self.pre, self.sim, self.steady = pre, sim, steady
        self.name = sim if pre is None else f"{pre}->{sim}"
        if steady:
            self.name += " (steady state)"


class Problem:
    """A PEtab problem loaded by `probde.petab.load` (see there)."""

    def __init__(self, yaml_path, solver: Solver | None = None):
        self.tables = t = Tables(yaml_path)
        self.sbml = sbml.read(t.model_file)
        self.solver = default_solver() if solver is None else solver
        self.estimated = t.estimated()
        self.nominal = {pid: t.nominal(pid) for pid in self.estimated}
        self.fixed = {pid: t.nominal(pid) for pid in t.parameters.index
                       if pid not in self.nominal}
        self._experiments()
        self._columns()
        self._conditions()
        self._observables()
        self.events, event_inputs = events.sbml_events(self)
        splits, split_inputs, self.split_times = events.time_splits(self)
        self.events += splits
        self.inputs.update(event_inputs | split_inputs)
        self.data = self._data()
        self.model = self._model()
        self._prepared = self.model.prepare(self.data)

    # ------------------------------------------------------------ experiments
    def _experiments(self):
        """Experiments: (pre-equilibration, simulation condition) pairs; measurements at
        time = inf (at the steady state of the simulation condition) form an experiment of
        their own, observed at time 0 of a start at that steady state."""
        m = self.tables.measurements
        pre = [v if isinstance(v, str) and v else None
               for v in m["preequilibrationConditionId"]]
        steady = np.isinf(m["time"].to_numpy())
        keys_of_rows = list(zip(pre, m["simulationConditionId"], steady, strict=True))
        keys = list(dict.fromkeys(keys_of_rows))
        self.experiments = [_Experiment(p, s, bool(st)) for p, s, st in keys]
        index = {k: i for i, k in enumerate(keys)}
        m["_experiment"] = [index[k] for k in keys_of_rows]
        m["_time"] = np.where(steady, 0.0, m["time"].to_numpy())
        self.preequilibrate = any(e.pre is not None for e in self.experiments)
        self.steady_states = any(e.steady for e in self.experiments)

    def _columns(self):
        """Data columns: (observable, observable parameters, noise parameters, replicate)."""
        m = self.tables.measurements
        m["_obs_pars"] = [tuple(split_overrides(v)) for v in m["observableParameters"]]
        m["_noise_pars"] = [tuple(split_overrides(v)) for v in m["noiseParameters"]]
        group = ["_experiment", "_time", "observableId", "_obs_pars", "_noise_pars"]
        m["_replicate"] = m.groupby(group, sort=False).cumcount()
        keys = list(zip(m["observableId"], m["_obs_pars"], m["_noise_pars"], m["_replicate"],
                        strict=True))
        order = {o: i for i, o in enumerate(self.tables.observables.index)}
        self.columns = sorted(dict.fromkeys(keys), key=lambda k: (order[k[0]], keys.index(k)))
        col_index = {k: j for j, k in enumerate(self.columns)}
        m["_column"] = [col_index[k] for k in keys]
        self.column_names = [f"{k[0]}[{j}]" if sum(c[0] == k[0] for c in self.columns) > 1
                             else k[0] for j, k in enumerate(self.columns)]

    # ------------------------------------------------------------- parameters
    def value_of(self, pid: str, theta):
        """A PEtab parameter id's value: estimated (from theta) or fixed (nominal)."""
        if pid in self.nominal:
            return theta[pid]
        if pid in self.fixed:
            return self.fixed[pid]
        raise KeyError(pid)

    def _conditions(self):
        """Inputs from the condition table: one value per experiment and phase."""
        conds = self.tables.conditions
        targets = [c for c in conds.columns if c != "conditionName"]
        model_ids = set(self.sbml.parameters) | set(self.sbml.state_ids)
        for c in targets:
            if c not in model_ids:
                raise PEtabError(
                    f"condition table column {c!r} is not a parameter, compartment or species "
                    f"of the SBML model {self.tables.model_file.name}")
        self.inputs: dict[str, np.ndarray] = {}
        self.overrides = {}  # (phase, target) -> (number input, pick input or None,
        #                                           candidates, set input or None)
        phases = ("sim", "pre") if self.preequilibrate else ("sim",)
        for phase in phases:
            for target in targets:
                self._condition_input(phase, target)
        if self.preequilibrate:
            self.inputs[INPUT + "preeq"] = np.array(
                [0.0 if e.pre is None else 1.0 for e in self.experiments])
        if self.steady_states:
            self.inputs[INPUT + "steady"] = np.array(
                [1.0 if e.steady else 0.0 for e in self.experiments])

    def _condition_input(self, phase, target):
        conds = self.tables.conditions
        specs = []
        for e in self.experiments:
            cid = e.sim if phase == "sim" else e.pre
            v = np.nan if cid is None else conds.loc[cid, target]
            specs.append(v)
        numbers = np.zeros(len(specs))
        is_set = np.ones(len(specs))
        picks = np.zeros(len(specs))
        candidates: list[str] = []
        for i, v in enumerate(specs):
            if isinstance(v, str) and not is_number(v):
                if v not in self.nominal and v not in self.fixed:
                    raise PEtabError(f"condition table: {target} = {v!r} is not a parameter "
                                     "of the parameter table")
                if v not in candidates:
                    candidates.append(v)
                picks[i] = candidates.index(v) + 1
            elif v is None or (isinstance(v, float) and math.isnan(v)) or (
                    is_number(v) and math.isnan(float(v))):
                is_set[i] = 0.0
            else:
                numbers[i] = float(v)
        if not is_set.any():
            return
        base = f"{INPUT}{phase}_{target}"
        self.inputs[base] = numbers
        pick = set_ = None
        if candidates:
            pick = base + "_pick"
            self.inputs[pick] = picks
        if not is_set.all():
            set_ = base + "_set"
            self.inputs[set_] = is_set
        self.overrides[(phase, target)] = (base, pick, tuple(candidates), set_)

    def _override(self, phase, target, theta):
        """`(value, is_set)` of a condition-table setting for one experiment, or None."""
        entry = self.overrides.get((phase, target))
        if entry is None:
            return None
        base, pick, candidates, set_ = entry
        value = theta[base]
        if pick is not None:
            options = jnp.stack([value] + [jnp.asarray(self.value_of(c, theta), value.dtype)
                                           for c in candidates])
            value = options[theta[pick].astype(jnp.int32)]
        is_set = True if set_ is None else theta[set_] > 0
        return value, is_set

    def sbml_parameters(self, theta, phase: str = "sim"):
        """The SBML model's parameters for one experiment: condition settings, then the
        parameter table, then the file's values (initial assignments evaluated)."""
        values = []
        for i, (pid, default) in enumerate(self.sbml.parameters.items()):
            fallback = self._default_parameter(i, pid, default, values, theta)
            over = self._override(phase, pid, theta)
            if over is None:
                values.append(fallback)
            else:
                value, is_set = over
                values.append(value if is_set is True else jnp.where(is_set, value, fallback))
        return values

    def _default_parameter(self, i, pid, default, values, theta):
        if pid in self.nominal:
            return theta[pid]
        if pid in self.fixed:
            return jnp.asarray(self.fixed[pid])
        if default.is_Number:
            return jnp.asarray(float(default))
        fn = self._parameter_functions[i]
        return fn(0.0, [], values)[0]

    # --------------------------------------------------------- model pieces
    def _observables(self):
        """Lambdified observable and noise formulas, one function per observable."""
        obs = self.tables.observables
        names = list(self.sbml.parameters)
        self._parameter_functions = {
            i: sbml.lambdify([expr], (), names[:i])
            for i, (pid, expr) in enumerate(self.sbml.parameters.items())
            if not expr.is_Number and pid not in self.nominal and pid not in self.fixed}
        self._initial = sbml.lambdify(self.sbml.initial, (), names)
        self._rhs = sbml.lambdify(self.sbml.rhs, self.sbml.state_ids, names)
        self._formulas = {}
        petab = petab_module()
        known = set(names) | set(self.sbml.state_ids)
        for oid in obs.index:
            formula = _real(petab.math.sympify_petab(obs.loc[oid, "observableFormula"]))
            noise = obs.loc[oid, "noiseFormula"] if "noiseFormula" in obs else 1.0
            noise = _real(petab.math.sympify_petab(noise))
            noise = noise.xreplace({sp.Symbol(oid, real=True): formula})
            formula = self._expand(formula, oid)
            noise = self._expand(noise, oid)
            if sbml.TIME in formula.free_symbols | noise.free_symbols or any(
                    s.name in ("t", "time") for s in formula.free_symbols | noise.free_symbols
                    if s.name not in known):
                raise PEtabError(f"observable {oid!r}: formulas of time are not supported")
            extra = sorted({s.name for s in formula.free_symbols | noise.free_symbols}
                           - known)
            for s in extra:
                if not (_placeholder_index(s, oid) or s in self.nominal or s in self.fixed):
                    raise PEtabError(
                        f"observable table, {oid!r}: {s!r} is neither a model entity nor a "
                        "parameter of the parameter table")
            fn = sbml.lambdify([formula, noise], self.sbml.state_ids, names + extra)
            self._formulas[oid] = (fn, extra)

    def _expand(self, expr, oid):
        """Assignment-rule targets and species replaced by expressions of the states."""
        repl = {}
        for s in expr.free_symbols:
            e = self.sbml.expressions.get(s.name)
            if e is not None and e != s:
                repl[s] = e
        return expr.xreplace(repl)

    def _placeholder(self, name, column, theta):
        """The value of `observableParameterN_o` / `noiseParameterN_o` for a column."""
        oid, obs_pars, noise_pars, _ = column
        pars = obs_pars if name.startswith("observableParameter") else noise_pars
        n = _placeholder_index(name, oid)
        if n > len(pars):
            raise PEtabError(f"observable {oid!r} needs {name} but a measurement gives only "
                             f"{len(pars)} values: {pars}")
        v = pars[n - 1]
        return float(v) if is_number(v) else self.value_of(v, theta)

    def _evaluate(self, y, theta, which: int):
        """The columns' observable (`which=0`) or noise (`which=1`) values at state `y`."""
        c = self.sbml_parameters(theta)
        out = []
        for column in self.columns:
            fn, extra = self._formulas[column[0]]
            args = []
            for s in extra:
                if _placeholder_index(s, column[0]):
                    args.append(self._placeholder(s, column, theta))
                else:
                    args.append(self.value_of(s, theta))
            out.append(fn(0.0, sbml.unstack(y), list(c) + args)[which])
        return jnp.stack([jnp.asarray(v, y.dtype) for v in out])

    def observe(self, y, theta):
        return self._evaluate(y, theta, 0)

    def noise_scale(self, y, theta):
        return self._evaluate(y, theta, 1)

    def vector_field(self, t, y, theta):
        return jnp.stack(self._rhs(t, sbml.unstack(y), self.sbml_parameters(theta)))

    def _start(self, theta, phase):
        c = self.sbml_parameters(theta, phase)
        x0 = jnp.stack([jnp.asarray(v, jnp.result_type(float))
                        for v in self._initial(0.0, [], c)])
        return self._reinitialise(x0, theta, phase), c

    def _reinitialise(self, x, theta, phase):
        for i, sid in enumerate(self.sbml.state_ids):
            over = self._override(phase, sid, theta)
            if over is not None:
                value, is_set = over
                x = x.at[i].set(value if is_set is True else jnp.where(is_set, value, x[i]))
        return x

    def initial_state(self, theta):
        x0, c = self._start(theta, "sim")
        if self.preequilibrate:
            xp, cp = self._start(theta, "pre")
            after = self._reinitialise(self._steady_state(xp, cp), theta, "sim")
            x0 = jnp.where(theta[INPUT + "preeq"] > 0, after, x0)
        if self.steady_states:  # measured at time = inf: start at the steady state
            x0 = jnp.where(theta[INPUT + "steady"] > 0, self._steady_state(x0, c), x0)
        return x0

    def _steady_state(self, x0, c):
        s = self.solver
        term = diffrax.ODETerm(lambda t, y, args: jnp.stack(self._rhs(t, sbml.unstack(y), args)))
        sol = diffeqsolve(
            term, s.solver, 0.0, jnp.inf, s.dt0, x0, args=c,
            saveat=diffrax.SaveAt(t1=True), stepsize_controller=s.controller(),
            event=diffrax.Event(diffrax.steady_state_event(rtol=s.rtol, atol=s.atol)),
            max_steps=s.max_steps, throw=False)
        ok = sol.result == diffrax.RESULTS.event_occurred
        # a failed pre-equilibration makes the initial state NaN: the main solve then fails
        # and the proposal is rejected (and counted) like any failed solve
        return jnp.where(ok, sol.ys[-1], jnp.nan)

    # ------------------------------------------------------------ the model
    def _data(self) -> list[TimeSeries]:
        m = self.tables.measurements
        series = []
        for i, e in enumerate(self.experiments):
            rows = m[m["_experiment"] == i]
            times = np.unique(rows["_time"].to_numpy())
            values = np.full((len(times), len(self.columns)), np.nan)
            t_index = np.searchsorted(times, rows["_time"].to_numpy())
            values[t_index, rows["_column"].to_numpy()] = rows["measurement"].to_numpy()
            inputs = {k: float(v[i]) for k, v in self.inputs.items()}
            series.append(TimeSeries(times, values, self.column_names, name=e.name,
                                     inputs=inputs))
        return series

    def _model(self) -> Model:
        obs = self.tables.observables
        families, transforms = [], []
        for column in self.columns:
            row = obs.loc[column[0]]
            fam = row.get("noiseDistribution", "normal")
            tr = row.get("observableTransformation", "lin")
            fam = "normal" if not isinstance(fam, str) else fam
            tr = "lin" if not isinstance(tr, str) else tr
            if fam not in DISTRIBUTIONS or tr not in TRANSFORMATIONS:
                raise PEtabError(f"observable table, {column[0]!r}: noise distribution "
                                 f"{fam!r} with transformation {tr!r} is not supported")
            families.append(DISTRIBUTIONS.index(fam))
            transforms.append(TRANSFORMATIONS.index(tr))
        params = {pid: priors.prior(self.tables.parameters.loc[pid], pid)
                  for pid in self.estimated}
        return Model(
            ODE(self.vector_field, state_names=self.sbml.state_ids, events=self.events),
            params=params,
            initial_state=self.initial_state,
            observation=Measurements(tuple(families), tuple(transforms), self.noise_scale),
            observe=self.observe,
            solver=self.solver,
            t0=0.0,
            inputs=tuple(self.inputs),
        )

    # ------------------------------------------------------------- results
    def _params(self, params):
        if params is None:
            params = self.nominal
        if not isinstance(params, dict):
            raise TypeError(f"params must be a dict of parameter values keyed by PEtab id; "
                            f"got {type(params).__name__}")
        missing = sorted(set(self.nominal) - set(params))
        extra = sorted(set(params) - set(self.nominal))
        if missing or extra:
            raise ValueError(f"params must have exactly the estimated parameters' ids; "
                             f"missing {missing}, unexpected {extra}")
        return {k: jnp.asarray(v, jnp.result_type(float)) for k, v in params.items()}

    def log_likelihood(self, params=None):
        """PEtab's log-likelihood of all measurements at `params` (a dict like `nominal`,
        linear scale; `None`: the nominal values). Pure: `jax.grad` and `jax.jit` apply."""
        from ..inference.likelihood import log_likelihood

        return log_likelihood(self.model, self.data, self._params(params))

    def simulate(self, params=None) -> pd.DataFrame:
        """The measurement table with a `simulation` column: the observables' values
        (untransformed) at `params` (default: nominal)."""
        from numpyro import handlers

        from ..model import sites

        values = self._params(params)
        fn = self.model.numpyro_model(self._prepared)
        with handlers.block():
            tr = handlers.trace(handlers.substitute(handlers.seed(fn, 0), data=values)
                                ).get_trace(observed=True)
        mu = np.asarray(tr[sites.MEAN]["value"])
        ok = np.asarray(tr[sites.VALID]["value"])
        m = self.tables.measurements
        times = self._prepared.times
        t_index = np.searchsorted(times, m["_time"].to_numpy())
        sim = mu[m["_experiment"].to_numpy(), t_index, m["_column"].to_numpy()]
        sim = np.where(ok[m["_experiment"].to_numpy()], sim, np.nan)
        out = self.tables.problem.measurement_df.copy()
        out["simulation"] = sim
        return out

    def __repr__(self):
        return (f"probde.petab.Problem({self.tables.path.name}: {len(self.sbml.state_ids)} "
                f"states, {len(self.estimated)} estimated parameters, "
                f"{len(self.experiments)} experiments, {len(self.tables.measurements)} "
                "measurements)")


def load(path, *, solver: Solver | None = None) -> Problem:
    """Load a PEtab (v1) problem: its YAML file, the SBML model and the tables it names.

    Returns a `Problem` with

    - `model` (a `probde.Model`) and `data` (a list of `probde.TimeSeries`, one per
      experiment), ready for `probde.infer(problem.model, problem.data, ...)`;
    - `nominal`: the estimated parameters' nominal values (linear scale), by PEtab id;
    - `log_likelihood(params=None)`: PEtab's log-likelihood of all measurements,
      differentiable and jittable;
    - `simulate(params=None)`: the measurement table with a `simulation` column.

    `solver` defaults to `default_solver()` (Kvaerno5, rtol 1e-8, atol 1e-10).
    """
    return Problem(path, solver)
