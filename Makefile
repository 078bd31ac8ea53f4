# Two commands set everything up on a fresh machine with Python >= 3.11:
#   make demo   create .venv, install resail, run the whole pipeline on the built-in toy dataset
#   make test   create .venv, install resail with its dev extras, run the test suite
#   make lint   ruff over the tree (the rules are in pyproject.toml); CI runs it before the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# PyTorch is pinned here, not in pyproject.toml: these wheels lie on the project machines' local
# disk, whereas an unpinned `torch` can pull a multi-GB build from the network. Override with
# `make TORCH_PIN="torch torchvision"` elsewhere; if the pin cannot be installed we fall back to it.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo_out

.PHONY: demo test lint install install-dev bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "resail needs Python >= 3.11 ($(PYTHON) is $$($(PYTHON) --version 2>&1)); run make PYTHON=python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_PIN) || $(BIN)/pip install --quiet torch torchvision
	touch $@

$(VENV)/.installed: pyproject.toml | $(VENV)/.torch
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/resail demo --out $(DEMO_OUT)

test: install
	$(BIN)/python -m pytest tests

lint: install
	$(BIN)/ruff check .

bench: install
	for b in benchmarks/[!_]*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(DEMO_OUT) .pytest_cache build *.egg-info
