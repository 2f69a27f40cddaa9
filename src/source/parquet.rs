//! Parquet tables of encoded images and labels: the layout Hugging Face `datasets` exports
//! (`ds.to_parquet(...)`, or the `refs/convert/parquet` files of a hub data set).
//!
//! The image column is either a struct `{bytes: binary, path: string}` (the `Image` feature)
//! or a plain binary column of JPEG/PNG bytes. `datasets` embeds the bytes only in hub
//! uploads; a table written from local image files has null `bytes` and a `path`, and saln
//! then reads the file at `path` (a relative path against the table's folder, then the
//! working directory, as `datasets` does). The label column holds
//! integers (the `ClassLabel` feature: class indices, `max + 1` classes) or strings (class
//! names, sorted by byte order). Column names are configurable. `train` and `test` are a
//! `.parquet` file or a folder of them (read in name order, as `train-00000-of-00004.parquet`
//! ...).
//!
//! Memory: the encoded image bytes of the table are held in memory (about the table's size
//! on disk; they are decoded one at a time by the loader's workers). For data sets larger
//! than memory, read the tables as a stream (`source.stream` with `format: parquet`,
//! `source::stream`), row group by row group.
//!
//! A file that is not Parquet, is truncated, lacks a configured column or has one of the
//! wrong type fails when the source is opened, naming the file. A null or undecodable image,
//! or a null label, is a sample error (`file.parquet#row`), handled by `on_error`. Reading
//! runs under `catch_unwind`: a reader that panics on a hostile file becomes an error.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use serde::{Deserialize, Serialize};

use super::{decode, Sample, Source, SourceShape};
use crate::error::Issues;
use crate::error::{Error, Result};

/// A Parquet table with an image column and a label column.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetConfig {
    /// The training table: a `.parquet` file, or a folder whose `.parquet` files are read in
    /// name order.
    pub train: PathBuf,
    /// The test table, same columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<PathBuf>,
    /// Instead of `test`: this share of every class of `train` becomes the test split, in
    /// [0, 1); fixed, independent of `seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_fraction: Option<f64>,
    /// The image column: a struct with a binary `bytes` field, or a binary column.
    #[serde(default = "d_image")]
    pub image_column: String,
    /// The label column: integers (class indices) or strings (class names).
    #[serde(default = "d_label")]
    pub label_column: String,
}

fn d_image() -> String {
    "image".into()
}
fn d_label() -> String {
    "label".into()
}

impl ParquetConfig {
    /// Adds this block's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        super::validate_test_choice(v, "source.parquet", self.test.is_some(), self.test_fraction);
        v.check(
            !self.image_column.is_empty(),
            "source.parquet.image_column",
            || "must not be empty".into(),
        );
        v.check(
            !self.label_column.is_empty(),
            "source.parquet.label_column",
            || "must not be empty".into(),
        );
    }
}

/// A label as stored.
#[derive(Debug, Clone, PartialEq)]
enum Label {
    Int(i64),
    Name(String),
    Null,
}

/// A row's image in a [`Table`].
#[derive(Debug, Clone)]
enum Stored {
    Span(usize, usize),
    Path(String),
    Null,
}

/// The rows of one table (one or more files), image bytes in one buffer.
#[derive(Debug, Default)]
struct Table {
    files: Vec<PathBuf>,
    /// First row of each file, plus the total at the end.
    starts: Vec<usize>,
    blob: Vec<u8>,
    /// Each row's image: `(offset, len)` in `blob`, a file path, or null.
    spans: Vec<Stored>,
    labels: Vec<Label>,
}

impl Table {
    /// The folder of the file holding `row` (relative image paths are resolved against it).
    fn folder(&self, row: usize) -> Option<&Path> {
        let f = self.starts.partition_point(|&s| s <= row).saturating_sub(1);
        self.files.get(f).and_then(|p| p.parent())
    }

    fn locate(&self, row: usize) -> String {
        let f = self.starts.partition_point(|&s| s <= row).saturating_sub(1);
        match self.files.get(f) {
            Some(p) => format!("{}#{}", p.display(), row - self.starts[f]),
            None => format!("#{row}"),
        }
    }
}

/// The `.parquet` files `path` names: itself, or a folder's, sorted.
fn table_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::data(path, "folder holds no .parquet files"));
        }
        Ok(files)
    } else if path.exists() {
        Ok(vec![path.to_path_buf()])
    } else {
        Err(Error::data(path, "not found"))
    }
}

/// The image column of one record batch: the encoded bytes (the column itself, or its
/// struct's `bytes`) and, for the `datasets` `Image` struct, its `path` field. A null struct
/// row makes both null.
pub(crate) struct ImageColumn {
    bytes: ArrayRef,
    paths: Option<ArrayRef>,
}

/// One row's image as stored.
pub(crate) enum ImageCell<'a> {
    /// Encoded bytes.
    Bytes(&'a [u8]),
    /// Null bytes and a file path (`datasets` tables written from local image files).
    Path(&'a str),
    /// Neither.
    Null,
}

impl ImageColumn {
    /// Row `i`'s image.
    pub(crate) fn cell(&self, i: usize) -> ImageCell<'_> {
        let bytes = self.bytes.as_binary::<i64>();
        if !bytes.is_null(i) {
            return ImageCell::Bytes(bytes.value(i));
        }
        match &self.paths {
            Some(p) if !p.is_null(i) => ImageCell::Path(p.as_string::<i32>().value(i)),
            _ => ImageCell::Null,
        }
    }

    /// Rows.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }
}

/// A struct field with the struct's own nulls merged in.
fn field_with_nulls(
    s: &arrow::array::StructArray,
    i: usize,
) -> std::result::Result<ArrayRef, String> {
    let child = s.column(i).clone();
    match s.nulls() {
        Some(n) if n.null_count() > 0 => {
            let merged = arrow::buffer::NullBuffer::union(Some(n), child.nulls());
            Ok(arrow::array::make_array(
                child
                    .to_data()
                    .into_builder()
                    .nulls(merged)
                    .build()
                    .map_err(|e| e.to_string())?,
            ))
        }
        _ => Ok(child),
    }
}

/// The image column `col` (named `name`) of a record batch.
pub(crate) fn image_column(col: &ArrayRef, name: &str) -> std::result::Result<ImageColumn, String> {
    let (bytes, paths) = match col.data_type() {
        DataType::Struct(fields) => {
            let s = col.as_struct();
            let i = fields
                .iter()
                .position(|f| f.name() == "bytes")
                .ok_or_else(|| {
                    format!(
                        "column `{name}` is a struct without a `bytes` field (fields: {})",
                        fields
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
            let paths = match fields.iter().position(|f| f.name() == "path") {
                Some(p) => Some(
                    arrow::compute::cast(&field_with_nulls(s, p)?, &DataType::Utf8)
                        .map_err(|e| format!("column `{name}`, field `path`: {e}"))?,
                ),
                None => None,
            };
            (field_with_nulls(s, i)?, paths)
        }
        _ => (col.clone(), None),
    };
    let bytes = match bytes.data_type() {
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => {
            arrow::compute::cast(&bytes, &DataType::LargeBinary).map_err(|e| e.to_string())?
        }
        t => {
            return Err(format!(
                "column `{name}` is {t}, expected binary image bytes or a struct {{bytes, path}}"
            ))
        }
    };
    Ok(ImageColumn { bytes, paths })
}

/// Where the image file a `datasets` `Image` row names lies: an absolute path as it is; a
/// relative one against `folder` (the table's folder) when the file is there, else against
/// the working directory, as `datasets` resolves it.
pub(crate) fn resolve_image_path(path: &str, folder: Option<&Path>) -> PathBuf {
    let p = PathBuf::from(path);
    if p.is_absolute() {
        return p;
    }
    match folder {
        Some(f) if f.join(&p).exists() => f.join(&p),
        _ => p,
    }
}

/// The bytes of the image file at `path` (resolved as [`resolve_image_path`] does).
pub(crate) fn read_image_file(
    path: &str,
    folder: Option<&Path>,
) -> std::result::Result<Vec<u8>, String> {
    let p = resolve_image_path(path, folder);
    std::fs::read(&p).map_err(|e| {
        let tried = match folder {
            Some(f) if PathBuf::from(path).is_relative() => {
                format!(" (looked in {} and the working directory)", f.display())
            }
            _ => String::new(),
        };
        format!("the image bytes are null and its file `{path}` cannot be read{tried}: {e}")
    })
}

fn labels_of(col: &ArrayRef, name: &str) -> std::result::Result<Vec<Label>, String> {
    let t = col.data_type();
    if t.is_integer() {
        let ints = arrow::compute::cast(col, &DataType::Int64).map_err(|e| e.to_string())?;
        let ints = ints.as_primitive::<Int64Type>();
        Ok((0..ints.len())
            .map(|i| {
                if ints.is_null(i) {
                    Label::Null
                } else {
                    Label::Int(ints.value(i))
                }
            })
            .collect())
    } else if matches!(
        t,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(_, _)
    ) {
        let s = arrow::compute::cast(col, &DataType::Utf8).map_err(|e| e.to_string())?;
        let s = s.as_string::<i32>();
        Ok((0..s.len())
            .map(|i| {
                if s.is_null(i) {
                    Label::Null
                } else {
                    Label::Name(s.value(i).to_string())
                }
            })
            .collect())
    } else {
        Err(format!(
            "column `{name}` is {t}, expected integer class indices or string class names"
        ))
    }
}

/// The index of column `name` in `schema`; the error lists the columns there are.
pub(crate) fn column_index(
    schema: &arrow::datatypes::Schema,
    name: &str,
) -> std::result::Result<usize, String> {
    schema.index_of(name).map_err(|_| {
        format!(
            "no column `{name}` (columns: {})",
            schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Appends one file's rows to `table`.
fn read_file(path: &Path, cfg: &ParquetConfig, table: &mut Table) -> Result<()> {
    use ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use ::parquet::arrow::ProjectionMask;
    // Read whole (the table's bytes are kept in memory anyway; a table bigger than memory
    // is read as a stream, docs/streaming.md): a damaged page header whose thrift lengths
    // claim gigabytes is then skipped over in memory, not with a read(2) per step (which
    // took minutes, `tests/fuzz-regressions/parquet-slow-1.parquet`).
    let file = bytes::Bytes::from(std::fs::read(path).map_err(|e| Error::io(path, e))?);
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::data(path, format!("not a readable Parquet file: {e}")))?;
    let schema = builder.schema().clone();
    let find = |name: &str| column_index(&schema, name).map_err(|m| Error::data(path, m));
    let (ii, li) = (find(&cfg.image_column)?, find(&cfg.label_column)?);
    let mask = ProjectionMask::roots(builder.parquet_schema(), [ii, li]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| Error::data(path, format!("cannot read: {e}")))?;
    for batch in reader {
        let batch = batch.map_err(|e| Error::data(path, format!("corrupt Parquet data: {e}")))?;
        let (Some(img), Some(lab)) = (
            batch.column_by_name(&cfg.image_column),
            batch.column_by_name(&cfg.label_column),
        ) else {
            return Err(Error::data(
                path,
                "projected columns missing from a record batch",
            ));
        };
        let images = image_column(img, &cfg.image_column).map_err(|m| Error::data(path, m))?;
        let labels = labels_of(lab, &cfg.label_column).map_err(|m| Error::data(path, m))?;
        for i in 0..images.len() {
            table.spans.push(match images.cell(i) {
                ImageCell::Bytes(v) => {
                    let at = table.blob.len();
                    table.blob.extend_from_slice(v);
                    Stored::Span(at, v.len())
                }
                ImageCell::Path(p) => Stored::Path(p.to_string()),
                ImageCell::Null => Stored::Null,
            });
        }
        table.labels.extend(labels);
    }
    Ok(())
}

fn read_table(path: &Path, cfg: &ParquetConfig) -> Result<Table> {
    let mut table = Table {
        starts: vec![0],
        ..Table::default()
    };
    for f in table_files(path)? {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            read_file(&f, cfg, &mut table)
        }));
        match r {
            Ok(r) => r?,
            Err(p) => {
                return Err(Error::data(
                    &f,
                    format!(
                        "the Parquet reader panicked (corrupt file?): {}",
                        crate::stage::panic_message(&p)
                    ),
                ))
            }
        }
        table.starts.push(table.spans.len());
        table.files.push(f);
    }
    if table.spans.is_empty() {
        return Err(Error::data(path, "the table holds no rows"));
    }
    Ok(table)
}

/// Rows of a table, as a source.
#[derive(Debug, Clone)]
pub struct ParquetSource {
    table: Arc<Table>,
    /// Table rows of this split, in sample-id order.
    rows: Vec<usize>,
    /// Class index of each table row (`None`: null label).
    labels: Arc<Vec<Option<i64>>>,
    classes: usize,
    channels: usize,
    max_pixels: u64,
}

impl Source for ParquetSource {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        self.read(index, None)
    }

    fn get_resized(&self, index: usize, size: crate::pixel::Size) -> Result<Sample> {
        self.read(index, Some(size))
    }

    fn locate(&self, index: usize) -> String {
        match self.rows.get(index) {
            Some(&r) => self.table.locate(r),
            None => format!("#{index}"),
        }
    }

    fn num_classes(&self) -> usize {
        self.classes
    }

    fn shape(&self) -> SourceShape {
        SourceShape::variable(self.channels)
    }
}

impl ParquetSource {
    /// Refuses images whose header claims more than `max_pixels` pixels
    /// (`source.limits.max_pixels`; the default applies otherwise).
    pub fn with_max_pixels(mut self, max_pixels: u64) -> Self {
        self.max_pixels = max_pixels;
        self
    }

    fn read(&self, index: usize, size: Option<crate::pixel::Size>) -> Result<Sample> {
        let row = *self.rows.get(index).ok_or_else(|| Error::Sample {
            sample: format!("#{index}"),
            message: format!("index out of range (0..{})", self.rows.len()),
        })?;
        let err = |message: String| Error::Sample {
            sample: self.table.locate(row),
            message,
        };
        let label = self.labels[row].ok_or_else(|| err("null label".into()))?;
        let file;
        let bytes = match &self.table.spans[row] {
            Stored::Span(off, len) => &self.table.blob[*off..*off + *len],
            Stored::Path(p) => {
                file = read_image_file(p, self.table.folder(row)).map_err(err)?;
                &file[..]
            }
            Stored::Null => return Err(err("null image (neither bytes nor a path)".into())),
        };
        let image =
            decode::decode_limited(bytes, self.channels, size, self.max_pixels).map_err(err)?;
        Ok(Sample {
            id: index as u64,
            label,
            image,
        })
    }
}

/// Class indices for the labels of the tables (integers as they are, or sorted names of
/// the first table); the number of classes.
fn class_indices(tables: &[(&Path, &Table)]) -> Result<(usize, Vec<Vec<Option<i64>>>)> {
    let any_name = tables
        .iter()
        .any(|(_, t)| t.labels.iter().any(|l| matches!(l, Label::Name(_))));
    let any_int = tables
        .iter()
        .any(|(_, t)| t.labels.iter().any(|l| matches!(l, Label::Int(_))));
    if any_name && any_int {
        return Err(Error::data(
            tables[0].0,
            "the label column is integers in one table and strings in another",
        ));
    }
    if !any_name {
        let mut max = -1i64;
        let mut out = Vec::new();
        for (path, t) in tables {
            let mut v = Vec::with_capacity(t.labels.len());
            for (row, l) in t.labels.iter().enumerate() {
                match l {
                    Label::Int(i) if *i < 0 => {
                        return Err(Error::data(
                            path,
                            format!("{}: negative label {i}", t.locate(row)),
                        ))
                    }
                    Label::Int(i) => {
                        max = max.max(*i);
                        v.push(Some(*i));
                    }
                    _ => v.push(None),
                }
            }
            out.push(v);
        }
        return Ok((
            usize::try_from(max).unwrap_or(usize::MAX).saturating_add(1),
            out,
        ));
    }
    let mut names: Vec<&str> = tables[0]
        .1
        .labels
        .iter()
        .filter_map(|l| match l {
            Label::Name(n) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut out = Vec::new();
    for (path, t) in tables {
        let mut v = Vec::with_capacity(t.labels.len());
        for (row, l) in t.labels.iter().enumerate() {
            match l {
                Label::Name(n) => {
                    let i = names.binary_search(&n.as_str()).map_err(|_| {
                        Error::data(
                            path,
                            format!(
                                "{}: class `{n}` does not occur in the training table",
                                t.locate(row)
                            ),
                        )
                    })?;
                    v.push(Some(i as i64));
                }
                _ => v.push(None),
            }
        }
        out.push(v);
    }
    Ok((names.len(), out))
}

/// Opens the training and test splits.
pub fn open_pair(cfg: &ParquetConfig, channels: usize) -> Result<(ParquetSource, ParquetSource)> {
    let train = read_table(&cfg.train, cfg)?;
    let test = match &cfg.test {
        Some(t) => Some(read_table(t, cfg)?),
        None => None,
    };
    let mut tables: Vec<(&Path, &Table)> = vec![(&cfg.train, &train)];
    if let (Some(p), Some(t)) = (&cfg.test, &test) {
        tables.push((p, t));
    }
    let (classes, mut labels) = class_indices(&tables)?;
    let train_labels = Arc::new(labels.remove(0));
    let train_rows = train.spans.len();
    let train = Arc::new(train);
    let source =
        |table: Arc<Table>, rows: Vec<usize>, labels: Arc<Vec<Option<i64>>>| ParquetSource {
            table,
            rows,
            labels,
            classes,
            channels,
            max_pixels: super::Limits::default().max_pixels,
        };
    match test {
        Some(t) => {
            let n = t.spans.len();
            Ok((
                source(train, (0..train_rows).collect(), train_labels),
                source(Arc::new(t), (0..n).collect(), Arc::new(labels.remove(0))),
            ))
        }
        None => {
            // Null labels go to the training split, where the loader reports them.
            let keyed: Vec<i64> = train_labels.iter().map(|l| l.unwrap_or(-1)).collect();
            let (mut tr, te): (Vec<usize>, Vec<usize>) =
                super::fraction_split(&keyed, cfg.test_fraction.unwrap_or(0.0));
            let null_rows: Vec<usize> = te.iter().copied().filter(|&r| keyed[r] < 0).collect();
            let te: Vec<usize> = te.into_iter().filter(|&r| keyed[r] >= 0).collect();
            tr.extend(null_rows);
            tr.sort_unstable();
            Ok((
                source(train.clone(), tr, train_labels.clone()),
                source(train, te, train_labels),
            ))
        }
    }
}

/// Writes a Parquet table in the HF `datasets` layout: `image: struct {bytes, path}` (or a
/// plain binary column with `plain_binary`) and `label: int64`. `None` images or labels are
/// written as nulls. For tests and fixtures; written atomically.
pub fn write_table(
    path: &Path,
    rows: &[(Option<Vec<u8>>, Option<i64>)],
    plain_binary: bool,
) -> Result<()> {
    let rows: Vec<ImageRow> = rows
        .iter()
        .enumerate()
        .map(|(i, (b, l))| ImageRow {
            path: b.as_ref().map(|_| format!("{i}.png")),
            bytes: b.clone(),
            label: *l,
        })
        .collect();
    write_image_table(path, &rows, plain_binary)
}

/// One row of [`write_image_table`].
#[derive(Debug, Clone, Default)]
pub struct ImageRow {
    /// Encoded image bytes (null when `None`).
    pub bytes: Option<Vec<u8>>,
    /// The `path` field of the `Image` struct (null when `None`).
    pub path: Option<String>,
    /// The label (null when `None`).
    pub label: Option<i64>,
}

/// [`write_table`] with the `path` of every row given: a table as `datasets` writes it from
/// local image files has null `bytes` and a `path`. With `plain_binary` paths are dropped.
pub fn write_image_table(path: &Path, rows: &[ImageRow], plain_binary: bool) -> Result<()> {
    let mut out = Vec::new();
    write_image_table_to(&mut out, rows, plain_binary, None).map_err(|e| Error::data(path, e))?;
    crate::io::write_atomic(path, &out)
}

/// Writes the table of [`write_image_table`] to `out`, `row_group` rows per row group
/// (default: the writer's own).
pub(crate) fn write_image_table_to(
    out: &mut Vec<u8>,
    rows: &[ImageRow],
    plain_binary: bool,
    row_group: Option<usize>,
) -> std::result::Result<(), String> {
    use arrow::array::{BinaryArray, Int64Array, RecordBatch, StringArray, StructArray};
    use arrow::datatypes::{Field, Fields, Schema};
    let bytes = Arc::new(BinaryArray::from_iter(
        rows.iter().map(|r| r.bytes.as_deref()),
    ));
    let labels = Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.label)));
    let image: ArrayRef = if plain_binary {
        bytes
    } else {
        let paths = Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.path.as_deref()),
        ));
        let fields = Fields::from(vec![
            Field::new("bytes", DataType::Binary, true),
            Field::new("path", DataType::Utf8, true),
        ]);
        Arc::new(StructArray::new(fields, vec![bytes, paths], None))
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("image", image.data_type().clone(), true),
        Field::new("label", DataType::Int64, true),
    ]));
    let batch =
        RecordBatch::try_new(schema.clone(), vec![image, labels]).map_err(|e| e.to_string())?;
    let props = row_group.map(|n| {
        ::parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(n.max(1)))
            .build()
    });
    let mut w =
        ::parquet::arrow::ArrowWriter::try_new(out, schema, props).map_err(|e| e.to_string())?;
    w.write(&batch).map_err(|e| e.to_string())?;
    w.close().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::decode::encode;
    use crate::source::RawImage;
    use image::ImageFormat;

    fn png(h: usize, w: usize, v: u8) -> Vec<u8> {
        let img = RawImage {
            channels: 3,
            height: h,
            width: w,
            data: vec![v; 3 * h * w],
        };
        encode(&img, ImageFormat::Png).unwrap()
    }

    fn cfg(train: PathBuf) -> ParquetConfig {
        ParquetConfig {
            train,
            test: None,
            test_fraction: Some(0.25),
            image_column: "image".into(),
            label_column: "label".into(),
        }
    }

    #[test]
    fn reads_the_hf_struct_layout_and_plain_binary() {
        let t = tempfile::tempdir().unwrap();
        for plain in [false, true] {
            let f = t.path().join(format!("train-{plain}.parquet"));
            let rows: Vec<_> = (0..8)
                .map(|i| (Some(png(3 + i, 4, i as u8 * 20)), Some((i % 2) as i64)))
                .collect();
            write_table(&f, &rows, plain).unwrap();
            let (train, test) = open_pair(&cfg(f), 3).unwrap();
            assert_eq!((train.len(), test.len()), (6, 2));
            assert_eq!(train.num_classes(), 2);
            for src in [&train, &test] {
                for i in 0..src.len() {
                    let s = src.get(i).unwrap();
                    // Row r has height 3 + r and label r % 2.
                    let row: usize = src.locate(i).rsplit('#').next().unwrap().parse().unwrap();
                    assert_eq!(s.image.height, 3 + row);
                    assert_eq!(s.label, (row % 2) as i64);
                    assert_eq!(s.image.data[0], row as u8 * 20);
                }
            }
        }
    }

    #[test]
    fn a_folder_of_files_and_a_test_table() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("train");
        std::fs::create_dir(&d).unwrap();
        write_table(
            &d.join("b.parquet"),
            &[(Some(png(2, 2, 1)), Some(3))],
            false,
        )
        .unwrap();
        write_table(
            &d.join("a.parquet"),
            &[(Some(png(2, 2, 2)), Some(0))],
            false,
        )
        .unwrap();
        let tf = t.path().join("test.parquet");
        write_table(&tf, &[(Some(png(2, 2, 3)), Some(1))], true).unwrap();
        let mut c = cfg(d);
        c.test_fraction = None;
        c.test = Some(tf);
        let (train, test) = open_pair(&c, 1).unwrap();
        assert_eq!(train.num_classes(), 4);
        assert!(train.locate(0).ends_with("a.parquet#0"));
        assert_eq!(train.get(1).unwrap().label, 3);
        assert_eq!(test.get(0).unwrap().image.channels, 1);
    }

    #[test]
    fn bad_tables_fail_at_open_and_bad_rows_at_get() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("t.parquet");
        write_table(
            &f,
            &[
                (Some(png(2, 2, 1)), Some(0)),
                (None, Some(1)),
                (Some(b"garbage".to_vec()), Some(0)),
                (Some(png(2, 2, 1)), None),
            ],
            false,
        )
        .unwrap();
        let mut c = cfg(f.clone());
        c.test_fraction = Some(0.0);
        let (train, _) = open_pair(&c, 3).unwrap();
        assert_eq!(train.len(), 4);
        assert!(train.get(0).is_ok());
        let e = train.get(1).unwrap_err().to_string();
        assert!(e.contains("t.parquet#1") && e.contains("null image"), "{e}");
        let e = train.get(2).unwrap_err().to_string();
        assert!(
            e.contains("t.parquet#2") && e.contains("not a JPEG or PNG"),
            "{e}"
        );
        let e = train.get(3).unwrap_err().to_string();
        assert!(e.contains("null label"), "{e}");

        c.label_column = "class".into();
        let e = open_pair(&c, 3).unwrap_err().to_string();
        assert!(
            e.contains("no column `class`") && e.contains("image, label"),
            "{e}"
        );
        c.label_column = "image".into();
        let e = open_pair(&c, 3).unwrap_err().to_string();
        assert!(e.contains("expected integer class indices"), "{e}");
        c.label_column = "label".into();
        c.image_column = "label".into();
        let e = open_pair(&c, 3).unwrap_err().to_string();
        assert!(e.contains("expected binary image bytes"), "{e}");

        let bytes = std::fs::read(&f).unwrap();
        std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
        let e = open_pair(&cfg(f.clone()), 3).unwrap_err().to_string();
        assert!(e.contains("t.parquet") && e.contains("Parquet"), "{e}");
        std::fs::write(&f, b"PAR1 this is not parquet at all PAR1").unwrap();
        let e = open_pair(&cfg(f.clone()), 3).unwrap_err().to_string();
        assert!(e.contains("t.parquet"), "{e}");
        std::fs::write(&f, b"").unwrap();
        let e = open_pair(&cfg(f), 3).unwrap_err().to_string();
        assert!(e.contains("t.parquet"), "{e}");
    }

    /// A table as `datasets` writes it from local image files: null bytes and a path,
    /// relative (against the table's folder, then the working directory) or absolute.
    #[test]
    fn null_bytes_with_a_path_read_the_file() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("imgs")).unwrap();
        std::fs::write(t.path().join("imgs/a.png"), png(5, 4, 9)).unwrap();
        let abs = t.path().join("abs.png");
        std::fs::write(&abs, png(6, 4, 9)).unwrap();
        let row = |path: Option<String>, label| ImageRow {
            bytes: None,
            path,
            label: Some(label),
        };
        let f = t.path().join("t.parquet");
        write_image_table(
            &f,
            &[
                row(Some("imgs/a.png".into()), 0),
                row(Some(abs.display().to_string()), 1),
                row(Some("imgs/missing.png".into()), 0),
                row(None, 1),
            ],
            false,
        )
        .unwrap();
        let mut c = cfg(f);
        c.test_fraction = Some(0.0);
        let (train, _) = open_pair(&c, 3).unwrap();
        assert_eq!(train.get(0).unwrap().image.height, 5);
        assert_eq!(train.get(1).unwrap().image.height, 6);
        let e = train.get(2).unwrap_err().to_string();
        assert!(
            e.contains("t.parquet#2") && e.contains("imgs/missing.png") && e.contains("looked in"),
            "{e}"
        );
        let e = train.get(3).unwrap_err().to_string();
        assert!(e.contains("null image"), "{e}");
    }
}
