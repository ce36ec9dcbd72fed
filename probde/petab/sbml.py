"""SBML models as ODEs: the reaction network read with python-libsbml, its math turned into
sympy expressions by sbmlmath, and those printed as one JAX function per model part.

What libsbml and sbmlmath do (parsing, function-definition expansion, MathML) is theirs;
what is written here is the semantics they leave to a simulator: which symbols are states,
how reactions, compartments and rules make the right-hand side, and the initial values.

Semantics (those of AMICI and the SBML specification):

- A species' symbol in math is its concentration unless it has only substance units; its
  state is that same quantity, so a reaction's rate (amount per time) is divided by the
  compartment size for a concentration species.
- States: non-constant species not set by an assignment rule, and parameters, compartments
  or species with a rate rule. Boundary species change only through rate rules.
- Assignment rules are substituted into everything that reads them (in dependency order).
- Initial values: the initial amount or concentration, converted to the state's unit, or
  the initial assignment, evaluated at the parameters' values (so a parameter override in a
  PEtab condition reaches the initial state).
- `piecewise` and other discontinuities are kept as `jnp.where`; `time_thresholds` finds the
  times where conditions on time switch, at which `probde.petab.load` restarts the solve.
  Time-triggered events
  (`time >= T`, T an expression of the parameters) are read into `SBMLModel.events`;
  `probde.petab.load` applies them as `probde.Event`s (the solve restarts there).

Unsupported constructs (algebraic rules, delays, events with state-dependent triggers,
fast reactions, compartments whose size changes) raise `SBMLError` naming the element.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import sympy as sp

TIME = sp.Symbol("time", real=True)


class SBMLError(ValueError):
    """An SBML model that cannot be read or uses a construct probde does not support."""


def _libsbml():
    try:
        import libsbml
    except ImportError as err:  # pragma: no cover - an install problem
        raise ImportError("reading SBML needs python-libsbml: pip install python-libsbml") \
            from err
    return libsbml


@dataclasses.dataclass(frozen=True)
class TimedEvent:
    """An event triggered when `time` reaches `trigger_time` (an expression of the
    parameters): each target (a state) is set to its expression of the states and
    parameters just before the event."""

    id: str
    trigger_time: sp.Expr
    assignments: dict
    #: the trigger's `initialValue`: False means a trigger already true at the start fires
    #: there (SBML: the trigger is taken to have been false just before)
    initial_value: bool = True


@dataclasses.dataclass
class SBMLModel:
    """An SBML model as sympy expressions in its states, its parameters and `time`.

    - `state_ids`: the states' SBML ids, in the order of the state vector.
    - `parameters`: every other symbol the math reads (parameters, compartment sizes,
      constant and boundary species), id -> its value in the file: a sympy number, or an
      expression of earlier parameters (an initial assignment); in dependency order.
    - `rhs`: `d state / dt`, one expression per state.
    - `initial`: the states at the start, expressions of the parameters.
    - `expressions`: each species, assignment-rule target and parameter as an expression
      of the states, the parameters and time (what observables may read).
    - `events`: the time-triggered events.
    """

    id: str
    state_ids: tuple[str, ...]
    parameters: dict
    rhs: list
    initial: list
    expressions: dict
    events: list


def lambdify(exprs: list, state_ids, constant_names) -> Callable:
    """`f(t, x, c)` printing sympy expressions as jax.numpy code (sympy's JAX printer)."""
    xs = [sp.Symbol(s, real=True) for s in state_ids]
    cs = [sp.Symbol(c, real=True) for c in constant_names]
    fn = sp.lambdify((TIME, xs, cs), list(exprs), modules="jax", cse=True, dummify=True)
    return fn


def unstack(y) -> list:
    """The state vector as a list of scalars for the generated code, which unpacks it: by
    static index, since iterating a JAX array of over 100 entries slices it with traced
    offsets (which the parameter-read check cannot trace)."""
    return [y[i] for i in range(y.shape[0])]


def _substitute(expr, rules: dict, depth: int = 0):
    if depth > 100:
        raise SBMLError("assignment rules form a cycle")
    free = expr.free_symbols
    hit = {s: rules[s] for s in free if s in rules}
    if not hit:
        return expr
    return _substitute(expr.xreplace(hit), rules, depth + 1)


def _math(node, level: int, version: int) -> sp.Expr:
    from sbmlmath import SBMLMathMLParser

    libsbml = _libsbml()
    xml = libsbml.writeMathMLToString(node)
    parser = SBMLMathMLParser(sbml_level=level, sbml_version=version, ignore_units=True,
                              floats_as_rationals=False, symbol_kwargs={"real": True})
    expr = parser.parse_str(xml)
    return _normalise(expr)


def _normalise(expr) -> sp.Expr:
    """sbmlmath's special symbols as plain ones (`time`), booleans as numbers."""
    from sbmlmath import CSymbol, TimeSymbol

    repl = {}
    for s in expr.atoms(sp.Symbol):
        if isinstance(s, TimeSymbol):
            repl[s] = TIME
        elif isinstance(s, CSymbol) and "avogadro" in s.definition_url:
            repl[s] = sp.Float(6.02214076e23)
        elif isinstance(s, CSymbol):
            raise SBMLError(f"the SBML csymbol {s.definition_url} is not supported")
        elif not s.is_real:
            repl[s] = sp.Symbol(s.name, real=True)
    if repl:
        expr = expr.xreplace(repl)
    if expr.has(sp.Function("delay")) or any(
            type(f).__name__.lower().startswith("delay") for f in expr.atoms(sp.Function)):
        raise SBMLError("delay() is not supported (delay differential equations)")
    if expr is sp.true:
        return sp.Integer(1)
    if expr is sp.false:
        return sp.Integer(0)
    return expr


def read(path) -> SBMLModel:
    """Read an SBML file into an `SBMLModel`."""
    libsbml = _libsbml()
    path = Path(path)
    if not path.is_file():
        raise SBMLError(f"SBML file not found: {path}")
    doc = libsbml.readSBMLFromFile(str(path))
    errors = [doc.getError(i) for i in range(doc.getNumErrors())
              if doc.getError(i).getSeverity() >= libsbml.LIBSBML_SEV_ERROR]
    if errors:
        raise SBMLError(f"{path}: {errors[0].getMessage().strip()}")
    conv = libsbml.ConversionProperties()
    conv.addOption("expandFunctionDefinitions", True)
    if doc.convert(conv) != libsbml.LIBSBML_OPERATION_SUCCESS:
        raise SBMLError(f"{path}: its function definitions could not be expanded")
    model = doc.getModel()
    if model is None:
        raise SBMLError(f"{path} holds no SBML model")
    return _Reader(model, doc.getLevel(), doc.getVersion(), path).build()


class _Reader:
    def __init__(self, model, level, version, path):
        self.m, self.level, self.version, self.path = model, level, version, path

    def math(self, node, where: str) -> sp.Expr:
        if node is None:
            raise SBMLError(f"{self.path}: {where} has no math")
        try:
            return _math(node, self.level, self.version)
        except SBMLError as err:
            raise SBMLError(f"{self.path}: {where}: {err}") from None

    def unsupported(self):
        m = self.m
        for i in range(m.getNumRules()):
            r = m.getRule(i)
            if r.isAlgebraic():
                raise SBMLError(f"{self.path}: algebraic rules are not supported (rule {i})")
        for i in range(m.getNumReactions()):
            r = m.getReaction(i)
            if r.isSetFast() and r.getFast():
                raise SBMLError(f"{self.path}: fast reaction {r.getId()!r} is not supported")

    def build(self) -> SBMLModel:
        self.unsupported()
        m = self.m
        params, compartments = self.file_parameters()
        rate_rules, assign_rules = self.rules(compartments)
        initial_assign = {}
        for i in range(m.getNumInitialAssignments()):
            a = m.getInitialAssignment(i)
            initial_assign[a.getSymbol()] = self.math(
                a.getMath(), f"initial assignment of {a.getSymbol()!r}")
        species = [m.getSpecies(i) for i in range(m.getNumSpecies())]
        conc = {s.getId() for s in species if not s.getHasOnlySubstanceUnits()}
        sp_comp = {s.getId(): s.getCompartment() for s in species}
        states, start = self.states(species, conc, params, rate_rules, assign_rules)
        for sid, expr in initial_assign.items():
            if sid in start:
                start[sid] = expr
            elif sid in params:
                params[sid] = expr
            elif sid not in assign_rules:
                raise SBMLError(f"{self.path}: initial assignment to unknown symbol {sid!r}")

        rules = {_sym(k): v for k, v in assign_rules.items()}
        rhs = {sid: sp.Integer(0) for sid in states}
        for i in range(m.getNumReactions()):
            self.reaction(m.getReaction(i), rhs, rate_rules, conc, sp_comp, assign_rules,
                          initial_assign)
        rhs.update(rate_rules)

        subst = lambda e: _substitute(e, rules)  # noqa: E731
        params = {k: subst(v) for k, v in params.items()}
        params = _ordered(params, self.path)
        # an initial value may read other states' initial values and assignment rules
        start_syms = {_sym(k): subst(v) for k, v in start.items()}
        initial = [_substitute(start_syms[_sym(s)], start_syms) for s in states]
        for s, e in zip(states, initial, strict=True):
            if e.free_symbols & set(start_syms):
                raise SBMLError(f"{self.path}: the initial value of {s!r} depends on itself")
        expressions = {sid: _sym(sid) for sid in states}
        expressions.update({k: _sym(k) for k in params})
        expressions.update({k: subst(v) for k, v in assign_rules.items()})
        events = [TimedEvent(e.id, subst(e.trigger_time),
                             {k: subst(v) for k, v in e.assignments.items()}, e.initial_value)
                  for e in self.events(states)]
        return SBMLModel(
            id=m.getId(),
            state_ids=tuple(states),
            parameters=params,
            rhs=[subst(rhs[s]) for s in states],
            initial=initial,
            expressions=expressions,
            events=events,
        )

    def file_parameters(self) -> tuple[dict, set]:
        """Compartment sizes and parameter values as given in the file; the compartments."""
        m = self.m
        params: dict[str, sp.Expr] = {}
        compartments = set()
        for i in range(m.getNumCompartments()):
            c = m.getCompartment(i)
            params[c.getId()] = sp.Float(c.getSize() if c.isSetSize() else 1.0)
            compartments.add(c.getId())
        for i in range(m.getNumParameters()):
            p = m.getParameter(i)
            params[p.getId()] = sp.Float(p.getValue()) if p.isSetValue() else sp.nan
        return params, compartments

    def rules(self, compartments) -> tuple[dict, dict]:
        """`(rate rules, assignment rules)`: target id -> expression."""
        rate_rules, assign_rules = {}, {}
        for i in range(self.m.getNumRules()):
            r = self.m.getRule(i)
            expr = self.math(r.getMath(), f"rule for {r.getVariable()!r}")
            (rate_rules if r.isRate() else assign_rules)[r.getVariable()] = expr
        for c in rate_rules:
            if c in compartments:
                raise SBMLError(f"{self.path}: compartment {c!r} changes size (rate rule); "
                                "compartments of varying size are not supported")
        return rate_rules, assign_rules

    def states(self, species, conc, params, rate_rules, assign_rules) -> tuple[list, dict]:
        """The states and their initial values in the file; constant and boundary species
        join `params` (constant in time)."""
        states, start = [], {}
        for s in species:
            sid = s.getId()
            if sid in assign_rules:
                continue
            init = _species_start(s, sid in conc)
            if s.getConstant() or (s.getBoundaryCondition() and sid not in rate_rules):
                params[sid] = init
                continue
            states.append(sid)
            start[sid] = init
        for target in rate_rules:
            if target not in states:  # a parameter changed by a rate rule
                states.append(target)
                start[target] = params.pop(target, sp.nan)
        return states, start

    def reaction(self, r, rhs, rate_rules, conc, sp_comp, assign_rules, initial_assign):
        law = r.getKineticLaw()
        if law is None:
            raise SBMLError(f"{self.path}: reaction {r.getId()!r} has no kinetic law")
        rate = self.math(law.getMath(), f"kinetic law of reaction {r.getId()!r}")
        local = {}
        for j in range(law.getNumParameters()):
            lp = law.getParameter(j)
            local[_sym(lp.getId())] = sp.Float(lp.getValue())
        for j in range(law.getNumLocalParameters()):
            lp = law.getLocalParameter(j)
            local[_sym(lp.getId())] = sp.Float(lp.getValue())
        if local:
            rate = rate.xreplace(local)
        for refs, sign in ((r.getListOfReactants(), -1), (r.getListOfProducts(), 1)):
            for ref in refs:
                sid = ref.getSpecies()
                if sid not in rhs or sid in rate_rules:
                    continue  # constant, boundary or rule-driven species
                if ref.isSetId() and (ref.getId() in assign_rules
                                      or ref.getId() in initial_assign):
                    raise SBMLError(f"{self.path}: variable stoichiometry "
                                    f"{ref.getId()!r} is not supported")
                n = ref.getStoichiometry() if ref.isSetStoichiometry() else 1.0
                term = sign * sp.Float(n) * rate
                if sid in conc:
                    term = term / _sym(sp_comp[sid])
                rhs[sid] = rhs[sid] + term

    def events(self, state_ids) -> list[TimedEvent]:
        m = self.m
        out = []
        for i in range(m.getNumEvents()):
            ev = m.getEvent(i)
            name = ev.getId() or f"event {i}"
            if ev.isSetDelay():
                raise SBMLError(f"{self.path}: event {name!r} has a delay (not supported)")
            trig = self.math(ev.getTrigger().getMath(), f"trigger of event {name!r}")
            t_event = _trigger_time(trig)
            if t_event is None:
                raise SBMLError(
                    f"{self.path}: event {name!r} has trigger {trig}; only time-triggered "
                    "events (time >= expression of parameters) are supported")
            assigns = {}
            for j in range(ev.getNumEventAssignments()):
                a = ev.getEventAssignment(j)
                if a.getVariable() not in state_ids:
                    raise SBMLError(
                        f"{self.path}: event {name!r} assigns {a.getVariable()!r}, which is "
                        "not a state; only assignments to states are supported")
                assigns[a.getVariable()] = self.math(a.getMath(), f"event {name!r}")
            trigger = ev.getTrigger()
            initial = trigger.getInitialValue() if trigger.isSetInitialValue() else True
            out.append(TimedEvent(name, t_event, assigns, bool(initial)))
        return out


def _species_start(s, concentration: bool) -> sp.Expr:
    """A species' initial value in its state's unit (concentration or amount)."""
    size = _sym(s.getCompartment())
    if s.isSetInitialConcentration():
        v = sp.Float(s.getInitialConcentration())
        return v if concentration else v * size
    if s.isSetInitialAmount():
        v = sp.Float(s.getInitialAmount())
        return v / size if concentration else v
    return sp.nan


def _sym(name: str) -> sp.Symbol:
    return sp.Symbol(name, real=True)


def _ordered(params: dict, path) -> dict:
    """Parameters in dependency order (an initial assignment after what it reads)."""
    names = {_sym(k): k for k in params}
    done, out = set(), {}
    pending = dict(params)
    while pending:
        ready = [k for k, v in pending.items()
                 if not ({names[s] for s in v.free_symbols if s in names} - done - {k})]
        if not ready:
            raise SBMLError(f"{path}: initial assignments of {sorted(pending)} form a cycle")
        for k in ready:
            out[k] = pending.pop(k)
            done.add(k)
    return out


def time_thresholds(exprs) -> list:
    """The times at which `piecewise` or `Heaviside` conditions in `exprs` switch: each
    relation between `time` and an expression free of time, linear in time (`time > T`,
    `T - time >= 0`, ...), gives its `T`; without repeats, in sympy's canonical order (so
    that the same model gives the same list in every process)."""
    relations = []
    for e in exprs:
        for pw in e.atoms(sp.Piecewise):
            for _, cond in pw.args:
                relations.extend(cond.atoms(sp.core.relational.Relational))
        for h in e.atoms(sp.Heaviside):
            relations.append(sp.Gt(h.args[0], 0))
    out = []
    for rel in relations:
        if TIME not in rel.free_symbols:
            continue
        gap = sp.expand(rel.lhs - rel.rhs)
        slope = gap.diff(TIME)
        if slope.free_symbols or slope == 0:
            continue  # not linear in time
        threshold = sp.simplify(-gap.subs(TIME, 0) / slope)
        if threshold not in out:
            out.append(threshold)
    return sorted(out, key=sp.default_sort_key)


def _trigger_time(trig):
    """`T` for a trigger `time >= T` / `time > T` / `T <= time` / `T < time` (T free of
    time), else None."""
    if isinstance(trig, (sp.GreaterThan, sp.StrictGreaterThan)):
        lhs, rhs = trig.lhs, trig.rhs
    elif isinstance(trig, (sp.LessThan, sp.StrictLessThan)):
        lhs, rhs = trig.rhs, trig.lhs
    else:
        return None
    if lhs == TIME and TIME not in rhs.free_symbols:
        return rhs
    return None
