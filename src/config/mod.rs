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

use crate::batch::LoaderPlan;
pub use crate::error::Issues;
use crate::error::{ConfigIssue, Error, Result};
use crate::export::Provenance;
use crate::extract::backbone::ExtractorKind;
use crate::select::{Policy, SelectorConfig};
use crate::source::Split;

pub use crate::augment::AugmentConfig;
pub use crate::batch::{LoaderOnlyConfig, ShardConfig, SuperBatchConfig};
pub use crate::export::ExportConfig;
pub use crate::extract::pretrain::PretrainConfig;
pub use crate::extract::ExtractorConfig;
pub use crate::select::SelectionConfig;
pub use crate::source::idx::IdxConfig;
pub use crate::source::{OnError, SourceConfig};
pub use crate::stage::ChannelConfig;
pub use crate::train::TrainerConfig;

pub mod check;
pub mod messages;

/// Which resource checks [`PipelineConfig::resource_issues`] runs: those whose sections
/// parsed (all of them for a file that parsed whole).
#[derive(Debug, Clone, Copy)]
pub struct ResourceChecks {
    /// The device exists.
    pub device: bool,
    /// The extractor's model file exists (when the policy uses features), the reference
    /// weights included.
    pub model: bool,
    /// The data set opens.
    pub data: bool,
    /// `$RANK` / `$WORLD_SIZE` (read when `superbatch.shard` leaves them unset) are usable.
    pub shard: bool,
    /// The op list brings the source's images to one size (when the source knows its shape
    /// without decoding every image).
    pub shapes: bool,
}

impl ResourceChecks {
    /// Every check.
    pub const ALL: ResourceChecks = ResourceChecks {
        device: true,
        model: true,
        data: true,
        shard: true,
        shapes: true,
    };
}

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
    /// Checkpoints of `saln-pipe run` (what `--resume` continues from).
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Parquet export of the curated set (absent: no export).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportConfig>,
    /// When present, `saln-pipe run` runs the input side alone (source, augmentation,
    /// super-batches) and reports images per second; see `batch::loader_only`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loader_only: Option<LoaderOnlyConfig>,
}

/// Parses `text` (from `origin`, named in messages) as a `T` and checks it with `validate`:
/// a syntax, type or unknown-key error is an [`Error::ConfigParse`]; value problems are one
/// [`Error::ConfigInvalid`] holding all of them, each placed on its line by `line_of(key)`.
pub(crate) fn parse_validated<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &Path,
    validate: impl FnOnce(&T) -> Vec<ConfigIssue>,
    line_of: impl Fn(&str) -> Option<usize>,
) -> Result<T> {
    let cfg: T = serde_saphyr::from_str(text).map_err(|e| Error::ConfigParse {
        path: origin.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut issues = validate(&cfg);
    for i in &mut issues {
        i.line = line_of(&i.key);
    }
    if issues.is_empty() {
        Ok(cfg)
    } else {
        Err(Error::ConfigInvalid {
            path: origin.to_path_buf(),
            issues,
        })
    }
}

/// The 1-based line where the dotted `key` (e.g. `selection.keep_ratio`, `augment.ops[2]`)
/// is written in `text`, found by looking for each segment as a YAML key after the previous
/// one (block or flow style). `None` when the key is not written (a default was used).
///
/// ```
/// let yaml = "source:\n  idx: { dir: /x }\nselection:\n  policy: saln\n  keep_ratio: 2\n";
/// assert_eq!(saln::config::locate_key(yaml, "selection.keep_ratio"), Some(5));
/// assert_eq!(saln::config::locate_key(yaml, "source.idx.dir"), Some(2));
/// assert_eq!(saln::config::locate_key(yaml, "trainer.epochs"), None);
/// ```
pub fn locate_key(text: &str, key: &str) -> Option<usize> {
    let mut pos = 0usize;
    let mut line_of_last = None;
    for seg in key.split('.') {
        let (name, index) = match seg.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        let found = find_key(&text[pos..], name)?;
        pos += found;
        line_of_last = Some(text[..pos].matches('\n').count() + 1);
        if let Some(i) = index {
            // The i-th list item after the key: block items start with `- `.
            let mut at = pos;
            for _ in 0..=i {
                at += text[at..].find("- ").map(|p| p + 2)?;
            }
            pos = at;
            line_of_last = Some(text[..pos].matches('\n').count() + 1);
        }
        pos += name.len();
    }
    line_of_last
}

fn find_key(text: &str, name: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(p) = text[from..].find(name) {
        let at = from + p;
        let before_ok = at == 0 || matches!(bytes[at - 1], b' ' | b'\n' | b'{' | b',' | b'\t');
        let after = text[at + name.len()..].trim_start_matches([' ', '\t']);
        if before_ok && after.starts_with(':') {
            return Some(at);
        }
        from = at + name.len();
    }
    None
}

/// The report.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// JSON report path (written atomically at the end, also after Ctrl-C).
    #[serde(default = "d_report")]
    pub path: PathBuf,
    /// Seconds between progress lines (0 = only per-epoch lines).
    #[serde(default = "d_progress")]
    pub progress_seconds: f64,
}

/// Where run folders go when `checkpoint.dir` is not given.
const CHECKPOINTS: &str = "target/saln/checkpoints";

/// Checkpoints of a training run (`saln-pipe run`): what `saln-pipe run FILE --resume`
/// continues from after a kill. README, "Checkpoints and --resume".
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Write checkpoints at all.
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// The run folder holding them. Default: `target/saln/checkpoints/<name of the
    /// pipeline file without .yaml>` for `saln-pipe run`, with `.curate` appended for
    /// `saln-pipe curate` ([`PipelineConfig::name_checkpoints_after`]; a pipeline built in
    /// code: `target/saln/checkpoints/run`, or `.../curate` for a curation). A run without
    /// `--resume` empties it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// A checkpoint after every this many optimizer steps (0: not by steps).
    #[serde(default)]
    pub every_steps: u64,
    /// A checkpoint when this many seconds have passed since the last one (or the start);
    /// 0: not by time. The default, 300, leaves runs of a few minutes without any.
    #[serde(default = "d_every_seconds")]
    pub every_seconds: f64,
    /// Complete checkpoints kept (the newest ones).
    #[serde(default = "d_keep")]
    pub keep: usize,
}

fn d_true() -> bool {
    true
}
fn d_every_seconds() -> f64 {
    300.0
}
fn d_keep() -> usize {
    2
}

impl CheckpointConfig {
    /// Adds this section's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        let s = self.every_seconds;
        v.check(
            s >= 0.0 && s.is_finite(),
            "checkpoint.every_seconds",
            || "must be a non-negative number".into(),
        );
        v.check(self.keep >= 1, "checkpoint.keep", || {
            "must be at least 1".into()
        });
    }

    /// The run folder of `saln-pipe run` (see [`CheckpointConfig::dir`]).
    pub fn folder(&self) -> PathBuf {
        self.folder_or("run")
    }

    /// The run folder of a curation: `dir`, or `target/saln/checkpoints/curate` for a
    /// pipeline without a file name, so that a curation never empties a run's folder.
    pub fn curation_folder(&self) -> PathBuf {
        self.folder_or("curate")
    }

    /// `dir`, or `name` in [`CHECKPOINTS`].
    fn folder_or(&self, name: &str) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| Path::new(CHECKPOINTS).join(name))
    }
}

fn d_progress() -> f64 {
    10.0
}
fn d_report() -> PathBuf {
    "target/saln/report.json".into()
}

impl ReportConfig {
    /// Adds this section's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        let p = self.progress_seconds;
        v.check(p >= 0.0 && p.is_finite(), "report.progress_seconds", || {
            "must be a non-negative number".into()
        });
    }
}

mod defaults {
    pub fn seed() -> u64 {
        0
    }
    pub fn device() -> String {
        "auto".into()
    }
    pub fn torch_threads() -> usize {
        1
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
    ReportConfig,
    CheckpointConfig
);

impl PipelineConfig {
    /// Reads, parses and validates a pipeline file. Relative paths in it are taken from the
    /// current directory, as with every command-line tool, not from the file's folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_yaml_str(&text, path)
    }

    /// Names the checkpoint folder after the pipeline file `path` when the YAML leaves
    /// `checkpoint.dir` out: `target/saln/checkpoints/<file name without .yaml>` for `run`,
    /// `.../<file name>.curate` for `curate` (`command`), so that the two commands on one
    /// file never clear each other's checkpoints. The command line does this; it is not done
    /// by [`PipelineConfig::load`], so that the configuration recorded in an export (its
    /// `saln.config` metadata) is the same whether the YAML came from a file or a string.
    ///
    /// ```
    /// let mut cfg = saln::config::PipelineConfig::from_yaml_str("source: { idx: { dir: d } }", "x")?;
    /// let mut curate = cfg.clone();
    /// cfg.name_checkpoints_after(std::path::Path::new("pipelines/demo.yaml"), "run");
    /// curate.name_checkpoints_after(std::path::Path::new("pipelines/demo.yaml"), "curate");
    /// assert_eq!(cfg.checkpoint.folder(), std::path::Path::new("target/saln/checkpoints/demo"));
    /// assert_eq!(curate.checkpoint.folder(), std::path::Path::new("target/saln/checkpoints/demo.curate"));
    /// # Ok::<(), saln::Error>(())
    /// ```
    pub fn name_checkpoints_after(&mut self, path: &Path, command: &str) {
        if self.checkpoint.dir.is_none() {
            let stem = path
                .file_stem()
                .map_or("run".into(), |s| s.to_string_lossy());
            let name = match command {
                "run" => stem.into_owned(),
                c => format!("{stem}.{c}"),
            };
            self.checkpoint.dir = Some(Path::new(CHECKPOINTS).join(name));
        }
    }

    /// Parses and validates YAML text; `origin` names it in messages.
    pub fn from_yaml_str(text: &str, origin: impl AsRef<Path>) -> Result<Self> {
        parse_validated(text, origin.as_ref(), Self::validate, |key| {
            locate_key(text, key)
        })
    }

    /// Every value problem, each with its key path. Empty when the config is usable.
    /// Each section checks its own values (`validate` beside its struct); checks that need
    /// resources (files, devices) are in [`PipelineConfig::check_resources`].
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut v = Issues::default();
        if let Err(e) = crate::device::parse(&self.device) {
            v.at("device", e);
        }
        self.source.validate(&mut v);
        self.augment.validate(&mut v);
        self.superbatch.validate(&mut v);
        self.extractor.validate(&mut v);
        self.selection.validate(&mut v);
        self.trainer.validate(&mut v);
        self.channels.validate(&mut v);
        self.report.validate(&mut v);
        self.checkpoint.validate(&mut v);
        self.validate_across_sections(&mut v);
        if let Some(e) = &self.export {
            e.validate(&mut v);
        }
        if let Some(l) = &self.loader_only {
            l.validate(&mut v);
        }
        v.0
    }

    /// Rules that span sections (each section checks its own values). `rho-loss` and `jest`
    /// need the reference CNN's class head, which only `extractor.kind: reference` has.
    fn validate_across_sections(&self, v: &mut Issues) {
        let policy = self.selection.policy;
        if matches!(policy, Policy::RhoLoss | Policy::Jest)
            && self.extractor.kind != ExtractorKind::Reference
        {
            v.at(
                "selection.policy",
                format!(
                    "{} needs per-sample losses of the reference model, so it requires \
                     extractor.kind: reference (the built-in CNN that `saln-pipe pretrain` \
                     trains; torchscript and resnet extractors give features, not class scores)",
                    policy.name()
                ),
            );
        }
        if policy.needs_learner() && !self.trainer.model.state_in_var_store() {
            v.at(
                "selection.policy",
                format!(
                    "{} scores samples with snapshots of the learner, and a TorchScript \
                     learner's buffers (batch-norm statistics) cannot be copied into one; \
                     use trainer.model: cnn or resnet with this policy",
                    policy.name()
                ),
            );
        }
    }

    /// Checks that need the machine: the configured device exists; the extractor's model
    /// file exists and its precision suits the device (when the policy uses features).
    pub fn check_resources(&self) -> Vec<ConfigIssue> {
        let mut v = Vec::new();
        if let Ok(d) = crate::device::parse(&self.device) {
            if let Err(e) = crate::device::check(d) {
                v.push(ConfigIssue {
                    key: "device".into(),
                    message: e,
                    line: None,
                    column: None,
                });
            }
        }
        let mut issues = Issues::default();
        if self.selection.policy.needs_reference() {
            self.extractor.check_resources(self.device(), &mut issues);
        }
        if let Ok(spec) = self.trainer.learner_spec() {
            spec.check_resources(&mut issues);
        }
        v.extend(issues.0);
        v
    }

    /// What `saln-pipe validate` checks beyond the values: [`PipelineConfig::check_resources`]
    /// (device, model file), the reference weights `saln-pipe pretrain` writes, every data
    /// file the run opens, the environment variables it reads, and the image-size rule.
    /// Only the checks `which` selects run.
    pub fn resource_issues(&self, which: ResourceChecks) -> Vec<ConfigIssue> {
        let mut v = Issues::default();
        if which.device {
            if let Ok(d) = crate::device::parse(&self.device) {
                if let Err(e) = crate::device::check(d) {
                    v.at("device", e);
                }
            }
        }
        if which.model && self.selection.policy.needs_reference() {
            let x = &self.extractor;
            if x.kind == ExtractorKind::Reference {
                v.check(x.weights.is_file(), "extractor.weights", || {
                    format!(
                        "{}: not found: train the reference model first with \
                         `saln-pipe pretrain <pipeline.yaml>`",
                        x.weights.display()
                    )
                });
            }
            x.check_resources(self.device(), &mut v);
        }
        if which.shard {
            if let Err(Error::ConfigInvalid { issues, .. }) = self.superbatch.shard.resolve() {
                v.0.extend(issues);
            }
        }
        if which.data {
            match crate::source::open(&self.source) {
                // Value problems of the section are the value checks' to report.
                Err(Error::ConfigInvalid { .. }) => {}
                Err(e) => v.at("source", e.to_string()),
                Ok(data) if which.shapes => {
                    let aug = crate::augment::Augmenter::new(self.augment.ops.clone());
                    if let Err(Error::ConfigInvalid { issues, .. }) =
                        aug.output_shape(data.train.shape())
                    {
                        v.0.extend(issues);
                    }
                }
                Ok(_) => {}
            }
        }
        v.0
    }

    /// The loader stage's plan for `epochs` epochs over `indices`, from the sections it
    /// reads (`superbatch`, `augment.workers`, `source.on_error`, `seed`).
    pub fn loader_plan(&self, indices: Vec<usize>, epochs: usize) -> Result<LoaderPlan> {
        LoaderPlan::new(
            &self.superbatch,
            self.augment.workers,
            self.source.on_error,
            self.seed,
            indices,
            epochs,
        )
    }

    /// The learner / held-out split of a training set of `n` samples.
    pub fn split(&self, n: usize) -> Result<Split> {
        Split::for_source(n, &self.source, self.seed)
    }

    /// The selector's settings (`selection:` and the seed).
    pub fn selector_config(&self) -> SelectorConfig {
        SelectorConfig::new(&self.selection, self.seed)
    }

    /// What an export's metadata record about this run. The configuration is recorded
    /// without `checkpoint.dir`: where checkpoints go depends on the command that ran
    /// (`run` and `curate` name their folders after the file, a YAML string names none), not
    /// on what was selected, so the same pipeline records the same `saln.config` from
    /// `saln-pipe curate`, `saln-pipe run`, Python and Ray.
    pub fn provenance(&self) -> Provenance {
        let mut recorded = self.clone();
        recorded.checkpoint.dir = None;
        Provenance {
            selection: self.selection.clone(),
            seed: self.seed,
            config_json: serde_json::to_string(&recorded).unwrap_or_default(),
        }
    }

    /// The configured device, resolved (`auto` becomes `cpu` or `cuda:0`).
    pub fn device(&self) -> tch::Device {
        crate::device::parse(&self.device).unwrap_or(tch::Device::Cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::AugmentOp;
    use crate::select::Policy;

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
        assert!(
            e.to_string().contains("source (line 1): no data set"),
            "{e}"
        );
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
