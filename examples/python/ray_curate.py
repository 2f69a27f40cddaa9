"""Curate a Parquet table of images on Ray Data with saln: one batch = one super-batch.

    python examples/python/ray_curate.py                  # a demo table of Fashion-MNIST images
    python examples/python/ray_curate.py --table T.parquet --config curate.yaml --out DIR

Without ``--table`` the example first writes a demo table in the layout Hugging Face
``datasets`` exports (``image: {bytes, path}`` with PNG bytes, ``label``) plus ``id``, the
row number, which is the id saln's ``parquet`` source gives each row. Without ``--config``
it selects a quarter of every super-batch of 256 with SALN on the features of the demo's
reference CNN (make it once with ``saln-pipe pretrain pipelines/fashion-mnist.yaml``).

Each Ray actor loads the model once; every batch of ``--batch-size`` rows is one
super-batch; the kept rows (id, score, rank, ... : saln's export columns) are written as
Parquet with the columns of ``saln-pipe curate`` (docs/parquet-schema.md). Ray runs on this
machine unless ``RAY_ADDRESS`` names a cluster.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import pathlib
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parents[2]
FMNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")
REFERENCE = ROOT / "target" / "saln" / "fashion-mnist-reference.safetensors"

DEMO_CONFIG = f"""\
seed: 0
source:
  channels: 1                 # grey, like the reference CNN's training images
augment:
  ops:
    - resize: {{ size: [28, 28] }}
    - normalize: {{ mean: [0.286], std: [0.353] }}
extractor:
  weights: {REFERENCE}
selection:
  policy: saln
  keep_ratio: 0.25
  rule: quantile
"""


def read_idx(images: pathlib.Path, labels: pathlib.Path, n: int) -> tuple:
    """The first ``n`` images (uint8 [n, 28, 28]) and labels of an IDX pair."""
    with gzip.open(images) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    with gzip.open(labels) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:n].astype(np.int64)
    return x, y


def write_demo_table(path: pathlib.Path, n: int, data: pathlib.Path = FMNIST) -> pathlib.Path:
    """``n`` Fashion-MNIST training images as a Parquet table of PNGs (HF layout + id)."""
    from PIL import Image

    x, y = read_idx(data / "train-images-idx3-ubyte.gz", data / "train-labels-idx1-ubyte.gz", n)
    pngs = []
    for img in x:
        buf = io.BytesIO()
        Image.fromarray(img, mode="L").save(buf, format="PNG")
        pngs.append(buf.getvalue())
    image = pa.StructArray.from_arrays(
        [pa.array(pngs, pa.binary()), pa.array([None] * len(pngs), pa.string())],
        names=["bytes", "path"],
    )
    table = pa.table({"image": image, "label": pa.array(y), "id": pa.array(np.arange(len(y)))})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def curate_table(
    table: str | pathlib.Path,
    config: str | pathlib.Path,
    out: str | pathlib.Path,
    *,
    batch_size: int = 256,
    concurrency: int = 2,
    num_cpus: float = 1.0,
    blocks: int | None = None,
    **curator: object,
) -> pa.Table:
    """Curates ``table`` (a file or a folder of them) on the running Ray cluster and writes
    the kept rows to ``out``; returns them. ``concurrency`` actors of ``num_cpus`` CPUs each
    select; leave CPUs for Ray's read and write tasks (actors holding every CPU of the
    cluster wait forever for the read). ``blocks`` splits the table into that many
    blocks of equal rows (Ray reads a small table as one block, which one actor would do
    alone); keep each block a whole number of super-batches. ``curator`` goes to
    ``saln.ray.Curator`` (``num_classes``, ...)."""
    import ray.data

    import saln.ray

    # Keep batches in table order: with rows in super-batch order, batch k is super-batch k.
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ds = ray.data.read_parquet(str(table))
    if blocks:
        ds = ds.repartition(blocks)
    kept = ds.map_batches(
        saln.ray.Curator,
        fn_constructor_args=(str(config),),
        fn_constructor_kwargs=curator,
        batch_size=batch_size,
        batch_format="pyarrow",
        concurrency=concurrency,
        num_cpus=num_cpus,
    )
    saln.ray.write_parquet(kept, out)
    return pq.read_table(str(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", type=pathlib.Path, help="Parquet table (default: a demo table)")
    ap.add_argument("--rows", type=int, default=4096, help="rows of the demo table")
    ap.add_argument("--config", type=pathlib.Path, help="pipeline YAML (default: SALN, reference CNN)")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "target" / "saln" / "ray-curated")
    ap.add_argument("--batch-size", type=int, default=256, help="super-batch size B")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=max(2, os.cpu_count() or 2), help="CPUs for Ray")
    args = ap.parse_args()

    import ray

    table = args.table or write_demo_table(ROOT / "target" / "saln" / "ray-demo.parquet", args.rows)
    config, extra = args.config, {}
    if config is None:
        if not REFERENCE.exists():
            print(
                f"{REFERENCE} is missing: make the reference model with "
                "`saln-pipe pretrain pipelines/fashion-mnist.yaml` (or pass --config)",
                file=sys.stderr,
            )
            return 2
        config = ROOT / "target" / "saln" / "ray-curate.yaml"
        config.write_text(DEMO_CONFIG)
        extra["num_classes"] = 10
    ray.init(num_cpus=args.cpus, include_dashboard=False)
    # One CPU stays free for reading and writing.
    per_actor = min(1.0, (args.cpus - 1) / args.actors)
    blocks = -(-pq.read_metadata(str(table)).num_rows // args.batch_size) if args.table is None else None
    t = time.time()
    kept = curate_table(
        table, config, args.out, batch_size=args.batch_size, concurrency=args.actors,
        num_cpus=per_actor, blocks=blocks, **extra,
    )
    rows = pq.read_metadata(str(table)).num_rows
    print(
        f"kept {kept.num_rows} of {rows} rows ({kept.num_rows / rows:.1%}) in {time.time() - t:.1f}s "
        f"with {args.actors} actors -> {args.out}"
    )
    labels = np.bincount(kept.column("label").to_numpy(), minlength=10)
    print("kept per label:", " ".join(str(c) for c in labels))
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
