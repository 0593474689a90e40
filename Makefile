# provisioner: the two set-up commands of the README, and developer shortcuts.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: deps venv test test-unit lint demo lab-up lab-down bench vagrant-validate vagrant-smoke mutation

deps:
	scripts/install-system-deps.sh

$(PY): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(PY)

venv: $(PY)

# The whole test suite: unit tests, then the lab (real SSH hosts; needs root on Linux), then the
# real driver packages (Debian's DKMS build, cuda-keyring reuse) in a two-host lab of their own:
# they change their hosts in ways the end-to-end flow does not expect (tests/lab/test_real_driver.py),
# then the bundle round trip in another (it wipes the mirrors: tests/lab/test_bundle_lab.py).
test: deps venv lint
	$(PY) -m pytest -q -ra $(PYTEST_ARGS) tests
	LAB_REAL_DRIVER=1 LAB_HOSTS=gpu3,cpu1 $(PY) -m pytest -q -ra $(PYTEST_ARGS) -m lab \
		tests/lab/test_real_driver.py
	LAB_BUNDLE=1 LAB_HOSTS=gpu3,cpu1 $(PY) -m pytest -q -ra $(PYTEST_ARGS) -m lab \
		tests/lab/test_bundle_lab.py

# Fast unit tests only (no root, no lab).
test-unit: venv
	$(PY) -m pytest -q -m "not lab" $(PYTEST_ARGS) tests

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# Mutation testing of estimator, planner, gpu_stack and inventory ([tool.mutmut] in
# pyproject.toml; docs/testing.md): about 10-25 min on 2 cores. Results: mutants/, `mutmut results`.
MUTMUT_VERSION ?= 3.8.1
mutation: venv
	$(PY) -m pip install -q mutmut==$(MUTMUT_VERSION)
	rm -rf mutants
	nice -n 10 $(VENV)/bin/mutmut run --max-children $${MUTATION_JOBS:-2}
	$(PY) -m tests.mutation_report

lab-up: deps venv
	$(PY) -m tests.lab up

lab-down: venv
	$(PY) -m tests.lab down

# The main job on the built-in default: bring the lab up, provision it, verify it, tear it down.
demo: deps venv
	set -o pipefail; trap '$(PY) -m tests.lab down' EXIT; \
	$(PY) -m tests.lab up && \
	$(VENV)/bin/provision plan inventories/lab.py && \
	$(VENV)/bin/provision apply inventories/lab.py && \
	$(VENV)/bin/provision verify inventories/lab.py

bench: deps venv
	$(PY) -m bench

# `vagrant validate` of the Vagrantfile (installs Debian's vagrant without recommends).
vagrant-validate:
	scripts/vagrant-validate.sh

# The Vagrant smoke run: vagrant up -> provision apply -> provision verify -> vagrant destroy -f.
vagrant-smoke: venv
	scripts/vagrant-smoke.sh
