#!/usr/bin/env bash
# Input-side benchmark: saln's loader-only pipeline against PyTorch's DataLoader with
# torchvision transforms v2, on the same folder of JPEG photographs (about 500x375, like
# Oxford-IIIT Pet; made by scripts/make-photos.py from scikit-image's sample photos), with
# the same transforms (resize 224x224, flip, rotation 15 degrees, brightness 0.2, normalise)
# and the same number of worker threads. Prints both rates and their ratio.
#
#   scripts/bench-loader.sh                 # 3000 images, 2 workers, median of 3 runs each
#   N=1000 WORKERS=2 REPEAT=1 VARIANT=pil scripts/bench-loader.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
N=${N:-3000}
WORKERS=${WORKERS:-2}
REPEAT=${REPEAT:-3}
VARIANT=${VARIANT:-tensor}
PY="$SALN_VENV/bin/python"
OUT=target/bench-loader
DIR=target/bench-photos/n$N
mkdir -p "$OUT"

"$PY" -c 'import torchvision, skimage' 2>/dev/null || \
  "$PY" -m pip install --quiet "torchvision==0.26.*" scikit-image
"$PY" scripts/make-photos.py "$DIR" --count "$N" >&2
cargo build --release --quiet --bin saln-pipe

cat > "$OUT/pipeline.yaml" <<YAML
# Written by scripts/bench-loader.sh: the loader-only pipeline it times.
seed: 0
source:
  image_folder: { train: $DIR, test_fraction: 0.0 }
  on_error: fail
augment:
  workers: $WORKERS
  ops:
    - resize: { size: [224, 224] }
    - hflip: { p: 0.5 }
    - rotate: { max_degrees: 15 }
    - brightness: { max_delta: 0.2 }
    - normalize: { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }
superbatch: { size: 64, prefetch: 4 }
loader_only: { epochs: 1 }
report: { path: $OUT/saln-report.json, progress_seconds: 0 }
YAML

rate() { sed -n 's/.*: \([0-9.]*\) images\/s.*/\1/p'; }
cpums() { sed -n 's/.*: \([0-9.]*\) CPU ms per image.*/\1/p'; }
saln_rates=(); torch_rates=(); saln_cpu=(); torch_cpu=()
for r in $(seq "$REPEAT"); do
  out=$("${CARGO_TARGET_DIR:-target}/release/saln-pipe" run "$OUT/pipeline.yaml" 2>/dev/null)
  echo "run $r  $(head -1 <<<"$out")" >&2
  saln_rates+=("$(rate <<<"$out")"); saln_cpu+=("$(cpums <<<"$out")")
  out=$("$PY" scripts/bench_loader.py "$DIR" --workers "$WORKERS" --batch 64 --variant "$VARIANT")
  echo "run $r  $(head -1 <<<"$out")" >&2
  torch_rates+=("$(rate <<<"$out")"); torch_cpu+=("$(cpums <<<"$out")")
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
saln=$(median "${saln_rates[@]}"); torch=$(median "${torch_rates[@]}")
saln_c=$(median "${saln_cpu[@]}"); torch_c=$(median "${torch_cpu[@]}")
echo "images: $N JPEGs of about 500x375 ($DIR), $WORKERS workers, batch 64, median of $REPEAT alternating runs"
echo "load average now: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (the rate depends on it, CPU ms per image much less)"
printf '%-28s %9s %12s\n' "" "images/s" "CPU ms/image"
printf '%-28s %9.1f %12.2f\n' "saln loader-only" "$saln" "$saln_c"
printf '%-28s %9.1f %12.2f\n' "torch DataLoader ($VARIANT)" "$torch" "$torch_c"
awk -v s="$saln" -v t="$torch" -v sc="$saln_c" -v tc="$torch_c" \
  'BEGIN { printf "%-28s %8.2fx %11.2fx\n", "ratio saln / torch", s / t, tc / sc }'
