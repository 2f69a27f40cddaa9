//! The JSON run report: what was asked (the resolved config and seed), what happened per
//! epoch and per stage, and what selection did.
//!
//! Written atomically (temporary file, then rename) at the end of every run, also when the
//! run was cancelled or failed, so a report that exists is always complete JSON.
use std::path::Path;

use serde::Serialize;

use crate::batch::LoaderSummary;
use crate::config::PipelineConfig;
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::select::outcome::SelectionStats;
use crate::source::Split;
use crate::stage::{Overlap, StageSnapshot};
use crate::train::EpochRecord;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every epoch ran.
    Completed,
    /// Stopped by Ctrl-C / SIGTERM / the caller; the epochs listed completed.
    Cancelled,
    /// A stage failed; `error` says which and why.
    Failed,
}

impl Status {
    /// How a run ended: `failed` when there is an `error`, else `cancelled` when the run's
    /// cancel flag was set, else `completed`.
    pub fn of(error: Option<&Error>, cancelled: bool) -> Status {
        match (error, cancelled) {
            (Some(_), _) => Status::Failed,
            (None, true) => Status::Cancelled,
            (None, false) => Status::Completed,
        }
    }
}

/// Data set figures.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DataReport {
    /// Training samples the learner draws from.
    pub learner_samples: usize,
    /// Training samples held out for the reference model.
    pub holdout_samples: usize,
    /// Test samples evaluated on.
    pub test_samples: usize,
    /// Training samples skipped as unreadable (`on_error: skip`), over all epochs.
    pub skipped: u64,
    /// The first skipped training samples and why.
    pub first_skipped: Vec<String>,
    /// Test samples skipped as unreadable (`on_error: skip`); `test_samples` excludes them.
    pub test_skipped: u64,
    /// The first skipped test samples and why.
    pub test_first_skipped: Vec<String>,
}

impl DataReport {
    /// The data figures of a run on `split` whose loader reported `loader`; a run that
    /// evaluates fills in the test figures.
    pub fn new(split: &Split, loader: LoaderSummary) -> DataReport {
        DataReport {
            learner_samples: split.learner.len(),
            holdout_samples: split.holdout.len(),
            skipped: loader.skipped,
            first_skipped: loader.first_skipped,
            ..DataReport::default()
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// saln's version.
    pub saln_version: &'static str,
    /// How the run ended.
    pub status: Status,
    /// The error, when `status` is `failed`.
    pub error: Option<String>,
    /// The master seed.
    pub seed: u64,
    /// The device the models ran on.
    pub device: String,
    /// The configuration, with every default filled in.
    pub config: PipelineConfig,
    /// Data set figures.
    pub data: DataReport,
    /// Per epoch.
    pub epochs: Vec<EpochRecord>,
    /// Test accuracy after the last completed epoch.
    pub final_test_accuracy: Option<f64>,
    /// Per stage: items, busy, waiting for input, blocked on output.
    pub stages: Vec<StageSnapshot>,
    /// Selection figures.
    pub selection: SelectionStats,
    /// How well the stages overlapped (end-to-end rate / slowest stage's standalone rate).
    pub overlap: Overlap,
    /// Wall seconds of the whole run (data loading and model loading included).
    pub wall_seconds: f64,
    /// What the Parquet export wrote (runs with an `export:` section).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export: Option<crate::export::ExportSummary>,
    /// Checkpoints written by this process, and the one it resumed from (`saln-pipe run`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<CheckpointReport>,
}

/// What checkpointing cost and where a resumed run started.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CheckpointReport {
    /// The run folder.
    pub dir: std::path::PathBuf,
    /// Checkpoints written by this process.
    pub written: u64,
    /// Mean seconds per checkpoint (the train stage waits that long).
    pub mean_seconds: f64,
    /// Bytes of the last checkpoint written.
    pub last_bytes: u64,
    /// The optimizer step of the checkpoint this run resumed from (`--resume`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_from_step: Option<u64>,
}

impl Report {
    /// The report of a run of `cfg` on `device` that has not ended yet: no epochs, no
    /// figures, status `completed` until [`Report::ended`] says otherwise.
    pub fn new(cfg: &PipelineConfig, device: String) -> Report {
        Report {
            saln_version: env!("CARGO_PKG_VERSION"),
            status: Status::Completed,
            error: None,
            seed: cfg.seed,
            device,
            config: cfg.clone(),
            data: DataReport::default(),
            epochs: Vec::new(),
            final_test_accuracy: None,
            stages: Vec::new(),
            selection: SelectionStats::default(),
            overlap: Overlap::default(),
            wall_seconds: 0.0,
            export: None,
            checkpoints: None,
        }
    }

    /// Records how the run ended: `failed` when there is an `error`, else `cancelled` when the
    /// run's cancel flag was set, else `completed`; the final accuracy is the last epoch's.
    pub fn ended(mut self, error: Option<&Error>, cancelled: bool) -> Report {
        self.status = Status::of(error, cancelled);
        self.error = error.map(|e| e.to_string());
        self.final_test_accuracy = self.epochs.last().map(|e| e.test_accuracy);
        self
    }

    /// Writes the report as pretty JSON to `path`, atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_json(path, self)
    }
}

/// Writes `report` (any run mode's) as pretty JSON to `path`, atomically.
pub fn write_json(path: &Path, report: &impl Serialize) -> Result<()> {
    let json = serde_json::to_vec_pretty(report).map_err(|e| Error::Data {
        path: path.to_path_buf(),
        message: format!("cannot serialise report: {e}"),
    })?;
    write_atomic(path, &json)
}
