//! IDX files (the MNIST family: MNIST, Fashion-MNIST, KMNIST), gzipped or not.
//!
//! Layout: a big-endian header `0x00 0x00 <type> <ndim>` then `ndim` u32 sizes, then the
//! data. Images are type `0x08` (u8) with 3 dims `(n, rows, cols)`; labels are `0x08` with
//! one dim `(n)`. The whole file is read into memory (Fashion-MNIST is 47 MB unpacked):
//! sample access is then a slice copy, which keeps the decode workers trivially parallel.
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{RawImage, Sample, Source, SourceShape};
use crate::error::{Error, Result};

/// One IDX split: an images file and a labels file.
#[derive(Debug)]
pub struct IdxSource {
    images: Vec<u8>,
    labels: Vec<u8>,
    n: usize,
    height: usize,
    width: usize,
    classes: usize,
    images_path: PathBuf,
}

/// Reads a file, gunzipping it when it starts with the gzip magic bytes.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::data(path, format!("corrupt gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX header; returns the dims and the payload.
fn parse_idx<'a>(path: &Path, bytes: &'a [u8], want_dims: usize) -> Result<(Vec<usize>, &'a [u8])> {
    if bytes.len() < 4 {
        return Err(Error::data(
            path,
            format!("{} bytes is too short for an IDX header", bytes.len()),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(Error::data(path, "not an IDX file (bad magic number)"));
    }
    if bytes[2] != 0x08 {
        return Err(Error::data(
            path,
            format!("IDX element type 0x{:02x} is not u8 (0x08)", bytes[2]),
        ));
    }
    let ndim = bytes[3] as usize;
    if ndim != want_dims {
        return Err(Error::data(
            path,
            format!("IDX file has {ndim} dimensions, expected {want_dims}"),
        ));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(Error::data(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let expected: usize = dims.iter().product();
    let payload = &bytes[header..];
    if payload.len() != expected {
        return Err(Error::data(
            path,
            format!(
                "IDX header announces {dims:?} = {expected} bytes of data but the file holds {} (truncated or corrupt)",
                payload.len()
            ),
        ));
    }
    Ok((dims, payload))
}

impl IdxSource {
    /// Opens an images file and its labels file. Errors name the file at fault.
    pub fn open(images_path: &Path, labels_path: &Path) -> Result<IdxSource> {
        let img_bytes = read_maybe_gz(images_path)?;
        let (dims, pixels) = parse_idx(images_path, &img_bytes, 3)?;
        let lab_bytes = read_maybe_gz(labels_path)?;
        let (ldims, labels) = parse_idx(labels_path, &lab_bytes, 1)?;
        let (n, height, width) = (dims[0], dims[1], dims[2]);
        if ldims[0] != n {
            return Err(Error::data(
                labels_path,
                format!(
                    "{} labels for {n} images in {}",
                    ldims[0],
                    images_path.display()
                ),
            ));
        }
        if n == 0 || height == 0 || width == 0 {
            return Err(Error::data(
                images_path,
                format!("empty image set {dims:?}"),
            ));
        }
        let classes = labels.iter().copied().max().unwrap_or(0) as usize + 1;
        Ok(IdxSource {
            images: pixels.to_vec(),
            labels: labels.to_vec(),
            n,
            height,
            width,
            classes,
            images_path: images_path.to_path_buf(),
        })
    }
}

impl Source for IdxSource {
    fn len(&self) -> usize {
        self.n
    }

    fn get(&self, index: usize) -> Result<Sample> {
        if index >= self.n {
            return Err(Error::Sample {
                sample: self.locate(index),
                message: format!("index out of range (0..{})", self.n),
            });
        }
        let px = self.height * self.width;
        Ok(Sample {
            id: index as u64,
            label: self.labels[index] as i64,
            image: RawImage {
                channels: 1,
                height: self.height,
                width: self.width,
                data: self.images[index * px..(index + 1) * px].to_vec(),
            },
        })
    }

    fn locate(&self, index: usize) -> String {
        format!("{}#{index}", self.images_path.display())
    }

    fn num_classes(&self) -> usize {
        self.classes.max(10)
    }

    fn shape(&self) -> SourceShape {
        SourceShape::fixed(1, self.height, self.width)
    }
}

/// Resolves a file of the standard layout: the override if given (relative to `dir`), else
/// `dir/name.gz`, else `dir/name`.
fn resolve(dir: &Path, name: &str, over: &Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = over {
        return Ok(if p.is_absolute() {
            p.clone()
        } else {
            dir.join(p)
        });
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.exists() {
        return Ok(gz);
    }
    let plain = dir.join(name);
    if plain.exists() {
        return Ok(plain);
    }
    Err(Error::Data {
        path: gz,
        message: format!(
            "not found (nor {}). For Fashion-MNIST on Debian: `apt-get install dataset-fashion-mnist`; \
             elsewhere put the four IDX files in one folder and set `source.idx.dir` to it",
            plain.display()
        ),
    })
}

/// Opens the train and test splits of an IDX data set.
pub fn open_pair(cfg: &IdxConfig) -> Result<(IdxSource, IdxSource)> {
    let d = &cfg.dir;
    let train = IdxSource::open(
        &resolve(d, "train-images-idx3-ubyte", &cfg.train_images)?,
        &resolve(d, "train-labels-idx1-ubyte", &cfg.train_labels)?,
    )?;
    let test = IdxSource::open(
        &resolve(d, "t10k-images-idx3-ubyte", &cfg.test_images)?,
        &resolve(d, "t10k-labels-idx1-ubyte", &cfg.test_labels)?,
    )?;
    if (train.height, train.width) != (test.height, test.width) {
        return Err(Error::data(
            &test.images_path,
            format!(
                "test images are {}x{} but training images are {}x{}",
                test.height, test.width, train.height, train.width
            ),
        ));
    }
    Ok((train, test))
}

/// Writes an IDX images file and a labels file (optionally gzipped): used by tests and
/// fixtures to make small data sets.
pub fn write_pair(
    images_path: &Path,
    labels_path: &Path,
    images: &[u8],
    labels: &[u8],
    height: usize,
    width: usize,
    gzip: bool,
) -> std::io::Result<()> {
    let n = labels.len();
    assert_eq!(
        images.len(),
        n * height * width,
        "images and labels disagree"
    );
    let mut img = vec![0, 0, 8, 3];
    for d in [n, height, width] {
        img.extend_from_slice(&(d as u32).to_be_bytes());
    }
    img.extend_from_slice(images);
    let mut lab = vec![0, 0, 8, 1];
    lab.extend_from_slice(&(n as u32).to_be_bytes());
    lab.extend_from_slice(labels);
    for (path, bytes) in [(images_path, img), (labels_path, lab)] {
        if gzip {
            use std::io::Write;
            let f = std::fs::File::create(path)?;
            let mut enc = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            enc.write_all(&bytes)?;
            enc.finish()?;
        } else {
            std::fs::write(path, bytes)?;
        }
    }
    Ok(())
}

// ---- configuration ----

/// Files of an IDX data set (Fashion-MNIST, MNIST, KMNIST).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdxConfig {
    /// Folder holding the four standard files (`train-images-idx3-ubyte[.gz]`,
    /// `train-labels-idx1-ubyte[.gz]`, `t10k-images-idx3-ubyte[.gz]`,
    /// `t10k-labels-idx1-ubyte[.gz]`). Debian's `dataset-fashion-mnist` puts them in
    /// `/usr/share/datasets/fashion-mnist`.
    pub dir: PathBuf,
    /// Override: training images file (relative paths are taken from `dir`).
    #[serde(default)]
    pub train_images: Option<PathBuf>,
    /// Override: training labels file.
    #[serde(default)]
    pub train_labels: Option<PathBuf>,
    /// Override: test images file.
    #[serde(default)]
    pub test_images: Option<PathBuf>,
    /// Override: test labels file.
    #[serde(default)]
    pub test_labels: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(dir: &Path, gzip: bool) -> (PathBuf, PathBuf) {
        let (ip, lp) = (dir.join("img"), dir.join("lab"));
        let images: Vec<u8> = (0..3 * 4 * 5).map(|i| i as u8).collect();
        write_pair(&ip, &lp, &images, &[0, 1, 2], 4, 5, gzip).unwrap();
        (ip, lp)
    }

    #[test]
    fn reads_plain_and_gzipped_files_alike() {
        let t = tempfile::tempdir().unwrap();
        for gzip in [false, true] {
            let sub = t.path().join(format!("{gzip}"));
            std::fs::create_dir(&sub).unwrap();
            let (ip, lp) = tiny(&sub, gzip);
            let s = IdxSource::open(&ip, &lp).unwrap();
            assert_eq!(s.len(), 3);
            assert_eq!(s.shape(), SourceShape::fixed(1, 4, 5));
            let x = s.get(2).unwrap();
            assert_eq!(x.label, 2);
            assert_eq!(x.id, 2);
            assert_eq!(x.image.data[0], 40);
            assert!(s.get(3).is_err());
        }
    }

    #[test]
    fn truncated_file_is_an_error_naming_it() {
        let t = tempfile::tempdir().unwrap();
        let (ip, lp) = tiny(t.path(), false);
        let bytes = std::fs::read(&ip).unwrap();
        std::fs::write(&ip, &bytes[..bytes.len() - 7]).unwrap();
        let e = IdxSource::open(&ip, &lp).unwrap_err().to_string();
        assert!(e.contains("img") && e.contains("truncated"), "{e}");
    }

    #[test]
    fn corrupt_gzip_and_bad_magic_are_errors() {
        let t = tempfile::tempdir().unwrap();
        let (ip, lp) = tiny(t.path(), true);
        let mut bytes = std::fs::read(&ip).unwrap();
        let mid = bytes.len() / 2;
        bytes.truncate(mid);
        std::fs::write(&ip, &bytes).unwrap();
        let e = IdxSource::open(&ip, &lp).unwrap_err().to_string();
        assert!(e.contains("gzip"), "{e}");
        std::fs::write(&ip, b"\x01\x02\x03\x04hello").unwrap();
        let e = IdxSource::open(&ip, &lp).unwrap_err().to_string();
        assert!(e.contains("magic"), "{e}");
    }

    #[test]
    fn label_count_mismatch_names_the_labels_file() {
        let t = tempfile::tempdir().unwrap();
        let (ip, _) = tiny(t.path(), false);
        let lp2 = t.path().join("lab2");
        let mut lab = vec![0, 0, 8, 1];
        lab.extend_from_slice(&2u32.to_be_bytes());
        lab.extend_from_slice(&[0, 1]);
        std::fs::write(&lp2, lab).unwrap();
        let e = IdxSource::open(&ip, &lp2).unwrap_err().to_string();
        assert!(
            e.contains("lab2") && e.contains("2 labels for 3 images"),
            "{e}"
        );
    }

    #[test]
    fn missing_folder_says_what_to_install() {
        let cfg = IdxConfig {
            dir: "/nonexistent/fmnist".into(),
            train_images: None,
            train_labels: None,
            test_images: None,
            test_labels: None,
        };
        let e = open_pair(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("dataset-fashion-mnist") && e.contains("source.idx.dir"),
            "{e}"
        );
    }
}
