# MemberOps developer commands. `make up` and `make test` are all a new user needs;
# the virtual environment is created on first use from `python3`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_FILES := $(shell find protos/memberops -name '*.proto' | sort)

.PHONY: help venv proto lint typecheck check test chromium bench bench-10m up down status clean

help:
	@echo "make up       start PostgreSQL, Temporal, the four services and the worker locally"
	@echo "make down     stop what 'make up' started"
	@echo "make status   show what runs"
	@echo "make test     lint, type-check and run the test suite against real servers"
	@echo "make bench    run the benchmarks under bench/"
	@echo "make bench-10m  audience counts over 10M members (generates ~26 GB once, ~30 min)"
	@echo "make proto    regenerate Python code from protos/"

venv: $(STAMP)

# Dependencies come from pyproject.toml (pinned); the repository itself is put on the
# path with a .pth file, so there is no build step and no package to reinstall on edits.
# deploy/image-constraints.txt holds what the runtime dependencies need in turn at fixed versions, so the
# venv and the image run the same (see deploy/image_lock.py for changing a pin).
$(STAMP): pyproject.toml deploy/image-constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; x = p["optional-dependencies"]; print("\n".join(p["dependencies"] + x["local"] + x["dev"]))' > $(VENV)/requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r $(VENV)/requirements.txt -c deploy/image-constraints.txt
	$(PY) -c 'import pathlib, site; pathlib.Path(site.getsitepackages()[0], "memberops-dev.pth").write_text("$(CURDIR)\n$(CURDIR)/gen\n")'
	@touch $@

proto: $(STAMP)
	$(PY) -m deploy.protogen gen

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@if command -v npx >/dev/null 2>&1; then \
		cd protos && npx --yes @bufbuild/buf@1.75.0 lint; \
	else echo "node not found: skipping buf lint"; fi

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: check $(VENV)/bin/promtool chromium
	$(PY) -m pytest

# promtool checks and unit-tests the alert rules (tests/deploy/test_alerts.py). It comes from
# Debian's prometheus package, unpacked into the virtual environment rather than installed:
# installing the package would also install a Prometheus server and, where an init system runs,
# start it. One on the PATH is used as it is. Without apt this fails loudly, and so would the tests.
$(VENV)/bin/promtool: | $(STAMP)
	@set -e; if command -v promtool >/dev/null; then ln -sf "$$(command -v promtool)" $@; exit 0; fi; \
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; cd "$$tmp"; \
	apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus; }; \
	dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x -O ./usr/bin/promtool > $(CURDIR)/$@.part; \
	chmod +x $(CURDIR)/$@.part; mv $(CURDIR)/$@.part $(CURDIR)/$@; echo "promtool: $$($(CURDIR)/$@ --version | head -1)"

# The console's browser test (tests/console) drives Debian's chromium through Playwright (never a
# browser Playwright downloads), with a font for its Chinese labels; installed here when missing.
chromium:
	@command -v chromium >/dev/null && fc-list :lang=zh | grep -q . || { \
		apt-get install -y -qq chromium fonts-wqy-zenhei >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y -qq chromium fonts-wqy-zenhei; }; }

bench: $(STAMP)
	$(PY) -m bench

bench-10m: $(STAMP)
	$(PY) -m bench bench_audience_10m

up: $(STAMP)
	$(PY) -m deploy.devstack up

down: $(STAMP)
	$(PY) -m deploy.devstack down

status: $(STAMP)
	$(PY) -m deploy.devstack status

clean: down
	rm -rf .run
