#!/usr/bin/env bash
# Installs what saln needs, idempotently:
#   - a Python venv outside the repository with torch==2.11.0 from PyPI (libtorch for tch);
#   - Debian's dataset-fashion-mnist (the demo's and the tests' real data set);
#   - Debian's fonts-dejavu-core (the font of the evaluation's plots);
#   - moto[server] (a local S3-compatible server) and webdataset in the venv, for the tests
#     of the streaming sources (docs/streaming.md);
#   - the test and build tools in the venv: pyarrow (the Rust tests read exports with it,
#     so it must be there before `cargo test`), pytest, maturin and Ray Data (the Python
#     package and its tests).
# Usage: scripts/setup.sh [torch|data|stream|tools|all]     (default: all)
# Environment: SALN_VENV (default ~/.cache/saln/venv), SALN_FASHION_MNIST_DIR.
set -euo pipefail

VENV="${SALN_VENV:-$HOME/.cache/saln/venv}"
TORCH_VERSION=2.11.0
FMNIST_DIR="${SALN_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
what="${1:-all}"

say() { printf 'setup: %s\n' "$*" >&2; }

torch_ok() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<PY 2>/dev/null
import sys, torch
sys.exit(0 if torch.__version__.split("+")[0] == "$TORCH_VERSION" else 1)
PY
}

setup_torch() {
  if torch_ok; then
    say "torch $TORCH_VERSION present in $VENV"
    return
  fi
  say "creating $VENV with torch==$TORCH_VERSION from PyPI (about 4.6 GB, a few minutes, once)"
  mkdir -p "$(dirname "$VENV")"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" numpy
  torch_ok || { say "torch $TORCH_VERSION did not import from $VENV"; exit 1; }
  say "torch $TORCH_VERSION installed in $VENV"
}

fmnist_ok() {
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -f "$FMNIST_DIR/$f.gz" ] || [ -f "$FMNIST_DIR/$f" ] || return 1
  done
}

setup_data() {
  if fmnist_ok; then
    say "Fashion-MNIST present in $FMNIST_DIR"
    return
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian's dataset-fashion-mnist (31 MB)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
    fmnist_ok && { say "Fashion-MNIST installed in $FMNIST_DIR"; return; }
  fi
  cat >&2 <<MSG
setup: Fashion-MNIST is not in $FMNIST_DIR and cannot be installed here (needs root and apt-get).
  On Debian/Ubuntu:  sudo apt-get install dataset-fashion-mnist
  Elsewhere: put the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
  t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in one folder, then
  run with SALN_FASHION_MNIST_DIR=<folder> and set source.idx.dir to it in your pipeline YAML.
MSG
  exit 1
}

# The font the evaluation's plots draw their text with (saln's src/eval/plot.rs).
FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf

setup_font() {
  if [ -f "$FONT" ]; then
    say "plot font present ($FONT)"
    return
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian's fonts-dejavu-core (the plots' font)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-dejavu-core >/dev/null
    [ -f "$FONT" ] && { say "plot font installed ($FONT)"; return; }
  fi
  cat >&2 <<MSG
setup: the plot font $FONT is missing and cannot be installed here (needs root and apt-get).
  On Debian/Ubuntu:  sudo apt-get install fonts-dejavu-core
  Elsewhere: set SALN_PLOT_FONT to any TrueType font file when running saln-pipe eval / viz.
MSG
  exit 1
}

# The streaming sources' tests: a local S3 server (moto) and the webdataset package's writer.
MOTO_VERSION=5.2.5
WEBDATASET_VERSION=1.0.2

stream_ok() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<PY 2>/dev/null
import sys, importlib.metadata as m
ok = m.version("moto") == "$MOTO_VERSION" and m.version("webdataset") == "$WEBDATASET_VERSION"
import moto.server, webdataset, boto3
sys.exit(0 if ok else 1)
PY
}

# Installs pip packages ($3...) into the venv unless `$2` (a check that imports them)
# passes already; $1 names them in the messages.
venv_packages() {
  local what="$1" check="$2"
  shift 2
  if "$check"; then
    say "$what present in $VENV"
    return
  fi
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  say "installing $* into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "$@"
  "$check" || { say "$what did not import from $VENV"; exit 1; }
  say "$what installed in $VENV"
}

setup_stream() {
  venv_packages "moto $MOTO_VERSION and webdataset $WEBDATASET_VERSION" stream_ok \
    "moto[server]==$MOTO_VERSION" "webdataset==$WEBDATASET_VERSION" boto3
}

PY_TOOLS=("maturin>=1.16,<2" pytest "ray[data]==2.60.*" pyarrow)
tools_ok() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import maturin, pytest, ray, pyarrow' 2>/dev/null
}

setup_tools() {
  venv_packages "pyarrow, pytest, maturin and ray" tools_ok "${PY_TOOLS[@]}"
}

case "$what" in
  torch) setup_torch ;;
  data) setup_data; setup_font ;;
  stream) setup_stream ;;
  tools) setup_tools ;;
  all) setup_torch; setup_data; setup_font; setup_stream; setup_tools ;;
  *) say "unknown target '$what' (torch|data|stream|tools|all)"; exit 2 ;;
esac
