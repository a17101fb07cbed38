# timematters: two commands on a fresh machine
#   make demo   set up, generate the synthetic benchmark, train baseline and +TIME on the CPU, print the table
#   make test   set up, run the test suite
#   make reproduce [QUICK=1]   the reproduction study (benchmarks/reproduce.py): docs/results.md + figures
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast demo reproduce clean

setup: $(STAMP)

# requirements.lock pins every package (transitive ones too) to the set the tests ran with.
$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (make setup uses Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c requirements.lock -e ".[test,torchcodec,hub,wandb]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q -ra tests

test-fast: setup
	$(PY) -m pytest -q -ra -m "not slow" tests

demo: setup
	$(VENV)/bin/timematters demo --out runs/demo

# Resumable: finished runs are kept in runs/reproduce (QUICK: runs/reproduce-quick) and skipped next time.
reproduce: setup
	$(PY) benchmarks/reproduce.py $(if $(QUICK),--quick)

clean:
	rm -rf runs/demo
