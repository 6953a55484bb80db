# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test typecheck test-pure test-sockets check bench screenshots clean compiled test-compiled

# The working tree is installed as pure Python (an edit takes effect at once); the compiled
# build (setup.py, mypyc) is made apart by `make compiled`.
DEV_INSTALL := L7SWITCH_PURE=1 $(BIN)/pip install -q -e

$(BIN)/l7switch: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(DEV_INSTALL) '.[test]'
	touch $@

# locust (and gevent) only when a load test asks for them: `make test` stays lighter.
$(BIN)/locust: $(BIN)/l7switch
	$(DEV_INSTALL) '.[load]'
	touch $@

run: $(BIN)/l7switch
	$(BIN)/l7switch demo

# Everything CI runs: types, then the pure tests (seconds), then the socket tests.
test: typecheck test-pure test-sockets

typecheck: $(BIN)/l7switch
	$(BIN)/mypy

test-pure: $(BIN)/l7switch
	$(BIN)/python -m pytest -q tests/pure

# The socket tests mostly wait (on timeouts, servers, clients): three at a time (pytest-xdist),
# each test file in one process, cut the run from ~135 s to ~55 s on two cores.
PARALLEL := -n 3 --dist loadfile

test-sockets: $(BIN)/l7switch
	$(BIN)/python -m pytest -q $(PARALLEL) tests/sockets

# The mypyc build in build/compiled (what `pip install .` makes where a C compiler is), and
# the whole suite run against it: CI runs both builds. `python -P` keeps the working directory
# (the source tree's pure package) off sys.path; the tests' subprocesses (run, ctl, workers)
# start from build/compiled too (tests/kit.py PACKAGE_ROOT).
COMPILED := build/compiled
$(COMPILED)/.built: $(BIN)/l7switch setup.py $(shell find l7switch -name '*.py')
	# setuptools keeps what it built in build/lib.* and would ship a module built before but no
	# longer listed in setup.py: start from nothing.
	rm -rf $(COMPILED) build/lib.* build/temp.* build/bdist.* build/__native* build/l7switch build/setup.py build/ops.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation --target $(COMPILED) .
	cp -r rules $(COMPILED)/rules  # the demo finds its rule file beside the package, as in the tree
	@ls $(COMPILED)/l7switch/proxy/exchange*.so >/dev/null 2>&1 || { echo "make compiled: no compiled modules (see above)"; exit 1; }
	touch $@

compiled: $(COMPILED)/.built

test-compiled: $(COMPILED)/.built
	PYTHONPATH=$(COMPILED) $(BIN)/python -P -m pytest -q -p no:cacheprovider $(PARALLEL) tests/pure tests/sockets

check: $(BIN)/l7switch
	$(BIN)/l7switch check rules/demo.yaml

# `make load`: the demo under locust for LOAD_TIME with LOAD_USERS users (reports in
# loadtests/out/); LOAD_HOST=URL tests a switch already running there instead of starting the
# demo; LOAD_CLASSES="LoggedInUser Downloader" runs only those scenarios.
LOAD_TIME    ?= 60s
LOAD_USERS   ?= 50
LOAD_RATE    ?= 10
LOAD_PORT    ?= 8080
LOAD_HOST    ?=
LOAD_CLASSES ?=
LOAD_RUN      = $(BIN)/python loadtests/run.py --port $(LOAD_PORT)$(if $(LOAD_HOST), --host $(LOAD_HOST))

.PHONY: load load-smoke
load: $(BIN)/locust
	$(LOAD_RUN) --time $(LOAD_TIME) --users $(LOAD_USERS) --rate $(LOAD_RATE) --name load $(LOAD_CLASSES)

# CI's short pass: every scenario, a few users, 20 s (21 s with the demo's start and stop).
load-smoke: $(BIN)/locust
	$(LOAD_RUN) --time 20s --users 8 --rate 8 --name smoke

bench: $(BIN)/l7switch
	$(BIN)/python bench/run.py

# The monitor's pictures in README (needs chromium and chromedriver, as the browser tests do).
screenshots: $(BIN)/l7switch
	$(BIN)/python -m l7switch.devtools.screenshots --out docs

clean:
	rm -rf $(VENV) build *.egg-info
