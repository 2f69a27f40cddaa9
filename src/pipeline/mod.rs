//! Wiring: stages on their own threads, joined by bounded channels.
//!
//! ```text
//!  source ──► loader (N decode workers) ──[loader_to_extract]──► extract + select ──[extract_to_train]──► train
//! ```
//!
//! Each stage is an OS thread (`saln-loader`, `saln-extract`, `saln-train`); the loader
//! owns its decode workers. Channels are tokio bounded channels used from threads
//! (`blocking_send` / `blocking_recv`), so a slow stage makes the ones before it wait and
//! memory stays bounded; the same channels can be read from async code (the loader API).
//!
//! Failure: a stage that errors sets the shared [`Cancel`] and drops its channel ends; the
//! others see a closed channel or the flag and stop. A panic inside a stage is caught and
//! becomes [`Error::Panic`]. The report is written in every case: completed, cancelled or
//! failed.
use crate::config::Issues;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::augment::Augmenter;
use crate::batch::{run_loader, LoaderPlan, LoaderSummary};
use crate::config::PipelineConfig;
use crate::error::{Error, Result};
use crate::extract::{run_extract, Extractor, SelectionStats, SubBatch};
use crate::report::{DataReport, Report, Status};
use crate::select::{Selector, SelectorConfig};
use crate::source::{self, DataSet, Split};
use crate::train::{eval_set, run_train, EpochRecord, Trainer};

pub mod metrics;
pub use metrics::{StageSnapshot, StageStats};

/// What flows through a channel: data, or the end of an epoch.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg<T> {
    /// One item.
    Data(T),
    /// Every item of `epoch` (0-based) has been sent.
    EpochEnd {
        /// The epoch that ended.
        epoch: usize,
    },
}

/// A cancellation flag shared by every stage of a run. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Asks every stage to stop after its current item.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Something that happened during a run, for progress displays.
#[derive(Debug, Clone)]
pub enum Event {
    /// Data opened and models loaded; stages are starting.
    Started {
        /// Learner samples per epoch.
        learner_samples: usize,
        /// Epochs.
        epochs: usize,
        /// Device name.
        device: String,
    },
    /// An epoch finished and was evaluated.
    Epoch(EpochRecord),
    /// Periodic snapshot of every stage's counters.
    Progress {
        /// Seconds since start.
        elapsed: f64,
        /// One per stage.
        stages: Vec<StageSnapshot>,
    },
}

/// Receives [`Event`]s; called from the stage threads.
pub type Observer = Arc<dyn Fn(&Event) + Send + Sync>;

/// Turns a panic payload into text.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Sets libtorch's intra-op thread count (0 leaves libtorch's default).
pub fn set_torch_threads(n: usize) {
    if n > 0 {
        tch::set_num_threads(n as i32);
    }
}

fn spawn_stage<T: Send + 'static>(
    name: &'static str,
    cancel: &Cancel,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<JoinHandle<Result<T>>> {
    let cancel = cancel.clone();
    std::thread::Builder::new()
        .name(format!("saln-{name}"))
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
                .unwrap_or_else(|p| {
                    Err(Error::Panic {
                        stage: name,
                        message: panic_message(&p),
                    })
                })
                .map_err(|e| e.in_stage(name));
            if r.is_err() {
                cancel.cancel();
            }
            r
        })
        .map_err(|e| Error::io("<thread>", e))
}

fn join<T>(h: JoinHandle<Result<T>>, stage: &'static str) -> Result<T> {
    h.join().unwrap_or_else(|p| {
        Err(Error::Panic {
            stage,
            message: panic_message(&p),
        })
    })
}

/// The front half of a pipeline, running: source -> loader -> extract + select. Its
/// output is the stream of curated [`SubBatch`]es in `output`; whoever holds it (the train
/// stage, the loader API, the Parquet exporter) consumes it. Dropping `output` stops the
/// stages; [`Curation::finish`] joins them.
pub struct Curation {
    /// Curated sub-batches, in super-batch order, with epoch markers.
    pub output: tokio::sync::mpsc::Receiver<Msg<SubBatch>>,
    /// Figures of the run so far.
    pub info: RunInfo,
    /// Live counters: `[loader, extract]`.
    pub stats: Vec<Arc<StageStats>>,
    /// The run's cancellation flag.
    pub cancel: Cancel,
    loader: JoinHandle<Result<LoaderSummary>>,
    extract: JoinHandle<Result<SelectionStats>>,
}

/// Static facts about a started run.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// The data set, opened.
    pub data: Arc<DataSet>,
    /// The learner / reference split.
    pub split: Split,
    /// `(C, H, W)` of every image, after augmentation (what the models see).
    pub shape: (usize, usize, usize),
    /// Number of classes.
    pub classes: usize,
    /// The resolved device.
    pub device: tch::Device,
    /// The augmenter (its deterministic part also prepares test images).
    pub augmenter: Arc<Augmenter>,
}

/// What the front half did.
#[derive(Debug, Clone, Default)]
pub struct CurationSummary {
    /// Loader figures.
    pub loader: LoaderSummary,
    /// Selection figures.
    pub selection: SelectionStats,
}

impl Curation {
    /// Validates `cfg`, opens the data, loads the reference model (when the policy needs
    /// it) and starts the loader and extract stages.
    pub fn start(cfg: &PipelineConfig, cancel: Cancel) -> Result<Curation> {
        let mut issues = cfg.validate();
        issues.extend(cfg.check_resources());
        if !issues.is_empty() {
            return Err(Error::ConfigInvalid {
                path: "<config>".into(),
                issues,
            });
        }
        set_torch_threads(cfg.torch_threads);
        let device = cfg.device();
        let data = Arc::new(source::open(&cfg.source)?);
        let split = Split::new(
            data.train.len(),
            cfg.source.holdout,
            cfg.source.limit,
            cfg.seed,
        )?;
        let augmenter = Arc::new(Augmenter::new(cfg.augment.ops.clone()));
        let shape = augmenter.output_shape(data.train.shape())?;
        let classes = data.train.num_classes();
        let selector = Selector::new(SelectorConfig::from_config(cfg));
        let extractor = if selector.config().policy.needs_features() {
            Some(Extractor::load(
                &cfg.extractor.weights,
                &cfg.extractor.arch,
                shape,
                classes,
                device,
                cfg.extractor.micro_batch,
            )?)
        } else {
            None
        };
        let stats = vec![
            Arc::new(StageStats::new("loader")),
            Arc::new(StageStats::new("extract")),
        ];
        let (sb_tx, sb_rx) = tokio::sync::mpsc::channel(cfg.channels.loader_to_extract);
        let (sub_tx, sub_rx) = tokio::sync::mpsc::channel(cfg.channels.extract_to_train);
        let plan = LoaderPlan {
            indices: split.learner.clone(),
            epochs: cfg.trainer.epochs,
            size: cfg.superbatch.size,
            drop_last: cfg.superbatch.drop_last,
            seed: cfg.seed,
            workers: cfg.augment.workers,
            prefetch: cfg.superbatch.prefetch,
            on_error: cfg.source.on_error,
            shard: cfg.superbatch.shard.resolve()?,
        };
        let loader = {
            let (src, aug, st, c) = (
                data.train.clone(),
                augmenter.clone(),
                stats[0].clone(),
                cancel.clone(),
            );
            spawn_stage("loader", &cancel, move || {
                run_loader(src, aug, plan, sb_tx, &st, &c)
            })?
        };
        let extract = {
            let (st, c) = (stats[1].clone(), cancel.clone());
            spawn_stage("extract", &cancel, move || {
                run_extract(extractor, selector, device, sb_rx, sub_tx, &st, &c)
            })?
        };
        Ok(Curation {
            output: sub_rx,
            info: RunInfo {
                data,
                split,
                shape,
                classes,
                device,
                augmenter,
            },
            stats,
            cancel,
            loader,
            extract,
        })
    }

    /// Splits off the output channel, leaving a handle to join the stages with.
    pub fn into_parts(self) -> (tokio::sync::mpsc::Receiver<Msg<SubBatch>>, CurationHandle) {
        (
            self.output,
            CurationHandle {
                info: self.info,
                stats: self.stats,
                cancel: self.cancel,
                loader: self.loader,
                extract: self.extract,
            },
        )
    }
}

/// The stages of a [`Curation`] whose output was taken with [`Curation::into_parts`].
pub struct CurationHandle {
    /// Figures of the run.
    pub info: RunInfo,
    /// Live counters: `[loader, extract]`.
    pub stats: Vec<Arc<StageStats>>,
    /// The run's cancellation flag.
    pub cancel: Cancel,
    loader: JoinHandle<Result<LoaderSummary>>,
    extract: JoinHandle<Result<SelectionStats>>,
}

impl CurationHandle {
    /// Waits for the loader and extract stages. The first error wins; a stage that stopped
    /// because its consumer went away is not an error.
    pub fn finish(self) -> (CurationSummary, Option<Error>) {
        let mut error = None;
        let loader = join(self.loader, "loader").unwrap_or_else(|e| {
            error.get_or_insert(e);
            LoaderSummary::default()
        });
        let selection = join(self.extract, "extract").unwrap_or_else(|e| {
            error.get_or_insert(e);
            SelectionStats::default()
        });
        (CurationSummary { loader, selection }, error)
    }
}

/// Runs a whole pipeline: the [`Curation`] front half, then the train stage on its output;
/// writes the report to `cfg.report.path` and returns it.
///
/// Returns `Err` when a stage failed (the report, with `status: failed`, is written first);
/// a cancelled run returns `Ok` with `status: cancelled` and the epochs that completed.
pub fn run(cfg: &PipelineConfig, cancel: Cancel, observer: Option<Observer>) -> Result<Report> {
    let start = Instant::now();
    let curation = Curation::start(cfg, cancel.clone())?;
    let (sub_rx, handle) = curation.into_parts();
    let info = handle.info.clone();
    let test = eval_set(
        info.data.test.as_ref(),
        &info.augmenter,
        cfg.source.test_limit,
        info.device,
    );
    let trainer = test.and_then(|test| {
        Trainer::new(
            &cfg.trainer.arch,
            info.shape,
            info.classes,
            cfg.trainer.lr,
            cfg.seed,
            info.device,
            test,
            cfg.trainer.eval_batch,
        )
    });
    let mut trainer = match trainer {
        Ok(t) => t,
        Err(e) => {
            cancel.cancel();
            drop(sub_rx);
            let _ = handle.finish();
            return Err(e);
        }
    };
    let test_samples = trainer.test_len();

    let observer: Observer = observer.unwrap_or_else(|| Arc::new(|_: &Event| {}));
    observer(&Event::Started {
        learner_samples: info.split.learner.len(),
        epochs: cfg.trainer.epochs,
        device: crate::device::name(info.device),
    });
    let train_stats = Arc::new(StageStats::new("train"));
    let mut stats = handle.stats.clone();
    stats.push(train_stats.clone());
    let train = {
        let (st, c, obs) = (train_stats, cancel.clone(), observer.clone());
        spawn_stage("train", &cancel, move || {
            let on_epoch = move |r: &EpochRecord| obs(&Event::Epoch(r.clone()));
            run_train(&mut trainer, sub_rx, &st, &c, start, &on_epoch)
        })?
    };

    // Progress ticks until the last stage ends.
    let finished = Arc::new(AtomicBool::new(false));
    let ticker = (cfg.report.progress_seconds > 0.0).then(|| {
        let (finished, stats, obs) = (finished.clone(), stats.clone(), observer.clone());
        let every = Duration::from_secs_f64(cfg.report.progress_seconds);
        std::thread::spawn(move || {
            let mut next = Instant::now() + every;
            while !finished.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
                if Instant::now() >= next {
                    next += every;
                    obs(&Event::Progress {
                        elapsed: start.elapsed().as_secs_f64(),
                        stages: stats.iter().map(|s| s.snapshot()).collect(),
                    });
                }
            }
        })
    });

    let trained = join(train, "train");
    let (summary, mut error) = handle.finish();
    finished.store(true, Ordering::SeqCst);
    if let Some(t) = ticker {
        let _ = t.join();
    }
    let epochs = match trained {
        Ok(e) => e,
        Err(e) => {
            // The trainer's own failure is the root cause; upstream only saw a closed channel.
            error = Some(e);
            Vec::new()
        }
    };
    let status = match (&error, cancel.is_cancelled()) {
        (Some(_), _) => Status::Failed,
        (None, true) => Status::Cancelled,
        (None, false) => Status::Completed,
    };
    let report = Report::new(
        cfg,
        crate::device::name(info.device),
        status,
        error.as_ref().map(|e| e.to_string()),
        DataReport {
            learner_samples: info.split.learner.len(),
            holdout_samples: info.split.holdout.len(),
            test_samples,
            skipped: summary.loader.skipped,
            first_skipped: summary.loader.first_skipped,
        },
        epochs,
        stats.iter().map(|s| s.snapshot()).collect(),
        summary.selection,
        start.elapsed().as_secs_f64(),
    );
    report.write(&cfg.report.path)?;
    match error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

// ---- configuration ----

/// Capacities of the bounded channels between stages (in super-batches).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// loader -> extract.
    #[serde(default = "d_capacity")]
    pub loader_to_extract: usize,
    /// extract -> train.
    #[serde(default = "d_capacity")]
    pub extract_to_train: usize,
}

pub(crate) fn d_capacity() -> usize {
    2
}

impl ChannelConfig {
    /// Adds this section's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        v.check(
            self.loader_to_extract > 0,
            "channels.loader_to_extract",
            || "must be at least 1".into(),
        );
        v.check(
            self.extract_to_train > 0,
            "channels.extract_to_train",
            || "must be at least 1".into(),
        );
    }
}
