//! One Parquet file of an export, written under a temporary name and renamed when complete.
//!
//! The file is created as `.NAME.partial` in the export folder (a name no `*.parquet`
//! glob matches), receives its row groups, is closed (footer written), flushed to disk with
//! `fsync`, and only then renamed to `NAME`. A [`PartWriter`] dropped before
//! [`PartWriter::finish`] (an error, a panic, a cancelled run) removes its temporary file;
//! a killed process leaves at most a `.partial` file, which the next export into the same
//! folder deletes. So every `*.parquet` file in an export folder is complete.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, Float64Array, Int32Array, Int64Array,
    RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};

/// Column names, in file order (`features` is last and present only when asked for).
pub const COLUMNS: [&str; 15] = [
    "sample_id",
    "source",
    "source_index",
    "label",
    "epoch",
    "step",
    "superbatch",
    "position",
    "superbatch_size",
    "score",
    "rank",
    "kept",
    "policy",
    "keep_ratio",
    "features",
];

/// The Arrow schema of an export; `feature_dim` adds the `features` column
/// (`FixedSizeList<Float32>` of that length). Every column is non-nullable.
pub fn schema(feature_dim: Option<usize>) -> SchemaRef {
    use DataType::*;
    let types = [
        Int64, Utf8, Int64, Int64, Int32, Int64, Int64, Int32, Int32, Float32, Int32, Boolean,
        Utf8, Float64,
    ];
    let mut fields: Vec<Field> = COLUMNS
        .iter()
        .zip(types)
        .map(|(name, t)| Field::new(*name, t, false))
        .collect();
    if let Some(d) = feature_dim {
        fields.push(Field::new(
            "features",
            FixedSizeList(Arc::new(Field::new("item", Float32, false)), d as i32),
            false,
        ));
    }
    Arc::new(Schema::new(fields))
}

/// The rows of one super-batch, column by column, ready to become a [`RecordBatch`].
#[derive(Debug, Default)]
pub(crate) struct Rows {
    pub sample_id: Vec<i64>,
    pub source: Vec<String>,
    pub source_index: Vec<i64>,
    pub label: Vec<i64>,
    pub epoch: Vec<i32>,
    pub step: Vec<i64>,
    pub superbatch: Vec<i64>,
    pub position: Vec<i32>,
    pub superbatch_size: Vec<i32>,
    pub score: Vec<f32>,
    pub rank: Vec<i32>,
    pub kept: Vec<bool>,
    pub policy: Vec<String>,
    pub keep_ratio: Vec<f64>,
    /// Row-major `[rows * dim]`, empty when features are not written.
    pub features: Vec<f32>,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.sample_id.len()
    }

    /// Packs the columns into a batch of `schema` (which says whether features go in).
    pub fn into_batch(self, schema: &SchemaRef) -> std::result::Result<RecordBatch, String> {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(self.sample_id)),
            Arc::new(StringArray::from(self.source)),
            Arc::new(Int64Array::from(self.source_index)),
            Arc::new(Int64Array::from(self.label)),
            Arc::new(Int32Array::from(self.epoch)),
            Arc::new(Int64Array::from(self.step)),
            Arc::new(Int64Array::from(self.superbatch)),
            Arc::new(Int32Array::from(self.position)),
            Arc::new(Int32Array::from(self.superbatch_size)),
            Arc::new(Float32Array::from(self.score)),
            Arc::new(Int32Array::from(self.rank)),
            Arc::new(BooleanArray::from(self.kept)),
            Arc::new(StringArray::from(self.policy)),
            Arc::new(Float64Array::from(self.keep_ratio)),
        ];
        if let Ok(f) = schema.field_with_name("features") {
            let DataType::FixedSizeList(item, dim) = f.data_type() else {
                return Err("features column is not a fixed-size list".into());
            };
            let values = Arc::new(Float32Array::from(self.features));
            let list = FixedSizeListArray::try_new(item.clone(), *dim, values, None)
                .map_err(|e| e.to_string())?;
            cols.push(Arc::new(list));
        }
        RecordBatch::try_new(schema.clone(), cols).map_err(|e| e.to_string())
    }
}

/// Writer settings shared by every file of an export.
pub(crate) fn properties(
    zstd_level: i32,
    row_group_rows: usize,
    metadata: Vec<KeyValue>,
) -> std::result::Result<WriterProperties, String> {
    let level = ZstdLevel::try_new(zstd_level).map_err(|e| e.to_string())?;
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .set_key_value_metadata(Some(metadata))
        .build())
}

/// The temporary name of `path`: `.NAME.partial` in the same folder.
pub(crate) fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

/// One Parquet file being written. See the module docs for the guarantees.
pub struct PartWriter {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<ArrowWriter<File>>,
    rows: usize,
}

fn parquet_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        message: format!("cannot write Parquet: {e}"),
    }
}

impl PartWriter {
    /// Starts `path` (through its temporary name) with `schema` and `props`.
    pub(crate) fn create(path: &Path, schema: SchemaRef, props: WriterProperties) -> Result<Self> {
        let tmp = temp_name(path);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            parquet_err(&tmp, e)
        })?;
        Ok(PartWriter {
            path: path.to_path_buf(),
            tmp,
            writer: Some(writer),
            rows: 0,
        })
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Appends `batch` (of the schema the file was created with).
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| parquet_err(&self.tmp, "writer already closed"))?;
        w.write(batch).map_err(|e| parquet_err(&self.tmp, e))?;
        self.rows += batch.num_rows();
        // Test-only: a run can be stopped here, its file half written (`stage::test_pause`).
        crate::stage::test_pause("export");
        Ok(())
    }

    /// Closes the file (footer), syncs it to disk and renames it to its final name.
    /// Returns the final path and the number of rows.
    pub(crate) fn finish(mut self) -> Result<(PathBuf, usize)> {
        let mut w = self
            .writer
            .take()
            .ok_or_else(|| parquet_err(&self.tmp, "writer already closed"))?;
        w.finish().map_err(|e| parquet_err(&self.tmp, e))?;
        w.inner_mut()
            .sync_all()
            .map_err(|e| Error::io(&self.tmp, e))?;
        drop(w);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        // Renamed: nothing left for Drop to clean up.
        self.tmp = PathBuf::new();
        Ok((self.path.clone(), self.rows))
    }
}

impl Drop for PartWriter {
    /// An unfinished file never gets its final name: its temporary file is removed.
    fn drop(&mut self) {
        self.writer.take();
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> Rows {
        let mut r = Rows::default();
        for i in 0..n {
            r.sample_id.push(i as i64);
            r.source.push(format!("mem#{i}"));
            r.source_index.push(i as i64);
            r.label.push((i % 3) as i64);
            r.epoch.push(0);
            r.step.push(0);
            r.superbatch.push(0);
            r.position.push(i as i32);
            r.superbatch_size.push(n as i32);
            r.score.push(i as f32);
            r.rank.push(i as i32);
            r.kept.push(true);
            r.policy.push("none".into());
            r.keep_ratio.push(1.0);
        }
        r
    }

    #[test]
    fn a_writer_dropped_mid_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("epoch-0000-part-0000.parquet");
        let schema = schema(None);
        let mut w =
            PartWriter::create(&path, schema.clone(), properties(3, 4, vec![]).unwrap()).unwrap();
        w.write(&rows(10).into_batch(&schema).unwrap()).unwrap();
        assert!(temp_name(&path).exists(), "rows go to the temporary file");
        assert!(!path.exists(), "the final name appears only when complete");
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn finish_renames_a_complete_file_with_small_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        let schema = schema(None);
        let mut w =
            PartWriter::create(&path, schema.clone(), properties(3, 4, vec![]).unwrap()).unwrap();
        w.write(&rows(10).into_batch(&schema).unwrap()).unwrap();
        let (p, n) = w.finish().unwrap();
        assert_eq!((p, n), (path.clone(), 10));
        assert!(!temp_name(&path).exists());
        let r =
            parquet::file::reader::SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        use parquet::file::reader::FileReader;
        let md = r.metadata();
        assert_eq!(md.file_metadata().num_rows(), 10);
        assert_eq!(md.num_row_groups(), 3, "row groups of at most 4 rows");
        assert!(matches!(
            md.row_group(0).column(0).compression(),
            Compression::ZSTD(_)
        ));
    }
}
