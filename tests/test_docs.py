"""Every ```python block of README.md and docs/ runs, so the docs cannot drift from the code.

One test per page. The blocks of a page run in order in one namespace (a later block uses
what an earlier one defined), in a fresh temporary working directory, so the files they
write (`fit.png`, `idata.nc`) land there. Figures are drawn with matplotlib's Agg backend.

- A block whose first line starts with `>>>` runs as a doctest (ELLIPSIS and
  NORMALIZE_WHITESPACE, as for the docstrings): its printed output is checked.
- Any other block runs as a script.
- A line `--8<-- "path"` or `--8<-- "path:section"` (pymdownx.snippets, as mkdocs renders
  it) is replaced by that file of the repository, or by the lines between its
  `--8<-- [start:section]` and `--8<-- [end:section]` markers. A section runs where it was
  cut from: the rest of its file is run first (its definitions join the page's namespace),
  since an excerpt such as a model-building function uses the file's imports and
  constants.
- A page whose code configures JAX's devices (`numpyro.set_host_device_count`, which works
  only before JAX starts) runs in a fresh Python process, as a script would, without
  conftest.py's device setting, and must end with the devices it asked for. These
  processes start with the first page's test and run while the other pages run here
  (float64 and 4 CPU devices from conftest.py; the JAX settings a page changes are put
  back after it).
- Warnings are errors, as in the rest of the suite (pyproject's `filterwarnings`).
- Text that is not Python (a shell command, printed output) is fenced with its own
  language (```bash, ```text). A Python block that cannot run here (a signature with
  placeholders, a case study's run of many minutes) is skipped only when an HTML comment
  `<!-- docs-test: skip: REASON -->` stands right before its fence; a skip without a
  reason, or one before nothing to skip, is an error.
- A block that runs a deliberately short sampler (a page that says so) may be marked
  `<!-- docs-test: allow probde.ConvergenceWarning: REASON -->` right before its fence:
  that warning class (a dotted name) is then not an error in that block; any other
  warning still is.

Heavy examples are not shortened here: the pages themselves use short runs where the full
run would add nothing to what they teach, and say what the full run takes.

`python tests/test_docs.py PAGE` runs one page in the current directory, as the tests do.
"""

import doctest
import linecache
import os
import pathlib
import re
import runpy
import subprocess
import sys
import textwrap
import time
import tomllib
import warnings
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
SKIP = re.compile(r"^\s*<!--\s*docs-test:\s*skip\b:?\s*(?P<why>.*?)\s*-->\s*$")
ALLOW = re.compile(
    r"^\s*<!--\s*docs-test:\s*allow\s+(?P<warning>[\w.]+):\s*(?P<why>\S.*?)\s*-->\s*$")
SNIPPET = re.compile(
    r"""^(?P<indent>\s*)--8<--\s+["'](?P<path>[^"':]+)(?::(?P<section>[\w-]+))?["']\s*$""")
FRESH_PROCESS = re.compile(r"\bset_host_device_count\s*\(")
DOCTEST_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@dataclass(frozen=True)
class Block:
    page: pathlib.Path
    line: int  # 1-based line of the opening fence
    source: str  # dedented, snippets expanded
    contexts: tuple[pathlib.Path, ...]  # files whose sections the block includes
    skip: str | None  # the reason, when skipped
    allow: str | None = None  # a warning class (dotted name) that is not an error here

    @property
    def where(self) -> str:
        return f"{_rel(self.page)}:{self.line}"

    @property
    def is_doctest(self) -> bool:
        stripped = self.source.lstrip()
        return stripped.startswith(">>>")


def _rel(path: pathlib.Path) -> str:
    return os.path.relpath(path, ROOT)


def _section(path: pathlib.Path, name: str) -> str:
    lines = path.read_text().splitlines()
    start = end = None
    for i, line in enumerate(lines):
        if re.search(rf"--8<--\s*\[start:{re.escape(name)}\]", line):
            start = i
        elif re.search(rf"--8<--\s*\[end:{re.escape(name)}\]", line):
            end = i
    if start is None or end is None or end < start:
        raise ValueError(f"{_rel(path)} has no section {name!r}")
    return textwrap.dedent("\n".join(lines[start + 1 : end]))


def _expand(source: str) -> tuple[str, tuple[pathlib.Path, ...]]:
    """Replace `--8<--` lines by the file or section they name (relative to the repository
    root, as mkdocs.yml's snippets base_path)."""
    out, contexts = [], []
    for line in source.splitlines():
        match = SNIPPET.match(line)
        if not match:
            out.append(line)
            continue
        path = ROOT / match["path"]
        if match["section"]:
            text = _section(path, match["section"])
            if path not in contexts:
                contexts.append(path)
        else:
            text = path.read_text()
        out.append(textwrap.indent(text, match["indent"]))
    return "\n".join(out) + "\n", tuple(contexts)


def extract(page: pathlib.Path) -> list[Block]:
    """The ```python blocks of a Markdown page, in order (also those indented in a list
    item or an admonition)."""
    lines = page.read_text().splitlines()
    directives = {k for k, line in enumerate(lines) if "docs-test:" in line}
    blocks, used, i = [], set(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, info = match["indent"], match["fence"], match["info"].lower()
        close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            j += 1
        if j == len(lines):
            raise ValueError(f"{_rel(page)}:{i + 1}: unclosed code fence")
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        skip = SKIP.match(lines[k]) if k in directives else None
        allow = ALLOW.match(lines[k]) if k in directives else None
        if allow:
            used.add(k)
        if skip:
            used.add(k)
            if not skip["why"]:
                raise ValueError(f"{_rel(page)}:{k + 1}: a docs-test skip must say why: "
                                 "<!-- docs-test: skip: REASON -->")
        if info in ("python", "py", "pycon"):
            body = [ln[len(indent):] if ln.startswith(indent) else ln.lstrip()
                    for ln in lines[i + 1 : j]]
            source, contexts = _expand(textwrap.dedent("\n".join(body)))
            blocks.append(Block(page, i + 1, source, contexts, skip["why"] if skip else None,
                                allow["warning"] if allow else None))
        elif skip or allow:
            raise ValueError(f"{_rel(page)}:{k + 1}: a docs-test skip before a ```{info} "
                             "block, which does not run anyway")
        i = j + 1
    for k in sorted(directives - used):
        raise ValueError(f"{_rel(page)}:{k + 1}: a docs-test comment must be "
                         "'<!-- docs-test: skip: REASON -->' or '<!-- docs-test: allow "
                         "WARNING: REASON -->' right before a ```python block")
    return blocks


def _run_block(block: Block, namespace: dict) -> None:
    filename = f"<{block.where}>"
    lines = block.source.splitlines(keepends=True)
    linecache.cache[filename] = (len(block.source), None, lines, filename)
    if block.is_doctest:
        test = doctest.DocTestParser().get_doctest(block.source, namespace, block.where,
                                                   filename, 0)
        report: list[str] = []
        runner = doctest.DocTestRunner(optionflags=DOCTEST_FLAGS)
        runner.run(test, out=report.append, clear_globs=False)
        namespace.update(test.globs)  # doctest ran on a copy: later blocks see its names
        if runner.failures:
            raise AssertionError(f"doctest failed in the block at {block.where}:\n"
                                 + "".join(report))
    else:
        exec(compile(block.source, filename, "exec", dont_inherit=True), namespace)


def run_page(page: pathlib.Path, log=print) -> dict:
    """Run every block of `page` in one namespace, in the current directory; returns the
    namespace."""
    import matplotlib

    matplotlib.use("Agg")
    import jax
    import matplotlib.pyplot as plt

    namespace: dict = {"__name__": "__main__"}
    contexts_run: set[pathlib.Path] = set()
    settings = dict(jax.config.values)
    sys_path, modules = list(sys.path), set(sys.modules)
    page_start = time.perf_counter(), time.process_time()
    try:
        for block in extract(page):
            if block.skip:
                log(f"{block.where}: skipped ({block.skip})")
                continue
            start = time.perf_counter(), time.process_time()
            for context in block.contexts:
                if context not in contexts_run:
                    file_namespace = runpy.run_path(str(context), run_name="docs_context")
                    for name, value in file_namespace.items():
                        if not name.startswith("__"):
                            namespace.setdefault(name, value)
                    contexts_run.add(context)
            with warnings.catch_warnings():
                if block.allow:
                    warnings.filterwarnings("ignore", category=_warning_class(block.allow))
                _run_block(block, namespace)
            log(f"{block.where}: {_elapsed(start)}")
        log(f"{_rel(page)}: {_elapsed(page_start)}")
        return namespace
    finally:
        plt.close("all")
        _restore(settings)
        # the case studies' files put their folder on sys.path and import from it
        sys.path[:] = sys_path
        for name in set(sys.modules) - modules:
            if (ROOT / "case_studies") in pathlib.Path(
                    getattr(sys.modules[name], "__file__", None) or "/").parents:
                del sys.modules[name]


def _warning_class(dotted: str) -> type:
    import importlib

    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _elapsed(start: tuple[float, float]) -> str:
    wall, cpu = time.perf_counter() - start[0], time.process_time() - start[1]
    return f"{wall:.1f} s ({cpu:.1f} s CPU)"


def _restore(settings: dict) -> None:
    """Put back the JAX settings a page changed (`jax.config.update`, and those of
    `probde.compilation_cache`), so that it cannot change the tests after it."""
    import jax

    changed = [k for k, v in jax.config.values.items() if k in settings and settings[k] != v]
    for name in changed:
        jax.config.update(name, settings[name])
    if any("compilation_cache" in name for name in changed):
        from jax.experimental.compilation_cache import compilation_cache

        compilation_cache.reset_cache()


def _strict_warnings() -> None:
    """pyproject's filterwarnings, for a page run outside pytest."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entries = config["tool"]["pytest"]["ini_options"].get("filterwarnings", [])
    for entry in entries:
        action, message, category, *_ = [*entry.split(":"), "", "", ""]
        category_class = Warning
        if category:
            module, _, name = category.rpartition(".")
            category_class = getattr(__import__(module or "builtins"), name)
        warnings.filterwarnings(action, message=re.escape(message), category=category_class)


def _fresh_process(page: pathlib.Path, cwd: pathlib.Path) -> subprocess.Popen:
    """Start `python tests/test_docs.py PAGE` in `cwd`; its output goes to files there."""
    env = dict(os.environ, MPLBACKEND="Agg")
    # conftest.py's own set_host_device_count is in XLA_FLAGS; the page must make its own
    xla_flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "",
                       env.pop("XLA_FLAGS", "")).strip()
    if xla_flags:
        env["XLA_FLAGS"] = xla_flags
    with open(cwd / "stdout.txt", "w") as out, open(cwd / "stderr.txt", "w") as err:
        return subprocess.Popen([sys.executable, __file__, str(page)], cwd=cwd, env=env,
                                stdout=out, stderr=err)


def _finish(proc: subprocess.Popen, page: pathlib.Path, cwd: pathlib.Path) -> str:
    try:
        proc.wait(timeout=1800)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stdout, stderr = (cwd / "stdout.txt").read_text(), (cwd / "stderr.txt").read_text()
    assert proc.returncode == 0, (
        f"{_rel(page)} failed in a fresh process:\n{stdout[-4000:]}\n{stderr[-8000:]}")
    return stdout


def _run_in_fresh_process(page: pathlib.Path, cwd: pathlib.Path) -> str:
    return _finish(_fresh_process(page, cwd), page, cwd)


def _needs_fresh_process(page: pathlib.Path) -> bool:
    return any(FRESH_PROCESS.search(b.source) for b in extract(page) if not b.skip)


def _page_id(page: pathlib.Path) -> str:
    return _rel(page)


def _check_devices(page: pathlib.Path) -> None:
    """A page that asks for `set_host_device_count(n)` gets n devices (it called it before
    JAX started), so its chains can run in parallel as it says."""
    import jax

    asked = {int(n) for b in extract(page) if not b.skip
             for n in re.findall(r"set_host_device_count\(\s*(\d+)\s*\)", b.source)}
    for n in asked:
        assert jax.local_device_count() == n, (
            f"{_rel(page)} asks for {n} CPU devices but JAX has {jax.local_device_count()}: "
            "set_host_device_count must run before JAX starts")


if __name__ == "__main__":
    _strict_warnings()
    page = pathlib.Path(sys.argv[1]).resolve()
    run_page(page)
    _check_devices(page)
    sys.exit(0)



# The pages that need a fresh process go last, and start in the background with the first
# page's test: on two cores they run while the others run here.
ORDERED = sorted(PAGES, key=_needs_fresh_process)


@pytest.fixture(scope="module")
def fresh_runs(request, tmp_path_factory):
    """The fresh processes of the selected pages that need one, started at once:
    page -> (process, working directory). Those not awaited are stopped at the end."""
    selected = {item.callspec.params["page"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_page_runs"}
    runs = {}
    for page in ORDERED:
        if page in selected and _needs_fresh_process(page):
            cwd = tmp_path_factory.mktemp(page.stem)
            runs[page] = (_fresh_process(page, cwd), cwd)
    yield runs
    for proc, _ in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("page", ORDERED, ids=_page_id)
def test_page_runs(page, tmp_path, monkeypatch, fresh_runs):
    if page in fresh_runs:
        proc, cwd = fresh_runs[page]
        print(_finish(proc, page, cwd))
        return
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    run_page(page)


# ------------------------------------------------------------------ the runner itself


def _page(tmp_path, text: str) -> pathlib.Path:
    page = tmp_path / "page.md"
    page.write_text(textwrap.dedent(text))
    return page


def test_runner_runs_python_blocks_as_the_site_shows_them(tmp_path, monkeypatch):
    page = _page(tmp_path, """\
        ```bash
        exit 1
        ```
        - in a list item:

            ```python
            x = 1
            ```

        !!! note
            ```python
            >>> x + 1
            2

            ```

        <!-- docs-test: skip: refers to a name nobody defines -->
        ```python
        undefined_name
        ```

        ```python
        --8<-- "case_studies/_common.py:svi"
        ```
        """)
    blocks = extract(page)
    assert [b.line for b in blocks] == [6, 11, 18, 22]
    assert [b.is_doctest for b in blocks] == [False, True, False, False]
    assert blocks[2].skip == "refers to a name nobody defines"
    assert blocks[3].contexts == (ROOT / "case_studies" / "_common.py",)
    monkeypatch.chdir(tmp_path)
    namespace = run_page(page, log=lambda _: None)
    assert namespace["x"] == 1
    assert namespace["SVI_OPTIONS"]["guide"] == "multivariate_normal"  # the section
    assert callable(namespace["parse_args"])  # the rest of its file, run first


def test_runner_fails_on_wrong_output_and_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError, match="doctest failed"):
        run_page(_page(tmp_path, """\
            ```python
            >>> 1 + 1
            3
            ```
            """), log=lambda _: None)
    with pytest.raises(NameError):
        run_page(_page(tmp_path, """\
            ```python
            undefined_name
            ```
            """), log=lambda _: None)


def test_an_allowed_warning_class_is_not_an_error_in_its_block_only(tmp_path, monkeypatch):
    import probde

    monkeypatch.chdir(tmp_path)
    allowed = """\
        <!-- docs-test: allow probde.ConvergenceWarning: a short run on purpose -->
        ```python
        import warnings, probde
        warnings.warn("short", probde.ConvergenceWarning)
        ```
        """
    assert extract(_page(tmp_path, allowed))[0].allow == "probde.ConvergenceWarning"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_page(_page(tmp_path, allowed), log=lambda _: None)
        with pytest.raises(UserWarning, match="other"):  # another class still fails
            run_page(_page(tmp_path, allowed.replace(
                "warnings.warn(\"short\", probde.ConvergenceWarning)",
                "warnings.warn(\"other\", UserWarning)")), log=lambda _: None)
        with pytest.raises(probde.ConvergenceWarning):  # and in the next block, this one
            run_page(_page(tmp_path, allowed + """\

                ```python
                warnings.warn("short", probde.ConvergenceWarning)
                ```
                """), log=lambda _: None)


@pytest.mark.parametrize("text, message", [
    ("<!-- docs-test: skip -->\n```python\nx\n```\n", "must say why"),
    ("<!-- docs-test: skip: why -->\n```bash\nls\n```\n", "does not run anyway"),
    ("<!-- docs-test: skip: why -->\n\nprose\n", "right before a ```python block"),
    ("<!-- docs-test: allow probde.ConvergenceWarning -->\n```python\nx\n```\n",
     "right before a ```python block"),
    ("```python\nx = 1\n", "unclosed code fence"),
], ids=["skip-without-reason", "skip-before-bash", "skip-before-nothing",
        "allow-without-reason", "unclosed"])
def test_runner_refuses_unclear_markup(tmp_path, text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        extract(_page(tmp_path, text))


def test_fresh_process_page_gets_its_devices_only_if_it_asks_before_jax_starts(tmp_path):
    page = _page(tmp_path, """\
        ```python
        import jax

        jax.devices()  # JAX starts here

        import numpyro

        numpyro.set_host_device_count(3)  # too late
        ```
        """)
    with pytest.raises(AssertionError, match="asks for 3 CPU devices but JAX has 1"):
        _run_in_fresh_process(page, tmp_path)
