# One entry point for humans and CI. `make test` builds everything it needs from the project's own files.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

.PHONY: install build-deps system-deps test lint typecheck unit integration chart e2e local bench bench-fanout image clean

# setup.py builds the C extensions; a change to one reinstalls. build-deps: a C compiler, Python and nghttp2 headers.
$(BIN)/portcullis: pyproject.toml setup.py dataplane/http/_headparser.c dataplane/http2/_session.c | build-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/portcullis

build-deps:
	bash scripts/install-build-deps $(PYTHON)

# Tools the tests drive as real clients and servers (curl, openssl, etcd, iproute2; h2spec built with Go into
# ~/.cache/portcullis/bin, where the HTTP/2 tests look after the PATH).
system-deps:
	bash scripts/install-system-deps

lint: install
	$(BIN)/ruff check controller dataplane examples bench tests e2e deploy
	$(BIN)/mypy

typecheck: lint

test: install system-deps lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

unit: install
	$(BIN)/python -m pytest -q tests/unit

integration: install system-deps
	$(BIN)/python -m pytest -q tests/integration

chart: install
	$(BIN)/python -m pytest -q tests/chart

e2e: install system-deps
	$(BIN)/python -m pytest -q e2e

# The embedded default: the example backends and Portcullis serving deploy/examples on 127.0.0.1.
local: install
	$(BIN)/python -m examples.backends --examples deploy/examples & echo_pid=$$!; \
	trap 'kill $$echo_pid 2>/dev/null' EXIT INT TERM; \
	$(BIN)/portcullis local -f deploy/examples

bench: install
	bash bench/run

# Issue 18's figures on the rig's real node (as root: it reads cgroups and socket counters on the host): the chart
# with 10 data-plane pods and 2,000 Ingresses; per Ingress change, when each pod serves it and what the controller
# sends and spends. Prints figures, asserts nothing; the rig stays up (e2e/cluster/down --force).
# FANOUT_ARGS="--ingresses 200 --dataplanes 3" for a quick run.
bench-fanout: install system-deps
	$(BIN)/python -m bench.fanout $(FANOUT_ARGS)

# The image users get and the e2e tier runs, built without Docker or any daemon (deploy/image/build.py): Debian
# bookworm packages and the locked wheels, the C extensions compiled with Debian's python3.11 headers, reproducible
# (same inputs, same digest). Runs chroot (as root; else in a user namespace); prints NAME, DIGEST, SIZE, ARCHIVE.
image: install
	bash scripts/install-build-deps /usr/bin/python3.11
	$(BIN)/python deploy/image/build.py portcullis --out dist/portcullis-$(VERSION).oci.tar

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
