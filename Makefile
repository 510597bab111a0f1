# MemberOps developer commands. `make up` and `make test` are all a new user needs;
# the virtual environment is created on first use from `python3`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_FILES := $(shell find protos/memberops -name '*.proto' | sort)

.PHONY: help venv proto lint typecheck check test bench up down status clean

help:
	@echo "make up       start PostgreSQL, Temporal, the four services and the worker locally"
	@echo "make down     stop what 'make up' started"
	@echo "make status   show what runs"
	@echo "make test     lint, type-check and run the test suite against real servers"
	@echo "make bench    run the benchmarks under bench/"
	@echo "make proto    regenerate Python code from protos/"

venv: $(STAMP)

# Dependencies come from pyproject.toml (pinned); the repository itself is put on the
# path with a .pth file, so there is no build step and no package to reinstall on edits.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; x = p["optional-dependencies"]; print("\n".join(p["dependencies"] + x["local"] + x["dev"]))' > $(VENV)/requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r $(VENV)/requirements.txt
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

test: check
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m bench

up: $(STAMP)
	$(PY) -m deploy.devstack up

down: $(STAMP)
	$(PY) -m deploy.devstack down

status: $(STAMP)
	$(PY) -m deploy.devstack status

clean: down
	rm -rf .run
