# The README's two commands: `make demo` (the main job) and `make test` (the whole suite).
# Both create or reuse .venv and install what they need; nothing else is required on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo_out

.PHONY: demo test lint venv clean

$(VENV)/.stamp-base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[text,logging,export,vision,serve]"
	touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-base
	$(PY) -m pip install -q -e ".[dev,text,logging,export,vision,serve]"
	touch $@

venv: $(VENV)/.stamp-dev

demo: $(VENV)/.stamp-base
	$(VENV)/bin/langground demo --out $(DEMO_OUT)

test: $(VENV)/.stamp-dev
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest

lint: $(VENV)/.stamp-dev
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .ruff_cache
