//! `saln-pipe eval`: does spectral selection buy accuracy per second? SALN against every
//! baseline, on a grid of policies x keep ratios x seeds (`docs/evaluation.md`).
//!
//! | file | what |
//! |---|---|
//! | this file | the eval YAML ([`EvalConfig`]), the grid's runs ([`RunSpec`]), running them ([`run`]) |
//! | [`summary`] | reading the run reports back; `results.md`, `results.json` |
//! | [`plot`] | PNG line plots (plotters), the font |
//! | [`viz`] | `saln-pipe viz`: one super-batch's images and spectral embedding |
//!
//! An eval file is a pipeline (`pipeline:`, the same YAML as `saln-pipe run` takes) plus a
//! `grid:`. Every run is that pipeline with its `seed`, `selection.policy` (and
//! `selection.rule` for `saln:RULE`), `selection.keep_ratio`, `report.path` and, for the
//! reference extractor, `extractor.weights` set by the grid. Runs go one after the other
//! (they would only steal each other's cores), each writing its JSON report to
//! `OUTPUT/runs/NAME.json`.
//!
//! Rules of the grid:
//! - At keep ratio 1 every policy keeps every sample and trains exactly like `none`: only
//!   `none` runs there, and `none` runs only there.
//! - The reference CNN is trained once per seed on that seed's held-out split
//!   (`OUTPUT/reference/seed-S.safetensors`, when missing): the split depends on the seed,
//!   and a reference trained on another seed's split would have seen the learner's samples.
//! - Resumable: a run whose report exists with `status: completed` and the same
//!   configuration is not run again. A report made with another configuration is an error
//!   (delete it or choose another `grid.output`), never silently reused or overwritten.
//!   Two things do not make a configuration "another" (see [`existing`]): the results
//!   folder may be moved (the paths the grid derives from `grid.output` compare relative
//!   to it), and a report that predates a configuration key compares as if it had held
//!   that key's default (a key added later keeps the old behaviour as its default).
//! - A failed run is reported and counted; the grid goes on, and the summary says which.
//!
//! ```
//! let yaml = r#"
//! pipeline:
//!   source: { idx: { dir: /usr/share/datasets/fashion-mnist }, limit: 2000 }
//! grid:
//!   policies: [none, uniform, "saln:quantile"]
//!   keep_ratios: [1, 0.5]
//!   seeds: [0, 1]
//!   target_accuracy: 0.8
//!   output: target/saln/eval-doc
//! "#;
//! let cfg = saln::eval::EvalConfig::from_yaml_str(yaml, "doc.yaml").unwrap();
//! let names: Vec<String> = cfg.runs().into_iter().map(|r| r.name).collect();
//! assert_eq!(names, [
//!     "none_r1_s0", "uniform_r0.5_s0", "saln-quantile_r0.5_s0",
//!     "none_r1_s1", "uniform_r0.5_s1", "saln-quantile_r0.5_s1",
//! ]);
//! ```
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{locate_key, parse_validated, PipelineConfig};
use crate::error::{ConfigIssue, Error, Result};
use crate::extract::backbone::ExtractorKind;
use crate::pipeline::{self, Cancel, Event};
use crate::report::Status;
use crate::select::{Policy, Rule};
use crate::train::EpochRecord;

pub mod plot;
pub mod summary;
pub mod viz;

/// An eval file: a base pipeline and the grid to run it on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// The pipeline every run starts from (the YAML `saln-pipe run` takes). The grid sets
    /// its `seed`, `selection.policy`, `selection.rule` (for `saln:RULE`),
    /// `selection.keep_ratio`, `report.path` and, with `extractor.kind: reference`,
    /// `extractor.weights`; everything else is shared by every run.
    pub pipeline: PipelineConfig,
    /// What varies from run to run, and where the results go.
    pub grid: GridConfig,
}

/// The grid: policies x keep ratios x seeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridConfig {
    /// Policies: `none`, `uniform`, `loss`, `rho-loss`, `jest`, `saln` (with the pipeline's
    /// rule) or `saln:RULE` (`saln:extremes`, `saln:boundary`, `saln:balanced`,
    /// `saln:quantile`).
    pub policies: Vec<GridPolicy>,
    /// Keep ratios in (0, 1]. Ratio 1 runs only `none`; `none` runs only at ratio 1.
    #[serde(default = "d_keep_ratios")]
    pub keep_ratios: Vec<f64>,
    /// Seeds; each is a full repetition (split, reference model, shuffling, augmentation,
    /// initialisation, random policies).
    #[serde(default = "d_seeds")]
    pub seeds: Vec<u64>,
    /// Test accuracies (fractions in (0, 1]) whose wall-clock times the table reports: one
    /// number or a list (`[0.8, 0.85]`).
    #[serde(deserialize_with = "one_or_many")]
    pub target_accuracy: Vec<f64>,
    /// The results folder: `results.md`, `results.json`, `accuracy-r*.png`, `runs/`,
    /// `reference/`.
    pub output: PathBuf,
    /// Seconds of the equal-wall-clock comparison. Default: the wall-clock of the fastest
    /// run of the grid (end of its last evaluation), so every run's curve reaches it.
    #[serde(default)]
    pub budget_seconds: Option<f64>,
}

/// A number or a list of numbers.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(f64),
        Many(Vec<f64>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(x) => vec![x],
        OneOrMany::Many(v) => v,
    })
}

fn d_keep_ratios() -> Vec<f64> {
    vec![1.0, 0.5, 0.25, 0.125]
}
fn d_seeds() -> Vec<u64> {
    vec![0, 1, 2]
}

/// A policy of the grid: a [`Policy`], and for `saln` optionally its [`Rule`]
/// (`saln:quantile`).
///
/// ```
/// use saln::eval::GridPolicy;
/// let p: GridPolicy = "saln:balanced".parse().unwrap();
/// assert_eq!(p.to_string(), "saln:balanced");
/// assert_eq!(p.slug(), "saln-balanced");
/// assert!("rho-loss".parse::<GridPolicy>().is_ok());
/// assert!("uniform:quantile".parse::<GridPolicy>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GridPolicy {
    /// The policy.
    pub policy: Policy,
    /// The rule (`saln` only); `None` keeps the pipeline's `selection.rule`.
    pub rule: Option<Rule>,
}

impl std::str::FromStr for GridPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (p, r) = match s.split_once(':') {
            Some((p, r)) => (p.trim(), Some(r.trim())),
            None => (s.trim(), None),
        };
        let policy: Policy = p.parse().map_err(|_| {
            format!(
                "unknown policy `{p}`: expected none, uniform, loss, rho-loss, jest, saln or \
                     saln:RULE"
            )
        })?;
        let rule = match r {
            None => None,
            Some(r) if policy == Policy::Saln => Some(r.parse::<Rule>().map_err(|_| {
                format!("unknown rule `{r}`: expected extremes, boundary, balanced or quantile")
            })?),
            Some(_) => return Err(format!("`{s}`: only saln takes a rule (saln:RULE)")),
        };
        Ok(GridPolicy { policy, rule })
    }
}

impl TryFrom<String> for GridPolicy {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<GridPolicy> for String {
    fn from(p: GridPolicy) -> String {
        p.to_string()
    }
}

impl std::fmt::Display for GridPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.rule {
            Some(r) => write!(f, "{}:{}", self.policy.name(), r.name()),
            None => f.write_str(self.policy.name()),
        }
    }
}

impl GridPolicy {
    /// The name in file names: `saln-quantile`, `rho-loss`.
    pub fn slug(&self) -> String {
        self.to_string().replace(':', "-")
    }
}

/// One run of the grid.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// `POLICY_rRATIO_sSEED`, e.g. `saln-quantile_r0.25_s1`: its report is
    /// `OUTPUT/runs/NAME.json`.
    pub name: String,
    /// The policy.
    pub policy: GridPolicy,
    /// The keep ratio.
    pub keep_ratio: f64,
    /// The seed.
    pub seed: u64,
    /// The pipeline it runs.
    pub config: PipelineConfig,
}

impl RunSpec {
    /// Where its report goes.
    pub fn report_path(&self) -> &Path {
        &self.config.report.path
    }
}

impl EvalConfig {
    /// Reads, parses and validates an eval file.
    pub fn load(path: &Path) -> Result<EvalConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_yaml_str(&text, path)
    }

    /// Parses and validates eval YAML; `origin` names it in messages.
    pub fn from_yaml_str(text: &str, origin: impl AsRef<Path>) -> Result<EvalConfig> {
        parse_validated(text, origin.as_ref(), Self::validate, |key| {
            // An item of a flow list (`[1, 1.5]`) has no line of its own: the list's.
            locate_key(text, key).or_else(|| {
                let (list, _) = key.rsplit_once('[')?;
                locate_key(text, list)
            })
        })
    }

    /// Every problem of the file: the base pipeline's, the grid's, and those of each run's
    /// pipeline (a `rho-loss` run with a TorchScript extractor, say).
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut v = crate::error::Issues::default();
        for i in self.pipeline.validate() {
            v.at(&format!("pipeline.{}", i.key), i.message);
        }
        let g = &self.grid;
        v.check(!g.policies.is_empty(), "grid.policies", || {
            "must list at least one policy".into()
        });
        for (k, p) in g.policies.iter().enumerate() {
            if g.policies[..k].contains(p) {
                v.at(
                    &format!("grid.policies[{k}]"),
                    format!("`{p}` is listed twice"),
                );
            }
        }
        v.check(!g.keep_ratios.is_empty(), "grid.keep_ratios", || {
            "must list at least one keep ratio".into()
        });
        for (k, &r) in g.keep_ratios.iter().enumerate() {
            let key = format!("grid.keep_ratios[{k}]");
            v.check(r > 0.0 && r <= 1.0, &key, || {
                format!("must be in (0, 1], got {r}")
            });
            if g.keep_ratios[..k].contains(&r) {
                v.at(&key, format!("{r} is listed twice"));
            }
        }
        v.check(!g.seeds.is_empty(), "grid.seeds", || {
            "must list at least one seed".into()
        });
        for (k, s) in g.seeds.iter().enumerate() {
            if g.seeds[..k].contains(s) {
                v.at(
                    &format!("grid.seeds[{k}]"),
                    format!("seed {s} is listed twice"),
                );
            }
        }
        v.check(
            !g.target_accuracy.is_empty(),
            "grid.target_accuracy",
            || "must give at least one accuracy".into(),
        );
        for (k, &t) in g.target_accuracy.iter().enumerate() {
            let key = if g.target_accuracy.len() == 1 {
                "grid.target_accuracy".to_string()
            } else {
                format!("grid.target_accuracy[{k}]")
            };
            v.check(t > 0.0 && t <= 1.0, &key, || {
                format!("must be a fraction in (0, 1], got {t}")
            });
        }
        if let Some(b) = g.budget_seconds {
            v.check(b > 0.0 && b.is_finite(), "grid.budget_seconds", || {
                format!("must be positive, got {b}")
            });
        }
        let has_none = g.policies.iter().any(|p| p.policy == Policy::None);
        v.check(
            has_none || !g.keep_ratios.contains(&1.0),
            "grid.keep_ratios",
            || {
                "ratio 1 runs only the `none` policy (every policy keeps everything at ratio 1), \
                 and grid.policies does not list it"
                    .into()
            },
        );
        // Each distinct (policy, seed) pipeline once: the ratio does not change validity.
        if v.0.is_empty() {
            for (k, p) in g.policies.iter().enumerate() {
                let ratio = if p.policy == Policy::None { 1.0 } else { 0.5 };
                let cfg = self.run_config(*p, ratio, g.seeds[0]);
                for i in cfg.validate() {
                    v.at(
                        &format!("grid.policies[{k}]"),
                        format!("`{p}`: {}: {}", i.key, i.message),
                    );
                }
            }
        }
        v.0
    }

    /// The runs of the grid, in the order they run: seed by seed (so that a grid stopped
    /// half-way has complete comparisons for its first seeds), then keep ratio, then policy.
    pub fn runs(&self) -> Vec<RunSpec> {
        let g = &self.grid;
        let mut runs = Vec::new();
        for &seed in &g.seeds {
            let mut ratios: Vec<f64> = g.keep_ratios.clone();
            if g.policies.iter().any(|p| p.policy == Policy::None) && !ratios.contains(&1.0) {
                ratios.insert(0, 1.0);
            }
            for &ratio in &ratios {
                for &policy in &g.policies {
                    if (policy.policy == Policy::None) != (ratio == 1.0) {
                        continue;
                    }
                    let name = format!("{}_r{ratio}_s{seed}", policy.slug());
                    runs.push(RunSpec {
                        name,
                        policy,
                        keep_ratio: ratio,
                        seed,
                        config: self.run_config(policy, ratio, seed),
                    });
                }
            }
        }
        runs
    }

    /// The pipeline of one run.
    fn run_config(&self, policy: GridPolicy, ratio: f64, seed: u64) -> PipelineConfig {
        let mut cfg = self.pipeline.clone();
        cfg.seed = seed;
        cfg.selection.policy = policy.policy;
        if let Some(rule) = policy.rule {
            cfg.selection.rule = rule;
        }
        cfg.selection.keep_ratio = ratio;
        if cfg.extractor.kind == ExtractorKind::Reference {
            cfg.extractor.weights = self.reference_weights(seed);
        }
        let name = format!("{}_r{ratio}_s{seed}", policy.slug());
        cfg.report.path = self.grid.output.join("runs").join(format!("{name}.json"));
        cfg
    }

    /// The reference CNN of `seed` (`extractor.kind: reference`).
    pub fn reference_weights(&self, seed: u64) -> PathBuf {
        self.grid
            .output
            .join("reference")
            .join(format!("seed-{seed}.safetensors"))
    }
}

/// Whether `text` is an eval file rather than a pipeline: it has a top-level `grid:` key.
///
/// ```
/// assert!(saln::eval::is_eval_yaml("pipeline:\n  seed: 1\ngrid:\n  seeds: [1]\n"));
/// assert!(!saln::eval::is_eval_yaml("source: {}\n# grid: no\n"));
/// ```
pub fn is_eval_yaml(text: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix("grid")
            .is_some_and(|rest| rest.trim_start().starts_with(':'))
    })
}

/// Something that happened during [`run`], for the command line.
#[derive(Debug, Clone)]
pub enum EvalEvent {
    /// The reference CNN of `seed` is being trained (its weights were missing).
    Pretraining {
        /// The seed.
        seed: u64,
        /// Where its weights go.
        weights: PathBuf,
    },
    /// It was trained.
    Pretrained {
        /// The seed.
        seed: u64,
        /// Its test accuracy.
        test_accuracy: f64,
        /// Seconds it took.
        seconds: f64,
    },
    /// A run whose completed report exists was not run again.
    Skipped {
        /// 1-based position in the grid.
        index: usize,
        /// Runs in the grid.
        total: usize,
        /// The run.
        name: String,
    },
    /// A run started.
    Started {
        /// 1-based position.
        index: usize,
        /// Runs in the grid.
        total: usize,
        /// The run.
        name: String,
    },
    /// A run finished an epoch.
    Epoch {
        /// The run.
        name: String,
        /// The epoch.
        record: EpochRecord,
    },
    /// A run completed.
    Finished {
        /// 1-based position.
        index: usize,
        /// Runs in the grid.
        total: usize,
        /// The run.
        name: String,
        /// Its final test accuracy.
        final_accuracy: Option<f64>,
        /// Its wall-clock seconds.
        wall_seconds: f64,
    },
    /// A run failed; the grid goes on.
    Failed {
        /// 1-based position.
        index: usize,
        /// Runs in the grid.
        total: usize,
        /// The run.
        name: String,
        /// Why.
        error: String,
    },
}

/// Receives [`EvalEvent`]s (from the calling thread and from the train stage's thread).
pub type EvalObserver = Arc<dyn Fn(&EvalEvent) + Send + Sync>;

/// What [`run`] did.
#[derive(Debug, Clone, Default)]
pub struct EvalOutcome {
    /// Runs in the grid.
    pub total: usize,
    /// Runs made now.
    pub ran: usize,
    /// Runs skipped because their completed report existed.
    pub skipped: usize,
    /// Runs that failed: name and error.
    pub failed: Vec<(String, String)>,
    /// Stopped by `cancel` before the grid was done.
    pub cancelled: bool,
    /// `results.md`, `results.json` and the plots, as written.
    pub outputs: Vec<PathBuf>,
}

/// What is at a run's report path.
#[derive(Debug, Clone, PartialEq)]
pub enum Existing {
    /// Nothing.
    Missing,
    /// A report of a run that did not complete (failed or cancelled): it runs again.
    Incomplete,
    /// A completed report of this very configuration: the run is done.
    Completed,
}

/// The runs of `cfg` that [`run`] would run now: those without a completed report of
/// their configuration. An error when a completed report of another configuration is in
/// the way (see [`existing`]).
///
/// A committed grid (`docs/results/fashion-mnist/`) resumes with nothing to do:
/// `tests/it/eval.rs` checks it.
pub fn pending(cfg: &EvalConfig) -> Result<Vec<RunSpec>> {
    let mut out = Vec::new();
    for r in cfg.runs() {
        if existing(&r)? != Existing::Completed {
            out.push(r);
        }
    }
    Ok(out)
}

/// Checks what `run`'s report path holds. A completed report made with another
/// configuration is an [`Error::Output`] naming the first difference.
///
/// The report's configuration is migrated before the comparison, in two documented ways:
/// - **Moved results.** The grid derives `report.path` and (reference extractor)
///   `extractor.weights` from `grid.output`. A report whose two paths are the ones its own
///   grid folder would give (`OLD/runs/NAME.json`, `OLD/reference/seed-S.safetensors`)
///   compares as if made in the current folder: `grid.output` may point at a copy
///   (`docs/results/fashion-mnist/` holds reports written under `target/saln/...`).
/// - **Keys added since.** The report's `config` is read back as a [`PipelineConfig`],
///   which fills a key the report predates with its default (`superbatch.shard`, added
///   after the committed grids were run, defaults to one unsharded process: what those
///   runs did). So a new key must default to the old behaviour, which is the rule for
///   adding one. A report that does not read back (a key since removed or renamed) is
///   compared as written, and the difference is named.
pub fn existing(run: &RunSpec) -> Result<Existing> {
    let path = run.report_path();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Missing),
        Err(e) => return Err(Error::io(path, e)),
    };
    let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| Error::Output {
        path: path.to_path_buf(),
        message: format!(
            "is not a run report ({e}): delete it to run `{}` again",
            run.name
        ),
    })?;
    if json["status"] != "completed" {
        return Ok(Existing::Incomplete);
    }
    // Through JSON text, as the report was written: `to_value` would widen f32 settings
    // (0.286 becomes 0.28600001335144043) where the text keeps them short.
    let want: serde_json::Value = serde_json::to_vec(&run.config)
        .and_then(|b| serde_json::from_slice(&b))
        .map_err(|e| Error::Output {
            path: path.to_path_buf(),
            message: format!("cannot serialise the run's configuration: {e}"),
        })?;
    let got = migrate(&json["config"], run);
    match first_difference(&want, &got, "") {
        None => Ok(Existing::Completed),
        Some(diff) => Err(Error::Output {
            path: path.to_path_buf(),
            message: format!(
                "was made with another configuration ({diff}): delete it to run `{}` again, or \
                 set grid.output to another folder",
                run.name
            ),
        }),
    }
}

/// A report's configuration as `run` would write it today (see [`existing`]): the grid's
/// derived paths moved to `run`'s folder, keys the report predates filled with defaults.
fn migrate(config: &serde_json::Value, run: &RunSpec) -> serde_json::Value {
    let mut got = config.clone();
    // The report's own grid folder: `OLD/runs/NAME.json`.
    let old_report = got["report"]["path"].as_str().map(PathBuf::from);
    let old_output = old_report
        .as_deref()
        .filter(|p| p.file_name() == run.report_path().file_name())
        .and_then(|p| p.parent())
        .filter(|runs| runs.file_name().is_some_and(|n| n == "runs"))
        .and_then(|runs| runs.parent());
    if let (Some(old), Some(new)) = (
        old_output,
        run.report_path().parent().and_then(|r| r.parent()),
    ) {
        let relocate = |v: &mut serde_json::Value| {
            if let Some(rest) = v.as_str().and_then(|p| Path::new(p).strip_prefix(old).ok()) {
                *v = serde_json::Value::String(new.join(rest).display().to_string());
            }
        };
        relocate(&mut got["report"]["path"]);
        if got["extractor"]["kind"] == "reference" {
            relocate(&mut got["extractor"]["weights"]);
        }
    }
    // Through the type and back as JSON text (as `existing` serialises `want`).
    serde_json::from_value::<PipelineConfig>(got.clone())
        .ok()
        .and_then(|c| serde_json::to_vec(&c).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(got)
}

/// The first key path where `want` and `got` differ, with both values.
fn first_difference(want: &serde_json::Value, got: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value;
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                first_difference(
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                    &path,
                )
            })
        }
        (a, b) if a == b => None,
        (a, b) => Some(format!("{at}: {a} now, {b} in the report")),
    }
}

/// Runs the grid of `cfg`: pretrains missing references, runs every run whose completed
/// report is not there yet, then writes `results.md`, `results.json` and the plots from
/// every completed report of the grid (also after a cancel or failures: the table then
/// says how many runs it covers). Returns `Err` only when nothing could be run or written
/// (invalid configuration, unreadable data, a conflicting old report, an output error).
pub fn run(cfg: &EvalConfig, cancel: &Cancel, on: EvalObserver) -> Result<EvalOutcome> {
    let issues = cfg.validate();
    if !issues.is_empty() {
        return Err(Error::ConfigInvalid {
            path: "<eval>".into(),
            issues,
        });
    }
    let runs = cfg.runs();
    let mut outcome = EvalOutcome {
        total: runs.len(),
        ..Default::default()
    };
    // Conflicting old reports stop everything before any work.
    let pending: Vec<String> = pending(cfg)?.into_iter().map(|r| r.name).collect();
    let done: Vec<bool> = runs.iter().map(|r| !pending.contains(&r.name)).collect();
    for r in runs.iter().zip(&done).filter(|(_, &d)| !d).map(|(r, _)| r) {
        let issues = r.config.check_resources();
        if !issues.is_empty() {
            return Err(Error::ConfigInvalid {
                path: format!("<eval run {}>", r.name).into(),
                issues,
            });
        }
    }
    let data = Arc::new(crate::source::open(&cfg.pipeline.source)?);
    let classes = data.train.num_classes();

    // References: once per seed, only where a pending run needs one.
    for &seed in &cfg.grid.seeds {
        let pending = runs
            .iter()
            .zip(&done)
            .find(|(r, &d)| !d && r.seed == seed && r.config.selection.policy.needs_reference());
        let Some((r, _)) = pending else { continue };
        let weights = &r.config.extractor.weights;
        if r.config.extractor.kind != ExtractorKind::Reference || weights.exists() {
            continue;
        }
        if cancel.is_cancelled() {
            break;
        }
        on(&EvalEvent::Pretraining {
            seed,
            weights: weights.clone(),
        });
        let s = crate::pipeline::pretrain(&r.config, &mut |_, _| {})?;
        on(&EvalEvent::Pretrained {
            seed,
            test_accuracy: s.test_accuracy,
            seconds: s.seconds,
        });
    }

    let total = runs.len();
    for (k, (r, &d)) in runs.iter().zip(&done).enumerate() {
        let index = k + 1;
        if d {
            outcome.skipped += 1;
            on(&EvalEvent::Skipped {
                index,
                total,
                name: r.name.clone(),
            });
            continue;
        }
        if cancel.is_cancelled() {
            outcome.cancelled = true;
            break;
        }
        on(&EvalEvent::Started {
            index,
            total,
            name: r.name.clone(),
        });
        let observer: pipeline::Observer = {
            let (on, name) = (on.clone(), r.name.clone());
            Arc::new(move |e: &Event| {
                if let Event::Epoch(record) = e {
                    on(&EvalEvent::Epoch {
                        name: name.clone(),
                        record: record.clone(),
                    })
                }
            })
        };
        match pipeline::run_with(&r.config, data.clone(), cancel.clone(), Some(observer)) {
            Ok(report) if report.status == Status::Completed => {
                outcome.ran += 1;
                on(&EvalEvent::Finished {
                    index,
                    total,
                    name: r.name.clone(),
                    final_accuracy: report.final_test_accuracy,
                    wall_seconds: report.wall_seconds,
                });
            }
            Ok(_) => {
                outcome.cancelled = true;
                break;
            }
            Err(e) => {
                let error = e.to_string();
                on(&EvalEvent::Failed {
                    index,
                    total,
                    name: r.name.clone(),
                    error: error.clone(),
                });
                outcome.failed.push((r.name.clone(), error));
            }
        }
    }
    outcome.outputs = summary::write(cfg, &runs, classes, &outcome.failed)?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "pipeline:\n  source: { idx: { dir: /x } }\n";

    fn parse(grid: &str) -> Result<EvalConfig> {
        EvalConfig::from_yaml_str(&format!("{BASE}grid:\n{grid}"), "t.yaml")
    }

    #[test]
    fn none_runs_only_at_ratio_one_and_ratio_one_only_none() {
        let cfg = parse(
            "  policies: [uniform, none, \"saln:extremes\", jest]\n  keep_ratios: [0.5, 1, 0.25]\n  \
             seeds: [7]\n  target_accuracy: 0.8\n  output: /tmp/o\n",
        )
        .unwrap();
        let runs = cfg.runs();
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "uniform_r0.5_s7",
                "saln-extremes_r0.5_s7",
                "jest_r0.5_s7",
                "none_r1_s7",
                "uniform_r0.25_s7",
                "saln-extremes_r0.25_s7",
                "jest_r0.25_s7",
            ]
        );
        let r = &runs[1];
        assert_eq!(r.config.selection.policy, Policy::Saln);
        assert_eq!(r.config.selection.rule, Rule::Extremes);
        assert_eq!(r.config.selection.keep_ratio, 0.5);
        assert_eq!(r.config.seed, 7);
        assert_eq!(
            r.config.report.path,
            Path::new("/tmp/o/runs/saln-extremes_r0.5_s7.json")
        );
        assert_eq!(
            r.config.extractor.weights,
            Path::new("/tmp/o/reference/seed-7.safetensors")
        );
        assert_eq!(runs[3].config.selection.keep_ratio, 1.0);
    }

    #[test]
    fn grid_problems_are_all_reported_with_their_lines() {
        let e = parse(
            "  policies: [uniform, uniform, \"loss:quantile\"]\n  keep_ratios: [0, 1]\n  \
             seeds: [1, 1]\n  target_accuracy: 80\n  output: /tmp/o\n",
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("only saln takes a rule"), "{msg}");
        let e = parse(
            "  policies: [uniform, uniform]\n  keep_ratios: [0, 1]\n  seeds: [1, 1]\n  \
             target_accuracy: 80\n  output: /tmp/o\n",
        )
        .unwrap_err();
        let Error::ConfigInvalid { issues, .. } = e else {
            panic!("{e}")
        };
        let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "grid.policies[1]",
                "grid.keep_ratios[0]",
                "grid.seeds[1]",
                "grid.target_accuracy",
                "grid.keep_ratios"
            ]
        );
        assert_eq!(issues[3].line, Some(7));
    }

    #[test]
    fn a_run_that_cannot_work_is_named_by_its_policy() {
        let yaml = "pipeline:\n  source: { idx: { dir: /x } }\n  extractor: { kind: torchscript, \
                    torchscript: { path: m.pt } }\ngrid:\n  policies: [uniform, rho-loss]\n  \
                    keep_ratios: [0.5]\n  target_accuracy: 0.8\n  output: /tmp/o\n";
        let e = EvalConfig::from_yaml_str(yaml, "t").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("grid.policies[1]") && msg.contains("extractor.kind: reference"),
            "{msg}"
        );
    }

    #[test]
    fn an_old_report_of_another_configuration_is_an_error_naming_the_difference() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "pipeline:\n  source: {{ idx: {{ dir: /x }} }}\n  augment: {{ ops: [ {{ normalize: \
             {{ mean: [0.286], std: [0.353] }} }} ] }}\ngrid:\n  policies: [uniform]\n  \
             keep_ratios: [0.5]\n  seeds: [1]\n  target_accuracy: 0.8\n  output: {}\n",
            dir.path().display()
        );
        let cfg = EvalConfig::from_yaml_str(&yaml, "t").unwrap();
        let run = &cfg.runs()[0];
        assert_eq!(existing(run).unwrap(), Existing::Missing);
        let mut other = run.config.clone();
        other.trainer.epochs += 1;
        // Written as the pipeline writes reports (f32 settings such as normalize's included).
        let write = |status: &str, config: &PipelineConfig| {
            let json = format!(
                "{{\"status\": \"{status}\", \"config\": {}}}",
                serde_json::to_string_pretty(config).unwrap()
            );
            crate::io::write_atomic(run.report_path(), json.as_bytes()).unwrap();
        };
        write("failed", &other);
        assert_eq!(existing(run).unwrap(), Existing::Incomplete);
        write("completed", &run.config);
        assert_eq!(existing(run).unwrap(), Existing::Completed);
        write("completed", &other);
        let e = existing(run).unwrap_err().to_string();
        assert!(e.contains("trainer.epochs: 5 now, 6 in the report"), "{e}");
    }

    #[test]
    fn a_moved_report_that_predates_a_key_is_the_same_run() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "pipeline:\n  source: {{ idx: {{ dir: /x }} }}\ngrid:\n  policies: [\"saln:quantile\"]\n  \
             keep_ratios: [0.5]\n  seeds: [1]\n  target_accuracy: 0.8\n  output: {}\n",
            dir.path().display()
        );
        let cfg = EvalConfig::from_yaml_str(&yaml, "t").unwrap();
        let run = &cfg.runs()[0];
        // Made under another folder, before `superbatch.shard` existed.
        let mut config = serde_json::to_value(&run.config).unwrap();
        config["report"]["path"] = "elsewhere/out/runs/saln-quantile_r0.5_s1.json".into();
        config["extractor"]["weights"] = "elsewhere/out/reference/seed-1.safetensors".into();
        config["superbatch"]
            .as_object_mut()
            .unwrap()
            .remove("shard");
        let report = serde_json::json!({ "status": "completed", "config": config });
        crate::io::write_atomic(run.report_path(), report.to_string().as_bytes()).unwrap();
        assert_eq!(existing(run).unwrap(), Existing::Completed);
        assert!(pending(&cfg).unwrap().is_empty());
        // A moved weights file that is not the grid's own is a difference.
        config["extractor"]["weights"] = "elsewhere/other.safetensors".into();
        let report = serde_json::json!({ "status": "completed", "config": config });
        crate::io::write_atomic(run.report_path(), report.to_string().as_bytes()).unwrap();
        let e = existing(run).unwrap_err().to_string();
        assert!(e.contains("extractor.weights"), "{e}");
    }
}
