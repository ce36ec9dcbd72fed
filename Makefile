# Entry points for a fresh machine (see README):
#   make demo   set up .venv, install probde, run the lynx-hare calibration -> results/lynx_hare/
#   make check  same set-up, run the fast tier of the tests (what tests/tiers.py and
#               @pytest.mark.slow leave out is skipped), a file per worker process, one
#               worker per core up to 4 (pytest-xdist)
#   make test   same set-up, run the test suite but its long checks (one process per test
#               file, one file per core at a time, see tests/run_isolated.py; the long
#               checks are listed in tests/tiers.py's LONG) and build the docs strictly (CI)
#   make test-all  the same with the long checks
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo check test test-all install docs bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 12), f"probde needs Python >= 3.12; {sys.executable} is {sys.version.split()[0]} (pyenv install 3.12, or PYTHON=python3.12 make ...)"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,docs]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) case_studies/lynx_hare/run.py --out results/lynx_hare

check: $(STAMP)
	$(PY) -m pytest --check-tier --numprocesses=auto --maxprocesses=4 --dist=loadfile --durations=10

test: $(STAMP)
	$(PY) tests/run_isolated.py --skip-long --durations=10
	$(VENV)/bin/mkdocs build --strict --site-dir site

test-all: $(STAMP)
	$(PY) tests/run_isolated.py --durations=10
	$(VENV)/bin/mkdocs build --strict --site-dir site

docs: $(STAMP)
	$(VENV)/bin/mkdocs serve

bench: $(STAMP)
	$(PY) benchmarks/lynx_hare.py

clean:
	rm -rf $(VENV) site results .pytest_cache
