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

.PHONY: all setup build demo test bench lint clean-results

all: build

setup:
	@scripts/setup.sh all

build: setup
	$(CARGO) build --release --locked

demo: build
	$(BIN) pretrain $(PIPELINE)
	$(BIN) run $(PIPELINE)

test: setup
	$(CARGO) test --release --locked --all-targets
	$(CARGO) test --release --locked --doc

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --locked --all-targets -- -D warnings
