# The verbs users type. Every verb depends on `setup`, so a fresh machine with only
# Python 3.11+ gets uv (via pip) and the locked environment first.
# Hydra overrides go in ARGS, e.g.  make train-student ARGS="train.batch_size=64"
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
RUN := $(UV) run --frozen
ARGS ?=
DEMO := experiment=cpu_demo
TEACHER ?=

.PHONY: help setup data train-student train-teacher precompute distill eval summarize demo serve test lint bench

help:
	@echo "make demo    - the whole pipeline on the embedded defaults (ML-100K, SmolLM2-135M, CPU)"
	@echo "make test    - lint and run every test"
	@echo "steps: data train-student train-teacher precompute distill eval summarize serve bench"
	@echo "Hydra overrides: ARGS='train.batch_size=64 ...'"

setup:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@$(UV) sync --frozen --quiet

data: setup
	$(RUN) recdata prepare ml-100k

train-student: data
	$(RUN) train-student $(ARGS)

train-teacher: data
	$(RUN) train-teacher $(ARGS)

precompute: data
	$(RUN) precompute-soft-labels $(ARGS)

distill: data
	$(RUN) distill $(ARGS)

eval: data
	$(RUN) eval-all $(ARGS)

summarize: setup
	$(RUN) summarize result/

# student -> teacher -> soft labels -> distilled student -> side-by-side evaluation, then the
# wall time of each step
DEMO_STEPS := train-student train-teacher precompute-soft-labels distill eval-all
demo: data
	@start=$$(date +%s); times=""; \
	for step in $(DEMO_STEPS); do \
		t0=$$(date +%s); \
		$(RUN) $$step $(DEMO) $(ARGS) || exit $$?; \
		times="$$times\n  $$step: $$(( $$(date +%s) - t0 )) s"; \
	done; \
	printf "demo step times:$$times\n  total: %d s\n" $$(( $$(date +%s) - start ))

# serve the newest teacher built on the dataset (or TEACHER=<checkpoint dir>) on 127.0.0.1:3000;
# DATASET=<name> for a dataset of your own (default ml-100k)
DATASET ?= ml-100k
NEWEST_TEACHER := from recdata.contract import read_meta; from runkit.runs import find_newest_checkpoint as f; \
	import sys; print(f("result", ("ilora-teacher",), fingerprint=read_meta(sys.argv[1])["fingerprint"]))
serve: setup
	@data=data/processed/$(DATASET); \
	TEACHER_DATA=$$data TEACHER_CHECKPOINT="$${TEACHER:-$$($(RUN) python -c '$(NEWEST_TEACHER)' $$data)}" \
		$(RUN) bentoml serve teacher.service:TeacherService --port 3000

lint: setup
	$(RUN) ruff check .
	$(RUN) ruff format --check .

test: lint
	$(RUN) pytest -q

# bench is a package run as modules from the repository root: speed benchmarks, then the
# distillation experiment (bench/__init__.py lists the groups)
bench: data
	$(RUN) python -m bench.speed.data
	$(RUN) python -m bench.speed.student
	$(RUN) python -m bench.speed.teacher
	$(RUN) python -m bench.quality.distill
	$(RUN) python -m bench.speed.service
