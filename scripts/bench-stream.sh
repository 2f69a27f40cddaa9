#!/usr/bin/env bash
# The streaming source, measured (docs/streaming.md, "Measurements"):
#   1. peak RSS (/usr/bin/time -v) of a loader-only run streaming Parquet shards of
#      Fashion-MNIST over LARGE images against the same run over SMALL (bounded memory: the
#      two should be within 15%);
#   2. images/s of a loader-only run reading the same shards from a local S3 server (moto,
#      127.0.0.1) against reading them from local disk (should be at least 0.8x).
# The shards are written once by `saln-pipe shard` (1000 images each) from the IDX files.
#
#   scripts/bench-stream.sh          # SMALL=2000 LARGE=50000 S3_IMAGES=20000 by default
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
SMALL=${SMALL:-2000}
LARGE=${LARGE:-50000}
S3_IMAGES=${S3_IMAGES:-20000}
PER=1000
PY="$SALN_VENV/bin/python"
FMNIST="${SALN_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
OUT=target/bench-stream
mkdir -p "$OUT"
scripts/setup.sh stream >&2
cargo build --release --quiet --bin saln-pipe
BIN="${CARGO_TARGET_DIR:-target}/release/saln-pipe"

if [ ! -f "$OUT/shards/train-000059.parquet" ]; then
  cat > "$OUT/idx.yaml" <<YAML
source: { idx: { dir: $FMNIST } }
YAML
  $BIN shard "$OUT/idx.yaml" --out "$OUT/shards" --format parquet --per-shard $PER >/dev/null
fi

# A loader-only pipeline over the first N images' shards at TRAIN (a brace range).
pipeline() { # name train-spec [storage-block]
  cat > "$OUT/$1.yaml" <<YAML
seed: 0
source:
  holdout: 0
  channels: 1
  stream:
    format: parquet
    train: "$2"
    test: "$OUT/shards/test-000000.parquet"
    shuffle_buffer: 2000
    prefetch: 2
    ${3:-}
augment:
  workers: 2
  ops:
    - random_resized_crop: { size: [28, 28], scale: [0.6, 1.0], ratio: [0.8, 1.25] }
    - hflip: { p: 0.5 }
    - normalize: { mean: [0.286], std: [0.353] }
superbatch: { size: 256, prefetch: 4 }
loader_only: { epochs: 1 }
report: { path: $OUT/$1-report.json, progress_seconds: 0 }
YAML
}
last() { printf '%06d' $(( $1 / PER - 1 )); }

peak() { # N -> peak RSS in KiB of a loader-only run over N images
  pipeline "n$1" "$OUT/shards/train-{000000..$(last "$1")}.parquet"
  /usr/bin/time -v $BIN run "$OUT/n$1.yaml" 2>"$OUT/n$1.time" >"$OUT/n$1.out"
  echo "  $(head -1 "$OUT/n$1.out")" >&2
  sed -n 's/.*Maximum resident set size (kbytes): //p' "$OUT/n$1.time"
}
small=$(peak "$SMALL")
large=$(peak "$LARGE")

# The local S3 server, with the shards uploaded.
port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PY" -m moto.server -H 127.0.0.1 -p "$port" >"$OUT/moto.log" 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null && break
  sleep 0.1
done
"$PY" - "$port" "$OUT/shards" "$S3_IMAGES" "$PER" <<'PY'
import sys, boto3
port, folder, n, per = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="bench",
                  aws_secret_access_key="bench", region_name="us-east-1")
s3.create_bucket(Bucket="bench")
for i in range(n // per):
    name = f"train-{i:06d}.parquet"
    s3.upload_file(f"{folder}/{name}", "bench", f"shards/{name}")
PY
rate() { # name -> images/s of the loader-only run
  $BIN run "$OUT/$1.yaml" >"$OUT/$1.out" 2>"$OUT/$1.err"
  echo "  $1: $(head -1 "$OUT/$1.out")" >&2
  sed -n 's/.*: \([0-9.]*\) images\/s.*/\1/p' "$OUT/$1.out" | head -1
}
pipeline disk "$OUT/shards/train-{000000..$(last "$S3_IMAGES")}.parquet"
pipeline s3 "s3://bench/shards/train-{000000..$(last "$S3_IMAGES")}.parquet" \
  "storage: { endpoint: 'http://127.0.0.1:$port', options: { aws_access_key_id: bench, aws_secret_access_key: bench } }"
disk=$(rate disk)
s3=$(rate s3)
disk2=$(rate disk)
s32=$(rate s3)

awk -v n1="$SMALL" -v a="$small" -v n2="$LARGE" -v b="$large" \
    -v d1="$disk" -v d2="$disk2" -v s1="$s3" -v s2="$s32" -v n3="$S3_IMAGES" 'BEGIN {
  printf "peak RSS, streaming Parquet, %6d images: %8.1f MiB\n", n1, a / 1024
  printf "peak RSS, streaming Parquet, %6d images: %8.1f MiB\n", n2, b / 1024
  r = b / a
  printf "RSS ratio: %.3f (%s)\n", r, (r <= 1.15 ? "within 15%" : "MORE than 15%")
  d = (d1 > d2 ? d1 : d2); s = (s1 > s2 ? s1 : s2)
  printf "images/s over %d images: local disk %.0f, local S3 %.0f (best of 2 each)\n", n3, d, s
  printf "S3 / disk: %.3f (%s)\n", s / d, (s / d >= 0.8 ? "at least 0.8x" : "BELOW 0.8x")
}'
