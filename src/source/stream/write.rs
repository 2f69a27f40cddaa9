//! Writing an indexed source as shards (`saln-pipe shard`): convert once, stream after.
//!
//! Images are stored as PNG (lossless: the pixels the source decodes to), labels as class
//! indices. WebDataset shards hold `KEY.png` + `KEY.cls` per sample, with the key the
//! sample's zero-padded id; Parquet shards hold the `datasets` `Image` struct
//! `{bytes, path}` (the path is the key) and an `int64` label, 256 rows per row group. Each
//! shard is written atomically.
use std::path::{Path, PathBuf};

use super::StreamFormat;
use crate::error::{Error, Result};
use crate::source::Source;

/// Rows per row group of the Parquet shards written here.
pub const ROW_GROUP: usize = 256;

/// Writes every sample of `source` into `dir` as `{prefix}-NNNNNN.tar` (or `.parquet`)
/// shards of `per_shard` samples each; returns the shard paths. Samples that cannot be read
/// are an error naming them (fix or drop them before converting).
///
/// ```
/// use saln::source::stream::{self, write::write_shards, StreamConfig, StreamFormat};
/// use saln::source::{MemorySource, OnError, RawImage, Sample, Source};
/// let img = |v| RawImage { channels: 1, height: 2, width: 2, data: vec![v; 4] };
/// let samples = (0..5).map(|i| Sample { id: i, label: (i % 2) as i64, image: img(i as u8) }).collect();
/// let src = MemorySource::new("mem", samples, 2);
/// let dir = tempfile::tempdir()?;
/// let shards = write_shards(&src, dir.path(), "train", StreamFormat::Webdataset, 2)?;
/// assert_eq!(shards.len(), 3);
/// let names: Vec<String> = shards.iter().map(|p| p.display().to_string()).collect();
/// let cfg = StreamConfig::new(StreamFormat::Webdataset, names.clone(), names);
/// let (train, test) = stream::open_pair(&cfg, 1, OnError::Fail, &saln::source::Limits::default())?;
/// assert_eq!((train.len(), train.num_classes()), (5, 2));
/// assert_eq!(test.get(3)?.label, 1);
/// assert!(test.locate(3).ends_with("train-000001.tar#000000003"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_shards(
    source: &dyn Source,
    dir: &Path,
    prefix: &str,
    format: StreamFormat,
    per_shard: usize,
) -> Result<Vec<PathBuf>> {
    if per_shard == 0 {
        return Err(Error::config("--per-shard", "must be at least 1"));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let n = source.len();
    let width = n.to_string().len().max(9);
    let mut out = Vec::new();
    for (k, start) in (0..n).step_by(per_shard).enumerate() {
        let end = (start + per_shard).min(n);
        let mut rows = Vec::with_capacity(end - start);
        for i in start..end {
            let s = source.get(i)?;
            let png = crate::source::decode::encode(&s.image, image::ImageFormat::Png).map_err(
                |message| Error::Sample {
                    sample: source.locate(i),
                    message,
                },
            )?;
            rows.push((format!("{:0width$}", s.id), png, s.label));
        }
        let (ext, bytes) = match format {
            StreamFormat::Webdataset => {
                let mut buf = Vec::new();
                super::webdataset::write_tar(
                    &mut buf,
                    rows.into_iter().map(|(key, png, l)| (key, "png", png, l)),
                )
                .map_err(|e| Error::io(dir, e))?;
                ("tar", buf)
            }
            StreamFormat::Parquet => {
                let rows: Vec<crate::source::parquet::ImageRow> = rows
                    .into_iter()
                    .map(|(key, png, l)| crate::source::parquet::ImageRow {
                        bytes: Some(png),
                        path: Some(format!("{key}.png")),
                        label: Some(l),
                    })
                    .collect();
                let mut buf = Vec::new();
                crate::source::parquet::write_image_table_to(
                    &mut buf,
                    &rows,
                    false,
                    Some(ROW_GROUP),
                )
                .map_err(|m| Error::data(dir, m))?;
                ("parquet", buf)
            }
        };
        let path = dir.join(format!("{prefix}-{k:06}.{ext}"));
        crate::io::write_atomic(&path, &bytes)?;
        out.push(path);
    }
    Ok(out)
}
