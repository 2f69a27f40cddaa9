//! Reading an export back: the rows of every `*.parquet` file of an export folder. It
//! lives with the sources because the `selection` source is its reader; the export stage
//! re-exports it as `export::read`.
//!
//! Used by the `selection` source ([`super::selection`]) and by tests; other tools
//! (pandas, polars, DuckDB) read the same files directly, see `docs/parquet-schema.md`.
//! Every column is checked against the documented type, so a file of another layout is an
//! error naming the file and the column, never a silent misreading.
use std::path::{Path, PathBuf};

use arrow::array::{
    Array, BooleanArray, FixedSizeListArray, Float32Array, Float64Array, Int32Array, Int64Array,
    RecordBatch, StringArray,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use crate::error::{Error, Result};

/// One row of an export (see `docs/parquet-schema.md` for the meaning of each field).
#[derive(Debug, Clone, PartialEq)]
pub struct ExportRow {
    /// Stable sample id.
    pub sample_id: u64,
    /// Where the sample comes from (`file#index`).
    pub source: String,
    /// Index of the sample in the run's training source.
    pub source_index: u64,
    /// Class label.
    pub label: i64,
    /// Epoch (0-based).
    pub epoch: u32,
    /// The sub-batch (optimizer step) of the run it belongs to (0-based).
    pub step: u64,
    /// Global super-batch number.
    pub superbatch: u64,
    /// Position in the super-batch.
    pub position: u32,
    /// Size of the super-batch (B).
    pub superbatch_size: u32,
    /// The policy's score.
    pub score: f32,
    /// Rank in the rule's preference order (0 = first).
    pub rank: u32,
    /// Whether the sample reached the trainer.
    pub kept: bool,
    /// The selection policy.
    pub policy: String,
    /// The configured keep ratio.
    pub keep_ratio: f64,
    /// The feature vector, when the export has them and they were asked for.
    pub features: Option<Vec<f32>>,
}

/// The Parquet files of an export: `path` itself when it is a file, else every
/// `*.parquet` in the folder (hidden and temporary files excluded), sorted by name.
pub fn files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(|e| Error::io(path, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".parquet") && !name.starts_with('.') && e.path().is_file() {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Every row of every file of the export at `path` (see [`files`]), in file order.
/// `features` reads the feature column too (when the files have one).
pub fn read(path: &Path, features: bool) -> Result<Vec<ExportRow>> {
    let mut rows = Vec::new();
    for f in files(path)? {
        rows.extend(read_file(&f, features)?);
    }
    Ok(rows)
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Every row of one export file. The Parquet reader runs under `catch_unwind`: a reader
/// that panics on a damaged file becomes an error naming it.
pub fn read_file(path: &Path, features: bool) -> Result<Vec<ExportRow>> {
    match std::panic::catch_unwind(|| read_file_unguarded(path, features)) {
        Ok(r) => r,
        Err(p) => Err(bad(
            path,
            format!(
                "the Parquet reader panicked (damaged file?): {}",
                crate::stage::panic_message(&p)
            ),
        )),
    }
}

fn read_file_unguarded(path: &Path, features: bool) -> Result<Vec<ExportRow>> {
    // Read whole (the rows are all kept in memory anyway): the Parquet reader then skips
    // over a damaged header's claimed lengths in memory, not with one read(2) per step.
    let file = bytes::Bytes::from(std::fs::read(path).map_err(|e| Error::io(path, e))?);
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| bad(path, format!("not a readable Parquet file: {e}")))?;
    let arrow_schema = builder.schema().clone();
    let wanted: Vec<usize> = arrow_schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| features || f.name() != "features")
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), wanted);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| bad(path, e.to_string()))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(path, format!("cannot read: {e}")))?;
        append(path, &batch, features, &mut rows)?;
    }
    Ok(rows)
}

fn col<'a, T: 'static>(path: &Path, b: &'a RecordBatch, name: &str, ty: &str) -> Result<&'a T> {
    let c = b
        .column_by_name(name)
        .ok_or_else(|| bad(path, format!("no `{name}` column: not a saln export")))?;
    if c.null_count() > 0 {
        return Err(bad(path, format!("column `{name}` holds nulls")));
    }
    c.as_any().downcast_ref::<T>().ok_or_else(|| {
        bad(
            path,
            format!("column `{name}` is {}, not {ty}", c.data_type()),
        )
    })
}

fn unsigned<T: TryFrom<i64>>(path: &Path, name: &str, row: usize, v: i64) -> Result<T> {
    T::try_from(v).map_err(|_| bad(path, format!("row {row}: `{name}` is {v}, out of range")))
}

fn append(path: &Path, b: &RecordBatch, features: bool, rows: &mut Vec<ExportRow>) -> Result<()> {
    let sample_id = col::<Int64Array>(path, b, "sample_id", "int64")?;
    let source = col::<StringArray>(path, b, "source", "utf8")?;
    let source_index = col::<Int64Array>(path, b, "source_index", "int64")?;
    let label = col::<Int64Array>(path, b, "label", "int64")?;
    let epoch = col::<Int32Array>(path, b, "epoch", "int32")?;
    let step = col::<Int64Array>(path, b, "step", "int64")?;
    let superbatch = col::<Int64Array>(path, b, "superbatch", "int64")?;
    let position = col::<Int32Array>(path, b, "position", "int32")?;
    let superbatch_size = col::<Int32Array>(path, b, "superbatch_size", "int32")?;
    let score = col::<Float32Array>(path, b, "score", "float32")?;
    let rank = col::<Int32Array>(path, b, "rank", "int32")?;
    let kept = col::<BooleanArray>(path, b, "kept", "boolean")?;
    let policy = col::<StringArray>(path, b, "policy", "utf8")?;
    let keep_ratio = col::<Float64Array>(path, b, "keep_ratio", "float64")?;
    let feats = match (features, b.column_by_name("features")) {
        (true, Some(_)) => Some(col::<FixedSizeListArray>(
            path,
            b,
            "features",
            "fixed_size_list<float32>",
        )?),
        _ => None,
    };
    let base = rows.len();
    for i in 0..b.num_rows() {
        let r = base + i;
        let features = match feats {
            Some(f) => {
                let v = f.value(i);
                let v = v
                    .as_any()
                    .downcast_ref::<Float32Array>()
                    .ok_or_else(|| bad(path, "column `features` does not hold float32 values"))?;
                Some(v.values().to_vec())
            }
            None => None,
        };
        rows.push(ExportRow {
            sample_id: unsigned(path, "sample_id", r, sample_id.value(i))?,
            source: source.value(i).to_string(),
            source_index: unsigned(path, "source_index", r, source_index.value(i))?,
            label: label.value(i),
            epoch: unsigned(path, "epoch", r, epoch.value(i) as i64)?,
            step: unsigned(path, "step", r, step.value(i))?,
            superbatch: unsigned(path, "superbatch", r, superbatch.value(i))?,
            position: unsigned(path, "position", r, position.value(i) as i64)?,
            superbatch_size: unsigned(path, "superbatch_size", r, superbatch_size.value(i) as i64)?,
            score: score.value(i),
            rank: unsigned(path, "rank", r, rank.value(i) as i64)?,
            kept: kept.value(i),
            policy: policy.value(i).to_string(),
            keep_ratio: keep_ratio.value(i),
            features,
        });
    }
    Ok(())
}
