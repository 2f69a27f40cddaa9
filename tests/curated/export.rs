//! `saln-pipe run` with `export:`: what the files hold, and that they are always whole.
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use saln::config::ExportConfig;
use saln::export::read::{read, read_file, ExportRow};
use saln::pipeline::{self, Cancel, Event};
use saln::report::Status;

use crate::fixtures::{config, kept_per_epoch, within, B, LEARNER};

/// `(name, type)` of every column in docs/parquet-schema.md's column table.
fn documented_columns() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/parquet-schema.md"
    ))
    .unwrap();
    let section = doc
        .split("## Columns")
        .nth(1)
        .and_then(|s| s.split("### `rank`").next())
        .expect("docs/parquet-schema.md has a Columns section");
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_string(), cells[2].to_string())
        })
        .collect()
}

fn documented_type_matches(doc: &str, t: &DataType) -> bool {
    match (doc, t) {
        ("int64", DataType::Int64)
        | ("int32", DataType::Int32)
        | ("string", DataType::Utf8)
        | ("float", DataType::Float32)
        | ("double", DataType::Float64)
        | ("bool", DataType::Boolean) => true,
        ("fixed_size_list<float>[d]", DataType::FixedSizeList(item, _)) => {
            item.data_type() == &DataType::Float32
        }
        _ => false,
    }
}

/// The FNV-1a digest the selection stage reports over every kept id, in order.
fn digest(ids: impl Iterator<Item = u64>) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for id in ids {
        for b in id.to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn parquet_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every `*.parquet` in `dir` opens and reads to its last row, with the row count its
/// footer announces; nothing else but those files is there.
fn assert_only_whole_files(dir: &Path) -> Vec<ExportRow> {
    let mut all = Vec::new();
    for name in parquet_files(dir) {
        assert!(
            name.ends_with(".parquet") && !name.starts_with('.'),
            "unexpected file {name} in the export folder"
        );
        let path = dir.join(&name);
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
        let announced = builder.metadata().file_metadata().num_rows() as usize;
        let rows = read_file(&path, true).unwrap();
        assert_eq!(rows.len(), announced, "{name}");
        all.extend(rows);
    }
    all
}

#[test]
fn run_exports_exactly_what_the_trainer_received_with_the_documented_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    let mut e = ExportConfig::new(tmp.path().join("export"));
    e.include_rejected = true;
    e.include_features = true;
    e.row_group_rows = 100;
    cfg.export = Some(e);
    let report = pipeline::run(&cfg, Cancel::default(), None).unwrap();
    assert_eq!(report.status, Status::Completed);
    let dir = tmp.path().join("export");

    // One file per epoch, complete, and nothing else.
    let x = report
        .export
        .clone()
        .expect("the report has an export block");
    assert_eq!(
        x.files,
        [
            "epoch-0000-part-0000.parquet",
            "epoch-0001-part-0000.parquet"
        ]
    );
    assert_eq!(parquet_files(&dir), x.files);
    let rows = assert_only_whole_files(&dir);

    // The schema is the documented one, in order.
    let file = File::open(dir.join(&x.files[0])).unwrap();
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let schema = builder.schema().clone();
    let doc = documented_columns();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let doc_names: Vec<&str> = doc.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, doc_names);
    for (f, (_, t)) in schema.fields().iter().zip(&doc) {
        assert!(
            documented_type_matches(t, f.data_type()),
            "{}: {} vs documented {t}",
            f.name(),
            f.data_type()
        );
        assert!(!f.is_nullable(), "{} is nullable", f.name());
    }
    let md = builder.metadata();
    assert!(md.num_row_groups() > 1, "row groups of at most 100 rows");
    assert!(matches!(
        md.row_group(0).column(0).compression(),
        parquet::basic::Compression::ZSTD(_)
    ));
    let kv = md.file_metadata().key_value_metadata().unwrap();
    let config_json = kv
        .iter()
        .find(|k| k.key == "saln.config")
        .and_then(|k| k.value.clone())
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&config_json).unwrap();
    assert_eq!(v["selection"]["policy"], "saln");

    // Kept rows are the trainer's samples: same count, same ids in the same order.
    let kept: Vec<&ExportRow> = rows.iter().filter(|r| r.kept).collect();
    let trained: u64 = report.epochs.iter().map(|e| e.images_trained).sum();
    assert_eq!(kept.len() as u64, trained);
    assert_eq!(kept.len(), 2 * kept_per_epoch(0.25));
    assert_eq!(x.kept_rows as usize, kept.len());
    assert_eq!(
        digest(kept.iter().map(|r| r.sample_id)),
        report.selection.kept_digest
    );
    assert_eq!(
        rows.len(),
        2 * LEARNER,
        "every sample of every super-batch, kept or rejected"
    );
    assert_eq!(x.rows as usize, rows.len());

    // Per super-batch: b of B kept, ranks a permutation, columns consistent.
    let mut superbatches = std::collections::BTreeMap::<u64, Vec<&ExportRow>>::new();
    for r in &rows {
        superbatches.entry(r.superbatch).or_default().push(r);
    }
    assert_eq!(superbatches.len(), 2 * LEARNER.div_ceil(B));
    for (sb, rs) in &superbatches {
        let n = rs.len();
        assert!(rs
            .iter()
            .all(|r| r.superbatch_size as usize == n && r.step == *sb));
        let k = rs.iter().filter(|r| r.kept).count();
        assert_eq!(k, saln::select::keep_count(n, 0.25), "super-batch {sb}");
        let mut ranks: Vec<u32> = rs.iter().map(|r| r.rank).collect();
        ranks.sort_unstable();
        assert_eq!(ranks, (0..n as u32).collect::<Vec<_>>());
        let positions: Vec<u32> = rs.iter().map(|r| r.position).collect();
        assert_eq!(positions, (0..n as u32).collect::<Vec<_>>(), "stream order");
    }
    for r in &rows {
        assert_eq!(r.sample_id, r.source_index, "IDX ids are file indices");
        assert!(
            r.source.contains("train-images-idx3-ubyte#")
                && r.source.ends_with(&format!("#{}", r.source_index))
        );
        assert_eq!((r.policy.as_str(), r.keep_ratio), ("saln", 0.25));
        let f = r.features.as_ref().unwrap();
        assert!(f.len() == 16 && f.iter().all(|v| v.is_finite()));
    }
    // Scores are Fiedler values: not all equal within a super-batch.
    assert!(superbatches[&0]
        .iter()
        .any(|r| r.score != superbatches[&0][0].score));
    // Each epoch's rows cover the learner share once.
    for epoch in 0..2 {
        let mut ids: Vec<u64> = rows
            .iter()
            .filter(|r| r.epoch == epoch)
            .map(|r| r.sample_id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), LEARNER);
    }
}

#[test]
fn a_cancelled_run_leaves_only_complete_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.trainer.epochs = 3;
    let mut e = ExportConfig::new(tmp.path().join("export"));
    e.rows_per_file = Some(50);
    cfg.export = Some(e);
    let cancel = Cancel::default();
    let observer: pipeline::Observer = {
        let cancel = cancel.clone();
        Arc::new(move |e: &Event| {
            if let Event::Epoch(r) = e {
                if r.epoch == 1 {
                    cancel.cancel();
                }
            }
        })
    };
    let report = within(Duration::from_secs(60), move || {
        pipeline::run(&cfg, cancel, Some(observer)).unwrap()
    });
    assert_eq!(report.status, Status::Cancelled);
    let dir = tmp.path().join("export");
    let rows = assert_only_whole_files(&dir);
    let x = report.export.unwrap();
    assert_eq!(x.rows as usize, rows.len());
    // Epoch 0 finished: all of it is there, in parts of at least 50 rows.
    let epoch0 = rows.iter().filter(|r| r.epoch == 0).count();
    assert_eq!(epoch0 as u64, report.epochs[0].images_trained);
    assert!(
        x.files
            .iter()
            .filter(|f| f.starts_with("epoch-0000"))
            .count()
            >= 2
    );
    // Epoch 2 never started; of epoch 1 only complete parts remain.
    assert!(rows.iter().all(|r| r.epoch <= 1));
    assert!(rows.iter().filter(|r| r.epoch == 1).count() < kept_per_epoch(0.25));
}

#[test]
fn an_existing_export_is_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.trainer.epochs = 1;
    cfg.selection.policy = saln::select::Policy::Uniform;
    cfg.export = Some(ExportConfig::new(tmp.path().join("export")));
    pipeline::run(&cfg, Cancel::default(), None).unwrap();
    let before = read(&tmp.path().join("export"), false).unwrap();
    let e = pipeline::run(&cfg, Cancel::default(), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("export.overwrite") && e.contains("export"),
        "{e}"
    );
    assert_eq!(
        read(&tmp.path().join("export"), false).unwrap(),
        before,
        "left untouched"
    );
    cfg.export.as_mut().unwrap().overwrite = true;
    cfg.seed = 99;
    pipeline::run(&cfg, Cancel::default(), None).unwrap();
    let after = read(&tmp.path().join("export"), false).unwrap();
    assert_eq!(after.len(), before.len());
    assert_ne!(after, before, "replaced by the new run's selection");
}
