# make demo: run the SGL demo on tiny built-in models (CPU, seconds)
# make test: run the test suite
# Both build .venv first: pinned test requirements (CPU torch) before the package itself.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test clean

demo: $(VENV)/.installed
	$(BIN)/sgl-patch demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q tests

$(VENV)/.installed: requirements-test.txt pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -r requirements-test.txt
	$(BIN)/python -m pip install -e .
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info
