"""saln.ray on a local Ray (2 CPUs): the same kept ids as saln-pipe curate."""

from __future__ import annotations

import importlib.util
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import saln
import saln.ray
from conftest import NORMALIZE, ROOT, read_report, run_cli

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
import ray  # noqa: E402

spec = importlib.util.spec_from_file_location("ray_curate", ROOT / "examples" / "python" / "ray_curate.py")
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)

ROWS, B = 384, 128


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _yaml(table, model, report, out=None, features=False) -> str:
    return (
        "seed: 5\ndevice: cpu\n"
        f"source: {{ parquet: {{ train: '{table}', test_fraction: 0 }}, channels: 1, holdout: 0 }}\n"
        f"augment: {{ ops: [ {{ resize: {{ size: [28, 28] }} }}, {{ hflip: {{ p: 0.5 }} }}, {NORMALIZE} ] }}\n"
        f"superbatch: {{ size: {B} }}\n"
        f"extractor: {{ kind: torchscript, torchscript: {{ path: '{model}' }} }}\n"
        "selection: { policy: saln, keep_ratio: 0.25 }\n"
        "trainer: { epochs: 1 }\n"
        f"report: {{ path: '{report}', progress_seconds: 0 }}\n"
        f"export: {{ dir: '{out or report.parent / 'unused'}', include_rejected: true, overwrite: true, "
        f"include_features: {'true' if features else 'false'} }}\n"
    )


def test_ray_curates_a_parquet_table_with_the_ids_of_saln_pipe_curate(
    fmnist, feature_model, saln_pipe, tmp_path, ray_cluster
):
    table = example.write_demo_table(tmp_path / "table.parquet", ROWS, fmnist)
    config = tmp_path / "curate.yaml"
    # Every row, kept or not, with its feature vector: the export section applies to both.
    config.write_text(_yaml(table, feature_model, tmp_path / "report.json", tmp_path / "cli", features=True))

    # saln-pipe curate: its super-batches (every row, kept or not) and what it kept.
    run_cli(saln_pipe, "curate", str(config))
    cli_rows = pq.read_table(tmp_path / "cli").sort_by([("superbatch", "ascending"), ("position", "ascending")])
    assert cli_rows.num_rows == ROWS and set(cli_rows.column("superbatch").to_pylist()) == {0, 1, 2}

    # The same super-batches for Ray: the table's rows in the CLI's super-batch order, with
    # the super-batch number (it seeds the iterative eigen-solver).
    order = cli_rows.column("sample_id")
    source = pq.read_table(table)
    ordered = source.take(order).append_column("superbatch", cli_rows.column("superbatch"))
    pq.write_table(ordered, tmp_path / "ordered.parquet")

    # Three blocks of one super-batch each, so that both actors get work.
    rows = example.curate_table(
        tmp_path / "ordered.parquet", config, tmp_path / "ray", batch_size=B, concurrency=2, num_cpus=0.5, blocks=3
    )
    key = [("superbatch", "ascending"), ("position", "ascending")]
    got, want = rows.sort_by(key), cli_rows.sort_by(key)
    assert got.column("sample_id").to_pylist() == want.column("sample_id").to_pylist()
    kept = got.filter(got.column("kept"))
    assert kept.column("sample_id").to_pylist() == want.filter(want.column("kept")).column("sample_id").to_pylist()
    assert len(kept) == sum(round(0.25 * n) for n in (128, 128, 128))
    for column in ("superbatch", "position", "superbatch_size", "rank", "label", "kept", "policy", "keep_ratio"):
        assert got.column(column).to_pylist() == want.column(column).to_pylist(), column
    assert got.column("score").to_pylist() == pytest.approx(want.column("score").to_pylist(), abs=1e-6)
    got_features = [x for row in got.column("features").to_pylist() for x in row]
    want_features = [x for row in want.column("features").to_pylist() for x in row]
    assert len(got_features) == ROWS * 32
    assert got_features == pytest.approx(want_features, abs=1e-4)
    assert read_report(tmp_path / "report.json")["selection"]["samples_kept"] == len(kept)

    # The files have saln-pipe curate's columns and types, every one non-nullable, and its
    # key/value metadata: the same keys, and the same saln values (provenance).
    def columns(schema: pa.Schema) -> list:
        return [(f.name, str(f.type), f.nullable) for f in schema]

    ray_file = sorted((tmp_path / "ray").glob("*.parquet"))[0]
    cli_file = sorted((tmp_path / "cli").glob("*.parquet"))[0]
    assert columns(pq.read_schema(ray_file)) == columns(pq.read_schema(cli_file)) == columns(saln.ray.export_schema(32))
    ray_meta, cli_meta = pq.read_metadata(ray_file).metadata, pq.read_metadata(cli_file).metadata
    assert sorted(ray_meta) == sorted(cli_meta)
    saln_keys = sorted(k for k in cli_meta if k.startswith(b"saln."))
    assert saln_keys == sorted(f"saln.{k}".encode() for k in ("version", "policy", "rule", "weights", "keep_ratio", "seed", "config"))
    assert {k: ray_meta[k] for k in saln_keys} == {k: cli_meta[k] for k in saln_keys}


def test_one_batch_must_be_one_superbatch(feature_model, tmp_path, fmnist):
    table = pq.read_table(example.write_demo_table(tmp_path / "t.parquet", 8, fmnist))
    cur = saln.ray.Curator(_yaml(tmp_path / "t.parquet", feature_model, tmp_path / "r.json"), include_rejected=False)
    rows = cur(table)  # no superbatch column: one super-batch numbered by its first id
    assert rows.schema == saln.ray.SCHEMA and rows.num_rows == 2
    assert rows.schema.metadata[b"saln.policy"] == b"saln"
    assert rows.column("superbatch").to_pylist() == [0, 0]
    mixed = table.append_column("superbatch", pa.array([0] * 4 + [1] * 4))
    with pytest.raises(ValueError, match="one batch must be one super-batch"):
        cur(mixed)
    with pytest.raises(KeyError, match="no `id` column"):
        cur(table.drop_columns(["id"]))
    broken = table.set_column(0, "image", pa.array([b"not an image"] * 8))
    with pytest.raises(saln.SalnError, match="extract stage: sample id 0: not a JPEG or PNG"):
        cur(broken)
    with pytest.raises(saln.ConfigError, match="selection.policy"):
        saln.ray.Curator(_yaml(tmp_path / "t.parquet", feature_model, tmp_path / "r.json"), selection__policy="jest")
