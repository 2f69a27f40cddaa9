"""The Python loader against the Rust loader on the same pipeline, in the same process.

    python python/bench/loader_bench.py [PIPELINE.yaml] [--runs 9] [--epochs N] [--limit N]

The Rust side iterates `saln::loader::Loader` in Rust (each batch dropped); the Python side
iterates `saln.Loader` (each batch's tensors reach Python and its images are read). Both
count the images delivered, over the whole run (construction included: opening the data,
starting the stages) and while streaming (after construction, to the end of the last
epoch), which is where a per-batch cost of Python would show. Runs alternate (and which side
goes first alternates too); the figure compared is the median of the runs' python/rust
ratios. Without a pipeline: all 60,000 Fashion-MNIST training images, no selection (every
image is delivered), flip + shift + normalise, 2 decode workers, super-batches of 256:
more than a thousand batches per second, the hardest case for the Python side.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import saln
from saln import _config_args, _saln

DEFAULT = """\
seed: 0
device: cpu
source: { idx: { dir: /usr/share/datasets/fashion-mnist }, holdout: 0 }
augment:
  workers: 2
  ops:
    - hflip: { p: 0.5 }
    - shift: { max_px: 2 }
    - normalize: { mean: [0.286], std: [0.353] }
superbatch: { size: 256 }
selection: { policy: none }
"""


def python_side(config, overrides) -> tuple:
    t = time.perf_counter()
    images = batches = 0
    with saln.Loader(config, **overrides) as loader:
        built = time.perf_counter() - t
        for _ in range(loader.epochs):
            for b in loader:
                images += b.images.shape[0]
                batches += 1
    return batches, images, time.perf_counter() - t, built


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("pipeline", nargs="?", type=pathlib.Path)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--epochs", type=int, help="trainer.epochs (default pipeline: 20)")
    ap.add_argument("--limit", type=int, help="source.limit: learner samples per epoch")
    ap.add_argument("--json", type=pathlib.Path, help="also write the figures here")
    args = ap.parse_args()
    config = args.pipeline or DEFAULT
    overrides = {} if args.pipeline else {"trainer.epochs": 20}
    if args.epochs:
        overrides["trainer.epochs"] = args.epochs
    if args.limit:
        overrides["source.limit"] = args.limit
    figures = {"rust": [], "python": []}
    python_side(config, overrides)  # warm-up: page cache, libtorch's first calls
    for i in range(args.runs):
        # Alternate which side goes first, so that neither always runs on a warmer machine.
        if i % 2 == 0:
            rust = _saln.bench_rust_loader(*_config_args(config, overrides))
            py = python_side(config, overrides)
        else:
            py = python_side(config, overrides)
            rust = _saln.bench_rust_loader(*_config_args(config, overrides))
        assert py[:2] == rust[:2], "both sides must deliver the same batches"
        line = f"run {i + 1}: {rust[1]} images in {rust[0]} batches;"
        for side, (b, n, s, built) in (("rust", rust), ("python", py)):
            rates = {"total": n / s, "streaming": n / (s - built)}
            figures[side].append(rates)
            line += f"  {side} {rates['total']:8.0f} images/s ({rates['streaming']:8.0f} streaming)"
        print(line)
    print()
    ok = True
    for kind in ("total", "streaming"):
        r = statistics.median(x[kind] for x in figures["rust"])
        p = statistics.median(x[kind] for x in figures["python"])
        # Each run's two sides ran back to back: the median of their ratios is the figure
        # least moved by other programs on the machine.
        ratio = statistics.median(
            py[kind] / rust[kind] for rust, py in zip(figures["rust"], figures["python"])
        )
        ok &= ratio >= 0.9
        figures[f"{kind}_ratio"] = ratio
        print(
            f"{kind:9}: rust loader {r:9.0f} images/s, python loader {p:9.0f} images/s (medians); "
            f"python/rust = {ratio:.3f} (median of the runs' ratios)"
        )
    print(f"python loader {'within' if ok else 'NOT within'} 10% of the rust loader")
    if args.json:
        args.json.write_text(json.dumps(figures))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
