//! Sources: where samples come from.
//!
//! A [`Source`] is an indexable collection of labelled images with stable sample ids. The
//! data set is split once into the learner's share and the reference model's held-out share
//! ([`Split`]); the test split is a separate `Source`.
//!
//! | file | config block | format |
//! |---|---|---|
//! | [`idx`] | `idx` | MNIST-family IDX files, gzipped or not |
//! | [`cifar`] | `cifar10` | CIFAR-10 binary batches (`data_batch_1.bin` ... `test_batch.bin`) |
//! | [`folder`] | `image_folder` | one sub-folder of JPEG/PNG files per class (torchvision `ImageFolder`) |
//! | [`list`] | `list` | a CSV or JSONL file of image path + label |
//! | [`parquet`] | `parquet` | a Parquet table of encoded images + labels (HF `datasets` layout) |
//! | [`selection`] | `selection` | a curated set read back from a Parquet export (wraps any format above) |
//! | [`stream`] | `stream` | WebDataset tar shards or Parquet shards, local or in object storage, read in order (no random access) |
//!
//! Shared pieces: [`decode`] turns JPEG/PNG bytes into a [`RawImage`] of the configured
//! channel count (guarded against decoder panics); [`files`] is the source of image files
//! behind `image_folder` and `list`. Sources of fixed-size images (IDX, CIFAR-10) say so in
//! [`Source::shape`]; sources of image files do not know their sizes, and the augmentation
//! op list must bring every image to one size (see `augment::Augmenter::output_shape`).
//!
//! A malformed container (a truncated IDX or CIFAR file, a Parquet file that is not one, a
//! list with a bad line) fails when the source is opened, naming the file. A bad *image*
//! (corrupt, truncated, empty, unreadable) is a per-sample error from [`Source::get`], which
//! the loader skips or fails on according to `on_error`.
use crate::error::Issues;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::rng::{self, Rng};

pub use crate::pixel::{RawImage, SourceShape};

pub mod cifar;
pub mod decode;
pub mod exported;
pub mod files;
pub mod folder;
pub mod idx;
pub mod list;
pub mod parquet;
pub mod repeat;
pub mod selection;
pub mod stream;

/// One labelled sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Stable id: the sample's index in its source file.
    pub id: u64,
    /// Class label in `0..num_classes`.
    pub label: i64,
    /// The pixels.
    pub image: RawImage,
}

/// An indexable data set. Implementations are shared by the decode workers, hence
/// `Send + Sync`; `get` must be cheap to call from several threads at once.
pub trait Source: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// True when there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sample `index` (`0..len()`), or an [`Error::Sample`] naming it.
    fn get(&self, index: usize) -> Result<Sample>;
    /// Sample `index` resized to `size` (bilinear, antialiased: exactly what the augmentation
    /// op `resize: { size }` computes). The loader asks for this when the op list starts with
    /// `resize`: sources of encoded images override it to resize the decoder's interleaved
    /// pixels before splitting them into planes, which saves a full-size copy. The default
    /// returns [`Source::get`] unchanged and lets the op do the resizing.
    fn get_resized(&self, index: usize, size: crate::pixel::Size) -> Result<Sample> {
        let _ = size;
        self.get(index)
    }
    /// Where sample `index` comes from, for messages and exports (`file#index`).
    fn locate(&self, index: usize) -> String;
    /// Number of classes.
    fn num_classes(&self) -> usize;
    /// Shape of the stored images: channels, and the size when all images share one.
    /// What reaches the model is `augment::Augmenter::output_shape` of this.
    fn shape(&self) -> SourceShape;
    /// The streaming source behind this one, if it is one: the loader then reads it in
    /// order ([`stream::StreamSource::reader`]) instead of calling `get`.
    fn as_stream(&self) -> Option<&stream::StreamSource> {
        None
    }
}

/// The training data split into the learner's share and the reference model's share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Indices the learner trains on (sorted).
    pub learner: Vec<usize>,
    /// Indices held out for the reference model (sorted); disjoint from `learner`.
    pub holdout: Vec<usize>,
}

impl Split {
    /// Splits `0..n`: a permutation drawn from `seed` puts `holdout` samples in the held-out
    /// share, the rest (at most `limit`) in the learner's. The held-out share does not depend
    /// on `limit`, so a quick run and a full run use the same reference model.
    ///
    /// ```
    /// let s = saln::source::Split::new(100, 20, None, 7).unwrap();
    /// assert_eq!((s.learner.len(), s.holdout.len()), (80, 20));
    /// assert!(s.learner.iter().all(|i| !s.holdout.contains(i)));
    /// ```
    pub fn new(n: usize, holdout: usize, limit: Option<usize>, seed: u64) -> Result<Split> {
        if holdout >= n {
            return Err(Error::config(
                "source.holdout",
                format!(
                    "holds out {holdout} of {n} training samples, leaving none for the learner"
                ),
            ));
        }
        let mut order: Vec<usize> = (0..n).collect();
        Rng::derive(seed, &[rng::SPLIT]).shuffle(&mut order);
        let mut held: Vec<usize> = order[..holdout].to_vec();
        let mut learner: Vec<usize> = order[holdout..].to_vec();
        if let Some(limit) = limit {
            learner.truncate(limit);
        }
        held.sort_unstable();
        learner.sort_unstable();
        Ok(Split {
            learner,
            holdout: held,
        })
    }
}

impl Split {
    /// The split a pipeline uses for a training set of `n` samples: the section's
    /// `holdout` and `limit`, and the run's `seed`.
    ///
    /// With `source.repeat: k` the training source is [`repeat::Repeated`] (`n` is `k` times
    /// the distinct samples): the split is drawn over the distinct samples, as without it,
    /// and the learner's share gets its `k - 1` further copies (`c * n / k + i`); the held-out
    /// share holds no copy.
    pub fn for_source(n: usize, cfg: &SourceConfig, seed: u64) -> Result<Split> {
        let k = cfg.repeat.max(1);
        // A curated set read back holds the copies its export kept, as they were kept.
        if k == 1 || cfg.selection.is_some() {
            return Split::new(n, cfg.holdout, cfg.limit, seed);
        }
        let distinct = n / k;
        let mut split = Split::new(distinct, cfg.holdout, cfg.limit, seed)?;
        let first = split.learner.clone();
        for c in 1..k {
            split.learner.extend(first.iter().map(|i| c * distinct + i));
        }
        Ok(split)
    }
}

/// The opened data set: training and test sources.
pub struct DataSet {
    /// The training split (learner + held-out share).
    pub train: Arc<dyn Source>,
    /// The test split.
    pub test: Arc<dyn Source>,
}

impl std::fmt::Debug for DataSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataSet")
            .field("train", &self.train.len())
            .field("test", &self.test.len())
            .finish()
    }
}

/// Opens the data set a config names. Missing or malformed files are errors naming the file.
/// With `channels` set, every image is converted to that many channels.
/// With `selection`, the training split is narrowed to the samples an export selected.
pub fn open(cfg: &SourceConfig) -> Result<DataSet> {
    let mut data = open_format(cfg)?;
    if cfg.repeat > 1 {
        data.train = Arc::new(repeat::Repeated::new(data.train, cfg.repeat));
    }
    selection::apply(cfg.selection.as_ref(), data)
}

fn open_format(cfg: &SourceConfig) -> Result<DataSet> {
    let mut issues = Issues::default();
    cfg.validate(&mut issues);
    if !issues.0.is_empty() {
        return Err(Error::ConfigInvalid {
            path: PathBuf::from("<config>"),
            issues: issues.0,
        });
    }
    let channels = cfg.channels.map(usize::from);
    let (train, test): (Arc<dyn Source>, Arc<dyn Source>) = if let Some(c) = &cfg.idx {
        let (train, test) = idx::open_pair(c)?;
        (Arc::new(train), Arc::new(test))
    } else if let Some(c) = &cfg.cifar10 {
        let (train, test) = cifar::open_pair(c)?;
        (Arc::new(train), Arc::new(test))
    } else if let Some(c) = &cfg.image_folder {
        let (train, test) = folder::open_pair(c, channels.unwrap_or(3))?;
        let px = cfg.limits.max_pixels;
        (
            Arc::new(train.with_max_pixels(px)),
            Arc::new(test.with_max_pixels(px)),
        )
    } else if let Some(c) = &cfg.list {
        let (train, test) = list::open_pair(c, channels.unwrap_or(3))?;
        let px = cfg.limits.max_pixels;
        (
            Arc::new(train.with_max_pixels(px)),
            Arc::new(test.with_max_pixels(px)),
        )
    } else if let Some(c) = &cfg.parquet {
        let (train, test) = parquet::open_pair(c, channels.unwrap_or(3))?;
        let px = cfg.limits.max_pixels;
        (
            Arc::new(train.with_max_pixels(px)),
            Arc::new(test.with_max_pixels(px)),
        )
    } else if let Some(c) = &cfg.stream {
        let (train, test) = stream::open_pair(c, channels.unwrap_or(3), cfg.on_error, &cfg.limits)?;
        (Arc::new(train), Arc::new(test))
    } else {
        // validate() above rejects a config without a block; kept as an error, not a panic.
        return Err(Error::ConfigInvalid {
            path: PathBuf::from("<config>"),
            issues: vec![crate::error::ConfigIssue {
                key: "source".into(),
                message: "no data set given".into(),
                line: None,
                column: None,
            }],
        });
    };
    cfg.limits
        .check_labels(train.num_classes().max(test.num_classes()), "source")?;
    Ok(match channels {
        Some(c) if train.shape().channels != c => DataSet {
            train: Arc::new(Converted::new(train, c)),
            test: Arc::new(Converted::new(test, c)),
        },
        _ => DataSet { train, test },
    })
}

/// A source whose images are converted to another channel count (`source.channels` on a
/// format with a fixed one, such as IDX grey or CIFAR-10 RGB).
pub struct Converted {
    inner: Arc<dyn Source>,
    channels: usize,
}

impl Converted {
    /// Wraps `inner`, converting its images to `channels` (1 or 3).
    pub fn new(inner: Arc<dyn Source>, channels: usize) -> Self {
        Converted { inner, channels }
    }
}

impl Source for Converted {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn get(&self, index: usize) -> Result<Sample> {
        self.convert(index, self.inner.get(index)?)
    }
    fn get_resized(&self, index: usize, size: crate::pixel::Size) -> Result<Sample> {
        self.convert(index, self.inner.get_resized(index, size)?)
    }
    fn locate(&self, index: usize) -> String {
        self.inner.locate(index)
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn shape(&self) -> SourceShape {
        SourceShape {
            channels: self.channels,
            ..self.inner.shape()
        }
    }
}

impl Converted {
    fn convert(&self, index: usize, mut s: Sample) -> Result<Sample> {
        s.image = s
            .image
            .to_channels(self.channels)
            .map_err(|message| Error::Sample {
                sample: self.locate(index),
                message,
            })?;
        Ok(s)
    }
}

/// Splits the items of a labelled list into train and test positions: in every class, a
/// fixed permutation (independent of the run seed, so every run tests on the same images)
/// puts `round(fraction * class size)` items in the test split. Both lists are sorted.
pub(crate) fn fraction_split(labels: &[i64], fraction: f64) -> (Vec<usize>, Vec<usize>) {
    let mut by_class: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
    for (i, &l) in labels.iter().enumerate() {
        by_class.entry(l).or_default().push(i);
    }
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (class, mut items) in by_class {
        Rng::derive(TEST_SPLIT_SEED, &[class as u64]).shuffle(&mut items);
        let k = ((fraction * items.len() as f64).round() as usize).min(items.len());
        test.extend_from_slice(&items[..k]);
        train.extend_from_slice(&items[k..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// Seed of the `test_fraction` split: a constant, so the test images never depend on `seed`.
const TEST_SPLIT_SEED: u64 = 0x7465_7374_5f73_706c;

/// An in-memory source, for tests and for users who already hold their data in memory.
pub struct MemorySource {
    samples: Vec<Sample>,
    classes: usize,
    name: String,
}

impl MemorySource {
    /// Wraps `samples`, which must all have the same shape.
    pub fn new(name: impl Into<String>, samples: Vec<Sample>, classes: usize) -> Self {
        MemorySource {
            samples,
            classes,
            name: name.into(),
        }
    }
}

impl Source for MemorySource {
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn get(&self, index: usize) -> Result<Sample> {
        self.samples
            .get(index)
            .cloned()
            .ok_or_else(|| Error::Sample {
                sample: self.locate(index),
                message: "index out of range".into(),
            })
    }
    fn locate(&self, index: usize) -> String {
        format!("{}#{index}", self.name)
    }
    fn num_classes(&self) -> usize {
        self.classes
    }
    fn shape(&self) -> SourceShape {
        let mut dims = self
            .samples
            .iter()
            .map(|s| (s.image.channels, s.image.height, s.image.width));
        match dims.next() {
            None => SourceShape::fixed(1, 1, 1),
            Some((c, h, w)) if dims.all(|d| d == (c, h, w)) => SourceShape::fixed(c, h, w),
            Some((c, _, _)) => SourceShape::variable(c),
        }
    }
}

/// Small in-memory data sets for the unit tests of this module and the stages above it.
#[cfg(test)]
pub(crate) mod test_data {
    use super::{MemorySource, RawImage, Sample, Source};
    use std::sync::Arc;

    /// `n` grey 8x8 images, each different, labels `i mod 10`, ids `0..n`.
    pub(crate) fn synthetic(n: usize) -> Arc<dyn Source> {
        let samples = (0..n)
            .map(|i| Sample {
                id: i as u64,
                label: (i % 10) as i64,
                image: RawImage {
                    channels: 1,
                    height: 8,
                    width: 8,
                    data: (0..64).map(|p| ((p * 7 + i * 13) % 256) as u8).collect(),
                },
            })
            .collect();
        Arc::new(MemorySource::new("mem", samples, 10))
    }
}

// ---- configuration ----

/// The data set. Exactly one format block (`idx`, `cifar10`, `image_folder`, `list`,
/// `parquet`, `stream`) must be given.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// MNIST-family IDX files (gzipped or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idx: Option<idx::IdxConfig>,
    /// Train only on the samples a Parquet export selected, served from the data set above
    /// (see `docs/parquet-schema.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<selection::SelectionSourceConfig>,
    /// CIFAR-10 binary batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cifar10: Option<cifar::Cifar10Config>,
    /// A folder with one sub-folder of JPEG/PNG images per class (torchvision `ImageFolder`).
    /// `image-folder` is accepted as a spelling too.
    #[serde(
        default,
        alias = "image-folder",
        skip_serializing_if = "Option::is_none"
    )]
    pub image_folder: Option<folder::ImageFolderConfig>,
    /// A CSV or JSONL list of image paths and labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<list::ListConfig>,
    /// A Parquet table with an encoded-image column and a label column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parquet: Option<parquet::ParquetConfig>,
    /// Shards read in order: WebDataset tars or Parquet, local or in object storage
    /// (`docs/streaming.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<stream::StreamConfig>,
    /// Channels every image is converted to: 1 (grey) or 3 (RGB). Default: 3 for image files
    /// (`image_folder`, `list`, `parquet`), the format's own for `idx` (1) and `cifar10` (3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u8>,
    /// Training samples held out for the reference model (never seen by the learner).
    #[serde(default = "d_holdout")]
    pub holdout: usize,
    /// Use at most this many learner samples (after the holdout is taken); for quick runs.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Every learner sample this many times, each copy with its own id and augmentation: a
    /// redundant training set for experiments (`source::repeat`; the held-out share and the
    /// test split are not repeated). Default 1.
    #[serde(default = "d_repeat", skip_serializing_if = "is_one")]
    pub repeat: usize,
    /// Evaluate on at most this many test samples (the first ones); for quick runs.
    #[serde(default)]
    pub test_limit: Option<usize>,
    /// What to do with a sample that cannot be decoded: `fail` stops the run naming it,
    /// `skip` drops it, counts it and names the first ones in the report.
    #[serde(default)]
    pub on_error: OnError,
    /// Hard limits that no input file can get past.
    #[serde(default)]
    pub limits: Limits,
}

/// Hard limits on what untrusted files may make saln allocate. Each is checked before the
/// allocation it bounds, and the error names its key (`source.limits.max_pixels`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most pixels (width x height) one JPEG or PNG may decode to; checked on the header,
    /// before any pixel memory is allocated. Default 100,000,000 (10,000 x 10,000).
    #[serde(default = "d_max_pixels")]
    pub max_pixels: u64,
    /// Most classes a data set may have (labels `0..max_labels`): a list or table whose
    /// labels claim more is refused before any model is built. Default 100,000.
    #[serde(default = "d_max_labels")]
    pub max_labels: usize,
    /// Largest entry of a tar shard, in bytes (for the streaming tar sources; see
    /// [`Limits::check_tar_entry`]). Default 256 MiB.
    #[serde(default = "d_max_tar_entry_bytes")]
    pub max_tar_entry_bytes: u64,
}

fn d_repeat() -> usize {
    1
}
fn is_one(k: &usize) -> bool {
    *k == 1
}

fn d_max_pixels() -> u64 {
    100_000_000
}
fn d_max_labels() -> usize {
    100_000
}
fn d_max_tar_entry_bytes() -> u64 {
    256 << 20
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pixels: d_max_pixels(),
            max_labels: d_max_labels(),
            max_tar_entry_bytes: d_max_tar_entry_bytes(),
        }
    }
}

impl Limits {
    /// Adds this section's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        v.check(self.max_pixels > 0, "source.limits.max_pixels", || {
            "must be at least 1".into()
        });
        v.check(self.max_labels > 0, "source.limits.max_labels", || {
            "must be at least 1".into()
        });
        v.check(
            self.max_tar_entry_bytes > 0,
            "source.limits.max_tar_entry_bytes",
            || "must be at least 1".into(),
        );
    }

    /// Refuses an image of `width` x `height` (from its header) over `max_pixels`.
    ///
    /// ```
    /// let l = saln::source::Limits::default();
    /// assert!(l.check_pixels(10_000, 10_000).is_ok());
    /// let e = l.check_pixels(60_000, 60_000).unwrap_err();
    /// assert!(e.contains("source.limits.max_pixels"), "{e}");
    /// ```
    pub fn check_pixels(&self, width: u64, height: u64) -> std::result::Result<(), String> {
        let pixels = width.saturating_mul(height);
        if pixels > self.max_pixels {
            return Err(format!(
                "the image header claims {width} x {height} = {pixels} pixels, over \
                 `source.limits.max_pixels` ({}); refused before decoding",
                self.max_pixels
            ));
        }
        Ok(())
    }

    /// Refuses a data set of `classes` classes over `max_labels` (`origin` names it).
    pub fn check_labels(&self, classes: usize, origin: &str) -> Result<()> {
        if classes > self.max_labels {
            return Err(Error::Data {
                path: origin.into(),
                message: format!(
                    "its labels make {classes} classes, over `source.limits.max_labels` ({})",
                    self.max_labels
                ),
            });
        }
        Ok(())
    }

    /// Refuses a tar entry `name` of `size` bytes (from its header) over
    /// `max_tar_entry_bytes`, before it is read: for the tar shard sources to call on each
    /// header.
    ///
    /// ```
    /// let l = saln::source::Limits::default();
    /// assert!(l.check_tar_entry("a.jpg", 1 << 20).is_ok());
    /// let e = l.check_tar_entry("a.jpg", 1 << 40).unwrap_err();
    /// assert!(e.contains("source.limits.max_tar_entry_bytes") && e.contains("a.jpg"), "{e}");
    /// ```
    pub fn check_tar_entry(&self, name: &str, size: u64) -> std::result::Result<(), String> {
        if size > self.max_tar_entry_bytes {
            return Err(format!(
                "tar entry `{name}` is {size} bytes, over `source.limits.max_tar_entry_bytes` ({})",
                self.max_tar_entry_bytes
            ));
        }
        Ok(())
    }
}

/// Bad-sample policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Stop the run with an error naming the sample.
    #[default]
    Fail,
    /// Drop the sample, count it, go on.
    Skip,
}

pub(crate) fn d_holdout() -> usize {
    10_000
}

impl SourceConfig {
    /// Adds this section's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        self.limits.validate(v);
        let given: Vec<&str> = [
            ("idx", self.idx.is_some()),
            ("cifar10", self.cifar10.is_some()),
            ("image_folder", self.image_folder.is_some()),
            ("list", self.list.is_some()),
            ("parquet", self.parquet.is_some()),
            ("stream", self.stream.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        match given.len() {
            0 => v.at(
                "source",
                "no data set given: add one of `idx`, `cifar10`, `image_folder`, `list`, `parquet`, `stream`",
            ),
            1 => {}
            _ => v.at(
                "source",
                format!(
                    "give exactly one data set block, found {}",
                    given.join(", ")
                ),
            ),
        }
        if let Some(c) = &self.cifar10 {
            c.validate(v);
        }
        if let Some(c) = &self.image_folder {
            c.validate(v);
        }
        if let Some(c) = &self.list {
            c.validate(v);
        }
        if let Some(c) = &self.parquet {
            c.validate(v);
        }
        if let Some(s) = &self.selection {
            s.validate(v);
        }
        if let Some(c) = &self.stream {
            c.validate(v);
            v.check(self.holdout == 0, "source.holdout", || {
                format!(
                    "is {}, but a streaming source has no random access to hold samples out \
                     for a reference model: set `holdout: 0` (pretrain the reference model on \
                     an indexed data set)",
                    self.holdout
                )
            });
            v.check(self.selection.is_none(), "source.selection", || {
                "cannot narrow a streaming source (it has no random access)".into()
            });
            v.check(self.repeat <= 1, "source.repeat", || {
                "cannot repeat a streaming source (it has no random access)".into()
            });
        }
        v.check(self.repeat >= 1, "source.repeat", || {
            "must be at least 1 (1: every sample once)".into()
        });
        if let Some(c) = self.channels {
            v.check(c == 1 || c == 3, "source.channels", || {
                format!("must be 1 (grey) or 3 (RGB), got {c}")
            });
        }
    }
}

/// Checks the `test` / `test_fraction` pair of a file source block at `key`: exactly one.
pub(crate) fn validate_test_choice(
    v: &mut Issues,
    key: &str,
    test: bool,
    test_fraction: Option<f64>,
) {
    match (test, test_fraction) {
        (true, Some(_)) => v.at(
            key,
            "give either `test` (a separate test set) or `test_fraction`, not both",
        ),
        (false, None) => v.at(
            key,
            "no test set: give `test` (a separate test set) or `test_fraction` (a share of `train`)",
        ),
        (false, Some(f)) => v.check(
            (0.0..1.0).contains(&f),
            &format!("{key}.test_fraction"),
            || format!("must be in [0, 1), got {f}"),
        ),
        (true, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_disjoint_complete_and_seeded() {
        let s = Split::new(1000, 100, None, 1).unwrap();
        let mut all: Vec<usize> = s.learner.iter().chain(&s.holdout).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_ne!(Split::new(1000, 100, None, 2).unwrap().holdout, s.holdout);
        assert_eq!(Split::new(1000, 100, None, 1).unwrap(), s);
    }

    #[test]
    fn limit_does_not_change_the_holdout() {
        let full = Split::new(1000, 100, None, 1).unwrap();
        let small = Split::new(1000, 100, Some(50), 1).unwrap();
        assert_eq!(full.holdout, small.holdout);
        assert_eq!(small.learner.len(), 50);
        assert!(small.learner.iter().all(|i| full.learner.contains(i)));
    }

    #[test]
    fn holdout_of_everything_is_a_config_error() {
        let e = Split::new(10, 10, None, 1).unwrap_err();
        assert!(e.to_string().contains("source.holdout"), "{e}");
    }

    /// Every YAML example in docs/sources.md parses (fragments get a minimal `source`).
    #[test]
    fn the_yaml_examples_in_the_docs_parse() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/sources.md"))
            .unwrap();
        let blocks: Vec<&str> = doc
            .split("```yaml\n")
            .skip(1)
            .map(|b| b.split("```").next().unwrap())
            .collect();
        assert!(blocks.len() >= 7, "{} yaml blocks", blocks.len());
        for b in blocks {
            let text = if b.contains("source:") {
                b.to_string()
            } else {
                format!("source:\n  idx: {{ dir: /tmp/x }}\n{b}")
            };
            if let Err(e) = crate::config::PipelineConfig::from_yaml_str(&text, "docs/sources.md") {
                panic!("{e}\n{text}");
            }
        }
    }
}
