//! Loader-only runs: the input side alone (source, decode, augmentation, super-batches),
//! with nothing downstream, to measure how many images per second it delivers.
//!
//! A pipeline YAML with a `loader_only:` block is one: `saln-pipe run` then loads
//! `loader_only.epochs` epochs of the training split (every training image, `source.holdout`
//! ignored, at most `source.limit`) through the configured workers, drops each super-batch as
//! it arrives, and writes a [`LoaderReport`] (images per second, skipped samples, stage
//! counters) to `report.path`. Sections after the loader (`extractor`, `selection`,
//! `trainer`) are not used.
//!
//! ```yaml
//! source:
//!   image_folder: { train: photos/, test_fraction: 0.0 }
//! augment:
//!   workers: 2
//!   ops:
//!     - resize: { size: [224, 224] }
//!     - hflip: { p: 0.5 }
//!     - normalize: { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }
//! superbatch: { size: 64 }
//! loader_only: { epochs: 1 }
//! ```
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

use crate::augment::Augmenter;
use crate::batch::{run_loader, LoaderSummary, Shard};
use crate::config::PipelineConfig;
use crate::error::{Error, Result};
use crate::report::Status;
use crate::source::{self, Split};
use crate::stage::{join, spawn_stage, Cancel, Msg, StageSnapshot, StageStats};

/// The report of a loader-only run.
#[derive(Debug, Clone, Serialize)]
pub struct LoaderReport {
    /// saln's version.
    pub saln_version: &'static str,
    /// Always `loader-only`.
    pub mode: &'static str,
    /// How the run ended.
    pub status: Status,
    /// The error, when `status` is `failed`.
    pub error: Option<String>,
    /// The configuration, with every default filled in.
    pub config: PipelineConfig,
    /// This process's share.
    pub shard: Shard,
    /// `[C, H, W]` of every image delivered.
    pub output_shape: [usize; 3],
    /// Training samples in the data set (after `source.limit`).
    pub train_samples: usize,
    /// Epochs loaded.
    pub epochs: usize,
    /// Images delivered (all epochs).
    pub images: u64,
    /// Super-batches delivered.
    pub superbatches: u64,
    /// Samples skipped as unreadable (`on_error: skip`).
    pub skipped: u64,
    /// The first skipped samples and why.
    pub first_skipped: Vec<String>,
    /// Seconds to open the data set (listing folders, reading tables).
    pub open_seconds: f64,
    /// Seconds from starting the workers to the last super-batch.
    pub load_seconds: f64,
    /// `images / load_seconds`.
    pub images_per_second: f64,
    /// CPU seconds (user + system, all threads of the process) spent while loading: unlike
    /// the rate, this does not depend on how many cores other programs leave free.
    pub cpu_seconds: Option<f64>,
    /// `1000 * cpu_seconds / images`.
    pub cpu_ms_per_image: Option<f64>,
    /// The loader stage's counters.
    pub stages: Vec<StageSnapshot>,
}

impl LoaderReport {
    /// Writes the report as pretty JSON to `path`, atomically.
    pub fn write(&self, path: &std::path::Path) -> Result<()> {
        crate::report::write_json(path, self)
    }
}

/// Runs the loader alone (see the module doc), writes the report to `cfg.report.path` and
/// returns it. A loader failure (with `on_error: fail`) writes a `failed` report first and
/// returns the error, which names the sample.
pub fn run(cfg: &PipelineConfig, cancel: Cancel) -> Result<LoaderReport> {
    let issues = cfg.validate();
    if !issues.is_empty() {
        return Err(Error::ConfigInvalid {
            path: "<config>".into(),
            issues,
        });
    }
    let epochs = cfg.loader_only.as_ref().map_or(1, |l| l.epochs);
    let t_open = Instant::now();
    let data = source::open(&cfg.source)?;
    let n = data.train.len();
    if n == 0 {
        return Err(Error::Data {
            path: "<source>".into(),
            message: "the training split holds no images".into(),
        });
    }
    let indices = Split::new(n, 0, cfg.source.limit, cfg.seed)?.learner;
    let open_seconds = t_open.elapsed().as_secs_f64();
    let augmenter = Arc::new(Augmenter::new(cfg.augment.ops.clone()));
    let (c, h, w) = augmenter.output_shape(data.train.shape())?;
    let plan = cfg.loader_plan(indices, epochs)?;
    let shard = plan.shard;
    let train_samples = plan.indices.len();
    let stats = Arc::new(StageStats::new("loader"));
    let (tx, mut rx) = tokio::sync::mpsc::channel(cfg.channels.loader_to_extract);
    let t_load = Instant::now();
    let cpu_start = process_cpu_seconds();
    let loader = {
        let (src, st, c) = (data.train.clone(), stats.clone(), cancel.clone());
        spawn_stage("loader", &cancel, move || {
            run_loader(src, augmenter, plan, tx, &st, &c)
        })?
    };
    // The consumer: take each super-batch and drop it.
    while let Some(msg) = rx.blocking_recv() {
        if let Msg::Data(sb) = msg {
            drop(sb);
        }
    }
    let result = join(loader, "loader");
    let load_seconds = t_load.elapsed().as_secs_f64();
    let cpu_seconds = process_cpu_seconds()
        .zip(cpu_start)
        .map(|(end, start)| end - start);
    let (summary, error) = match result {
        Ok(s) => (s, None),
        Err(e) => (LoaderSummary::default(), Some(e)),
    };
    let status = Status::of(error.as_ref(), cancel.is_cancelled());
    let report = LoaderReport {
        saln_version: env!("CARGO_PKG_VERSION"),
        mode: "loader-only",
        status,
        error: error.as_ref().map(|e| e.to_string()),
        config: cfg.clone(),
        shard,
        output_shape: [c, h, w],
        train_samples,
        epochs,
        images: summary.samples,
        superbatches: summary.superbatches,
        skipped: summary.skipped,
        first_skipped: summary.first_skipped,
        open_seconds,
        load_seconds,
        images_per_second: summary.samples as f64 / load_seconds.max(1e-9),
        cpu_seconds,
        cpu_ms_per_image: cpu_seconds
            .filter(|_| summary.samples > 0)
            .map(|c| 1000.0 * c / summary.samples as f64),
        stages: vec![stats.snapshot()],
    };
    report.write(&cfg.report.path)?;
    match error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// User + system CPU seconds of this process so far (every thread), where the OS says.
fn process_cpu_seconds() -> Option<f64> {
    #[cfg(unix)]
    {
        let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes a whole `rusage` into the pointer it is given, which points
        // to memory of that type owned by this frame.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        // SAFETY: getrusage returned 0, so it filled the struct (it was zeroed before anyway).
        let u = unsafe { u.assume_init() };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        Some(secs(u.ru_utime) + secs(u.ru_stime))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::decode::encode;
    use crate::source::RawImage;

    fn folder(dir: &std::path::Path, n: usize) {
        for i in 0..n {
            let (h, w) = (10 + i % 7, 12 + i % 5);
            let img = RawImage {
                channels: 3,
                height: h,
                width: w,
                data: (0..3 * h * w).map(|p| (p * (i + 1) % 256) as u8).collect(),
            };
            let p = dir.join(format!("c{}/{i}.jpg", i % 2));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, encode(&img, image::ImageFormat::Jpeg).unwrap()).unwrap();
        }
    }

    fn yaml(dir: &std::path::Path, report: &std::path::Path, extra: &str) -> PipelineConfig {
        let text = format!(
            "seed: 1\nsource:\n  image_folder: {{ train: {}, test_fraction: 0.0 }}\n  on_error: skip\n\
             augment:\n  workers: 2\n  ops:\n    - resize: {{ size: [8, 8] }}\n    - hflip: {{ p: 0.5 }}\n\
             superbatch: {{ size: 4 }}\nreport: {{ path: {} }}\n{extra}",
            dir.display(),
            report.display()
        );
        PipelineConfig::from_yaml_str(&text, "t.yaml").unwrap()
    }

    #[test]
    fn a_loader_only_pipeline_reports_images_per_second_and_skips() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        folder(&data, 10);
        std::fs::write(data.join("c0/broken.jpg"), b"\xff\xd8\xff not really").unwrap();
        let report = t.path().join("out/report.json");
        let cfg = yaml(&data, &report, "loader_only: { epochs: 2 }\n");
        let r = run(&cfg, Cancel::default()).unwrap();
        assert_eq!(r.status, Status::Completed);
        assert_eq!((r.train_samples, r.images, r.skipped), (11, 20, 2));
        assert_eq!(r.output_shape, [3, 8, 8]);
        assert!(r.images_per_second > 0.0);
        assert!(
            r.first_skipped[0].contains("broken.jpg"),
            "{:?}",
            r.first_skipped
        );
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert_eq!(json["mode"], "loader-only");
        assert_eq!(json["images"], 20);
        assert_eq!(json["skipped"], 2);
    }

    #[test]
    fn a_failing_loader_only_run_writes_a_failed_report_naming_the_file() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        folder(&data, 4);
        std::fs::write(data.join("c1/zero.jpg"), b"").unwrap();
        let report = t.path().join("report.json");
        let mut cfg = yaml(&data, &report, "loader_only: {}\n");
        cfg.source.on_error = crate::source::OnError::Fail;
        let e = run(&cfg, Cancel::default()).unwrap_err().to_string();
        assert!(e.contains("zero.jpg") && e.contains("empty"), "{e}");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert_eq!(json["status"], "failed");
        assert!(json["error"].as_str().unwrap().contains("zero.jpg"));
    }

    #[test]
    fn loader_only_epochs_must_be_positive() {
        let t = tempfile::tempdir().unwrap();
        let text = format!(
            "source:\n  image_folder: {{ train: {}, test_fraction: 0.0 }}\nloader_only: {{ epochs: 0 }}\n",
            t.path().display()
        );
        let e = PipelineConfig::from_yaml_str(&text, "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("loader_only.epochs"), "{e}");
    }
}
