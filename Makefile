# The two commands of the README: `make demo` (the main job) and `make test`. Both set up what they need.
SHELL := /bin/bash
PY := .venv/bin/python
# `make demo SOURCE=path` (or SOURCE=s3://bucket/prefix): a shop's own data instead of the generator
# (docs/own-data.md). A local path is made absolute (Merlin steps and the API run elsewhere); its artifacts go
# to their own root, so they never mix with the generator's ids. Set RECSYS_START_DATE to the data's first day.
ifneq ($(strip $(SOURCE)),)
export RECSYS_SOURCE := $(if $(filter s3://%,$(SOURCE)),$(SOURCE),$(abspath $(SOURCE)))
export RECSYS_ARTIFACTS ?= $(CURDIR)/artifacts-own/$(notdir $(patsubst %/,%,$(SOURCE)))
endif
export RECSYS_ARTIFACTS ?= $(CURDIR)/artifacts
export DAGSTER_HOME ?= $(RECSYS_ARTIFACTS)/dagster_home
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
# No CLIP weights are reachable here: the demo and tests use the small random open_clip encoder, and say so
# in the embeddings metadata. Unset it (and provide weights, see README) for real image embeddings.
export RECSYS_CLIP_OFFLINE_FALLBACK ?= 1

.PHONY: setup demo test test-fast serve dev seed-scale clean

setup:  ## create .venv and .venv-merlin from the lock files (only what changed)
	@scripts/setup.sh

# The demo and its UI end the daily partitions with the demo's days 00-14 (RECSYS_LAST_DAY, lib/settings.py), so
# the UI shows them all filled; production leaves the set open-ended.
demo dev: export RECSYS_LAST_DAY ?= demo

demo: setup  ## the whole pipeline on the embedded defaults (SOURCE=path: on a shop's own data), then a summary
	@$(PY) -m recsys_assets.demo

# xdist workers: one per core by default; the suite waits on subprocesses ~20% of the time, so `make test
# WORKERS=3` on 2 cores was 1.6 min faster in one measurement (docs/testing.md), at the cost of heavier contention
WORKERS ?= logical

test: setup  ## the whole test suite (starts and stops its own services), one worker per core (WORKERS=n)
	@$(PY) -m pytest -n $(WORKERS) --dist loadscope

test-fast: setup  ## unit tests only (no merlin env, no services)
	@$(PY) -m pytest -n $(WORKERS) --dist loadscope -m "not merlin and not integration"

serve: setup  ## keep Triton, the API and the storefront up on 127.0.0.1 (after make demo); Ctrl-C stops them
	@scripts/serve.sh

dev: setup  ## the Dagster UI on http://127.0.0.1:3000 over the local artifacts
	@mkdir -p $(DAGSTER_HOME) && cp -n dagster.yaml $(DAGSTER_HOME)/dagster.yaml 2>/dev/null || true
	@.venv/bin/dg dev --host 127.0.0.1 --port 3000

seed-scale: setup  ## the whole pipeline at the seed's scale (300k users, ~13 M impressions): stage times, peak memory
	@DAGSTER_HOME=$(CURDIR)/artifacts-seed/dagster_home $(PY) benchmarks/seed_scale.py \
		--artifacts $(CURDIR)/artifacts-seed --json $(CURDIR)/artifacts-seed/seed_scale.json

clean:  ## remove generated artifacts (keeps the environments)
	rm -rf artifacts artifacts-own artifacts-seed test-artifacts
