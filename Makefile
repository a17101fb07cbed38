# timematters: two commands on a fresh machine
#   make demo   set up, generate the synthetic benchmark, train baseline and +TIME on the CPU, print the table
#   make test   set up, run the test suite
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast demo clean

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

clean:
	rm -rf runs/demo
