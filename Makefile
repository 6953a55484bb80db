# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test check bench clean

$(BIN)/l7switch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: $(BIN)/l7switch
	$(BIN)/l7switch demo

test: $(BIN)/l7switch
	$(BIN)/python -m pytest -q

check: $(BIN)/l7switch
	$(BIN)/l7switch check rules/demo.yaml

bench: $(BIN)/l7switch
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info
