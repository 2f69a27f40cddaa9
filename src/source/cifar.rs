//! CIFAR-10 in its binary form (`cifar-10-binary.tar.gz`, unpacked).
//!
//! Each file is a run of 3073-byte records: one label byte (0..=9), then 3072 pixel bytes,
//! the 1024 red values of the 32x32 image row by row, then the green, then the blue: exactly
//! saln's CHW layout, so a sample is a slice copy. The five training files
//! (`data_batch_1.bin` .. `data_batch_5.bin`, 10 000 records each) and `test_batch.bin` are
//! read whole into memory (150 MB for the training split).
//!
//! A file whose size is not a whole number of records (truncated), an empty file, or a label
//! byte above 9 fails when the source is opened, naming the file (and the record).
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use super::{RawImage, Sample, Source, SourceShape};
use crate::error::Issues;
use crate::error::{Error, Result};

/// Bytes of one record: a label byte and 3 x 32 x 32 pixels.
pub const RECORD: usize = 1 + PIXELS;
const PIXELS: usize = 3 * 32 * 32;
const CLASSES: usize = 10;

/// The CIFAR-10 binary batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cifar10Config {
    /// Folder of the `.bin` files: the `cifar-10-batches-bin` folder of the unpacked archive,
    /// or its parent.
    pub dir: PathBuf,
    /// Override: training files, relative to `dir` (default `data_batch_1.bin` ..
    /// `data_batch_5.bin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_files: Option<Vec<PathBuf>>,
    /// Override: test files (default `test_batch.bin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_files: Option<Vec<PathBuf>>,
}

impl Cifar10Config {
    /// Adds this block's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        for (key, files) in [
            ("source.cifar10.train_files", &self.train_files),
            ("source.cifar10.test_files", &self.test_files),
        ] {
            if let Some(f) = files {
                v.check(!f.is_empty(), key, || "must name at least one file".into());
            }
        }
    }
}

/// One split: the records of one or more batch files.
#[derive(Debug)]
pub struct CifarSource {
    /// `(file, records)` per file, in order.
    files: Vec<(PathBuf, Vec<u8>)>,
    /// Index of the first sample of each file, plus the total at the end.
    starts: Vec<usize>,
}

impl CifarSource {
    /// Reads and checks `paths`.
    pub fn open(paths: &[PathBuf]) -> Result<CifarSource> {
        let mut files = Vec::with_capacity(paths.len());
        let mut starts = vec![0];
        for path in paths {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            if bytes.is_empty() {
                return Err(Error::data(path, "empty file (0 bytes)"));
            }
            if bytes.len() % RECORD != 0 {
                return Err(Error::data(
                    path,
                    format!(
                        "{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records \
                         (truncated, or not a CIFAR-10 binary batch; CIFAR-100 has 2 label bytes)",
                        bytes.len()
                    ),
                ));
            }
            if let Some(r) = bytes
                .chunks_exact(RECORD)
                .position(|r| r[0] as usize >= CLASSES)
            {
                return Err(Error::data(
                    path,
                    format!(
                        "record {r}: label byte {} is not a CIFAR-10 class (0..=9)",
                        bytes[r * RECORD]
                    ),
                ));
            }
            starts.push(starts.last().copied().unwrap_or(0) + bytes.len() / RECORD);
            files.push((path.clone(), bytes));
        }
        Ok(CifarSource { files, starts })
    }

    /// `(file index, record index in the file)` of sample `index`.
    fn find(&self, index: usize) -> Option<(usize, usize)> {
        if index >= self.len() {
            return None;
        }
        let f = self.starts.partition_point(|&s| s <= index) - 1;
        Some((f, index - self.starts[f]))
    }
}

impl Source for CifarSource {
    fn len(&self) -> usize {
        self.starts.last().copied().unwrap_or(0)
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let (f, r) = self.find(index).ok_or_else(|| Error::Sample {
            sample: format!("#{index}"),
            message: format!("index out of range (0..{})", self.len()),
        })?;
        let rec = &self.files[f].1[r * RECORD..(r + 1) * RECORD];
        Ok(Sample {
            id: index as u64,
            label: rec[0] as i64,
            image: RawImage {
                channels: 3,
                height: 32,
                width: 32,
                data: rec[1..].to_vec(),
            },
        })
    }

    fn locate(&self, index: usize) -> String {
        match self.find(index) {
            Some((f, r)) => format!("{}#{r}", self.files[f].0.display()),
            None => format!("#{index}"),
        }
    }

    fn num_classes(&self) -> usize {
        CLASSES
    }

    fn shape(&self) -> SourceShape {
        SourceShape::fixed(3, 32, 32)
    }
}

/// The folder holding the batches: `dir`, or `dir/cifar-10-batches-bin` when the files are
/// there (the archive unpacks into that folder).
fn batches_dir(dir: &Path) -> PathBuf {
    let nested = dir.join("cifar-10-batches-bin");
    if !dir.join("test_batch.bin").exists() && nested.join("test_batch.bin").exists() {
        nested
    } else {
        dir.to_path_buf()
    }
}

/// Opens the training and test splits.
pub fn open_pair(cfg: &Cifar10Config) -> Result<(CifarSource, CifarSource)> {
    let dir = batches_dir(&cfg.dir);
    let resolve = |files: &Option<Vec<PathBuf>>, default: Vec<String>| -> Vec<PathBuf> {
        match files {
            Some(f) => f.iter().map(|p| dir.join(p)).collect(),
            None => default.into_iter().map(|n| dir.join(n)).collect(),
        }
    };
    let train = resolve(
        &cfg.train_files,
        (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
    );
    let test = resolve(&cfg.test_files, vec!["test_batch.bin".into()]);
    for p in train.iter().chain(&test) {
        if !p.exists() {
            return Err(Error::data(
                p,
                "not found: `source.cifar10.dir` must hold the CIFAR-10 binary batches \
                 (data_batch_1.bin .. data_batch_5.bin, test_batch.bin)",
            ));
        }
    }
    Ok((CifarSource::open(&train)?, CifarSource::open(&test)?))
}

/// Writes a CIFAR-10 binary batch of `(label, 3072 CHW pixels)` records: for tests and
/// fixtures.
pub fn write_batch(path: &Path, records: &[(u8, Vec<u8>)]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(records.len() * RECORD);
    for (label, px) in records {
        assert_eq!(px.len(), PIXELS, "a CIFAR-10 image is 3072 bytes");
        out.push(*label);
        out.extend_from_slice(px);
    }
    std::fs::write(path, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(label: u8, seed: u8) -> (u8, Vec<u8>) {
        (label, (0..PIXELS).map(|i| (i as u8) ^ seed).collect())
    }

    fn write_set(dir: &Path, per_file: usize) {
        for i in 1..=5 {
            let recs: Vec<_> = (0..per_file)
                .map(|r| record(((i + r) % 10) as u8, (i * 10 + r) as u8))
                .collect();
            write_batch(&dir.join(format!("data_batch_{i}.bin")), &recs).unwrap();
        }
        write_batch(&dir.join("test_batch.bin"), &[record(9, 1), record(0, 2)]).unwrap();
    }

    #[test]
    fn reads_the_binary_layout_across_files() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&d).unwrap();
        write_set(&d, 3);
        // The parent folder works too.
        let cfg = Cifar10Config {
            dir: t.path().to_path_buf(),
            train_files: None,
            test_files: None,
        };
        let (train, test) = open_pair(&cfg).unwrap();
        assert_eq!((train.len(), test.len()), (15, 2));
        assert_eq!(train.shape(), SourceShape::fixed(3, 32, 32));
        // Sample 7 is record 1 of data_batch_3.bin: label (3 + 1) % 10, pixels i ^ 31.
        let s = train.get(7).unwrap();
        assert_eq!(s.label, 4);
        assert_eq!(s.image.data, record(0, 31).1);
        assert!(train.locate(7).ends_with("data_batch_3.bin#1"));
        assert_eq!(test.get(0).unwrap().label, 9);
        assert!(train.get(15).is_err());
    }

    #[test]
    fn malformed_batches_are_errors_naming_the_file() {
        let t = tempfile::tempdir().unwrap();
        write_set(t.path(), 2);
        let cfg = Cifar10Config {
            dir: t.path().to_path_buf(),
            train_files: None,
            test_files: None,
        };
        let f = t.path().join("data_batch_2.bin");
        let bytes = std::fs::read(&f).unwrap();
        std::fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
        let e = open_pair(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("data_batch_2.bin") && e.contains("truncated"),
            "{e}"
        );
        let mut bad = bytes.clone();
        bad[RECORD] = 12;
        std::fs::write(&f, &bad).unwrap();
        let e = open_pair(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("data_batch_2.bin") && e.contains("record 1") && e.contains("12"),
            "{e}"
        );
        std::fs::write(&f, b"").unwrap();
        let e = open_pair(&cfg).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        std::fs::remove_file(&f).unwrap();
        let e = open_pair(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("data_batch_2.bin") && e.contains("not found"),
            "{e}"
        );
    }
}
