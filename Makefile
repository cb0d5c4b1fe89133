# One-command workflows. `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# CPU-only machines get the CPU build of torch; with a GPU, pip's default (CUDA) build.
TORCH_CPU_SPEC ?= torch==2.13.0
# CPU-only machines test the Triton kernels in triton's interpreter (a CUDA torch brings its own
# triton): installed into .triton/, which only that test puts on its path
TRITON_CPU_SPEC ?= triton==3.9.0
DEMO_DIR ?= demo_data
DEMO_RUN ?= runs/demo
TTC_DIR ?= runs/ttc
TTC_ARGS ?=
# e.g. DEMO_FLAGS="--special-tokens data_io": the demo with data_io's special-token strings
DEMO_FLAGS ?=

.PHONY: setup demo ttc-demo test bench table clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q "torch>=2.10,<2.16"; \
	else $(PY) -m pip install -q "$(TORCH_CPU_SPEC)"; fi
	$(PY) -m pip install -q -r requirements.txt
	touch $@

demo: setup
	test -f $(DEMO_DIR)/sampled/metadata.json || $(PY) -m data_io.demo --out $(DEMO_DIR) $(DEMO_FLAGS)
	rm -rf $(DEMO_RUN)
	$(PY) pretrain.py --config-name cfg_demo data.path=$(DEMO_DIR)/sampled checkpoint_path=$(DEMO_RUN)
	$(PY) simple_inference_engine.py heldout --run $(DEMO_RUN) --heldout $(DEMO_DIR)/heldout.jsonl --report

# Test-time compute (evaluation/search): step-by-step sums, a briefly trained model (reused when
# its checkpoint exists), accuracy against compute per search method and recurrence depth.
# TTC_ARGS passes options to the last step, e.g. TTC_ARGS="--problems 50 --budgets 1,4,16".
ttc-demo: setup
	test -f $(TTC_DIR)/data/sampled/metadata.json || \
	  $(PY) -m data_io.demo --task steps --out $(TTC_DIR)/data --train-size 20000 --heldout-size 500 --epochs 1
	test -n "$$(ls $(TTC_DIR)/model/checkpoints 2>/dev/null)" || { rm -rf $(TTC_DIR)/model && \
	  $(PY) pretrain.py --config-name cfg_ttc_demo data.path=$(TTC_DIR)/data/sampled checkpoint_path=$(TTC_DIR)/model; }
	$(PY) -m evaluation.search.demo --run $(TTC_DIR)/model --heldout $(TTC_DIR)/data/heldout.jsonl --out $(TTC_DIR) $(TTC_ARGS)

test: setup
	command -v nvidia-smi >/dev/null 2>&1 || test -d .triton || $(PY) -m pip install -q --target .triton "$(TRITON_CPU_SPEC)"
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/multipack_bench.py
	@echo "GPU benchmarks (run on a GPU machine): see bench/README.md"

table: setup
	$(PY) -m training.model_table

clean-demo:
	rm -rf $(DEMO_DIR) $(DEMO_RUN)
