#!/usr/bin/env bash
# The GPU check (docs/gpu.md): every CUDA path of saln in one call, ending in one table
# (check | result | figure).
#
#   scripts/gpu-check.sh prepare [DIR]   build machine: build a stripped release binary and
#                                        gather what the run needs into DIR (default .gpu/,
#                                        git-ignored, under 64 MiB)
#   DIR/gpu-check.sh run                 GPU machine (no Rust, no network): run every check
#   scripts/gpu-check.sh run [DIR]       the same from a checkout that carries DIR
#   scripts/gpu-check.sh --dry-run [DIR] build machine: prepare a tiny slice into DIR
#                                        (default target/gpu-check-dry/) and run the same
#                                        checks on cpu
#
# `run` points the binary at this machine's libtorch (LD_LIBRARY_PATH from the torch of
# /opt/torch/.venv/bin/python, else $SALN_VENV's, else python3's; SALN_TORCH_PYTHON picks
# another), then runs, in order and each under `timeout`: the selection benchmark, the
# reference CNN's pretraining, a curate run and the demo pipeline with and without
# `extractor.half`, the TorchScript and ResNet-18 extractors (with and without half), and
# the loader-only benchmark. On cpu (the dry run) the CUDA-only checks must be refused with
# a configuration error naming the key. The table goes to stdout and to $OUT/gpu-check.md
# ($OUT set) or DIR/gpu-check.md; every check's log and report go beside it. The checks
# share a budget of SALN_GPU_BUDGET seconds (default 420: the whole script fits in 8
# minutes); a check that would start after it is marked `skipped`. Exit code 0 when every
# row passed, 1 otherwise, 2 for a usage or preparation error. SALN_BIN=PATH makes
# `prepare` take that saln-pipe instead of running `cargo build` (the test of the dry run
# passes the binary cargo test built).
set -uo pipefail

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
HERE=$(dirname "$SCRIPT")
MAX_BYTES=$((64 * 1024 * 1024))
MARK=.saln-gpu-check # a prepared folder holds this file; `prepare` only replaces such folders

say() { printf 'gpu-check: %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$SCRIPT"
  exit 2
}

# ---------------------------------------------------------------- prepare (build machine)

# prepare DIR SCALE: SCALE is `full` (the GPU run) or `tiny` (the dry run).
prepare() {
  local dir=$1 scale=$2 root
  case $dir in /*) ;; *) dir=$PWD/$dir ;; esac
  root=$(cd "$HERE/.." && pwd)
  [ -f "$root/Cargo.toml" ] || die "prepare runs from a checkout (scripts/gpu-check.sh); $root has no Cargo.toml"
  cd "$root" || exit 2
  local fmnist=${SALN_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
  local train test
  case $scale in
    full) train=30000 test=10000 ;; # 10k held out for the reference CNN + 20k learner samples
    tiny) train=2600 test=500 ;;
  esac
  [ -f "$fmnist/train-images-idx3-ubyte.gz" ] || [ -f "$fmnist/train-images-idx3-ubyte" ] ||
    die "Fashion-MNIST not found in $fmnist: run scripts/setup.sh data (or set SALN_FASHION_MNIST_DIR)"

  if [ -z "${LIBTORCH_USE_PYTORCH:-}" ]; then
    # shellcheck source=scripts/env.sh
    . scripts/env.sh
  fi
  local venv=${SALN_VENV:-$HOME/.cache/saln/venv} bin=${SALN_BIN:-}
  if [ -z "$bin" ]; then
    say "building target/release/saln-pipe"
    cargo build --release --locked --quiet --bin saln-pipe || die "cargo build failed"
    bin=target/release/saln-pipe
  fi
  [ -x "$bin" ] || die "$bin: no saln-pipe binary there"
  if [ ! -f target/fixtures/.stamp ]; then
    say "making the fixture models (make fixtures)"
    make --no-print-directory fixtures >&2 || die "make fixtures failed"
  fi
  command -v strip >/dev/null || die "strip (binutils) is needed to shrink the binary"

  if [ -e "$dir" ]; then
    [ -f "$dir/$MARK" ] || die "$dir exists and is not a prepared gpu-check folder: not touching it"
    rm -rf "$dir"
  fi
  mkdir -p "$dir/bin" "$dir/data/fashion-mnist" "$dir/models"
  dir=$(cd "$dir" && pwd)
  # Stripped and gzipped (25 MB -> 8 MB); `run` unpacks it.
  strip -o "$dir/bin/saln-pipe" "$bin" || die "strip failed"
  gzip -9 "$dir/bin/saln-pipe" || die "gzip failed"
  cp "$SCRIPT" "$dir/gpu-check.sh"
  cp target/fixtures/tiny.pt "$dir/models/tiny.pt"

  say "gathering $train training and $test test images of Fashion-MNIST"
  python3 - "$fmnist" "$dir/data/fashion-mnist" "$train" "$test" <<'PY' || die "writing the Fashion-MNIST slice failed"
# The first N images and labels of each split, as gzipped IDX files.
import gzip, os, struct, sys
src, dst, n_train, n_test = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for split, n in (("train", n_train), ("t10k", n_test)):
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        name = f"{split}-{kind}"
        p = os.path.join(src, name)
        f = gzip.open(p + ".gz", "rb") if os.path.exists(p + ".gz") else open(p, "rb")
        with f:
            magic = f.read(4)
            if magic[:3] != b"\0\0\x08":
                sys.exit(f"{p}: not an unsigned-byte IDX file")
            dims = list(struct.unpack(">%dI" % magic[3], f.read(4 * magic[3])))
            dims[0] = min(n, dims[0])
            size = 1
            for d in dims:
                size *= d
            body = f.read(size)
        out = os.path.join(dst, name + ".gz")
        with gzip.open(out + ".partial", "wb", compresslevel=6) as g:
            g.write(magic + struct.pack(">%dI" % len(dims), *dims) + body)
        os.replace(out + ".partial", out)
PY

  # The fixture ResNet-18 (random weights, made by fixtures/make_models.py) in float16: half
  # the size, and the loader casts every tensor to the run's precision anyway.
  say "writing the ResNet-18 fixture in float16"
  "$venv/bin/python" - target/fixtures/resnet18.safetensors "$dir/models/resnet18-f16.safetensors" <<'PY' || die "converting the ResNet-18 fixture failed"
import sys
from safetensors.torch import load_file, save_file
sd = load_file(sys.argv[1])
save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}, sys.argv[2])
PY

  {
    echo "prepared by scripts/gpu-check.sh prepare ($scale) on ${HOSTNAME:-$(uname -n)} at $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "scale $scale"
    echo "torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
  } >"$dir/$MARK"

  local bytes
  bytes=$(du -sb "$dir" | cut -f1)
  say "$dir: $((bytes / 1024 / 1024)) MiB (binary $(du -sh "$dir/bin" | cut -f1), data $(du -sh "$dir/data" | cut -f1), models $(du -sh "$dir/models" | cut -f1))"
  [ "$bytes" -lt "$MAX_BYTES" ] || die "$dir is $bytes bytes, over the 64 MiB a device run can carry"
}

# ---------------------------------------------------------------- run (GPU machine)

ROWS=()   # "check|result|figure"
FAILED=0
row() {
  ROWS+=("$1|$2|$3")
  case $2 in ok*) ;; *) FAILED=$((FAILED + 1)) ;; esac
  printf 'gpu-check: %-34s %-10s %s\n' "$1" "$2" "$3" >&2
}

# Runs a check's command under `timeout` (the smaller of LIMIT and what is left of the
# budget), its output in LOGS/ID.log. Sets RC (124: timed out; `skip`: no budget left) and
# SECS.
attempt() {
  local id=$1 limit=$2
  shift 2
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 15 ]; then
    RC=skip SECS=0
    return
  fi
  [ "$limit" -le "$left" ] || limit=$left
  local t0
  t0=$(date +%s.%N)
  timeout -k 10 "$limit" "$@" >"$LOGS/$id.log" 2>&1
  RC=$?
  SECS=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
}

# The first error line of a check's log, shortened (with the first issue of a
# configuration error, which comes on the next line).
why() {
  local line
  line=$(grep -m1 -A1 -E '^error|error:|panicked' "$LOGS/$1.log" 2>/dev/null || tail -n1 "$LOGS/$1.log" 2>/dev/null)
  case $line in
    *"invalid configuration:"*) line=$(tr '\n' ' ' <<<"$line" | sed 's/  *- / /') ;;
    *) line=$(head -n1 <<<"$line") ;;
  esac
  line=${line//|/\/}
  printf '%s' "${line:0:200}"
}

# failure ID: the result and figure of a check that did not pass.
failure() {
  case $RC in
    skip) row "$2" skipped "no time left in the ${BUDGET} s budget" ;;
    124 | 137) row "$2" timeout "killed after ${SECS} s; last line: $(tail -n1 "$LOGS/$1.log" | cut -c1-120 | tr '|' /)" ;;
    *) row "$2" "FAIL" "exit $RC: $(why "$1")" ;;
  esac
}

# On cpu a CUDA-only check must be refused: exit 2 and a message naming KEY.
refused() { # ID NAME KEY
  local line
  # The key, then `:` or its place (`device (line 3):`, as `saln-pipe validate` writes it).
  line=$(grep -m1 -E "$3( \(line [0-9]+[^)]*\))?:" "$LOGS/$1.log" 2>/dev/null | sed 's/^ *- //; s/^error: //' | tr '|' /)
  if [ "$RC" = 2 ] && [ -n "$line" ]; then
    row "$2" "ok" "refused on cpu, exit 2: ${line:0:160}"
  else
    failure "$1" "$2"
  fi
}

# The figures of a JSON report (stdlib Python; `-` when there is no Python or no report).
read -r -d '' FIGPY <<'PY'
import json, sys
what, path = sys.argv[1], sys.argv[2]
r = json.load(open(path))
s, o = r.get("selection") or {}, r.get("overlap") or {}
if what == "device":
    print(r["device"])
elif what == "digest":
    print(s["kept_digest"])
elif what == "curate":
    solvers = ", ".join(f"{k} {v}" for k, v in sorted(s["solvers"].items()))
    x = [t for t in r["stages"] if t["stage"] == "extract"][0]
    print(f"{s['samples_in']} samples, {s['samples_in'] / r['wall_seconds']:.0f}/s over the run, "
          f"extract stage {x['samples'] / max(x['busy_seconds'], 1e-9):.0f}/s busy; per super-batch: "
          f"forward {s['ms_per_forward']:.2f} ms, selection {s['ms_per_selection']:.2f} ms "
          f"({solvers}); kept {s['samples_kept']}")
elif what == "run":
    e = r["epochs"]
    print(f"test accuracy {100 * r['final_test_accuracy']:.2f}% after {len(e)} epoch(s) of "
          f"{r['data']['learner_samples']} samples ({s['samples_kept']}/{s['samples_in']} trained on); "
          f"{o['end_to_end_rate']:.0f} samples/s, slowest stage {o['slowest_stage']}; selection "
          f"{s['ms_per_selection']:.2f} ms = {100 * s['selection_over_forward']:.0f}% of the forward pass")
PY
fig() { # WHAT FILE
  if [ -z "$JPY" ] || [ ! -f "$2" ]; then
    echo -
    return
  fi
  "$JPY" -c "$FIGPY" "$1" "$2" 2>/dev/null || echo -
}

# pipeline NAME DEVICE LIMIT: the sections every check's YAML shares (a slice of
# pipelines/fashion-mnist.yaml: the same augmentation and super-batches).
pipeline() {
  cat <<YAML
# Written by gpu-check.sh ($MODE) for the check \`$1\`.
seed: 0
device: $2
torch_threads: 1
source:
  idx: { dir: data/fashion-mnist }
  holdout: $HOLDOUT
  limit: $3
  test_limit: $TEST_LIMIT
  on_error: fail
augment:
  workers: $WORKERS
  ops:
    - hflip: { p: 0.5 }
    - shift: { max_px: 2 }
    - rotate: { max_degrees: 10 }
    - normalize: { mean: [0.286], std: [0.353] }
superbatch: { size: 256, prefetch: 4 }
selection: { policy: saln, keep_ratio: 0.25, weights: clip, rule: quantile }
report: { path: work/$1.json, progress_seconds: 0 }
YAML
}

reference() { # HALF
  cat <<YAML
extractor:
  weights: work/reference.safetensors
  pretrain: { epochs: $PRETRAIN_EPOCHS, batch_size: 128, lr: 0.001 }
  half: $1
YAML
}

torchscript() { # HALF
  cat <<YAML
extractor:
  kind: torchscript
  torchscript: { path: models/tiny.pt, method: features }
  input: { channels: 3, size: 32, normalize: imagenet }
  micro_batch: 256
  half: $1
YAML
}

resnet() { # HALF
  cat <<YAML
extractor:
  kind: resnet
  resnet: { arch: resnet18, weights: models/resnet18-f16.safetensors }
  input: { size: $RESNET_SIZE, normalize: imagenet }
  micro_batch: 256
  half: $1
YAML
}

curate_tail() { # NAME
  cat <<YAML
trainer: { epochs: 1 }
export: { dir: work/$1-export, overwrite: true }
YAML
}

# The report's figures of a curate run, and whether it ran where it should.
curate_row() { # ID NAME [DIGEST_OF]
  local id=$1 name=$2 r=work/$1.json dev f
  if [ "$RC" != 0 ]; then failure "$id" "$name"; return; fi
  dev=$(fig device "$r")
  f=$(fig curate "$r")
  if [ -n "${3:-}" ]; then
    local a b
    a=$(fig digest "work/$3.json")
    b=$(fig digest "$r")
    if [ "$a" = "$b" ]; then f="$f; same kept set as float32"; else f="$f; kept set differs from float32's"; fi
  fi
  if [ "$dev" != "$DEVICE_NAME" ]; then
    row "$name" "FAIL" "ran on $dev, expected $DEVICE_NAME"
  else
    row "$name" "ok" "$f; ${SECS} s on $dev"
  fi
}

run_row() { # ID NAME EXPECTED_DEVICE
  local id=$1 name=$2 r=work/$1.json dev f
  if [ "$RC" != 0 ]; then failure "$id" "$name"; return; fi
  dev=$(fig device "$r")
  f=$(fig run "$r")
  if [ "$dev" != "$3" ]; then
    row "$name" "FAIL" "ran on $dev, expected $3"
  else
    row "$name" "ok" "$f; ${SECS} s on $dev"
  fi
}

# `half: true` and the CUDA-only checks: measured on a GPU, refused on cpu.
half_or_refused() { # KIND ID NAME [DIGEST_OF]
  if [ "$GPU" = 1 ]; then
    case $1 in curate) curate_row "$2" "$3" "${4:-}" ;; run) run_row "$2" "$3" "$DEVICE_NAME" ;; esac
  else
    refused "$2" "$3" "extractor.half"
  fi
}

run_checks() { # DIR MODE
  DIR=$(cd "$1" 2>/dev/null && pwd) MODE=$2
  [ -n "$DIR" ] || die "$1: no such folder: run scripts/gpu-check.sh prepare on the build machine first"
  if [ ! -f "$DIR/$MARK" ] || [ ! -f "$DIR/bin/saln-pipe.gz" ]; then
    die "$DIR is not a prepared folder: run scripts/gpu-check.sh prepare on the build machine first"
  fi
  cd "$DIR" || exit 2
  rm -rf work
  mkdir -p work
  local bin=$DIR/work/saln-pipe
  if command -v gzip >/dev/null 2>&1; then
    gzip -dc bin/saln-pipe.gz >"$bin"
  else
    python3 -c 'import gzip, shutil, sys; shutil.copyfileobj(gzip.open(sys.argv[1]), open(sys.argv[2], "wb"))' bin/saln-pipe.gz "$bin"
  fi || die "cannot unpack bin/saln-pipe.gz"
  chmod +x "$bin"
  if [ "$MODE" = gpu ]; then
    GPU=1 DEVICE=cuda DEVICE_NAME=cuda:0 BUDGET=${SALN_GPU_BUDGET:-420}
    HOLDOUT=10000 LIMIT=20000 TEST_LIMIT=null EPOCHS=2 PRETRAIN_EPOCHS=4
    RESNET_SIZE=224 RESNET_LIMIT=10000 LOADER_EPOCHS=2
    WORKERS=$(nproc)
    [ "$WORKERS" -le 8 ] || WORKERS=8
    BENCH=()
  else
    GPU=0 DEVICE=cpu DEVICE_NAME=cpu BUDGET=${SALN_GPU_BUDGET:-240}
    HOLDOUT=1000 LIMIT=768 TEST_LIMIT=300 EPOCHS=1 PRETRAIN_EPOCHS=1
    RESNET_SIZE=32 RESNET_LIMIT=256 LOADER_EPOCHS=1 WORKERS=2
    BENCH=(--sizes "64,200" --dims 16 --repeats 1)
  fi
  local t_start=$SECONDS
  DEADLINE=$((SECONDS + BUDGET))
  local table=${OUT:+$OUT/gpu-check.md}
  table=${table:-$DIR/gpu-check.md}
  LOGS=$(dirname "$table")/gpu-check-logs
  rm -rf "$LOGS"
  mkdir -p "$LOGS"
  # A launcher's RANK / WORLD_SIZE would shard the runs (superbatch.shard defaults).
  unset RANK WORLD_SIZE
  local started
  started=$(date -u '+%Y-%m-%d %H:%M UTC')

  # 1. libtorch: this machine's torch, its lib folder, the GPU.
  local py="" p info libdir
  for p in "${SALN_TORCH_PYTHON:-}" /opt/torch/.venv/bin/python "${SALN_VENV:-$HOME/.cache/saln/venv}/bin/python" python3; do
    if [ -z "$p" ] || ! command -v "$p" >/dev/null 2>&1; then continue; fi
    if "$p" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)' 2>/dev/null; then
      py=$p
      break
    fi
  done
  JPY=$py
  [ -n "$JPY" ] || JPY=$(command -v python3 || true)
  info=""
  if [ -n "$py" ]; then
    info=$(timeout 120 "$py" - 2>"$LOGS/torch.log" <<'PY'
import os, torch
print(os.path.join(os.path.dirname(torch.__file__), "lib"))
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), {torch.cuda.device_count()} GPU(s): {gpu}")
PY
)
  fi
  libdir=$(head -n1 <<<"$info")
  if [ ! -d "$libdir" ]; then
    libdir=""
    for p in /opt/torch/.venv/lib/python3*/site-packages/torch/lib; do
      if [ -d "$p" ]; then libdir=$p; fi
    done
  fi
  local torch_fig
  torch_fig=$(sed -n 2p <<<"$info")
  if command -v nvidia-smi >/dev/null 2>&1; then
    torch_fig="$torch_fig; driver $(nvidia-smi --query-gpu=driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n1)"
  fi
  if [ -n "$libdir" ] && [ -d "$libdir" ]; then
    export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  attempt version 60 "$bin" --version
  if [ "$RC" != 0 ]; then
    failure version "libtorch: binary starts"
  elif [ "$GPU" = 1 ] && { [ -z "$torch_fig" ] || grep -q "no CUDA device" <<<"$torch_fig"; }; then
    row "libtorch: binary starts" "FAIL" "this machine's torch sees no GPU: ${torch_fig:-no python with torch found}"
  else
    row "libtorch: binary starts" "ok" "$(cat "$LOGS/version.log"), ${libdir:-rpath}; ${torch_fig:-python with torch not found}"
  fi

  # 2. libtorch sees the GPU: `validate` of a `device: cuda` pipeline whose files all exist
  # (refused on cpu).
  { pipeline validate-cuda cuda "$LIMIT"; torchscript false; } >work/validate-cuda.yaml
  attempt validate-cuda 90 "$bin" validate work/validate-cuda.yaml
  if [ "$GPU" = 1 ]; then
    if [ "$RC" = 0 ]; then
      row "validate device: cuda" "ok" "libtorch sees the GPU: $(tail -n1 "$LOGS/validate-cuda.log")"
    else
      failure validate-cuda "validate device: cuda"
    fi
  else
    refused validate-cuda "validate device: cuda" "device"
  fi

  # 3. The selection benchmark: dense vs iterative Fiedler solver on the device.
  attempt bench 150 "$bin" bench selection --device "$DEVICE" "${BENCH[@]}"
  if [ "$RC" != 0 ]; then
    failure bench "bench selection"
  else
    local fig
    if fig=$(awk '
      $1 ~ /^[0-9]+$/ && NF >= 10 {
        if ($6 ~ /x$/) { s = $6; sub(/x$/, "", s); if (s + 0 > best) { best = s + 0; at = "B " $1 ", d " $2 ", " $3 } }
        if ($9 != "-" && $0 !~ /degenerate/) { n++; if (min == "" || $9 + 0 < min) min = $9 + 0 }
        if ($5 != "-" && ($1 + 0 > bigb || ($1 + 0 == bigb && $5 + 0 > bigms))) { bigb = $1 + 0; bigms = $5 + 0; big = $5 " ms (B " $1 ", d " $2 ", " $3 ")" }
        if ($0 ~ /degenerate/) deg++
      }
      END {
        if (n == 0) { print "no comparable rows"; exit }
        printf "iterative up to %.1fx faster than dense (%s); agreement |<v,v*>| >= %.6f over %d cells; largest: lanczos %s%s", best, at, min, n, big, (deg ? "; " deg " degenerate" : "")
        if (min < 0.999) exit 3
      }' "$LOGS/bench.log"); then
      row "bench selection" "ok" "$fig; ${SECS} s"
    else
      row "bench selection" "FAIL" "$fig"
    fi
  fi

  # 4. The reference CNN, pretrained on the device (the curate and demo runs use it).
  { pipeline pretrain "$DEVICE" "$LIMIT"; reference false; } >work/pretrain.yaml
  attempt pretrain 120 "$bin" pretrain work/pretrain.yaml
  if [ "$RC" = 0 ]; then
    row "pretrain reference CNN" "ok" "$(grep -m1 '^reference model' "$LOGS/pretrain.log" | sed 's/ -> .*//')"
  else
    failure pretrain "pretrain reference CNN"
  fi

  # 5, 6. Curate (selection, no training) with the reference CNN, float32 and float16.
  { pipeline curate "$DEVICE" "$LIMIT"; reference false; curate_tail curate; } >work/curate.yaml
  attempt curate 90 "$bin" curate work/curate.yaml
  curate_row curate "curate, float32"
  { pipeline curate-half "$DEVICE" "$LIMIT"; reference true; curate_tail curate-half; } >work/curate-half.yaml
  attempt curate-half 90 "$bin" curate work/curate-half.yaml
  half_or_refused curate curate-half "curate, half" curate

  # 7, 8. The demo pipeline (train on the curated sub-batches), shortened; `device: auto`
  # must pick the GPU.
  { pipeline demo auto "$LIMIT"; reference false; echo "trainer: { epochs: $EPOCHS, lr: 0.001 }"; } >work/demo.yaml
  attempt demo 120 "$bin" run work/demo.yaml
  run_row demo "demo run, device: auto" "$DEVICE_NAME"
  { pipeline demo-half "$DEVICE" "$LIMIT"; reference true; echo "trainer: { epochs: $EPOCHS, lr: 0.001 }"; } >work/demo-half.yaml
  attempt demo-half 120 "$bin" run work/demo-half.yaml
  half_or_refused run demo-half "demo run, half"

  # 9-12. The TorchScript and ResNet-18 extractors, float32 and float16.
  { pipeline torchscript "$DEVICE" "$LIMIT"; torchscript false; curate_tail torchscript; } >work/torchscript.yaml
  attempt torchscript 90 "$bin" curate work/torchscript.yaml
  curate_row torchscript "torchscript extractor"
  { pipeline torchscript-half "$DEVICE" "$LIMIT"; torchscript true; curate_tail torchscript-half; } >work/torchscript-half.yaml
  attempt torchscript-half 90 "$bin" curate work/torchscript-half.yaml
  half_or_refused curate torchscript-half "torchscript extractor, half" torchscript
  { pipeline resnet18 "$DEVICE" "$RESNET_LIMIT"; resnet false; curate_tail resnet18; } >work/resnet18.yaml
  attempt resnet18 120 "$bin" curate work/resnet18.yaml
  curate_row resnet18 "resnet18 extractor (${RESNET_SIZE}px)"
  { pipeline resnet18-half "$DEVICE" "$RESNET_LIMIT"; resnet true; curate_tail resnet18-half; } >work/resnet18-half.yaml
  attempt resnet18-half 120 "$bin" curate work/resnet18-half.yaml
  half_or_refused curate resnet18-half "resnet18 extractor, half" resnet18

  # 13. The input side alone (decode + augment workers, no model).
  { pipeline loader-only cpu null; echo "loader_only: { epochs: $LOADER_EPOCHS }"; } >work/loader-only.yaml
  attempt loader-only 90 "$bin" run work/loader-only.yaml
  if [ "$RC" = 0 ]; then
    row "loader-only benchmark" "ok" "$(grep -m1 'images/s' "$LOGS/loader-only.log" | sed 's/^loader-only: //'); $(grep -m1 'CPU ms' "$LOGS/loader-only.log" | sed 's/^loader-only: //')"
  else
    failure loader-only "loader-only benchmark"
  fi

  cp work/*.json work/*.yaml "$LOGS/" 2>/dev/null
  {
    echo "## saln GPU check ($MODE, device $DEVICE)"
    echo
    echo "Run $started on ${HOSTNAME:-$(uname -n)} ($(nproc) cores), $((SECONDS - t_start)) s in all (budget ${BUDGET} s)."
    echo "Folder $(sed -n 1p "$MARK"), $(sed -n 2p "$MARK")."
    echo "${torch_fig:-no python with torch found}."
    echo
    echo "| check | result | figure |"
    echo "|---|---|---|"
    local r
    for r in "${ROWS[@]}"; do
      IFS='|' read -r a b c <<<"$r"
      echo "| $a | $b | ${c//|/\\|} |"
    done
    echo
    echo "$((${#ROWS[@]} - FAILED)) of ${#ROWS[@]} checks passed."
  } >"$table"
  cat "$table"
  say "table written to $table; logs and reports in $LOGS"
  [ "$FAILED" = 0 ]
}

case ${1:-} in
  prepare) prepare "${2:-$HERE/../.gpu}" full ;;
  run)
    dir=${2:-}
    if [ -z "$dir" ]; then
      if [ -f "$HERE/$MARK" ]; then dir=$HERE; else dir=$HERE/../.gpu; fi
    fi
    run_checks "$dir" gpu
    ;;
  --dry-run)
    dry=${2:-$HERE/../target/gpu-check-dry}
    prepare "$dry" tiny
    run_checks "$dry" dry
    ;;
  *) usage ;;
esac
