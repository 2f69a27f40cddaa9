"""The Python loader against the Rust loader on the same pipeline, in the same process.

    python python/bench/loader_bench.py [PIPELINE.yaml] [--runs 5] [--limit 30000]

The Rust side iterates `saln::loader::Loader` in Rust (each batch dropped); the Python side
iterates `saln.Loader` (each batch's tensors reach Python and its images are read). Both
count the images delivered from the start of construction to the end of the last epoch;
runs alternate, and the medians are compared. Without a pipeline: Fashion-MNIST, no
selection (every image is delivered, so the per-batch cost of Python is counted for all of
them), flip + shift + normalise, 2 decode workers, super-batches of 256.
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
source: {{ idx: {{ dir: /usr/share/datasets/fashion-mnist }}, holdout: 0, limit: {limit} }}
augment:
  workers: 2
  ops:
    - hflip: {{ p: 0.5 }}
    - shift: {{ max_px: 2 }}
    - normalize: {{ mean: [0.286], std: [0.353] }}
superbatch: {{ size: 256 }}
selection: {{ policy: none }}
trainer: {{ epochs: 1 }}
"""


def python_side(config) -> tuple:
    t = time.perf_counter()
    images = batches = 0
    with saln.Loader(config) as loader:
        for _ in range(loader.epochs):
            for b in loader:
                images += b.images.shape[0]
                batches += 1
    return batches, images, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("pipeline", nargs="?", type=pathlib.Path)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--limit", type=int, default=30000, help="images (default pipeline)")
    ap.add_argument("--json", type=pathlib.Path, help="also write the figures here")
    args = ap.parse_args()
    config = args.pipeline or DEFAULT.format(limit=args.limit)
    rust, py = [], []
    python_side(config)  # warm-up: page cache, libtorch's first calls
    for i in range(args.runs):
        b, n, s = _saln.bench_rust_loader(*_config_args(config, {}))
        rust.append(n / s)
        b2, n2, s2 = python_side(config)
        assert (b2, n2) == (b, n), "both sides must deliver the same batches"
        py.append(n2 / s2)
        print(f"run {i + 1}: rust {rust[-1]:9.0f} images/s   python {py[-1]:9.0f} images/s   ({n} images, {b} batches)")
    r, p = statistics.median(rust), statistics.median(py)
    ratio = p / r
    print(f"median: rust loader {r:.0f} images/s, python loader {p:.0f} images/s, python/rust = {ratio:.3f}")
    verdict = "within 10%" if ratio >= 0.9 else "MORE THAN 10% SLOWER"
    print(f"python loader is {verdict} of the rust loader")
    if args.json:
        args.json.write_text(json.dumps({"rust": rust, "python": py, "ratio": ratio}))
    return 0 if ratio >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
