#!/usr/bin/env bash
# Builds examples/embed, the template crate of docs/embedding.md, from its own folder as a
# user would, runs its binary without LD_LIBRARY_PATH and checks what it printed: the data
# line, curated batches (a quarter of each super-batch, no sample twice in an epoch), every
# epoch's end, and a training loss that falls. Fails if the build or the binary fails.
# Run by `make test`; needs the build environment (`. scripts/env.sh`).
# CARGO_TARGET_DIR defaults to the repository's target/, so the dependencies already
# compiled for saln itself are reused.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
say() { printf 'check-embed: %s\n' "$*" >&2; }

cd "$root/examples/embed"
t0=$(date +%s)
if ! ${CARGO:-cargo} build --release --locked; then
  say "build failed. If only examples/embed/Cargo.lock is out of date (saln's dependencies"
  say "changed), refresh it from saln's: cp Cargo.lock examples/embed/ && (cd examples/embed && cargo update --workspace --offline)"
  exit 1
fi
say "built in $(($(date +%s) - t0)) s"

bin="$CARGO_TARGET_DIR/release/saln-embed"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
t0=$(date +%s)
if ! env -u LD_LIBRARY_PATH "$bin" >"$out"; then
  say "$bin failed; the end of what it printed:"
  tail -n 20 "$out" | cut -c1-200 >&2
  exit 1
fi
say "ran in $(($(date +%s) - t0)) s"

# libtorch_cuda must be linked (--no-as-needed) where the rpath's folder has it.
if command -v readelf >/dev/null; then
  dyn="$(readelf -d "$bin")" || { say "readelf -d $bin failed"; exit 1; }
  rpath="$(sed -n 's/.*(R[UN]*PATH).*\[\(.*\)\]/\1/p' <<<"$dyn")"
  [ -n "$rpath" ] || { say "$bin has no rpath"; exit 1; }
  IFS=: read -ra dirs <<<"$rpath"
  for d in "${dirs[@]}"; do
    if [ -e "$d/libtorch_cuda.so" ] && ! grep -q 'NEEDED.*\[libtorch_cuda\.so\]' <<<"$dyn"; then
      say "$d has libtorch_cuda.so but $bin does not link it"
      exit 1
    fi
  done
fi

awk '
  /^data: / { data = 1 }
  /^step / {
    # step S epoch E batch K of M ids I,I,... loss L
    steps++; e = $4; k = $6; m = $8; n = split($10, ids, ",")
    if (n != k) fail("step " $2 ": " n " ids for a batch of " k)
    if (k != int(m / 4 + 0.5)) fail("step " $2 ": kept " k " of a super-batch of " m ", not a quarter")
    for (i = 1; i <= n; i++) {
      if (ids[i] !~ /^[0-9]+$/) fail("step " $2 ": id \"" ids[i] "\"")
      if ((e, ids[i]) in seen) fail("step " $2 ": id " ids[i] " twice in epoch " e)
      seen[e, ids[i]] = 1
    }
    loss[steps] = $12
  }
  /^epoch [0-9]+ done/ { epochs++ }
  /^done: / { done = 1 }
  function fail(msg) { print "check-embed: " msg > "/dev/stderr"; bad = 1; exit 1 }
  END {
    if (bad) exit 1
    if (!data || !done) fail("the data: or the done: line is missing")
    if (epochs < 2 || steps < 10) fail(epochs " epochs, " steps " steps")
    k = 5
    for (i = 1; i <= k; i++) { first += loss[i] / k; last += loss[steps - k + i] / k }
    if (!(last < 0.7 * first)) fail(sprintf("loss did not fall: %.3f -> %.3f", first, last))
    printf "check-embed: ok: %d steps over %d epochs, mean loss of the first 5 steps %.3f, of the last 5 %.3f\n", steps, epochs, first, last
  }
' "$out"
