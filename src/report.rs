//! The JSON run report: what was asked (the resolved config and seed), what happened per
//! epoch and per stage, and what selection did.
//!
//! Written atomically (temporary file, then rename) at the end of every run, also when the
//! run was cancelled or failed, so a report that exists is always complete JSON.
use crate::config::Issues;
use std::path::Path;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::batch::LoaderSummary;
use crate::config::PipelineConfig;
use crate::error::{Error, Result};
use crate::extract::SelectionStats;
use crate::pipeline::{Overlap, RunInfo, StageSnapshot};
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

/// Data set figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
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
    /// The figures of a run on `info`'s data, evaluated on `test_samples` test samples after
    /// `test_skipped` (count, first few) were left out.
    pub fn new(
        info: &RunInfo,
        test_samples: usize,
        test_skipped: (u64, Vec<String>),
        loader: LoaderSummary,
    ) -> DataReport {
        DataReport {
            learner_samples: info.split.learner.len(),
            holdout_samples: info.split.holdout.len(),
            test_samples,
            skipped: loader.skipped,
            first_skipped: loader.first_skipped,
            test_skipped: test_skipped.0,
            test_first_skipped: test_skipped.1,
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
}

impl Report {
    /// Assembles a report. The status follows from how the run ended: `failed` when there
    /// is an `error`, else `cancelled` when the run's cancel flag was set, else `completed`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &PipelineConfig,
        device: String,
        error: Option<&Error>,
        cancelled: bool,
        data: DataReport,
        epochs: Vec<EpochRecord>,
        stages: Vec<StageSnapshot>,
        selection: SelectionStats,
        wall_seconds: f64,
    ) -> Report {
        let status = match (error, cancelled) {
            (Some(_), _) => Status::Failed,
            (None, true) => Status::Cancelled,
            (None, false) => Status::Completed,
        };
        Report {
            saln_version: env!("CARGO_PKG_VERSION"),
            status,
            error: error.map(|e| e.to_string()),
            seed: cfg.seed,
            device,
            config: cfg.clone(),
            data,
            final_test_accuracy: epochs.last().map(|e| e.test_accuracy),
            epochs,
            stages,
            selection,
            overlap: Overlap::default(),
            wall_seconds,
            export: None,
        }
    }

    /// Writes the report as pretty JSON to `path`, atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::Data {
            path: path.to_path_buf(),
            message: format!("cannot serialise report: {e}"),
        })?;
        write_atomic(path, &json)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.partial", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

// ---- configuration ----

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

pub(crate) fn d_progress() -> f64 {
    10.0
}
pub(crate) fn d_report() -> PathBuf {
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
