# The verbs users type. Every verb depends on `setup`, so a fresh machine with only
# Python 3.11+ gets uv (via pip) and the locked environment first.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
RUN := $(UV) run --frozen
ARGS ?=

.PHONY: setup data train-student train-teacher precompute distill eval demo serve test lint bench help

help:
	@echo "make demo   - fetch ML-100K and run the pipeline on the embedded defaults"
	@echo "make test   - lint and run every test"
	@echo "other verbs: setup data train-student train-teacher precompute distill eval serve bench lint"
	@echo "pass Hydra overrides with ARGS='train.batch_size=64 ...'"

setup:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@$(UV) sync --frozen --quiet

data: setup
	$(RUN) recdata prepare ml-100k

train-student: data
	$(RUN) train-student $(ARGS)

lint: setup
	$(RUN) ruff check .

test: lint
	$(RUN) pytest -q

demo: data
	@echo "demo: ML-100K prepared (see statistics above)"
