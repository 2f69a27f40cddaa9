"""Curation on Ray Data: one batch = one super-batch.

``Curator`` is a callable class for ``ray.data.Dataset.map_batches``: each actor loads the
reference model once (on the GPU when Ray gives the actor one and ``device`` is ``auto``),
and each batch of encoded images and labels is one super-batch, selected from exactly as
``saln-pipe curate`` selects from a super-batch. Shards are independent, so on the same
super-batches (the same images, ids and super-batch numbers, in the same order) the kept
ids and scores are those of ``saln-pipe curate``::

    import ray, saln.ray
    ds = ray.data.read_parquet("table.parquet")          # image {bytes, path}, label, id
    kept = ds.map_batches(saln.ray.Curator, fn_constructor_args=("curate.yaml",),
                          batch_size=256, batch_format="pyarrow", concurrency=2)
    saln.ray.write_parquet(kept, "curated/")             # saln-pipe curate's columns

The columns of what a Curator returns are those of saln's Parquet export
(docs/parquet-schema.md, ``SCHEMA`` here, plus ``features`` with ``include_features``),
kept rows only unless ``include_rejected``; its tables carry the key/value metadata
``saln-pipe curate`` writes into its files (``saln.policy``, ..., ``saln.config``), and
``write_parquet`` writes both.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from . import _config_args, _saln

#: The columns of ``saln-pipe curate``'s Parquet files (docs/parquet-schema.md), without
#: ``features``. Every column is non-nullable.
SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_index", pa.int64(), nullable=False),
        pa.field("label", pa.int64(), nullable=False),
        pa.field("epoch", pa.int32(), nullable=False),
        pa.field("step", pa.int64(), nullable=False),
        pa.field("superbatch", pa.int64(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("superbatch_size", pa.int32(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("kept", pa.bool_(), nullable=False),
        pa.field("policy", pa.string(), nullable=False),
        pa.field("keep_ratio", pa.float64(), nullable=False),
    ]
)
COLUMNS = SCHEMA.names


def export_schema(feature_dim: int | None = None, metadata: dict | None = None) -> pa.Schema:
    """The schema of ``saln-pipe curate``'s files: ``SCHEMA``, plus, with ``feature_dim``,
    ``features`` (a non-nullable fixed-size list of that many non-nullable float32), with
    ``metadata`` (saln's key/value metadata)."""
    fields = list(SCHEMA)
    if feature_dim is not None:
        item = pa.field("item", pa.float32(), nullable=False)
        fields.append(pa.field("features", pa.list_(item, feature_dim), nullable=False))
    return pa.schema(fields, metadata=metadata)


def _as_table(batch: Any) -> pa.Table:
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, dict):
        return pa.table({k: pa.array(list(v) if hasattr(v, "dtype") and v.dtype == object else v)
                         for k, v in batch.items()})
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas
        return pa.Table.from_pandas(batch, preserve_index=False)
    raise TypeError(f"a batch must be a pyarrow.Table, a pandas.DataFrame or a dict, not {type(batch).__name__}")


class Curator:
    """Selects from each batch as from one super-batch (see the module doc).

    ``config`` and ``overrides`` are as for :class:`saln.Loader`; the pipeline's
    ``augment``, ``extractor``, ``selection``, ``seed``, ``device``, ``source.channels``
    (default 3), ``source.on_error`` and ``torch_threads`` apply. Columns read from each
    batch:

    - the image column (``source.parquet.image_column``, default ``image``): a struct with
      a binary ``bytes`` field (Hugging Face's ``Image``) or binary, JPEG or PNG;
    - the label column (``source.parquet.label_column``, default ``label``): integers;
    - ``id_column`` (default ``id``): the stable sample ids. saln's ``parquet`` source
      numbers the rows of its training table 0, 1, ...: give that number to get the CLI's
      ids;
    - ``superbatch`` if present (one value per batch): the super-batch number, which seeds
      the random policies (``uniform``) and the iterative eigen-solver (``saln`` above 128
      samples). Without it the batch's first id is used, so a batch's selection depends on
      its content only, never on which actor runs it;
    - ``source`` and ``source_index`` if present, copied to the output (else ``#ID`` and
      the id).

    ``include_rejected`` and ``include_features`` default to the config's ``export``
    section, as for ``saln-pipe curate`` (``False`` without one): all rows rather than the
    kept ones, and the reference model's feature vector of each row (whatever the policy;
    the model is then loaded for ``uniform`` and ``none`` too).

    ``epoch`` is the epoch of the augmentation streams; ``total_superbatches`` gives the
    training progress ``superbatch / total`` that keep-ratio schedules read (constant
    schedules need none). ``num_classes`` is needed by ``extractor.kind: reference`` (its
    weights include the classifier head). ``passthrough`` names input columns to append to
    the output (for example the image, to train on the curated rows).
    """

    def __init__(
        self,
        config: Any = None,
        /,
        *,
        num_classes: int | None = None,
        id_column: str = "id",
        epoch: int = 0,
        total_superbatches: int | None = None,
        include_rejected: bool | None = None,
        include_features: bool | None = None,
        passthrough: Sequence[str] = (),
        **overrides: Any,
    ) -> None:
        self._selector = _saln.SuperBatchSelector(
            *_config_args(config, overrides),
            num_classes=num_classes,
            include_features=include_features,
        )
        cfg = json.loads(self._selector.config_json())
        if include_rejected is None:
            include_rejected = bool((cfg.get("export") or {}).get("include_rejected", False))
        self.metadata = dict(self._selector.export_metadata())
        parquet = (cfg.get("source") or {}).get("parquet") or {}
        self.image_column = parquet.get("image_column", "image")
        self.label_column = parquet.get("label_column", "label")
        self.id_column = id_column
        self.epoch = epoch
        self.total_superbatches = total_superbatches
        self.include_rejected = include_rejected
        self.passthrough = list(passthrough)

    def _column(self, t: pa.Table, name: str) -> pa.ChunkedArray:
        if name not in t.column_names:
            raise KeyError(
                f"saln.ray.Curator: the batch has no `{name}` column (columns: {t.column_names})"
            )
        return t.column(name)

    def __call__(self, batch: Any) -> pa.Table:
        t = _as_table(batch)
        n = t.num_rows
        if n == 0:
            return export_schema(None, self.metadata).empty_table()
        images = self._column(t, self.image_column)
        if pa.types.is_struct(images.type):
            images = pc.struct_field(images, "bytes")
        images = images.to_pylist()
        ids = [int(i) for i in self._column(t, self.id_column).to_pylist()]
        labels = self._column(t, self.label_column).to_pylist()
        if "superbatch" in t.column_names:
            numbers = pc.unique(t.column("superbatch")).to_pylist()
            if len(numbers) != 1:
                raise ValueError(
                    "saln.ray.Curator: one batch must be one super-batch, but this one holds "
                    f"super-batches {sorted(numbers)[:5]}: give map_batches batch_size=B on "
                    "a data set whose rows are in super-batch order"
                )
            superbatch = int(numbers[0])
        else:
            superbatch = ids[0]
        progress = superbatch / self.total_superbatches if self.total_superbatches else 0.0
        positions, kept, scores, ranks, _, _, dim, features = self._selector.select(
            images, ids, superbatch, epoch=self.epoch, progress=progress
        )
        size = len(positions)
        take = [k for k in range(size) if kept[k] or self.include_rejected]
        rows = [positions[k] for k in take]
        source = (
            t.column("source").to_pylist() if "source" in t.column_names else None
        )
        source_index = (
            t.column("source_index").to_pylist() if "source_index" in t.column_names else None
        )
        columns = {
            "sample_id": [ids[r] for r in rows],
            "source": [source[r] if source else f"#{ids[r]}" for r in rows],
            "source_index": [int(source_index[r]) if source_index else ids[r] for r in rows],
            "label": [int(labels[r]) for r in rows],
            "epoch": [self.epoch] * len(rows),
            "step": [superbatch] * len(rows),
            "superbatch": [superbatch] * len(rows),
            "position": take,
            "superbatch_size": [size] * len(rows),
            "score": [scores[k] for k in take],
            "rank": [ranks[k] for k in take],
            "kept": [kept[k] for k in take],
            "policy": [self._selector.policy] * len(rows),
            "keep_ratio": [self._selector.keep_ratio] * len(rows),
        }
        schema = export_schema(dim if self._selector.include_features else None, self.metadata)
        if self._selector.include_features:
            import numpy as np

            rows_of = np.frombuffer(features, dtype="<f4").reshape(size, dim)[take]
            columns["features"] = pa.FixedSizeListArray.from_arrays(
                pa.array(rows_of.reshape(-1), pa.float32()), dim
            )
        out = pa.table(columns, schema=schema)
        for name in self.passthrough:
            out = out.append_column(name, self._column(t, name).take(pa.array(rows, pa.int64())))
        return out


def write_parquet(ds: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """Writes what ``Curator``s returned as Parquet files in ``path`` as ``saln-pipe
    curate`` writes its own: the same columns and types (``export_schema``: every column
    non-nullable; ``features`` when the Curators made them) and the same key/value metadata
    (``saln.version``, ``saln.policy``, ..., ``saln.config``: the Curators' configuration).
    Other columns (``passthrough``) are left out. ``kwargs`` go to
    ``Dataset.write_parquet``."""

    def cast(t: pa.Table) -> pa.Table:
        metadata = {k: v for k, v in (t.schema.metadata or {}).items() if k.startswith(b"saln.")}
        dim = None
        if "features" in t.column_names:
            dim = t.schema.field("features").type.list_size
        schema = export_schema(dim, metadata or None)
        return t.select(schema.names).cast(schema)

    # pyarrow would name the list items of ``features`` `element` (Parquet's compliant
    # nesting); saln's files, written by arrow-rs, keep Arrow's `item`.
    kwargs.setdefault("use_compliant_nested_type", False)
    ds.map_batches(cast, batch_format="pyarrow", batch_size=None).write_parquet(
        os.fspath(path), **kwargs
    )
