# Every target does its own set-up from nothing but python3.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# The newest CPython on the machine (3.12+ changed exit hooks; free-threaded builds
# change what is atomic): the ring and lifecycle tests run on it too.
NEWEST_PYTHON ?= $(shell bash tools/newest-python)
NEWEST_VENV   ?= .venv-newest

.PHONY: all venv lint typecheck unit test test-newest demo bench fuzz clean

all: test

# The bench extra too: mypy checks the benchmarks against the peers they import.
$(VENV)/.installed: pyproject.toml setup.py src/conveyor/client/_speedups.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check src tests bench tools examples fuzz
	$(VENV)/bin/ruff format --check src tests bench tools examples fuzz

typecheck: venv
	$(VENV)/bin/mypy

unit: venv
	$(PY) -m pytest

$(NEWEST_VENV)/.installed: pyproject.toml setup.py src/conveyor/client/_speedups.c
	@test -n "$(NEWEST_PYTHON)" || { echo "no CPython 3.12+ found (see tools/newest-python)"; exit 1; }
	$(NEWEST_PYTHON) -m venv $(NEWEST_VENV)
	$(NEWEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(NEWEST_VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $@

# Again on the newest interpreter: the ring's and the lifecycle's tests, the
# dispatcher's (it owns threads too) and the C fast paths' (built against that
# interpreter's C API).
test-newest: $(NEWEST_VENV)/.installed
	$(NEWEST_VENV)/bin/python -VV
	$(NEWEST_VENV)/bin/python -m pytest tests/ring tests/lifecycle tests/delivery tests/client/test_speedups.py

test: lint typecheck unit test-newest

# The demo extra (gunicorn, celery...), once per venv; then the whole-pipeline demo.
$(VENV)/.demo-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[demo]'
	touch $@

demo: $(VENV)/.demo-installed
	$(PY) -m conveyor demo

bench: venv
	$(PY) bench/ring/pipeline.py
	$(PY) bench/ring/handoff.py
	$(PY) bench/client/hot_path.py
	$(PY) bench/client/end_to_end.py
	$(PY) bench/client/interference.py
	$(PY) bench/client/queue_choice.py
	$(PY) bench/delivery/delivery.py
	$(PY) bench/agent/models.py
	$(PY) bench/agent/ingest.py

# Coverage-guided fuzzing of the agent's network input (docs/agent.md, "Fuzzing");
# corpus and crashes in build/fuzz/. FUZZ_SECONDS=N for a longer run.
FUZZ_SECONDS ?= 300
fuzz: venv
	$(PY) fuzz/agent_fuzz.py --seconds $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) $(NEWEST_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
