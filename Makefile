# Everything a fresh machine needs: `make run` and `make test` create the
# virtual environment and install what they need from setup.cfg.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PY      = $(BIN)/python
ARGS   ?=

.PHONY: run test demo bench bench-deps clean venv

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $@

venv: $(VENV)/.installed

## run: start guardproxy (first run writes ./guardproxy.toml and prints a new key)
run: $(VENV)/.installed
	$(PY) -m guardproxy run $(ARGS)

## test: install the test dependencies and run the whole suite (both event loops)
test: $(VENV)/.installed-test
	$(PY) -m pytest -q $(ARGS)

## demo: a fake Ollama and guardproxy in front of it, walked through the checklist
demo: $(VENV)/.installed
	$(PY) -m guardproxy.demo

## bench-deps: nginx, Caddy and wrk from Debian's packages (root, or sudo)
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)
bench-deps:
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y --no-install-recommends nginx caddy wrk

## bench: guardproxy side by side with nginx and Caddy (~6 min; ARGS="--quick" for seconds)
bench: $(VENV)/.installed-bench
	$(PY) benchmarks/bench.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
