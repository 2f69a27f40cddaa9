//! The pipeline YAML, as typed structs.
//!
//! Every struct denies unknown keys, so a typo is an error that names the key and its line
//! instead of a silently ignored setting. Parsing (syntax, types, unknown keys) is done by
//! `serde-saphyr`, whose messages carry line and column; [`PipelineConfig::validate`] then
//! checks values and collects *all* problems, each with its dotted key path.
//!
//! The doc comment on each field is the user reference (README, "Writing a pipeline").
//!
//! ```
//! let yaml = r#"
//! source:
//!   idx: { dir: /usr/share/datasets/fashion-mnist }
//! selection: { keep_ratio: 0.25 }
//! "#;
//! let cfg = saln::config::PipelineConfig::from_yaml_str(yaml, "inline.yaml").unwrap();
//! assert_eq!(cfg.superbatch.size, 256);
//! assert_eq!(cfg.selection.keep_ratio, 0.25);
//! ```
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::augment::AugmentOp;
use crate::error::{ConfigIssue, Error, Result};
use crate::select::{Policy, Rule, WeightMapping};

/// A whole pipeline: source -> augment -> super-batches -> extract + select -> train -> report.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Master seed: data split, shuffling, augmentation, model initialisation, random policies.
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    /// Where the models run: `auto` (CUDA when available), `cpu`, `cuda`, `cuda:N`.
    #[serde(default = "defaults::device")]
    pub device: String,
    /// Threads libtorch may use for its own kernels (0 = libtorch's default). The extractor
    /// and the trainer run at the same time, so on a small machine 1 each is the right value.
    #[serde(default = "defaults::torch_threads")]
    pub torch_threads: usize,
    /// Where the data comes from.
    pub source: SourceConfig,
    /// Per-sample transforms applied to training images.
    #[serde(default)]
    pub augment: AugmentConfig,
    /// Grouping of samples into super-batches.
    #[serde(default)]
    pub superbatch: SuperBatchConfig,
    /// The frozen reference network that turns images into features.
    #[serde(default)]
    pub extractor: ExtractorConfig,
    /// Which part of each super-batch reaches the trainer.
    #[serde(default)]
    pub selection: SelectionConfig,
    /// The learner trained on the curated sub-batches.
    #[serde(default)]
    pub trainer: TrainerConfig,
    /// Queue depths between stages.
    #[serde(default)]
    pub channels: ChannelConfig,
    /// Where the JSON report goes.
    #[serde(default)]
    pub report: ReportConfig,
}

/// The data set. Exactly one format block (`idx`) must be given.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// MNIST-family IDX files (gzipped or not).
    #[serde(default)]
    pub idx: Option<IdxConfig>,
    /// Training samples held out for the reference model (never seen by the learner).
    #[serde(default = "defaults::holdout")]
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

/// Augmentation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Decode/augment worker threads. The output does not depend on this number.
    #[serde(default = "defaults::workers")]
    pub workers: usize,
    /// Ordered list of ops, e.g. `- hflip: { p: 0.5 }`. Random ops apply to training images
    /// only; `normalize` also applies to test images and to the reference model's inputs.
    #[serde(default = "defaults::ops")]
    pub ops: Vec<AugmentOp>,
}

/// Super-batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuperBatchConfig {
    /// Samples per super-batch (B).
    #[serde(default = "defaults::superbatch")]
    pub size: usize,
    /// Super-batches being decoded ahead of the one the extractor needs.
    #[serde(default = "defaults::prefetch")]
    pub prefetch: usize,
    /// Drop the last, incomplete super-batch of each epoch (default: keep it, nothing lost).
    #[serde(default)]
    pub drop_last: bool,
}

/// The reference (feature) network.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractorConfig {
    /// Safetensors file with the reference CNN's weights, written by `saln-pipe pretrain`.
    #[serde(default = "defaults::weights")]
    pub weights: PathBuf,
    /// Width of the reference CNN (channels of its two conv layers and its feature size).
    #[serde(default)]
    pub arch: crate::model::CnnArch,
    /// Samples per forward pass (a large super-batch is cut into micro-batches).
    #[serde(default = "defaults::micro_batch")]
    pub micro_batch: usize,
    /// Pretraining on the held-out split.
    #[serde(default)]
    pub pretrain: PretrainConfig,
}

/// Pretraining of the reference model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    /// Epochs over the held-out samples.
    #[serde(default = "defaults::pretrain_epochs")]
    pub epochs: usize,
    /// Mini-batch size.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Adam learning rate.
    #[serde(default = "defaults::lr")]
    pub lr: f64,
}

/// The selection policy and its parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionConfig {
    /// `saln` (spectral), `uniform` (b of B at random) or `none` (keep everything).
    #[serde(default)]
    pub policy: Policy,
    /// Fraction of each super-batch that reaches the trainer (rho), in (0, 1].
    #[serde(default = "defaults::keep_ratio")]
    pub keep_ratio: f64,
    /// How cosine similarity becomes an edge weight: `clip` = max(0, cos), `shift` = (1+cos)/2.
    #[serde(default)]
    pub weights: WeightMapping,
    /// How the Fiedler vector becomes b indices: `extremes`, `boundary`, `balanced`, `quantile`.
    #[serde(default)]
    pub rule: Rule,
}

/// The learner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerConfig {
    /// Passes over the learner's share of the training data.
    #[serde(default = "defaults::epochs")]
    pub epochs: usize,
    /// Adam learning rate. Each curated sub-batch is one optimizer step.
    #[serde(default = "defaults::lr")]
    pub lr: f64,
    /// Width of the learner CNN.
    #[serde(default)]
    pub arch: crate::model::CnnArch,
    /// Test samples per forward pass during evaluation.
    #[serde(default = "defaults::eval_batch")]
    pub eval_batch: usize,
}

/// Capacities of the bounded channels between stages (in super-batches).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// loader -> extract.
    #[serde(default = "defaults::capacity")]
    pub loader_to_extract: usize,
    /// extract -> train.
    #[serde(default = "defaults::capacity")]
    pub extract_to_train: usize,
}

/// The report.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// JSON report path (written atomically at the end, also after Ctrl-C).
    #[serde(default = "defaults::report")]
    pub path: PathBuf,
    /// Seconds between progress lines (0 = only per-epoch lines).
    #[serde(default = "defaults::progress")]
    pub progress_seconds: f64,
}

mod defaults {
    use super::*;
    pub fn seed() -> u64 {
        0
    }
    pub fn device() -> String {
        "auto".into()
    }
    pub fn torch_threads() -> usize {
        1
    }
    pub fn holdout() -> usize {
        10_000
    }
    pub fn workers() -> usize {
        2
    }
    pub fn ops() -> Vec<AugmentOp> {
        vec![AugmentOp::Normalize {
            mean: vec![0.5],
            std: vec![0.5],
        }]
    }
    pub fn superbatch() -> usize {
        256
    }
    pub fn prefetch() -> usize {
        4
    }
    pub fn weights() -> PathBuf {
        "target/saln/reference.safetensors".into()
    }
    pub fn micro_batch() -> usize {
        1024
    }
    pub fn pretrain_epochs() -> usize {
        4
    }
    pub fn batch_size() -> usize {
        128
    }
    pub fn lr() -> f64 {
        1e-3
    }
    pub fn keep_ratio() -> f64 {
        0.25
    }
    pub fn epochs() -> usize {
        5
    }
    pub fn eval_batch() -> usize {
        1000
    }
    pub fn capacity() -> usize {
        2
    }
    pub fn report() -> PathBuf {
        "target/saln/report.json".into()
    }
    pub fn progress() -> f64 {
        10.0
    }
}

macro_rules! default_from_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                serde_saphyr::from_str("{}").expect(concat!("defaults of ", stringify!($t)))
            }
        }
    )*};
}
default_from_serde!(
    AugmentConfig,
    SuperBatchConfig,
    ExtractorConfig,
    PretrainConfig,
    SelectionConfig,
    TrainerConfig,
    ChannelConfig,
    ReportConfig
);

impl PipelineConfig {
    /// Reads, parses and validates a pipeline file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut cfg = Self::from_yaml_str(&text, path)?;
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(cfg)
    }

    /// Parses and validates YAML text; `origin` names it in messages.
    pub fn from_yaml_str(text: &str, origin: impl AsRef<Path>) -> Result<Self> {
        let origin = origin.as_ref();
        let cfg: PipelineConfig = serde_saphyr::from_str(text).map_err(|e| Error::ConfigParse {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        let issues = cfg.validate();
        if issues.is_empty() {
            Ok(cfg)
        } else {
            Err(Error::ConfigInvalid {
                path: origin.to_path_buf(),
                issues,
            })
        }
    }

    /// Relative data paths in a config file are taken from the current directory, like
    /// every command-line tool; nothing to do today, kept as the one place to change that.
    fn resolve_paths(&mut self, _config_dir: &Path) {}

    /// Every value problem, each with its key path. Empty when the config is usable.
    /// Checks that need resources (files, devices) are in [`PipelineConfig::check_resources`].
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut v = Vec::new();
        let mut bad = |key: &str, message: String| {
            v.push(ConfigIssue {
                key: key.into(),
                message,
            })
        };
        if let Err(e) = crate::device::parse(&self.device) {
            bad("device", e);
        }
        if self.source.idx.is_none() {
            bad(
                "source",
                "no data set given: add an `idx:` block with `dir:`".into(),
            );
        }
        if self.augment.workers == 0 {
            bad("augment.workers", "must be at least 1".into());
        }
        for (i, op) in self.augment.ops.iter().enumerate() {
            if let Err(e) = op.validate() {
                bad(&format!("augment.ops[{i}]"), e);
            }
        }
        if self.superbatch.size < 2 {
            bad(
                "superbatch.size",
                format!("must be at least 2, got {}", self.superbatch.size),
            );
        }
        if self.superbatch.prefetch == 0 {
            bad("superbatch.prefetch", "must be at least 1".into());
        }
        if self.extractor.micro_batch == 0 {
            bad("extractor.micro_batch", "must be at least 1".into());
        }
        if let Err(e) = self.extractor.arch.validate() {
            bad("extractor.arch", e);
        }
        if let Err(e) = self.trainer.arch.validate() {
            bad("trainer.arch", e);
        }
        if self.extractor.pretrain.batch_size == 0 {
            bad("extractor.pretrain.batch_size", "must be at least 1".into());
        }
        if !(self.extractor.pretrain.lr > 0.0 && self.extractor.pretrain.lr.is_finite()) {
            bad(
                "extractor.pretrain.lr",
                format!("must be positive, got {}", self.extractor.pretrain.lr),
            );
        }
        let rho = self.selection.keep_ratio;
        if !(rho > 0.0 && rho <= 1.0) {
            bad(
                "selection.keep_ratio",
                format!("must be in (0, 1], got {rho}"),
            );
        }
        if self.trainer.epochs == 0 {
            bad("trainer.epochs", "must be at least 1".into());
        }
        if !(self.trainer.lr > 0.0 && self.trainer.lr.is_finite()) {
            bad(
                "trainer.lr",
                format!("must be positive, got {}", self.trainer.lr),
            );
        }
        if self.trainer.eval_batch == 0 {
            bad("trainer.eval_batch", "must be at least 1".into());
        }
        if self.channels.loader_to_extract == 0 {
            bad("channels.loader_to_extract", "must be at least 1".into());
        }
        if self.channels.extract_to_train == 0 {
            bad("channels.extract_to_train", "must be at least 1".into());
        }
        if !(self.report.progress_seconds >= 0.0 && self.report.progress_seconds.is_finite()) {
            bad(
                "report.progress_seconds",
                "must be a non-negative number".into(),
            );
        }
        v
    }

    /// Checks that need the machine: the configured device exists.
    pub fn check_resources(&self) -> Vec<ConfigIssue> {
        let mut v = Vec::new();
        if let Ok(d) = crate::device::parse(&self.device) {
            if let Err(e) = crate::device::check(d) {
                v.push(ConfigIssue {
                    key: "device".into(),
                    message: e,
                });
            }
        }
        v
    }

    /// The configured device, resolved (`auto` becomes `cpu` or `cuda:0`).
    pub fn device(&self) -> tch::Device {
        crate::device::parse(&self.device).unwrap_or(tch::Device::Cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "source:\n  idx:\n    dir: /tmp/x\n";

    #[test]
    fn defaults_fill_everything() {
        let c = PipelineConfig::from_yaml_str(MINIMAL, "t").unwrap();
        assert_eq!(c.superbatch.size, 256);
        assert_eq!(c.selection.policy, Policy::Saln);
        assert_eq!(c.trainer.epochs, 5);
        assert_eq!(c.augment.workers, 2);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let yaml = format!("{MINIMAL}selection:\n  keep_ratoi: 0.5\n");
        let e = PipelineConfig::from_yaml_str(&yaml, "t").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("keep_ratoi"), "{msg}");
        assert!(msg.contains("line 5") || msg.contains("5:"), "{msg}");
    }

    #[test]
    fn all_value_problems_are_reported_at_once() {
        let yaml = format!(
            "{MINIMAL}device: tpu\nselection:\n  keep_ratio: 1.5\nsuperbatch:\n  size: 1\ntrainer:\n  epochs: 0\n"
        );
        let Error::ConfigInvalid { issues, .. } =
            PipelineConfig::from_yaml_str(&yaml, "t").unwrap_err()
        else {
            panic!("expected ConfigInvalid")
        };
        let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "device",
                "superbatch.size",
                "selection.keep_ratio",
                "trainer.epochs"
            ]
        );
    }

    #[test]
    fn missing_source_is_an_error() {
        let e = PipelineConfig::from_yaml_str("source: {}\n", "t").unwrap_err();
        assert!(e.to_string().contains("source: no data set"), "{e}");
    }

    #[test]
    fn augment_ops_parse_as_an_ordered_list() {
        let yaml = format!(
            "{MINIMAL}augment:\n  ops:\n    - hflip: {{ p: 0.5 }}\n    - rotate: {{ max_degrees: 10 }}\n    - normalize: {{ mean: [0.3], std: [0.35] }}\n"
        );
        let c = PipelineConfig::from_yaml_str(&yaml, "t").unwrap();
        assert_eq!(c.augment.ops.len(), 3);
        assert!(matches!(c.augment.ops[0], AugmentOp::Hflip { p } if p == 0.5));
    }
}
