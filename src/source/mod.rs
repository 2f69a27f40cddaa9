//! Sources: where samples come from.
//!
//! A [`Source`] is an indexable collection of labelled images with stable sample ids. The
//! data set is split once into the learner's share and the reference model's held-out share
//! ([`Split`]); the test split is a separate `Source`.
//!
//! | file | format |
//! |---|---|
//! | [`idx`] | MNIST-family IDX files, gzipped or not |
//! | [`selection`] | a curated set read back from a Parquet export (wraps the format above) |
use crate::config::Issues;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::rng::{self, Rng};

pub mod idx;
pub mod selection;

/// An image as stored: `u8` pixels in CHW order (`channels x height x width`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawImage {
    /// Number of channels (1 for grey).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `channels * height * width` bytes, CHW.
    pub data: Vec<u8>,
}

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
    /// Where sample `index` comes from, for messages and exports (`file#index`).
    fn locate(&self, index: usize) -> String;
    /// Number of classes.
    fn num_classes(&self) -> usize;
    /// Shape of every image: `(channels, height, width)`.
    fn shape(&self) -> (usize, usize, usize);
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
    /// The split a pipeline uses for a training set of `n` samples: `source.holdout`,
    /// `source.limit` and the run's `seed`.
    pub fn for_config(n: usize, cfg: &crate::config::PipelineConfig) -> Result<Split> {
        Split::new(n, cfg.source.holdout, cfg.source.limit, cfg.seed)
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
/// With `selection`, the training split is narrowed to the samples an export selected.
pub fn open(cfg: &SourceConfig) -> Result<DataSet> {
    selection::apply(cfg.selection.as_ref(), open_format(cfg)?)
}

fn open_format(cfg: &SourceConfig) -> Result<DataSet> {
    match &cfg.idx {
        Some(idx) => {
            let (train, test) = idx::open_pair(idx)?;
            Ok(DataSet {
                train: Arc::new(train),
                test: Arc::new(test),
            })
        }
        None => Err(Error::config("source", "no data set given")),
    }
}

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
    fn shape(&self) -> (usize, usize, usize) {
        self.samples
            .first()
            .map(|s| (s.image.channels, s.image.height, s.image.width))
            .unwrap_or((1, 1, 1))
    }
}

// ---- configuration ----

/// The data set. Exactly one format block (`idx`) must be given.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// MNIST-family IDX files (gzipped or not).
    #[serde(default)]
    pub idx: Option<idx::IdxConfig>,
    /// Train only on the samples a Parquet export selected, served from the data set above
    /// (see `docs/parquet-schema.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<selection::SelectionSourceConfig>,
    /// Training samples held out for the reference model (never seen by the learner).
    #[serde(default = "d_holdout")]
    pub holdout: usize,
    /// Use at most this many learner samples (after the holdout is taken); for quick runs.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Evaluate on at most this many test samples (the first ones); for quick runs.
    #[serde(default)]
    pub test_limit: Option<usize>,
    /// What to do with a sample that cannot be decoded: `fail` stops the run naming it,
    /// `skip` drops it, counts it and names the first ones in the report.
    #[serde(default)]
    pub on_error: OnError,
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
        v.check(self.idx.is_some(), "source", || {
            "no data set given: add an `idx:` block with `dir:`".into()
        });
        if let Some(s) = &self.selection {
            s.validate(v);
        }
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
}
