# Everything runs in a virtual environment of its own, made on first use.
# torch==2.13.0 goes in first: an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0
ARGS ?=

.PHONY: install train test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	touch $@

## Fine-tune all-MiniLM-L6-v2 on STS-B (extra Hydra overrides: make train ARGS="trainer.max_epochs=2")
train: install
	$(PY) -m train +experiment=sts $(ARGS)

## The test suite (offline, a few minutes on 2 CPU cores)
test: install
	$(PY) -m pytest $(ARGS)

## Benchmarks against the peers, side by side
bench: $(VENV)/.installed-bench
	$(PY) benchmarks/sts_vs_sentence_transformers.py $(ARGS)

clean:
	rm -rf $(VENV) logs .pytest_cache
