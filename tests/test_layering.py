"""The package's import graph follows the layers of ARCHITECTURE.md: no cycles, no upward imports.

Every module under `probde/` is parsed with `ast` (nothing is imported), and every import
statement in it counts, at module level or inside a function, a method or an
`if TYPE_CHECKING:` block: an import deferred into a function still makes the lower layer
depend on the higher one. Relative imports are resolved against the importing module;
`from pkg import name` is an edge to the module `pkg.name` where that file exists, else to
`pkg`. Importing `a.b.c` also runs `a/__init__.py` and `a/b/__init__.py`; those implicit
parent-package edges are not counted (a package's `__init__` re-exporting its submodules
would otherwise make every sibling import a cycle).

Layers, bottom to top; a module may import its own layer and lower ones (`LAYERS` below):
private utilities (probde/_checks.py, _cache.py, _optim.py, ...) < dynamics < data
(observations, noise, design, datasets) < discrepancy < model (probde.model*, _sde_model)
< inference < checks, petab < the package's __init__.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import pathlib
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "probde"

# Bottom to top: (layer name, predicate on the dotted module name). A module belongs to the
# highest layer whose predicate it matches (so probde._sde_model is "model", not "utilities").
LAYERS: list[tuple[str, object]] = [
    # private bottom utilities: probde/_checks.py, _cache.py, _optim.py, ...
    ("utilities", lambda m: m.count(".") == 1 and m.split(".")[1].startswith("_")),
    ("dynamics", lambda m: _under(m, "probde.dynamics")),
    # datasets build TimeSeries, so they sit with the data layer
    ("data", lambda m: _under(m, "probde.observations", "probde.noise", "probde.design",
                              "probde.datasets")),
    ("discrepancy", lambda m: _under(m, "probde.discrepancy")),
    # probde.model (a module today, a package soon) and anything named probde.model*;
    # _sde_model.py is the SDE half of the model's program
    ("model", lambda m: m.startswith("probde.model") or m == "probde._sde_model"),
    ("inference", lambda m: _under(m, "probde.inference")),
    ("checks/petab", lambda m: _under(m, "probde.checks", "probde.petab")),
    # the package's __init__: may import anything
    ("package", lambda m: m == "probde"),
]
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}


def _under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layer_of(module: str) -> str | None:
    for name, rule in reversed(LAYERS):  # the highest matching layer
        if rule(module):
            return name
    return None


# ----------------------------------------------------------------------------- graph code


@dataclasses.dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module
    path: str  # file of the importing module, relative to the repository
    line: int
    statement: str  # the import as written
    where: str  # "top level" or "in <function>"


def module_name(path: pathlib.Path, root: pathlib.Path) -> tuple[str, bool]:
    """Dotted name of a source file below `root`, and whether it is a package `__init__`."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _resolve_base(module: str, is_package: bool, level: int, name: str | None) -> str:
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level > len(parts):
        raise ValueError(f"{module}: relative import beyond the top-level package")
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([name] if name else []))


class _ImportVisitor(ast.NodeVisitor):
    def __init__(self, module, is_package, path, known, package):
        self.module, self.is_package, self.path = module, is_package, path
        self.known, self.package = known, package
        self.scope: list[str] = []
        self.edges: list[Edge] = []

    def _scoped(self, node):
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def _add(self, node, target):
        if target != self.package and not target.startswith(self.package + "."):
            return  # a third-party or standard-library import
        where = "in " + ".".join(self.scope) if self.scope else "top level"
        edge = Edge(self.module, target, self.path, node.lineno, ast.unparse(node), where)
        if edge not in self.edges:  # `from .m import a, b` is one edge
            self.edges.append(edge)

    def visit_Import(self, node):
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node):
        if node.level:
            base = _resolve_base(self.module, self.is_package, node.level, node.module)
        else:
            base = node.module or ""
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            # `from pkg import sub` imports the submodule where one exists, else a name in pkg
            self._add(node, sub if sub in self.known else base)


def import_edges(sources: dict[str, tuple[str, bool, str]], package: str) -> list[Edge]:
    """Edges between the modules of `sources`: {dotted name: (source text, is_package, path)}.
    Self-edges (a package's `__init__` importing names from itself) are dropped."""
    known = set(sources)
    edges = []
    for module, (source, is_package, path) in sorted(sources.items()):
        visitor = _ImportVisitor(module, is_package, path, known, package)
        visitor.visit(ast.parse(source, filename=path))
        edges += [e for e in visitor.edges if e.target != e.source]
    return edges


def read_package(root: pathlib.Path, package: str) -> dict[str, tuple[str, bool, str]]:
    sources = {}
    for path in sorted((root / package).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        name, is_package = module_name(path, root)
        if name in sources and not is_package:
            continue  # a package and a module of one name: Python imports the package
        sources[name] = (path.read_text(), is_package, str(path.relative_to(root)))
    return sources


def find_cycles(edges: list[Edge]) -> list[tuple[list[str], set[str]]]:
    """For each strongly connected component of more than one module (Tarjan's algorithm):
    a shortest cycle through its smallest module name, as a closed path [a, b, ..., a], and
    the component (every module on some cycle with a)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def connect(v):  # recursive Tarjan; the package has well under 1000 modules
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)

    cycles = []
    for component in sorted(components, key=min):
        start = min(component)
        # breadth-first search inside the component for the shortest way back to start
        parent, frontier, found = {start: None}, [start], None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & component):
                    if w == start:
                        found = v
                        break
                    if w not in parent:
                        parent[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path, v = [], found
        while v is not None:
            path.append(v)
            v = parent[v]
        cycles.append((path[::-1] + [start], component))  # [start, ..., found, start]
    return cycles


def upward_imports(edges: list[Edge]) -> list[tuple[Edge, str, str]]:
    bad = []
    for e in edges:
        src, dst = layer_of(e.source), layer_of(e.target)
        if src is not None and dst is not None and RANK[dst] > RANK[src]:
            bad.append((e, src, dst))
    return bad


def describe_edges(edges: list[Edge], source: str, target: str) -> str:
    return "; ".join(f"{e.path}:{e.line} ({e.where}) `{e.statement}`"
                     for e in edges if e.source == source and e.target == target)


def cycle_report(edges: list[Edge]) -> list[str]:
    lines = []
    for cycle, component in find_cycles(edges):
        lines.append("cycle: " + " -> ".join(cycle))
        on_path = set(itertools.pairwise(cycle))
        for a, b in itertools.pairwise(cycle):
            lines.append(f"    {a} -> {b}: {describe_edges(edges, a, b)}")
        others = sorted({(e.source, e.target) for e in edges
                         if e.source in component and e.target in component} - on_path)
        if others:  # the component has more cycles than the one shown
            lines.append("  other imports among " + ", ".join(sorted(component)) + ":")
            lines += [f"    {a} -> {b}: {describe_edges(edges, a, b)}" for a, b in others]
    return lines


def upward_report(edges: list[Edge]) -> list[str]:
    return [f"{e.source} ({src}) imports {e.target} ({dst}) at {e.path}:{e.line} "
            f"({e.where}): `{e.statement}`" for e, src, dst in upward_imports(edges)]


# ----------------------------------------------------------------------------- the package


@pytest.fixture(scope="module")
def sources():
    found = read_package(ROOT, PACKAGE)
    assert "probde" in found and "probde.dynamics" in found, "probde/ not found"
    return found


@pytest.fixture(scope="module")
def edges(sources):
    return import_edges(sources, PACKAGE)


def test_every_module_has_a_layer(sources, edges):
    names = set(sources) | {e.target for e in edges}
    missing = sorted(m for m in names if layer_of(m) is None)
    if missing:
        pytest.fail("modules without a layer (add a rule to LAYERS in tests/test_layering.py, "
                    "after deciding where they belong in ARCHITECTURE.md's layers): "
                    + ", ".join(missing), pytrace=False)


def test_no_import_cycles(edges):
    report = cycle_report(edges)
    if report:
        pytest.fail("import cycles between probde modules:\n" + "\n".join(report), pytrace=False)


def test_no_upward_imports(edges):
    report = upward_report(edges)
    if report:
        pytest.fail(f"{len(report)} upward import(s); layers bottom to top are "
                    + " < ".join(name for name, _ in LAYERS) + ":\n" + "\n".join(report),
                    pytrace=False)


# ----------------------------------------------------------------------------- self-test

FAKE = {  # dotted name: (is_package, source)
    "probde": (True, "from . import noise\nfrom .inference import NUTS, infer\n"),
    "probde._checks": (False, "import numpy\n"),
    "probde.noise": (False, "from ._checks import describe\n"),
    "probde.dynamics": (True, "from .ode import ODE\n"),
    "probde.dynamics.ode": (False, "from .. import _checks\n"),
    "probde.model": (False, textwrap.dedent("""
        from .dynamics.ode import ODE
        def later():
            from .inference.failures import report   # upward, deferred into a function
        """)),
    "probde._sde_model": (False, textwrap.dedent("""
        class A:
            def f(self):
                from .model import X                  # closes model -> failures -> _sde_model
        """)),
    "probde.inference": (True, "from .infer import infer\n"),
    "probde.inference.infer": (False, "from ..model import Model\nimport probde.noise\n"),
    "probde.inference.failures": (False, "from .. import _sde_model\n"),
}


def _fake_edges():
    sources = {name: (src, is_pkg, name.replace(".", "/") + ("/__init__.py" if is_pkg else ".py"))
               for name, (is_pkg, src) in FAKE.items()}
    return import_edges(sources, PACKAGE)


def test_self_test_resolves_imports():
    pairs = {(e.source, e.target) for e in _fake_edges()}
    assert ("probde.dynamics.ode", "probde._checks") in pairs  # `from .. import _checks`
    assert ("probde.model", "probde.inference.failures") in pairs  # inside a function
    assert ("probde._sde_model", "probde.model") in pairs  # inside a method
    assert ("probde.inference.infer", "probde.noise") in pairs  # absolute `import`
    assert ("probde", "probde.noise") in pairs  # `from . import noise` in a package
    assert ("probde", "probde.inference") in pairs  # a name (NUTS) from a package
    assert ("probde", "probde.inference.infer") in pairs  # a submodule of that name exists
    assert not any(t.startswith("numpy") for _, t in pairs)


def test_self_test_finds_the_cycle_and_the_upward_import():
    edges = _fake_edges()
    cycles = [cycle for cycle, _ in find_cycles(edges)]
    assert cycles == [["probde._sde_model", "probde.model", "probde.inference.failures",
                       "probde._sde_model"]], cycles
    report = cycle_report(edges)
    assert any("probde/model.py:4 (in later)" in line for line in report), report
    upward = upward_report(edges)
    assert len(upward) == 1 and upward[0].startswith(
        "probde.model (model) imports probde.inference.failures (inference)"), upward


def test_self_test_passes_a_clean_graph():
    edges = [e for e in _fake_edges() if e.source not in ("probde.model", "probde._sde_model")]
    assert find_cycles(edges) == [] and upward_report(edges) == []


def test_self_test_layers_of_names():
    expected = {
        "probde._checks": "utilities", "probde._optim": "utilities",
        "probde.dynamics.sde": "dynamics", "probde.datasets": "data", "probde.noise": "data",
        "probde.discrepancy.gp": "discrepancy", "probde.model": "model",
        "probde.model.parts": "model", "probde._sde_model": "model",
        "probde.inference.svi": "inference", "probde.checks.sbc": "checks/petab",
        "probde.petab": "checks/petab", "probde": "package", "probde.somewhere_new": None,
    }
    assert {m: layer_of(m) for m in expected} == expected


def test_probde_works_when_arviz_was_imported_first():
    # arviz_base loads numpyro lazily (lazy_loader); imported before numpyro, numpyro's
    # submodules were then not attributes of their packages and numpyro.factor, which every
    # probde model calls, failed. A fresh process, since this test's numpyro is loaded.
    import subprocess
    import sys

    code = (
        "import arviz, jax.numpy as jnp, numpyro.distributions as dist, probde\n"
        "ode = probde.ODE(lambda t, y, th: -th['k'] * y, state_names=('x',))\n"
        "m = probde.Model(ode, {'k': dist.LogNormal(0.0, 0.5)}, jnp.array([1.0]),\n"
        "                 probde.noise.Normal(sigma=0.05))\n"
        "d = probde.TimeSeries([0.0, 1.0, 2.0], [1.0, 0.6, 0.37], observables=('x',))\n"
        "print(float(probde.log_likelihood(m, d, {'k': 0.5})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout.strip().splitlines()[-1]) < 10.0


def test_import_probde_loads_no_plotting_package():
    # The checks and results call arviz_stats and arviz_base; `import arviz` would also load
    # arviz_plots and matplotlib's pyplot (about 0.5 s of every import). Plots load them
    # when drawn. A fresh process, since this one has them loaded.
    import subprocess
    import sys

    code = ("import sys, probde\n"
            "print(sorted(m for m in ('arviz', 'arviz_plots', 'matplotlib.pyplot')"
            " if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
