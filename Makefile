# Everything a fresh machine needs: `make run` and `make test` create the
# virtual environment and install what they need from setup.cfg.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
ifeq ($(OS),Windows_NT)
BIN     = $(VENV)/Scripts
ifeq ($(origin PYTHON),file)
PYTHON  = py
endif
endif
PY      = $(BIN)/python
ARGS   ?=

.PHONY: run test typecheck docs demo bench bench-deps clean venv exe smoke-exe image image-smoke windows

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(VENV)/.installed-exe: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[exe]'
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $@

venv: $(VENV)/.installed

## run: start guardproxy (first run writes ./guardproxy.toml and prints a new key)
run: $(VENV)/.installed
	$(PY) -m guardproxy run $(ARGS)

## test: install the test dependencies and run the whole suite (both event loops; perf-marked tests last)
test: $(VENV)/.installed-test
	$(PY) -m pytest -q $(ARGS)

## typecheck: mypy --strict over the package (its settings are in setup.cfg)
typecheck: $(VENV)/.installed-test
	$(PY) -m mypy --strict guardproxy

## docs: regenerate docs/configuration.md from guardproxy/config/model.py (a test fails when they differ)
docs: $(VENV)/.installed
	$(PY) -m guardproxy.config.reference --write

## demo: a fake Ollama and guardproxy in front of it, walked through the checklist
demo: $(VENV)/.installed
	$(PY) -m guardproxy.testing.demo

## exe: one-file executable from packaging/guardproxy.spec -> dist/guardproxy (dist/guardproxy.exe on Windows)
exe: $(VENV)/.installed-exe
	$(PY) -m PyInstaller --noconfirm --clean --distpath dist --workpath build/pyinstaller packaging/guardproxy.spec

## smoke-exe: build the executable and check it against a fake Ollama (health, 401/200, a stream)
smoke-exe: exe
	$(PY) packaging/smoke_test.py

## image: the container image from packaging/container/Containerfile, with podman (else docker), from wheels
##        made here: make image BASE_IMAGE=debian:bookworm-slim IMAGE=localhost/guardproxy:latest
##        (BUILD_FLAGS=--no-cache, say, passes flags to the engine's build)
CONTAINER_ENGINE ?= $(shell command -v podman 2>/dev/null || command -v docker 2>/dev/null)
BASE_IMAGE ?= debian:bookworm-slim
IMAGE      ?= localhost/guardproxy:latest
BUILD_FLAGS ?=
image: $(VENV)/.installed
	@test -n "$(CONTAINER_ENGINE)" || { echo "make image: needs podman or docker" >&2; exit 1; }
	$(PY) packaging/container/wheels.py build/container-wheels
	$(CONTAINER_ENGINE) build -f packaging/container/Containerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) \
		-t $(IMAGE) $(BUILD_FLAGS) build/container-wheels

## image-smoke: build the image on a Debian base made here (debootstrap; no registry needed) and run it
##              against a fake Ollama: health, 401, a stream, non-root, read-only, a draining stop
image-smoke: $(VENV)/.installed
	$(PY) packaging/container/image_smoke.py

## windows: on Debian, under a Windows CPython in Wine: the tests, guardproxy.exe built and smoke-tested,
##          and the exe as a Windows service (packaging/windows/ci.sh; installs Wine if needed)
windows:
	bash packaging/windows/ci.sh
## bench-deps: nginx, Caddy and wrk from Debian's packages (root, or sudo)
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)
bench-deps:
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y --no-install-recommends nginx caddy wrk

## bench: guardproxy side by side with nginx and Caddy, with their access logs on (the seed recipe) and off
##        (~12 min; ARGS="--quick" for seconds; benchmarks/bench.py --help for one variant or scenario)
bench: $(VENV)/.installed-bench
	$(PY) benchmarks/bench.py $(ARGS)
	$(PY) benchmarks/bench.py --no-logs $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info
