//! Wiring: stages on their own threads, joined by bounded channels.
//!
//! ```text
//!  source ──► loader (N decode workers) ──[loader_to_extract]──► extract + select ──[extract_to_train]──► train
//!                                                                                     └─ with `export:` a tee ─[export.channel]─► export (Parquet)
//! ```
//!
//! [`curate`] runs the same front half with the exporter instead of a trainer.
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
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::augment::Augmenter;
use crate::batch::{run_loader, superbatches_per_epoch, LoaderSummary};
use crate::config::{ExportConfig, PipelineConfig};
use crate::error::{Error, Result};
use crate::export::{ExportItem, ExportStage, Exporter};
use crate::extract::{run_extract, ExtractStart, Extractor, Learner};
use crate::report::{DataReport, Report};
use crate::select::feedback::{FeedbackReader, LossTable};
use crate::select::learner::{LearnerScorer, Publisher, SnapshotBoard};
use crate::select::outcome::Acc;
use crate::select::outcome::{RecordMode, SelectionStats, SubBatch};
use crate::select::Selector;
use crate::source::{self, DataSet, Split};
use crate::train::{
    eval_set, run_train, EpochRecord, TrainEvent, TrainHook, TrainProgress, Trainer,
};
use checkpoint::Checkpointer;

pub mod checkpoint;
pub mod curate;
pub mod loader_only;
pub mod pretrain;
pub use crate::stage::{
    join, panic_message, set_torch_threads, spawn_stage, Cancel, ChannelConfig, Msg, Overlap,
    StageSnapshot, StageStats,
};
pub use curate::{curate, curate_resume};
pub use pretrain::{pretrain, PretrainSummary};

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
        /// Samples the whole run will load (epochs x learner samples).
        total_samples: u64,
        /// One per stage.
        stages: Vec<StageSnapshot>,
    },
}

/// Receives [`Event`]s; called from the stage threads.
pub type Observer = Arc<dyn Fn(&Event) + Send + Sync>;

/// The front half of a pipeline, running: source -> loader -> extract + select. Its
/// output is the stream of curated [`SubBatch`]es in `output`; whoever holds it (the train
/// stage, the loader API, the Parquet exporter) consumes it. Dropping `output` stops the
/// stages; [`CurationHandle::finish`] joins them.
pub struct Curation {
    /// Curated sub-batches, in super-batch order, with epoch markers.
    pub output: tokio::sync::mpsc::Receiver<Msg<SubBatch>>,
    /// The running stages, their figures, counters and cancellation flag.
    pub handle: CurationHandle,
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
    /// Super-batches the loader emits per epoch for this rank (each is one optimizer step).
    pub superbatches_per_epoch: usize,
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
        Launch::new(cfg).start(cancel)
    }

    /// As [`Curation::start`], on a data set opened by the caller (for example a
    /// `source::MemorySource`); `cfg.source` then only gives the split (`holdout`, `limit`)
    /// and the bad-sample policy, and needs no format block.
    pub fn start_with(
        cfg: &PipelineConfig,
        data: Arc<DataSet>,
        cancel: Cancel,
    ) -> Result<Curation> {
        Launch::new(cfg).data(data).start(cancel)
    }

    /// Like [`Curation::start_with`], for a run whose trainer publishes its weights on
    /// `board`: the learner-aware policies (`loss`, `rho-loss`, `jest`) need it, and fail
    /// with a configuration error without one (`select::learner`).
    pub fn start_with_learner(
        cfg: &PipelineConfig,
        data: Arc<DataSet>,
        cancel: Cancel,
        board: Option<Arc<SnapshotBoard>>,
    ) -> Result<Curation> {
        Launch::new(cfg).data(data).learner(board).start(cancel)
    }

    /// Starts the loader and extract stages on `data`; the configuration was checked. The
    /// learner-aware policies score with the trainer's weights on `board`, or else with the
    /// losses a loader's loop reports into `feedback`.
    fn start_stages(
        cfg: &PipelineConfig,
        data: Arc<DataSet>,
        cancel: Cancel,
        board: Option<Arc<SnapshotBoard>>,
        feedback: Option<Arc<LossTable>>,
        resume: Option<ResumeStart>,
    ) -> Result<Curation> {
        set_torch_threads(cfg.torch_threads);
        let device = cfg.device();
        let record = crate::export::record_mode(cfg.export.as_ref());
        let split = cfg.split(data.train.len())?;
        let augmenter = Arc::new(Augmenter::new(cfg.augment.ops.clone()));
        let shape = augmenter.output_shape(data.train.shape())?;
        let classes = data.train.num_classes();
        let selector = Selector::new(cfg.selector_config());
        let policy = selector.config().policy;
        let extractor = if policy.needs_reference() || record == RecordMode::Features {
            Some(Extractor::build(
                &cfg.extractor,
                device,
                &cfg.augment.ops,
                shape,
                classes,
            )?)
        } else {
            None
        };
        let learner = match (policy.needs_learner(), board, &feedback) {
            (false, _, _) => None,
            (true, Some(board), _) => Some(Learner::Weights(Box::new(LearnerScorer::new(
                &cfg.trainer.learner_spec()?,
                shape,
                classes,
                device,
                board,
                cfg.selection.refresh_every,
                cfg.selection.snapshot_lag,
                cfg.extractor.micro_batch,
            )?))),
            (true, None, Some(table)) => Some(Learner::Reported {
                reader: FeedbackReader::new(table.clone(), cfg.selection.snapshot_lag),
                micro_batch: cfg.extractor.micro_batch,
            }),
            (true, None, None) => {
                return Err(Error::config(
                    "selection.policy",
                    "this policy scores samples by the learner's losses: a training run \
                     (`saln-pipe run`) takes them from its trainer, a loader (saln::loader, \
                     saln.Loader) from the losses its loop reports; `curate` has neither, use \
                     saln, uniform or none",
                ))
            }
        };
        let losses = feedback.unwrap_or_default();
        let stats = vec![
            Arc::new(StageStats::with_threads("loader", cfg.augment.workers)),
            Arc::new(StageStats::new("extract")),
        ];
        let (sb_tx, sb_rx) = tokio::sync::mpsc::channel(cfg.channels.loader_to_extract);
        let (sub_tx, sub_rx) = tokio::sync::mpsc::channel(cfg.channels.extract_to_train);
        let mut plan = cfg.loader_plan(split.learner.clone(), cfg.trainer.epochs)?;
        let per_epoch = superbatches_per_epoch(&plan);
        let mut extract_start = ExtractStart::default();
        if let Some(r) = resume {
            let epochs = cfg.trainer.epochs;
            let inside = if r.at.epoch < epochs {
                r.at.superbatch < per_epoch as u64
            } else {
                (r.at.epoch, r.at.superbatch) == (epochs, 0)
            };
            if !inside {
                return Err(Error::config(
                    "resume",
                    format!(
                        "position (epoch {}, superbatch {}) is outside this run ({epochs} \
                         epochs of {per_epoch} super-batches): was it taken with another \
                         configuration?",
                        r.at.epoch, r.at.superbatch
                    ),
                ));
            }
            plan.start = r.at.seq(per_epoch as u64);
            plan.carried = r.loaded;
            extract_start = ExtractStart {
                sent: r.sent,
                tally: r.tally,
            };
        }
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
                run_extract(
                    extractor,
                    learner,
                    selector,
                    device,
                    record,
                    sb_rx,
                    sub_tx,
                    &st,
                    &c,
                    extract_start,
                )
            })?
        };
        Ok(Curation {
            output: sub_rx,
            handle: CurationHandle {
                info: RunInfo {
                    data,
                    split,
                    shape,
                    classes,
                    device,
                    augmenter,
                    superbatches_per_epoch: per_epoch,
                },
                stats,
                cancel,
                losses,
                loader,
                extract,
            },
        })
    }

    /// Splits off the output channel, leaving a handle to join the stages with.
    pub fn into_parts(self) -> (tokio::sync::mpsc::Receiver<Msg<SubBatch>>, CurationHandle) {
        (self.output, self.handle)
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
    /// Learner losses handed back by a training loop (the loader API's feedback, which the
    /// learner-aware policies read in a loader run).
    pub losses: Arc<LossTable>,
    loader: JoinHandle<Result<LoaderSummary>>,
    extract: JoinHandle<Result<SelectionStats>>,
}

/// The start every run mode shares (`run`, `curate`, the loader API; `Curation::start*`),
/// in this order: check the configuration and the machine (once), ready the export folder
/// when there is an export (and the launch asks for it), open the data set unless the
/// caller gave one, start the loader and extract stages.
///
/// What differs between run modes is what consumes the curated stream afterwards: the
/// train stage (`run`), the exporter on the calling thread (`curate`), the caller's
/// training loop (`loader`).
pub struct Launch<'a> {
    cfg: &'a PipelineConfig,
    data: Option<Arc<DataSet>>,
    board: Option<Arc<SnapshotBoard>>,
    feedback: Option<Arc<LossTable>>,
    prepare_export: bool,
    resume: Option<ResumeStart>,
}

/// Where a resumed run's loader and extract stages start (from a checkpoint).
#[derive(Debug, Clone)]
pub struct ResumeStart {
    /// The first super-batch to load.
    pub at: crate::batch::LoaderState,
    /// The loader's figures before it.
    pub loaded: LoaderSummary,
    /// Sub-batches the trainer consumed before it.
    pub sent: u64,
    /// The selection's figures before it.
    pub tally: Acc,
    /// The export files finished before it (kept; every other export file is removed).
    pub export_files: Vec<String>,
}

impl ResumeStart {
    /// Where a checkpoint's `state` says the stages continue.
    pub fn from_state(s: &checkpoint::State) -> ResumeStart {
        ResumeStart {
            at: s.loader,
            loaded: s.loaded.clone(),
            sent: s.step,
            tally: s.tally.clone(),
            export_files: s
                .export
                .as_ref()
                .map(|e| e.summary.files.clone())
                .unwrap_or_default(),
        }
    }
}

impl<'a> Launch<'a> {
    /// A launch of `cfg` that opens `cfg.source` and leaves the export folder alone.
    pub fn new(cfg: &'a PipelineConfig) -> Self {
        Launch {
            cfg,
            data: None,
            board: None,
            feedback: None,
            prepare_export: false,
            resume: None,
        }
    }

    /// Starts at a checkpoint's position instead of the beginning; the export folder (with
    /// [`Launch::prepare_export`]) keeps the checkpoint's finished files and loses the rest.
    pub fn resume(mut self, at: ResumeStart) -> Self {
        self.resume = Some(at);
        self
    }

    /// Runs on `data`, opened by the caller (`cfg.source` needs no format block).
    pub fn data(mut self, data: Arc<DataSet>) -> Self {
        self.data = Some(data);
        self
    }

    /// The board the trainer publishes its weights on (learner-aware policies need one).
    pub fn learner(mut self, board: Option<Arc<SnapshotBoard>>) -> Self {
        self.board = board;
        self
    }

    /// The loss table a loader's training loop reports into: without a trainer's `board`,
    /// the learner-aware policies score from it (`select::feedback`). It becomes the
    /// handle's `losses`.
    pub fn feedback(mut self, losses: Arc<LossTable>) -> Self {
        self.feedback = Some(losses);
        self
    }

    /// Readies `cfg.export.dir` before anything starts (see `export::prepare`): a run that
    /// writes an export refuses a folder holding another one before it loads any data.
    pub fn prepare_export(mut self) -> Self {
        self.prepare_export = true;
        self
    }

    /// Checks, prepares, opens and starts (see the type's doc).
    pub fn start(self, cancel: Cancel) -> Result<Curation> {
        let cfg = self.cfg;
        check_config(cfg, self.data.is_some())?;
        if let (true, Some(e)) = (self.prepare_export, &cfg.export) {
            match &self.resume {
                Some(r) => crate::export::prepare_resume(e, &r.export_files)?,
                None => crate::export::prepare(e)?,
            }
        }
        let data = match self.data {
            Some(d) => d,
            None => Arc::new(source::open(&cfg.source)?),
        };
        Curation::start_stages(cfg, data, cancel, self.board, self.feedback, self.resume)
    }
}

/// Validates `cfg` and the machine it needs; with `data_given` the data set comes from the
/// caller, so a missing `source` format block is not a problem.
fn check_config(cfg: &PipelineConfig, data_given: bool) -> Result<()> {
    let mut issues = cfg.validate();
    issues.extend(cfg.check_resources());
    if data_given {
        issues.retain(|i| i.key != "source");
    }
    if issues.is_empty() {
        Ok(())
    } else {
        Err(Error::ConfigInvalid {
            path: "<config>".into(),
            issues,
        })
    }
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
/// writes the report to `cfg.report.path` and returns it. Checkpoints are written as
/// `checkpoint:` says (see [`checkpoint`]); a run that does not resume empties the run
/// folder first.
///
/// Returns `Err` when a stage failed (the report, with `status: failed`, is written first);
/// a cancelled run returns `Ok` with `status: cancelled` and the epochs that completed.
pub fn run(cfg: &PipelineConfig, cancel: Cancel, observer: Option<Observer>) -> Result<Report> {
    train_run(cfg, None, cancel, observer, false)
}

/// Like [`run`], continuing from the newest complete checkpoint in `checkpoint.dir`
/// (`saln-pipe run FILE --resume`). Refused, with every changed key named, when the
/// configuration differs from the checkpoint's in a way that changes the result
/// ([`checkpoint::result_config`]). The result (selection, `kept_digest`, per-epoch
/// accuracies, export rows) is the uninterrupted run's.
pub fn resume(cfg: &PipelineConfig, cancel: Cancel, observer: Option<Observer>) -> Result<Report> {
    train_run(cfg, None, cancel, observer, true)
}

/// Like [`run`], on a data set the caller opened or built.
pub fn run_with(
    cfg: &PipelineConfig,
    data: Arc<DataSet>,
    cancel: Cancel,
    observer: Option<Observer>,
) -> Result<Report> {
    train_run(cfg, Some(data), cancel, observer, false)
}

/// What the train thread does besides training: hands each trained sub-batch's record
/// to the exporter (so the export holds exactly what the trainer received, and is in step
/// with it at a checkpoint) and writes checkpoints when due.
struct RunHook {
    exporter: Option<(Exporter, Arc<StageStats>)>,
    checkpointer: Option<Checkpointer>,
    per_epoch: u64,
    loaded: LoaderSummary,
    tally: Acc,
}

impl TrainHook for RunHook {
    fn after(
        &mut self,
        event: TrainEvent<'_>,
        trainer: &Trainer,
        progress: &TrainProgress,
    ) -> Result<()> {
        let boundary = match event {
            TrainEvent::Trained(sub) => {
                self.loaded = std::mem::take(&mut sub.loaded);
                self.tally = std::mem::take(&mut sub.tally);
                if let Some((x, st)) = &mut self.exporter {
                    let t = Instant::now();
                    let item = ExportItem::take_from(sub)?;
                    x.write(&item)?;
                    st.item(item.record.ids.len());
                    st.busy(t.elapsed());
                }
                // The last super-batch of an epoch is followed by its evaluation: the
                // checkpoint comes after that.
                (sub.seq + 1) % self.per_epoch.max(1) != 0
            }
            TrainEvent::EpochEnd(epoch) => {
                if let Some((x, _)) = &mut self.exporter {
                    x.end_epoch(epoch)?;
                }
                true
            }
        };
        if let Some(c) = &mut self.checkpointer {
            if boundary && c.due(trainer.steps()) {
                let export = match &mut self.exporter {
                    Some((x, _)) => Some(x.checkpoint()?),
                    None => None,
                };
                c.write(trainer, progress, &self.loaded, &self.tally, export)?;
            }
        }
        Ok(())
    }
}

/// `run`: launch the curation (at the checkpoint's position when resuming), build the
/// trainer (restored when resuming) and the exporter, run the train stage until the stream
/// ends, then join everything and write the report.
fn train_run(
    cfg: &PipelineConfig,
    data: Option<Arc<DataSet>>,
    cancel: Cancel,
    observer: Option<Observer>,
    resume: bool,
) -> Result<Report> {
    let start = Instant::now();
    let folder = cfg.checkpoint.folder();
    let restored = if resume {
        // Check the configuration before anything is touched.
        check_config(cfg, data.is_some())?;
        Some(checkpoint::restore(&folder, cfg, false)?)
    } else {
        checkpoint::start_fresh(cfg, &folder)?;
        None
    };
    let board = cfg
        .selection
        .policy
        .needs_learner()
        .then(SnapshotBoard::new);
    let mut launch = Launch::new(cfg).learner(board.clone()).prepare_export();
    if let Some(d) = data {
        launch = launch.data(d);
    }
    if let Some(r) = &restored {
        launch = launch.resume(ResumeStart::from_state(&r.state));
    }
    let (sub_rx, handle) = launch.start(cancel.clone())?.into_parts();
    let info = handle.info.clone();
    let per_epoch = info.superbatches_per_epoch as u64;
    // What can fail before the train stage starts stops the curation again.
    let ready =
        build_trainer(cfg, &info, board, restored.as_ref()).and_then(|(trainer, test_skipped)| {
            let exporter = match &cfg.export {
                None => None,
                Some(e) => {
                    let mut x = Exporter::new(e, &cfg.provenance(), info.data.train.clone())?;
                    if let Some(state) = restored.as_ref().and_then(|r| r.state.export.clone()) {
                        x.resume(state);
                    }
                    Some((x, Arc::new(StageStats::new("export"))))
                }
            };
            Ok((trainer, test_skipped, exporter))
        });
    let (mut trainer, test_skipped, exporter) = match ready {
        Ok(r) => r,
        Err(e) => {
            cancel.cancel();
            let _ = handle.finish();
            return Err(e);
        }
    };
    let test_samples = trainer.test_len();
    let progress = restored
        .as_ref()
        .map(|r| r.state.train.clone())
        .unwrap_or_default();
    let resumed_from_step = restored.as_ref().map(|r| r.state.step);
    drop(restored);

    let observer: Observer = observer.unwrap_or_else(|| Arc::new(|_: &Event| {}));
    observer(&Event::Started {
        learner_samples: info.split.learner.len(),
        epochs: cfg.trainer.epochs,
        device: crate::device::name(info.device),
    });
    for r in &progress.records {
        observer(&Event::Epoch(r.clone()));
    }
    let stream_start = Instant::now();
    let train_stats = Arc::new(StageStats::new("train"));
    let mut stats = handle.stats.clone();
    stats.push(train_stats.clone());
    stats.extend(exporter.as_ref().map(|x| x.1.clone()));
    let mut hook = RunHook {
        exporter,
        checkpointer: Checkpointer::new(cfg, cfg.checkpoint.folder(), per_epoch, trainer.steps()),
        per_epoch,
        loaded: LoaderSummary::default(),
        tally: Acc::new(),
    };
    let train = {
        let (st, c, obs) = (train_stats, cancel.clone(), observer.clone());
        spawn_stage("train", &cancel, move || {
            let on_epoch = move |r: &EpochRecord| obs(&Event::Epoch(r.clone()));
            let records = run_train(
                &mut trainer,
                sub_rx,
                &st,
                &c,
                start,
                &on_epoch,
                progress,
                per_epoch,
                &mut hook,
            );
            if records.is_err() {
                c.cancel();
            }
            // `trainer.save`: the trained learner, once the run has finished (not when
            // cancelled: a half-trained learner under the final name would mislead).
            let records = match records {
                Ok(r) if !c.is_cancelled() => trainer.save().map(|()| r),
                other => other,
            };
            // The exporter goes back to the caller even when training failed.
            Ok((records, hook))
        })?
    };
    let total_samples = (info.split.learner.len() * cfg.trainer.epochs) as u64;
    let ticker = Ticker::start(cfg, stats.clone(), observer, start, total_samples);

    let (trained, hook) = match join(train, "train") {
        Ok((records, hook)) => (records.map_err(|e| e.in_stage("train")), Some(hook)),
        Err(e) => (Err(e), None),
    };
    if trained.is_err() {
        cancel.cancel();
    }
    let (summary, mut error) = handle.finish();
    let streaming_seconds = stream_start.elapsed().as_secs_f64();
    let (exported, checkpoints) = match hook {
        Some(h) => (
            h.exporter.map(|(x, _)| x.finish()),
            h.checkpointer.map(|c| c.report(resumed_from_step)),
        ),
        None => (None, None),
    };
    ticker.stop();
    let epochs = trained.unwrap_or_else(|e| {
        // The trainer's own failure is the root cause; upstream only saw a closed channel.
        error = Some(e);
        Vec::new()
    });
    let mut report = curation_report(cfg, &info, summary, &stats, start, streaming_seconds);
    report.data.test_samples = test_samples;
    (report.data.test_skipped, report.data.test_first_skipped) = test_skipped;
    report.epochs = epochs;
    let mut report = report.ended(error.as_ref(), cancel.is_cancelled());
    report.export = exported;
    report.checkpoints = checkpoints;
    write_report(report, error, &cfg.report.path)
}

/// The learner, with the test set prepared (and how many test samples were skipped, with
/// the first few), publishing its weights on `board` when a learner-aware policy needs them;
/// restored from `restored` when resuming (with the snapshots the extract stage still needs
/// published first).
fn build_trainer(
    cfg: &PipelineConfig,
    info: &RunInfo,
    board: Option<Arc<SnapshotBoard>>,
    restored: Option<&checkpoint::Loaded>,
) -> Result<(Trainer, (u64, Vec<String>))> {
    let test = eval_set(
        info.data.test.as_ref(),
        &info.augmenter,
        cfg.source.test_limit,
        cfg.source.on_error,
        info.device,
    )?;
    let skipped = (test.skipped, test.first_skipped);
    // One optimizer step per super-batch of this rank's share.
    let total_steps = (info.superbatches_per_epoch * cfg.trainer.epochs) as u64;
    let mut trainer = Trainer::new(
        &cfg.trainer,
        info.shape,
        info.classes,
        cfg.seed,
        info.device,
        (test.x, test.y),
        total_steps,
    )?;
    if let Some(r) = restored {
        let on_device: Vec<(String, tch::Tensor)> = r
            .learner
            .iter()
            .map(|(n, t)| Ok((n.clone(), t.f_to_device(info.device)?)))
            .collect::<Result<_>>()?;
        trainer.restore(&on_device, r.state.step)?;
    }
    if let Some(board) = board {
        let publisher = Publisher::new(board, cfg.selection.refresh_every)
            .retaining(cfg.selection.snapshot_lag);
        if let Some(r) = restored {
            let mut saved = Vec::new();
            for (step, vars) in &r.snapshots {
                let vars = vars
                    .iter()
                    .map(|(n, t)| Ok((n.clone(), t.f_to_device(info.device)?)))
                    .collect::<Result<Vec<_>>>()?;
                saved.push((*step, vars));
            }
            publisher.republish(saved);
        }
        trainer.publish_to(publisher)?;
    }
    Ok((trainer, skipped))
}

/// The export stage of a run of `cfg` writing to `export`, started (its thread waits for
/// sub-batches).
pub(crate) fn export_stage(
    export: &ExportConfig,
    cfg: &PipelineConfig,
    info: &RunInfo,
    cancel: &Cancel,
) -> Result<ExportStage> {
    let exporter = Exporter::new(export, &cfg.provenance(), info.data.train.clone())?;
    ExportStage::spawn(exporter, export.channel, cancel)
}

/// The report every run mode with a curation starts from: its data, stage and selection
/// figures and its wall time; the caller adds what its consumer did, then calls
/// [`Report::ended`].
pub(crate) fn curation_report(
    cfg: &PipelineConfig,
    info: &RunInfo,
    summary: CurationSummary,
    stats: &[Arc<StageStats>],
    start: Instant,
    streaming_seconds: f64,
) -> Report {
    let mut report = Report::new(cfg, crate::device::name(info.device));
    report.data = DataReport::new(&info.split, summary.loader);
    let stages: Vec<_> = stats.iter().map(|s| s.snapshot()).collect();
    // The loader's count is the scale of every rate, so the overlap sees every stage; the
    // report lists only the stages that ran.
    report.overlap = Overlap::from_stages(&stages, streaming_seconds);
    report.stages = stages.into_iter().filter(|s| s.ran()).collect();
    report.selection = summary.selection;
    report.wall_seconds = start.elapsed().as_secs_f64();
    report
}

/// Writes `report` to `path` (also after a failure) and returns it, or the run's error.
pub(crate) fn write_report(report: Report, error: Option<Error>, path: &Path) -> Result<Report> {
    report.write(path)?;
    match error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// Sends [`Event::Progress`] every `report.progress_seconds` from its own thread until
/// stopped (none when the setting is 0).
struct Ticker {
    finished: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(
        cfg: &PipelineConfig,
        stats: Vec<Arc<StageStats>>,
        observer: Observer,
        start: Instant,
        total_samples: u64,
    ) -> Ticker {
        let finished = Arc::new(AtomicBool::new(false));
        let thread = (cfg.report.progress_seconds > 0.0).then(|| {
            let finished = finished.clone();
            let every = Duration::from_secs_f64(cfg.report.progress_seconds);
            std::thread::spawn(move || {
                let mut next = Instant::now() + every;
                while !finished.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                    if Instant::now() >= next {
                        next += every;
                        observer(&Event::Progress {
                            elapsed: start.elapsed().as_secs_f64(),
                            total_samples,
                            stages: stats.iter().map(|s| s.snapshot()).collect(),
                        });
                    }
                }
            })
        });
        Ticker { finished, thread }
    }

    fn stop(mut self) {
        self.finished.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
