# kinko: two commands do all the set-up on a fresh Debian machine (as root):
#   make run    runs kinko's main job on its embedded defaults
#   make test   installs what the tests need, then ruff + mypy + pytest
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := etcd-server softhsm2
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bootstrap system-packages protos bench clean

run: $(STAMP)
	$(BIN)/kinko up

test: bootstrap lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

bootstrap: system-packages $(STAMP)

system-packages:
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

bench: $(STAMP)
	$(BIN)/python benchmarks/formats.py
	$(BIN)/python benchmarks/hsm.py
	$(BIN)/python benchmarks/store.py
	$(BIN)/python benchmarks/kms_grpc.py
	$(BIN)/python benchmarks/plugin.py
	$(BIN)/python benchmarks/keyservice.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
