# saln: two commands on a fresh machine.
#   make demo   curation + training on Fashion-MNIST (installs libtorch and the data first)
#   make test   the test suite (same set-up)
# The PyTorch venv lives outside the repository (SALN_VENV, default ~/.cache/saln/venv) so
# fresh clones reuse it.
SALN_VENV ?= $(HOME)/.cache/saln/venv
export SALN_VENV
export VIRTUAL_ENV := $(SALN_VENV)
export PATH := $(SALN_VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
CARGO ?= cargo
PIPELINE ?= pipelines/fashion-mnist.yaml
BIN := target/release/saln-pipe

.PHONY: all setup build demo test bench bench-loader lint fixtures eval eval-resnet gpu-prepare python test-python bench-python fuzz signal-loop

all: build

setup:
	@scripts/setup.sh all

build: setup
	$(CARGO) build --release --locked

demo: build
	$(BIN) pretrain $(PIPELINE)
	$(BIN) run $(PIPELINE)

# The evaluation grid of docs/evaluation.md (75 runs; resumable: rerun after a stop).
EVAL ?= pipelines/eval-fashion-mnist.yaml
eval: build
	$(BIN) eval $(EVAL)

# Issue 15's grids: a ResNet-18 learner (docs/learners.md), on Fashion-MNIST and on a
# redundant version of it (every image 4 times); about 72 minutes on 2 cores, resumable.
eval-resnet: build
	$(BIN) eval pipelines/eval-fashion-mnist-resnet.yaml
	$(BIN) eval pipelines/eval-fashion-mnist-resnet-redundant.yaml

# Benchmarks that print figures (ratios against a baseline measured in the same run).
bench: build
	$(BIN) bench selection

# The input side against PyTorch's DataLoader on 3000 generated JPEG photographs, and the
# loader's peak memory over 20k vs 1k images (docs/sources.md, "Measurements").
bench-loader: setup
	scripts/bench-loader.sh
	scripts/mem-loader.sh

# What the GPU check needs, gathered into .gpu/ (docs/gpu.md): carry it to a CUDA machine and
# run .gpu/gpu-check.sh run there. (`make test` runs the check's dry run, on cpu.)
gpu-prepare: setup fixtures
	scripts/gpu-check.sh prepare

# The last step builds and runs examples/embed, the template crate for using saln from your
# own crate (docs/embedding.md), with no LD_LIBRARY_PATH (scripts/check-embed.sh).
test: setup fixtures
	$(CARGO) test --release --locked --all-targets
	$(CARGO) test --release --locked --doc
	$(CARGO) test --release --locked -p saln-build
	CARGO_TARGET_DIR="$(CURDIR)/target" CARGO="$(CARGO)" scripts/check-embed.sh
	@$(MAKE) --no-print-directory test-python

# Fuzzing of every parser of untrusted bytes (tests/fuzz.rs): each harness for FUZZ_SECONDS
# seconds; prints cases tried and crashes found per harness. (`make test` runs 3 s each.)
FUZZ_SECONDS ?= 600
fuzz: setup
	SALN_FUZZ_SECONDS=$(FUZZ_SECONDS) $(CARGO) test --release --locked --test fuzz -- --nocapture --test-threads=1

# SIGINT / SIGTERM to `saln-pipe curate` at SALN_SIGNAL_TRIES (default 50) random moments:
# every try must exit 130 with a cancelled report and no .partial file (tests/it/signals.rs).
signal-loop: setup
	$(CARGO) test --release --locked --test tests signals::signal_at_random_moments -- --ignored --nocapture

# The Python package (python/, docs/python.md): maturin builds its extension against the
# venv's torch (LIBTORCH_USE_PYTORCH=1, exported above) into the shared target/, pip installs
# it into the venv, then pytest runs its tests (they compare with target/release/saln-pipe,
# which `cargo test --release` above builds). The test tools (pytest, maturin, Ray Data,
# pyarrow) come with `setup` (scripts/setup.sh tools): the Rust tests need pyarrow too.
PYTHON := $(SALN_VENV)/bin/python

python: setup
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-build-isolation ./python

test-python: python
	$(PYTHON) -m pytest python/tests -p no:cacheprovider -q

# The Python loader's images/s against the Rust loader's, same pipeline, same process.
bench-python: python
	$(PYTHON) python/bench/loader_bench.py

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --locked -p saln -p saln-build --all-targets -- -D warnings
	$(CARGO) clippy --release --locked -p saln-py -- -D warnings

# Test models for the extractor tests (TorchScript, torchvision ResNets with random weights and
# their Python-computed outputs), made once by fixtures/make_models.py; remade only when the
# script changes. Needs torchvision==0.26.0 (the release paired with torch 2.11.0) and
# safetensors in the venv (installed here if missing).
FIXTURES := target/fixtures
fixtures: $(FIXTURES)/.stamp
$(FIXTURES)/.stamp: fixtures/make_models.py | setup
	@$(SALN_VENV)/bin/python -c 'import torchvision, safetensors' 2>/dev/null || \
	  $(SALN_VENV)/bin/pip install --quiet --disable-pip-version-check torchvision==0.26.0 safetensors
	$(SALN_VENV)/bin/python fixtures/make_models.py $(FIXTURES)
