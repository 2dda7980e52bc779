# make demo: install into .venv and run the whole pipeline on the embedded default (tiny model, CPU).
# make test: install into .venv and run the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.emt-installed
EXTRAS := train,judge,store,plot,dev

.PHONY: install demo test clean

$(STAMP): setup.cfg pyproject.toml constraints/cpu.txt
	@$(PY) -c 'import ensurepip, venv' 2>/dev/null || (apt-get update -qq && apt-get install -y -qq python3-venv python3-pip)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The constraints file pins the CPU torch wheel; without it pip pulls a multi-GB CUDA build.
	$(BIN)/pip install -q -c constraints/cpu.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python launch/train.py --config configs/debug.yaml --local

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) outputs .pytest_cache
