//! Parquet shards read as a stream: row group by row group, the same columns as the indexed
//! `parquet` source (an `Image` struct `{bytes, path}` or a binary column; integer labels).
//!
//! Only the image and label columns are read, one record batch at a time, so memory holds
//! one row group's images, not the table. A row's key is its row number in the shard. A row
//! with null `bytes` and a `path` (a table `datasets` wrote from local image files) names an
//! image file: a relative path is resolved against the shard's folder, then the working
//! directory; the file is read by the decode worker.
use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use parquet::file::reader::ChunkReader;

use super::{Payload, RawRecord};
use crate::source::parquet::{column_index, image_column, resolve_image_path, ImageCell};

/// The columns of a Parquet shard.
#[derive(Debug, Clone)]
pub struct ParquetLayout {
    /// The image column.
    pub image_column: String,
    /// The label column (integers).
    pub label_column: String,
}

/// Calls `f` with every row of the shard in `input`, in order, until it returns false. With
/// `labels_only` the image column is not read (the rows' images are [`Payload::Missing`]).
/// `folder` is where relative image paths are looked for first. `Err(message)` is damage:
/// the rows before it were delivered.
pub fn for_each_row<R: ChunkReader + 'static>(
    input: R,
    layout: &ParquetLayout,
    folder: Option<&Path>,
    labels_only: bool,
    mut f: impl FnMut(RawRecord) -> bool,
) -> std::result::Result<(), String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(input)
        .map_err(|e| format!("not a readable Parquet file: {e}"))?;
    let schema = builder.schema().clone();
    let find = |name: &str| column_index(&schema, name);
    let li = find(&layout.label_column)?;
    let roots = if labels_only {
        vec![li]
    } else {
        vec![find(&layout.image_column)?, li]
    };
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(256)
        .build()
        .map_err(|e| format!("cannot read: {e}"))?;
    let mut row = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| format!("corrupt Parquet data: {e}"))?;
        let labels = batch
            .column_by_name(&layout.label_column)
            .ok_or("the label column is missing from a record batch")?;
        if !labels.data_type().is_integer() {
            return Err(format!(
                "column `{}` is {}: a streamed table needs integer class indices",
                layout.label_column,
                labels.data_type()
            ));
        }
        let labels = arrow::compute::cast(labels, &DataType::Int64).map_err(|e| e.to_string())?;
        let labels = labels.as_primitive::<Int64Type>();
        let images = if labels_only {
            None
        } else {
            let col = batch
                .column_by_name(&layout.image_column)
                .ok_or("the image column is missing from a record batch")?;
            Some(image_column(col, &layout.image_column)?)
        };
        for i in 0..batch.num_rows() {
            let label = if labels.is_null(i) {
                Err("null label".to_string())
            } else if labels.value(i) < 0 {
                Err(format!("negative label {}", labels.value(i)))
            } else {
                Ok(labels.value(i))
            };
            let image = match images.as_ref().map(|c| c.cell(i)) {
                None => Payload::Missing("not read".into()),
                Some(ImageCell::Bytes(b)) => Payload::Bytes(b.to_vec()),
                Some(ImageCell::Path(p)) => Payload::File(resolve_image_path(p, folder)),
                Some(ImageCell::Null) => {
                    Payload::Missing("null image (neither bytes nor a path)".into())
                }
            };
            let rec = RawRecord {
                key: row.to_string(),
                label,
                image,
            };
            row += 1;
            if !f(rec) {
                return Ok(());
            }
        }
    }
    Ok(())
}
