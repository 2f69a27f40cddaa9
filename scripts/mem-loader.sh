#!/usr/bin/env bash
# Memory of the input side against data set size: peak RSS (/usr/bin/time -v) of a
# loader-only run over 1 000 and over 20 000 small generated JPEGs, same pipeline otherwise.
# The loader holds only the file list and a bounded number of super-batches, so the two
# peaks should be within 15% of each other. Prints both and the ratio.
#
#   scripts/mem-loader.sh            # SMALL=1000 LARGE=20000 by default
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
SMALL=${SMALL:-1000}
LARGE=${LARGE:-20000}
PY="$SALN_VENV/bin/python"
OUT=target/mem-loader
mkdir -p "$OUT"
"$PY" -c 'import skimage' 2>/dev/null || "$PY" -m pip install --quiet scikit-image
cargo build --release --quiet --bin saln-pipe

peak() { # N -> peak RSS in KiB of a loader-only run over N images
  local n=$1 dir=target/mem-photos/n$1
  "$PY" scripts/make-photos.py "$dir" --count "$n" --size 64x48 >&2
  cat > "$OUT/n$n.yaml" <<YAML
seed: 0
source:
  image_folder: { train: $dir, test_fraction: 0.0 }
augment:
  workers: 2
  ops:
    - resize: { size: [32, 32] }
    - hflip: { p: 0.5 }
    - rotate: { max_degrees: 15 }
    - normalize: { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }
superbatch: { size: 64, prefetch: 4 }
loader_only: { epochs: 1 }
report: { path: $OUT/n$n-report.json, progress_seconds: 0 }
YAML
  /usr/bin/time -v "${CARGO_TARGET_DIR:-target}/release/saln-pipe" run "$OUT/n$n.yaml" 2>"$OUT/n$n.time" >"$OUT/n$n.out"
  echo "  $(head -1 "$OUT/n$n.out")" >&2
  sed -n 's/.*Maximum resident set size (kbytes): //p' "$OUT/n$n.time"
}
small=$(peak "$SMALL")
large=$(peak "$LARGE")
awk -v n1="$SMALL" -v a="$small" -v n2="$LARGE" -v b="$large" 'BEGIN {
  printf "peak RSS, %6d images: %8.1f MiB\n", n1, a / 1024
  printf "peak RSS, %6d images: %8.1f MiB\n", n2, b / 1024
  r = b / a
  printf "ratio: %.3f (%s)\n", r, (r <= 1.15 ? "within 15%" : "MORE than 15%")
}'
