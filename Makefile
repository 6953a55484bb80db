# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test typecheck test-pure test-sockets check bench screenshots clean

$(BIN)/l7switch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: $(BIN)/l7switch
	$(BIN)/l7switch demo

# Everything CI runs: types, then the pure tests (seconds), then the socket tests.
test: typecheck test-pure test-sockets

typecheck: $(BIN)/l7switch
	$(BIN)/mypy

test-pure: $(BIN)/l7switch
	$(BIN)/python -m pytest -q tests/pure

test-sockets: $(BIN)/l7switch
	$(BIN)/python -m pytest -q tests/sockets

check: $(BIN)/l7switch
	$(BIN)/l7switch check rules/demo.yaml

bench: $(BIN)/l7switch
	$(BIN)/python bench/run.py

# The monitor's pictures in README (needs chromium and chromedriver, as the browser tests do).
screenshots: $(BIN)/l7switch
	$(BIN)/python -m l7switch.devtools.screenshots --out docs

clean:
	rm -rf $(VENV) build *.egg-info
