//! saln as a data loader inside your own training loop.
//!
//! A [`Loader`] runs saln's curation front half (source -> decode/augment workers ->
//! super-batches -> reference features -> selection) on its own threads and hands you the
//! curated sub-batches: images as an `[n, C, H, W]` float32 tensor on the device you chose,
//! labels, stable sample ids and the selector's scores. Consume it as a blocking
//! [`Iterator`] from ordinary code, or from async code with [`Loader::recv`] or
//! [`Loader::into_stream`] (a `futures_core::Stream`).
//!
//! - **Feedback**: [`Batch::report_losses`] hands the per-sample losses of your step back
//!   into a shared [`LossTable`] (see [`Loader::losses`]). With a learner-aware policy
//!   (`loss`, `rho-loss`, `jest`) the selection stage scores super-batches from it: the
//!   samples with the highest reported loss (or reducible loss) are kept, samples with no
//!   loss yet first. Report each batch before asking for the one `snapshot_lag + 1` after
//!   it; the selection is then a function of the seed and the losses you report
//!   ([`crate::select::feedback`] has the rules).
//! - **Export**: with an `export:` section (or [`LoaderBuilder::export`]) every curated
//!   super-batch you receive is also written as Parquet rows (see [`crate::export`]).
//! - **Shutdown**: dropping the loader, even mid-epoch, cancels every stage, closes the
//!   channels and joins the threads before `drop` returns (stages stop after the item they
//!   are working on, typically well under a second). [`Loader::finish`] does the same and
//!   returns what ran.
//!
//! ```
//! use std::sync::Arc;
//! use saln::loader::{Item, Loader};
//! use saln::select::Policy;
//! use saln::source::{MemorySource, RawImage, Sample};
//!
//! // 100 in-memory 4x4 grey images of 2 classes.
//! let samples = (0..100u64)
//!     .map(|i| Sample {
//!         id: 1000 + i,
//!         label: (i % 2) as i64,
//!         image: RawImage { channels: 1, height: 4, width: 4, data: vec![(i % 2 * 200) as u8; 16] },
//!     })
//!     .collect();
//! let mut loader = Loader::builder(Arc::new(MemorySource::new("mem", samples, 2)))
//!     .policy(Policy::Uniform)
//!     .keep_ratio(0.25)
//!     .superbatch_size(20)
//!     .epochs(2)
//!     .build()?;
//! let (mut trained, mut epochs_done) = (Vec::new(), 0);
//! for item in &mut loader {
//!     match item? {
//!         Item::Batch(b) => {
//!             assert_eq!(b.images.size(), [5, 1, 4, 4]); // 25% of each super-batch of 20
//!             // ... forward, per-sample loss, backward, optimizer step ...
//!             let per_sample = tch::Tensor::from_slice(&vec![0.5f32; b.len()]);
//!             b.report_losses(&per_sample)?;
//!             trained.extend(b.ids);
//!         }
//!         Item::EpochEnd { .. } => epochs_done += 1,
//!     }
//! }
//! assert_eq!((trained.len(), epochs_done), (50, 2));
//! // Every sample trained on has a loss in the table the selection stage reads.
//! assert!(loader.losses().lookup(&trained).iter().all(|l| *l == Some(0.5)));
//! let report = loader.finish()?;
//! assert!(report.completed);
//! # Ok::<(), saln::Error>(())
//! ```
use std::path::PathBuf;
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use crate::augment::AugmentOp;
use crate::batch::{LoaderState, LoaderSummary};
use crate::config::PipelineConfig;
use crate::error::{Error, Result};
use crate::export::{ExportConfig, ExportItem, ExportStage, ExportSummary};
use crate::pipeline::{export_stage, Cancel, CurationHandle, Launch, Msg, ResumeStart, RunInfo};
use crate::select::feedback::LossTable;
use crate::select::outcome::Acc;
use crate::select::outcome::{SelectionStats, SubBatch};
use crate::select::Policy;
use crate::source::{DataSet, MemorySource, Source};

pub use crate::select::feedback::LossEntry;

/// One curated sub-batch, ready for an optimizer step.
#[derive(Debug)]
pub struct Batch {
    /// Epoch (0-based).
    pub epoch: usize,
    /// This batch's number in the run (0-based): the step it is for.
    pub step: u64,
    /// Global number of the super-batch it was selected from.
    pub superbatch: u64,
    /// Size of that super-batch (B).
    pub superbatch_len: usize,
    /// Stable ids of the samples.
    pub ids: Vec<u64>,
    /// Images, `[n, C, H, W]` float32 on the loader's device, augmented and normalised.
    pub images: Tensor,
    /// Labels, `[n]` int64 on the same device.
    pub labels: Tensor,
    /// The selector's score of each sample (the Fiedler value for `saln`, 0 for
    /// policies without a score).
    pub scores: Vec<f32>,
    losses: Arc<LossTable>,
}

impl Batch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when empty (never, for batches a loader yields).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Hands the per-sample losses of this batch back to the pipeline: `losses` is `[n]`
    /// (any float dtype, any device, gradients ignored), in the order of `ids`. Errors when
    /// the count differs or a loss is not finite (naming the sample), and, when a
    /// learner-aware policy reads the losses, when this batch was reported already or the
    /// loop has asked for the batch `selection.snapshot_lag + 1` after it; nothing is
    /// stored then.
    pub fn report_losses(&self, losses: &Tensor) -> Result<()> {
        let v = Vec::<f32>::try_from(
            losses
                .f_detach()?
                .f_to_kind(Kind::Float)?
                .f_to_device(Device::Cpu)?
                .f_flatten(0, -1)?,
        )?;
        self.report_loss_values(&v)
    }

    /// As [`Batch::report_losses`], from plain numbers.
    pub fn report_loss_values(&self, losses: &[f32]) -> Result<()> {
        self.losses.record(self.step, &self.ids, losses)
    }
}

/// What a [`Loader`] yields.
#[derive(Debug)]
pub enum Item {
    /// A curated sub-batch.
    Batch(Batch),
    /// Every batch of `epoch` (0-based) has been yielded.
    EpochEnd {
        /// The epoch that ended.
        epoch: usize,
    },
}

impl Item {
    /// The batch, if this is one.
    pub fn batch(self) -> Option<Batch> {
        match self {
            Item::Batch(b) => Some(b),
            Item::EpochEnd { .. } => None,
        }
    }
}

/// What a loader did, from [`Loader::finish`].
#[derive(Debug, Clone, Default)]
pub struct LoaderReport {
    /// Super-batches and samples the loader stage produced (skipped samples included).
    pub loader: LoaderSummary,
    /// Selection figures.
    pub selection: SelectionStats,
    /// What the Parquet export wrote, when one was configured.
    pub export: Option<ExportSummary>,
    /// Batches yielded.
    pub steps: u64,
    /// Every epoch was delivered (false when the loader was stopped early or failed).
    pub completed: bool,
    /// The error that ended the run, if one did (it was also yielded).
    pub error: Option<String>,
}

/// Builds a [`Loader`]: from a pipeline config ([`LoaderBuilder::from_config`]) or in
/// code around your own [`Source`] ([`LoaderBuilder::new`]); the setters change the
/// config's values.
pub struct LoaderBuilder {
    cfg: PipelineConfig,
    source: Option<Arc<dyn Source>>,
    resume: Option<LoaderState>,
}

impl LoaderBuilder {
    /// A loader over `cfg` (its `source` is opened; `trainer.epochs` gives the epochs;
    /// the rest of `trainer` is not used).
    pub fn from_config(cfg: &PipelineConfig) -> Self {
        LoaderBuilder {
            cfg: cfg.clone(),
            source: None,
            resume: None,
        }
    }

    /// A loader over `source`, with every setting at its pipeline default except: no
    /// held-out share (`source.holdout: 0`) and libtorch's thread count left alone
    /// (`torch_threads: 0`). The default policy is `saln`, which needs reference weights
    /// ([`LoaderBuilder::extractor_weights`]); `uniform` and `none` need none.
    pub fn new(source: Arc<dyn Source>) -> Self {
        let mut cfg: PipelineConfig =
            serde_saphyr::from_str("source: {}\n").expect("every pipeline setting has a default");
        cfg.source.holdout = 0;
        cfg.torch_threads = 0;
        LoaderBuilder {
            cfg,
            source: Some(source),
            resume: None,
        }
    }

    /// The selection policy.
    pub fn policy(mut self, p: Policy) -> Self {
        self.cfg.selection.policy = p;
        self
    }
    /// Fraction of each super-batch kept, in (0, 1].
    pub fn keep_ratio(mut self, r: f64) -> Self {
        self.cfg.selection.keep_ratio = r;
        self
    }
    /// Super-batch size B.
    pub fn superbatch_size(mut self, n: usize) -> Self {
        self.cfg.superbatch.size = n;
        self
    }
    /// Passes over the data.
    pub fn epochs(mut self, n: usize) -> Self {
        self.cfg.trainer.epochs = n;
        self
    }
    /// Master seed (order, augmentation, random policies).
    pub fn seed(mut self, s: u64) -> Self {
        self.cfg.seed = s;
        self
    }
    /// Decode/augment worker threads.
    pub fn workers(mut self, n: usize) -> Self {
        self.cfg.augment.workers = n;
        self
    }
    /// Per-sample transforms, in order.
    pub fn augment(mut self, ops: Vec<AugmentOp>) -> Self {
        self.cfg.augment.ops = ops;
        self
    }
    /// Where tensors are delivered and the reference model runs: `auto`, `cpu`, `cuda:N`.
    pub fn device(mut self, d: &str) -> Self {
        self.cfg.device = d.into();
        self
    }
    /// Reference model weights (needed by `saln`).
    pub fn extractor_weights(mut self, p: impl Into<PathBuf>) -> Self {
        self.cfg.extractor.weights = p.into();
        self
    }
    /// Also write every curated super-batch as Parquet rows.
    pub fn export(mut self, e: ExportConfig) -> Self {
        self.cfg.export = Some(e);
        self
    }
    /// Any other setting.
    pub fn config_mut(&mut self) -> &mut PipelineConfig {
        &mut self.cfg
    }

    /// Starts at `state` (from [`Loader::state`] of an earlier loader with the same
    /// settings and seed) instead of the beginning: the batches are the ones that loader
    /// would have yielded next, the same ids, images and selection, because every order,
    /// augmentation and random selection is a function of the seed, the epoch and the
    /// sample. Keep the state in your training checkpoint next to your model and optimizer.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use saln::loader::{Item, Loader};
    /// use saln::source::{MemorySource, RawImage, Sample};
    ///
    /// let source = || {
    ///     let samples = (0..60u64)
    ///         .map(|i| Sample {
    ///             id: i,
    ///             label: (i % 2) as i64,
    ///             image: RawImage { channels: 1, height: 4, width: 4, data: vec![i as u8; 16] },
    ///         })
    ///         .collect();
    ///     Arc::new(MemorySource::new("mem", samples, 2))
    /// };
    /// let build = || Loader::builder(source()).policy(saln::select::Policy::Uniform)
    ///     .keep_ratio(0.5).superbatch_size(10).epochs(2);
    /// let ids = |l: &mut Loader, n: usize| -> Vec<u64> {
    ///     l.by_ref().filter_map(|i| i.unwrap().batch()).take(n).flat_map(|b| b.ids).collect()
    /// };
    /// let all = ids(&mut build().build()?, 12);
    /// let mut first = build().build()?;
    /// let head = ids(&mut first, 4);
    /// let state = first.state();
    /// assert_eq!((state.epoch, state.superbatch), (0, 4));
    /// let json = serde_json::to_string(&state).unwrap(); // keep it anywhere
    /// drop(first);
    /// let mut resumed = build().resume(serde_json::from_str(&json).unwrap()).build()?;
    /// let tail = ids(&mut resumed, 8);
    /// assert_eq!([head, tail].concat(), all);
    /// # Ok::<(), saln::Error>(())
    /// ```
    pub fn resume(mut self, state: LoaderState) -> Self {
        self.resume = Some(state);
        self
    }

    /// Validates the settings, opens the data, loads the reference model when the policy
    /// needs it, prepares the export folder and starts the stages.
    pub fn build(self) -> Result<Loader> {
        let cfg = self.cfg;
        if self.resume.is_some() && cfg.export.is_some() {
            // A fresh export folder would hold the resumed part only; the rows before it
            // would be lost. `saln-pipe run --resume` keeps an export's finished files.
            return Err(Error::config(
                "export",
                "a loader resumed from a state cannot write an export (its folder would hold \
                 only the resumed part): drop `export`, or curate with `saln-pipe run --resume`",
            ));
        }
        let cancel = Cancel::default();
        let losses = Arc::new(LossTable::default());
        let mut launch = Launch::new(&cfg).prepare_export().feedback(losses.clone());
        if let Some(at) = self.resume {
            launch = launch.resume(ResumeStart {
                at,
                loaded: LoaderSummary::default(),
                sent: 0,
                tally: Acc::new(),
                export_files: Vec::new(),
            });
        }
        if let Some(src) = self.source {
            let classes = src.num_classes();
            launch = launch.data(Arc::new(DataSet {
                train: src,
                test: Arc::new(MemorySource::new("<none>", Vec::new(), classes)),
            }));
        }
        let (rx, handle) = launch.start(cancel.clone())?.into_parts();
        let export = match &cfg.export {
            None => None,
            Some(e) => match export_stage(e, &cfg, &handle.info, &cancel) {
                Ok(s) => Some(s),
                Err(err) => {
                    cancel.cancel();
                    drop(rx);
                    let _ = handle.finish();
                    return Err(err);
                }
            },
        };
        Ok(Loader {
            info: handle.info.clone(),
            losses: handle.losses.clone(),
            rx: Some(rx),
            handle: Some(handle),
            export,
            cancel,
            step: 0,
            next: self.resume.unwrap_or_default(),
            report: None,
        })
    }
}

/// Curated sub-batches from a running saln pipeline; see the [module docs](self).
pub struct Loader {
    rx: Option<tokio::sync::mpsc::Receiver<Msg<SubBatch>>>,
    handle: Option<CurationHandle>,
    export: Option<ExportStage>,
    info: RunInfo,
    losses: Arc<LossTable>,
    cancel: Cancel,
    step: u64,
    next: LoaderState,
    report: Option<LoaderReport>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("step", &self.step)
            .field("running", &self.handle.is_some())
            .finish()
    }
}

impl Loader {
    /// A builder around your own source; see [`LoaderBuilder::new`].
    pub fn builder(source: Arc<dyn Source>) -> LoaderBuilder {
        LoaderBuilder::new(source)
    }

    /// A loader over a pipeline config; see [`LoaderBuilder::from_config`].
    pub fn from_config(cfg: &PipelineConfig) -> Result<Loader> {
        LoaderBuilder::from_config(cfg).build()
    }

    /// Where this loader stands: the super-batch after the last batch it yielded (or the
    /// first of the next epoch after an [`Item::EpochEnd`]). Serialisable; a loader built
    /// with [`LoaderBuilder::resume`] from it continues exactly there. A state taken after
    /// the last batch of an epoch resumes at the next epoch, without that epoch's
    /// `EpochEnd` item. (An export, and learner-aware policies, are not resumed this way:
    /// `saln-pipe run --resume` does that.)
    pub fn state(&self) -> LoaderState {
        self.next
    }

    /// The data set, split, image shape, classes and device of the run.
    pub fn info(&self) -> &RunInfo {
        &self.info
    }

    /// The losses handed back with [`Batch::report_losses`], shared with the selection
    /// stage.
    pub fn losses(&self) -> Arc<LossTable> {
        self.losses.clone()
    }

    /// The live counters of the running stages (`loader`, `extract`, and `export` when one
    /// is configured): take snapshots of them while the loader runs, from any thread.
    /// Empty once the loader has stopped.
    pub fn stage_stats(&self) -> Vec<Arc<crate::pipeline::StageStats>> {
        let mut stats = self
            .handle
            .as_ref()
            .map(|h| h.stats.clone())
            .unwrap_or_default();
        stats.extend(self.export.as_ref().map(|x| x.stats.clone()));
        stats
    }

    /// Turns a curated message into what the caller gets, and what the exporter gets.
    fn accept(&mut self, msg: Msg<SubBatch>) -> Result<(Item, Option<Msg<ExportItem>>)> {
        let exporting = self.export.is_some();
        Ok(match msg {
            Msg::Data(mut sub) => {
                let export = if exporting {
                    Some(Msg::Data(ExportItem::take_from(&mut sub)?))
                } else {
                    None
                };
                let step = self.step;
                self.step += 1;
                let per = self.info.superbatches_per_epoch as u64;
                self.next = LoaderState::at(sub.seq + 1, per);
                let batch = Batch {
                    epoch: sub.epoch,
                    step,
                    superbatch: sub.seq,
                    superbatch_len: sub.superbatch_len,
                    ids: sub.ids,
                    images: sub.images,
                    labels: sub.labels,
                    scores: sub.scores,
                    losses: self.losses.clone(),
                };
                (Item::Batch(batch), export)
            }
            Msg::EpochEnd { epoch } => {
                self.next = LoaderState {
                    epoch: epoch + 1,
                    superbatch: 0,
                };
                (
                    Item::EpochEnd { epoch },
                    exporting.then_some(Msg::EpochEnd { epoch }),
                )
            }
        })
    }

    /// Stops (with `cancel`) or winds down (the stream ended) every stage and joins them;
    /// keeps the report. The first error of any stage is returned.
    fn close(&mut self, cancel: bool) -> Result<()> {
        if cancel {
            self.cancel.cancel();
        }
        self.rx.take();
        let Some(handle) = self.handle.take() else {
            return Ok(());
        };
        let (summary, mut error) = handle.finish();
        let export = match self.export.take().map(ExportStage::finish) {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                // An export failure is the root cause: it cancelled the curation.
                error = Some(e);
                None
            }
            None => None,
        };
        self.report = Some(LoaderReport {
            loader: summary.loader,
            selection: summary.selection,
            export,
            steps: self.step,
            completed: !cancel && error.is_none() && !self.cancel.is_cancelled(),
            error: error.as_ref().map(|e| e.to_string()),
        });
        error.map_or(Ok(()), Err)
    }

    /// The end of the stream: `None`, or the error that ended it.
    fn end(&mut self, cancel: bool) -> Option<Result<Item>> {
        self.close(cancel).err().map(Err)
    }

    fn failed(&mut self, e: Error) -> Option<Result<Item>> {
        let _ = self.close(true);
        if let Some(r) = &mut self.report {
            r.error = Some(e.to_string());
        }
        Some(Err(e))
    }

    /// The next item, waiting for it asynchronously; `None` at the end. After an error
    /// (yielded once) the loader is stopped and yields `None`.
    pub async fn recv(&mut self) -> Option<Result<Item>> {
        // Asking for the next batch settles the unreported ones far enough behind it
        // (`select::feedback`).
        self.losses.asked(self.step);
        let msg = self.rx.as_mut()?.recv().await;
        let Some(msg) = msg else {
            return self.end(false);
        };
        let (item, export) = match self.accept(msg) {
            Ok(x) => x,
            Err(e) => return self.failed(e),
        };
        if let (Some(m), Some(tx)) = (export, self.export.as_ref().and_then(|x| x.sender())) {
            if tx.send(m).await.is_err() {
                // The exporter stopped: its error is the one to report.
                return self.end(true);
            }
        }
        Some(Ok(item))
    }

    /// The loader as an async `Stream` of items (the loader is dropped, stopping every
    /// stage, when the stream is).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use futures_core::Stream;
    /// use saln::loader::{Item, Loader};
    /// use saln::source::{MemorySource, RawImage, Sample};
    ///
    /// let image = RawImage { channels: 1, height: 2, width: 2, data: vec![9; 4] };
    /// let samples = (0..40).map(|i| Sample { id: i, label: 0, image: image.clone() }).collect();
    /// let loader = Loader::builder(Arc::new(MemorySource::new("mem", samples, 1)))
    ///     .policy(saln::select::Policy::None)
    ///     .superbatch_size(8)
    ///     .epochs(1)
    ///     .build()?;
    /// let rt = tokio::runtime::Runtime::new().unwrap();
    /// let ids = rt.block_on(async move {
    ///     let mut stream = std::pin::pin!(loader.into_stream());
    ///     let mut ids = Vec::new();
    ///     while let Some(item) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
    ///         if let Item::Batch(b) = item? {
    ///             ids.extend(b.ids);
    ///         }
    ///     }
    ///     Ok::<_, saln::Error>(ids)
    /// })?;
    /// let mut sorted = ids.clone();
    /// sorted.sort_unstable();
    /// assert_eq!(sorted, (0..40).collect::<Vec<u64>>()); // policy `none`: every sample once
    /// # Ok::<(), saln::Error>(())
    /// ```
    pub fn into_stream(mut self) -> impl futures_core::Stream<Item = Result<Item>> + Send {
        async_stream::stream! {
            while let Some(item) = self.recv().await {
                yield item;
            }
        }
    }

    /// Stops every stage (if the data is not exhausted yet), joins them and says what ran.
    /// Files of an export whose epoch did not finish are deleted (see [`crate::export`]).
    pub fn finish(mut self) -> Result<LoaderReport> {
        if self.handle.is_some() {
            self.close(true)?;
        }
        Ok(self.report.take().unwrap_or_default())
    }
}

impl Iterator for Loader {
    type Item = Result<Item>;

    /// The next item, blocking until it is ready; `None` at the end. Do not call from
    /// inside an async runtime (use [`Loader::recv`] there).
    fn next(&mut self) -> Option<Result<Item>> {
        self.losses.asked(self.step);
        let msg = self.rx.as_mut()?.blocking_recv();
        let Some(msg) = msg else {
            return self.end(false);
        };
        let (item, export) = match self.accept(msg) {
            Ok(x) => x,
            Err(e) => return self.failed(e),
        };
        if let (Some(m), Some(tx)) = (export, self.export.as_ref().and_then(|x| x.sender())) {
            if tx.blocking_send(m).is_err() {
                return self.end(true);
            }
        }
        Some(Ok(item))
    }
}

impl Drop for Loader {
    /// Cancels every stage, closes the channels and joins the threads.
    fn drop(&mut self) {
        if self.handle.is_some() {
            let _ = self.close(true);
        }
    }
}
