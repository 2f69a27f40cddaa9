//! Super-batches: the epoch order, grouping into super-batches of `B`, and the parallel
//! decode/augment workers.
//!
//! The *loader* stage owns a pool of worker threads (`saln-decode-N`). Each super-batch is
//! one job; at most `prefetch` jobs are in flight. Workers finish in any order; a reorder
//! buffer releases super-batches strictly in sequence. Each sample is augmented with a
//! random stream derived from `(seed, epoch, sample id)`. Together these make the output a
//! function of the seed alone: 1, 2 or 8 workers give byte-identical super-batches.
//!
//! Data-parallel training: with a [`Shard`] (`superbatch.shard`, or torchrun's `RANK` and
//! `WORLD_SIZE`), every rank computes the same epoch order and takes every `world_size`-th
//! sample of it, starting at its rank, as PyTorch's `DistributedSampler` does. The shares of
//! one epoch are disjoint and together cover the data set; every rank gets the same number of
//! samples, hence of super-batches, by dropping the last `n mod world_size` samples of the
//! epoch order (`uneven: drop`) or repeating its first ones (`uneven: pad`).
//!
//! Memory is bounded by `prefetch + channel capacity` super-batches; the epoch orders are
//! computed one epoch at a time as the jobs are handed out.
use crate::error::Issues;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::augment::Augmenter;
use crate::error::{Error, Result};
use crate::rng::{self, Rng};
use crate::source::stream::{Record, StreamPosition, StreamSource};
use crate::source::OnError;
use crate::source::Source;
use crate::stage::{catching, spawn_thread, Cancel, Msg, StageStats};

/// One super-batch of augmented images, ready for the extractor.
#[derive(Debug, Clone, PartialEq)]
pub struct SuperBatch {
    /// Global sequence number (0, 1, 2, ... across epochs).
    pub seq: u64,
    /// Epoch (0-based).
    pub epoch: usize,
    /// Training progress in `[0, 1)`: `seq / total`, the fraction of the run's super-batches
    /// that came before this one. Selection schedules are functions of it.
    pub progress: f64,
    /// Stable ids of the samples, in super-batch order.
    pub ids: Vec<u64>,
    /// Their indices in the source (`Source::get(index)`), same order; exports use them
    /// to name where each sample came from.
    pub indices: Vec<usize>,
    /// Labels, same order.
    pub labels: Vec<i64>,
    /// Augmented pixels, `[n, C, H, W]` row-major float32.
    pub pixels: Vec<f32>,
    /// `(C, H, W)`.
    pub shape: (usize, usize, usize),
    /// The loader's figures up to and including this super-batch (set when it is
    /// emitted; what a checkpoint taken after training on it records of the loader).
    pub loaded: LoaderSummary,
}

impl SuperBatch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    /// True when empty (every sample was skipped).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The `loader_only` block: its presence makes `saln-pipe run` a loader-only run (the input
/// side alone, measured; `pipeline::loader_only`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderOnlyConfig {
    /// Epochs to load.
    #[serde(default = "d_loader_only_epochs")]
    pub epochs: usize,
}

fn d_loader_only_epochs() -> usize {
    1
}

impl LoaderOnlyConfig {
    /// Adds this block's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        v.check(self.epochs > 0, "loader_only.epochs", || {
            "must be at least 1".into()
        });
    }
}

/// What the loader stage is asked to produce.
#[derive(Debug, Clone)]
pub struct LoaderPlan {
    /// Source indices to draw from (the learner's share).
    pub indices: Vec<usize>,
    /// Number of epochs.
    pub epochs: usize,
    /// Super-batch size B.
    pub size: usize,
    /// Drop each epoch's incomplete last super-batch.
    pub drop_last: bool,
    /// Master seed.
    pub seed: u64,
    /// Worker threads.
    pub workers: usize,
    /// Jobs in flight.
    pub prefetch: usize,
    /// Bad-sample policy.
    pub on_error: OnError,
    /// This process's share of the data (data-parallel training); `Shard::default()` is
    /// the whole data set.
    pub shard: Shard,
    /// Global sequence number of the first super-batch to emit (0 = from the start; a
    /// resumed run starts where its checkpoint stopped, see [`LoaderState`]).
    pub start: u64,
    /// The loader's figures of the super-batches before `start` (from the checkpoint a
    /// run resumes), so that the summary covers the whole run.
    pub carried: LoaderSummary,
}

/// Where a loader stands: the next super-batch it will emit. Serialisable, so a training
/// loop can keep it in its own checkpoint and start a loader there again
/// (`loader::LoaderBuilder::resume`); `saln-pipe run --resume` keeps it in its checkpoints.
///
/// The position is `(epoch, superbatch)`. For the indexed sources the epoch orders and the
/// augmentations are functions of `(seed, epoch, sample)`, so nothing else is needed to
/// produce the rest of the run exactly. A streaming source's order within an epoch is a
/// function of `(seed, epoch, rank)` too (shard order and shuffle buffer), so the same
/// pair places it: a resumed stream reads its epoch's shards again up to the position,
/// without decoding them (see `source::stream::StreamSource::reader`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderState {
    /// Epoch (0-based) of the next super-batch.
    pub epoch: usize,
    /// Index of the next super-batch within its epoch.
    pub superbatch: u64,
}

impl LoaderState {
    /// The position of global super-batch `seq` with `per_epoch` super-batches per epoch.
    ///
    /// ```
    /// use saln::batch::LoaderState;
    /// let s = LoaderState::at(7, 3);
    /// assert_eq!((s.epoch, s.superbatch), (2, 1));
    /// assert_eq!(s.seq(3), 7);
    /// ```
    pub fn at(seq: u64, per_epoch: u64) -> LoaderState {
        let per = per_epoch.max(1);
        LoaderState {
            epoch: (seq / per) as usize,
            superbatch: seq % per,
        }
    }

    /// The global sequence number of this position.
    pub fn seq(&self, per_epoch: u64) -> u64 {
        self.epoch as u64 * per_epoch + self.superbatch
    }
}

impl LoaderPlan {
    /// The plan for `epochs` epochs over `indices` (the learner's share): super-batch size,
    /// prefetch and shard from the `superbatch:` section, `workers` decode threads
    /// (`augment.workers`), the bad-sample policy (`source.on_error`) and the master `seed`.
    pub fn new(
        superbatch: &SuperBatchConfig,
        workers: usize,
        on_error: OnError,
        seed: u64,
        indices: Vec<usize>,
        epochs: usize,
    ) -> Result<LoaderPlan> {
        Ok(LoaderPlan {
            indices,
            epochs,
            size: superbatch.size,
            drop_last: superbatch.drop_last,
            seed,
            workers,
            prefetch: superbatch.prefetch,
            on_error,
            shard: superbatch.shard.resolve()?,
            start: 0,
            carried: LoaderSummary::default(),
        })
    }
}

/// What to do when the data set does not divide evenly among the ranks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Uneven {
    /// Leave out the last `n mod world_size` samples of each epoch's order (a different few
    /// every epoch, since the order is reshuffled).
    #[default]
    Drop,
    /// Repeat the first samples of the epoch order until every rank has `ceil(n / world_size)`.
    Pad,
}

/// One rank's share of the data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shard {
    /// This process's rank, `0..world_size`.
    pub rank: usize,
    /// Number of processes.
    pub world_size: usize,
    /// Uneven division policy.
    pub uneven: Uneven,
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            rank: 0,
            world_size: 1,
            uneven: Uneven::Drop,
        }
    }
}

impl Shard {
    /// Samples per rank for a data set of `n`.
    pub fn share_len(&self, n: usize) -> usize {
        let ws = self.world_size.max(1);
        match self.uneven {
            Uneven::Drop => n / ws,
            Uneven::Pad if n == 0 => 0,
            Uneven::Pad => n.div_ceil(ws),
        }
    }

    /// This rank's part of an epoch order: positions `rank, rank + world_size, ...` of the
    /// order, cut (`drop`) or cyclically extended (`pad`) to `world_size * share_len`.
    ///
    /// ```
    /// use saln::batch::{Shard, Uneven};
    /// let order: Vec<usize> = (0..10).collect();
    /// let pad = |rank| Shard { rank, world_size: 4, uneven: Uneven::Pad }.share(&order);
    /// assert_eq!(pad(1), vec![1, 5, 9]);
    /// assert_eq!(pad(3), vec![3, 7, 1]); // padded with the order's first samples
    /// let drop = Shard { rank: 3, world_size: 4, uneven: Uneven::Drop };
    /// assert_eq!(drop.share(&order), vec![3, 7]);
    /// ```
    pub fn share(&self, order: &[usize]) -> Vec<usize> {
        let ws = self.world_size.max(1);
        let total = self.share_len(order.len()) * ws;
        (self.rank..total)
            .step_by(ws)
            .map(|i| order[i % order.len()])
            .collect()
    }
}

/// The order of `indices` in `epoch`: a permutation drawn from `(seed, epoch)`.
pub fn epoch_order(indices: &[usize], seed: u64, epoch: usize) -> Vec<usize> {
    let mut order = indices.to_vec();
    Rng::derive(seed, &[rng::SHUFFLE, epoch as u64]).shuffle(&mut order);
    order
}

/// The super-batches (lists of source indices) of one epoch, for this plan's shard.
pub fn epoch_superbatches(plan: &LoaderPlan, epoch: usize) -> Vec<Vec<usize>> {
    plan.shard
        .share(&epoch_order(&plan.indices, plan.seed, epoch))
        .chunks(plan.size.max(1))
        .filter(|c| !(plan.drop_last && c.len() < plan.size))
        .map(<[usize]>::to_vec)
        .collect()
}

/// Super-batches per epoch (the same every epoch and on every rank).
pub fn superbatches_per_epoch(plan: &LoaderPlan) -> usize {
    let m = plan.shard.share_len(plan.indices.len());
    let size = plan.size.max(1);
    if plan.drop_last {
        m / size
    } else {
        m.div_ceil(size)
    }
}

/// Super-batch `seq` (global, 0-based, counted across epochs) of `plan`, decoded and
/// augmented exactly as the loader stage makes it (same order, same random streams), with
/// the samples it skipped. `None` when the plan has fewer super-batches. Used to look at one
/// super-batch without running the pipeline (`saln-pipe viz`).
pub fn superbatch_at(
    source: &dyn Source,
    aug: &Augmenter,
    plan: &LoaderPlan,
    seq: u64,
) -> Result<Option<(SuperBatch, Vec<String>)>> {
    let shape = aug.output_shape(source.shape())?;
    let per_epoch = superbatches_per_epoch(plan) as u64;
    let total = per_epoch * plan.epochs as u64;
    if seq >= total {
        return Ok(None);
    }
    let epoch = (seq / per_epoch) as usize;
    if source.as_stream().is_some() {
        return Err(Error::config(
            "source.stream",
            "a streaming source has no random access: one super-batch cannot be looked at \
             alone (use an indexed source)",
        ));
    }
    let mut sbs = epoch_superbatches(plan, epoch);
    let job = Job {
        seq,
        epoch,
        progress: seq as f64 / total as f64,
        indices: sbs.swap_remove((seq % per_epoch) as usize),
        records: Vec::new(),
    };
    build(source, aug, shape, plan.seed, plan.on_error, &job).map(Some)
}

/// What the loader did, for the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoaderSummary {
    /// Super-batches emitted.
    pub superbatches: u64,
    /// Samples emitted.
    pub samples: u64,
    /// Samples skipped (`on_error: skip`).
    pub skipped: u64,
    /// The first skipped samples with their errors (at most 20).
    pub first_skipped: Vec<String>,
}

struct Job {
    seq: u64,
    epoch: usize,
    progress: f64,
    indices: Vec<usize>,
    /// A streaming source's samples, read (not decoded); `indices` are their ids.
    records: Vec<Record>,
}

struct Done {
    seq: u64,
    epoch: usize,
    result: Result<(SuperBatch, Vec<String>)>,
}

/// Decodes and augments one super-batch; every image must come out as `shape`.
fn build(
    source: &dyn Source,
    aug: &Augmenter,
    shape: (usize, usize, usize),
    seed: u64,
    on_error: OnError,
    job: &Job,
) -> Result<(SuperBatch, Vec<String>)> {
    let (c, h, w) = shape;
    let channels = source.shape().channels;
    let resize = aug.leading_resize();
    let per = c * h * w;
    let mut sb = SuperBatch {
        seq: job.seq,
        epoch: job.epoch,
        progress: job.progress,
        ids: Vec::with_capacity(job.indices.len()),
        indices: Vec::with_capacity(job.indices.len()),
        labels: Vec::with_capacity(job.indices.len()),
        pixels: Vec::with_capacity(job.indices.len() * per),
        shape: (c, h, w),
        loaded: LoaderSummary::default(),
    };
    let mut skipped = Vec::new();
    let stream = source.as_stream();
    for (k, &i) in job.indices.iter().enumerate() {
        let sample = match (stream, job.records.get(k)) {
            (Some(st), Some(rec)) => st.decode(rec, resize),
            _ => match resize {
                Some(size) => source.get_resized(i, size),
                None => source.get(i),
            },
        };
        let res = sample.and_then(|s| {
            let sample_err = |message: String| Error::Sample {
                sample: source.locate(i),
                message,
            };
            if s.image.channels != channels {
                return Err(sample_err(format!(
                    "image has {} channels but the data set's images have {channels}",
                    s.image.channels
                )));
            }
            let mut r = Rng::derive(seed, &[rng::AUGMENT, job.epoch as u64, s.id]);
            let img = aug.train_owned(s.image, &mut r).map_err(|e| match e {
                Error::Sample { message, .. } => sample_err(message),
                e => e,
            })?;
            if let Some(m) = crate::augment::shape_mismatch(&img, (c, h, w)) {
                return Err(sample_err(m));
            }
            Ok((s.id, s.label, img))
        });
        match res {
            Ok((id, label, img)) => {
                sb.ids.push(id);
                sb.indices.push(i);
                sb.labels.push(label);
                sb.pixels.extend_from_slice(&img.data);
            }
            Err(e) if on_error == OnError::Skip => skipped.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    Ok((sb, skipped))
}

/// The jobs of a streaming source: per epoch, this rank's stream (`StreamSource::reader`)
/// cut into super-batches of `plan.size`; every rank takes `plan.shard.share_len(n)` samples
/// an epoch (fewer with `drop_last`: whole super-batches only), so every rank makes
/// `per_epoch` super-batches. The first job is global super-batch `start`: its epoch's
/// stream is fast-forwarded to it (read again, not decoded).
fn stream_jobs(
    stream: StreamSource,
    plan: &LoaderPlan,
    per_epoch: u64,
    start: u64,
) -> impl Iterator<Item = Result<Job>> + Send {
    let plan = plan.clone();
    let size = plan.size.max(1);
    let take = if plan.drop_last {
        per_epoch * size as u64
    } else {
        plan.shard.share_len(plan.indices.len()) as u64
    };
    let total = per_epoch * plan.epochs as u64;
    let per = per_epoch.max(1);
    let mut epoch = (start / per) as usize;
    let mut skip = (start % per) * size as u64;
    let mut reader: Option<crate::source::stream::StreamReader> = None;
    let mut seq = start;
    std::iter::from_fn(move || loop {
        if epoch >= plan.epochs || per_epoch == 0 {
            return None;
        }
        if reader.is_none() {
            let from = StreamPosition {
                epoch,
                offset: std::mem::take(&mut skip),
                ..StreamPosition::default()
            };
            match stream.reader(
                plan.seed,
                plan.shard.rank,
                plan.shard.world_size,
                take,
                from,
            ) {
                Ok(r) => reader = Some(r),
                Err(e) => {
                    epoch = plan.epochs;
                    return Some(Err(e));
                }
            }
        }
        let r = reader.as_mut()?;
        let mut records = Vec::with_capacity(size);
        for rec in r.by_ref().take(size) {
            match rec {
                Ok(rec) => records.push(rec),
                Err(e) => {
                    epoch = plan.epochs;
                    return Some(Err(e));
                }
            }
        }
        if records.is_empty() {
            reader = None;
            epoch += 1;
            continue;
        }
        let job = Job {
            seq,
            epoch,
            progress: seq as f64 / total.max(1) as f64,
            indices: records.iter().map(|r| r.id as usize).collect(),
            records,
        };
        seq += 1;
        return Some(Ok(job));
    })
}

/// Runs the loader stage until every epoch is emitted, the consumer goes away, or `cancel`
/// fires. Emits `Msg::Data` per super-batch and `Msg::EpochEnd` after each epoch.
pub fn run_loader(
    source: Arc<dyn Source>,
    aug: Arc<Augmenter>,
    plan: LoaderPlan,
    out: tokio::sync::mpsc::Sender<Msg<SuperBatch>>,
    stats: &Arc<StageStats>,
    cancel: &Cancel,
) -> Result<LoaderSummary> {
    let shape = aug.output_shape(source.shape())?;
    let per_epoch = superbatches_per_epoch(&plan) as u64;
    let total = per_epoch * plan.epochs as u64;
    let start = plan.start.min(total);
    // Jobs are made one epoch at a time, as they are handed out: memory holds one epoch
    // order, not all of them. A resumed loader skips the super-batches before `start`
    // (cheap: only index lists are made for them, nothing is decoded). A streaming source
    // is read in order instead; resumed, it reads its epoch again up to `start` (the
    // records are read, not decoded: see `stream_jobs`).
    let mut jobs: Box<dyn Iterator<Item = Result<Job>> + Send> = match source.as_stream() {
        Some(stream) => Box::new(stream_jobs(stream.clone(), &plan, per_epoch, start)),
        None => {
            let plan = plan.clone();
            Box::new(
                (0..plan.epochs)
                    .flat_map(move |epoch| {
                        epoch_superbatches(&plan, epoch)
                            .into_iter()
                            .map(move |indices| (epoch, indices))
                    })
                    .enumerate()
                    .map(move |(seq, (epoch, indices))| {
                        Ok(Job {
                            seq: seq as u64,
                            epoch,
                            progress: seq as f64 / total.max(1) as f64,
                            indices,
                            records: Vec::new(),
                        })
                    })
                    .skip(start as usize),
            )
        }
    };
    // The sequence number that closes `epoch` (every epoch has `per_epoch` super-batches).
    let epoch_last = |epoch: usize| -> Option<u64> {
        (per_epoch > 0).then(|| (epoch as u64 + 1) * per_epoch - 1)
    };

    let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(plan.prefetch.max(1));
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Done>();
    let mut workers = Vec::with_capacity(plan.workers);
    for w in 0..plan.workers.max(1) {
        let (job_rx, done_tx) = (job_rx.clone(), done_tx.clone());
        let (source, aug) = (source.clone(), aug.clone());
        let (seed, on_error, stats) = (plan.seed, plan.on_error, stats.clone());
        let handle = spawn_thread(format!("saln-decode-{w}"), move || {
            for job in job_rx {
                let (seq, epoch) = (job.seq, job.epoch);
                let result = catching("loader", || {
                    stats.time_busy(|| build(source.as_ref(), &aug, shape, seed, on_error, &job))
                });
                if done_tx.send(Done { seq, epoch, result }).is_err() {
                    break;
                }
            }
        })?;
        workers.push(handle);
    }
    drop(done_tx);
    drop(job_rx);

    let mut summary = plan.carried.clone();
    // A stream's shards damaged when it was opened (`on_error: skip`) are named first.
    if let Some(stream) = source.as_stream() {
        if plan.start == 0 {
            summary
                .first_skipped
                .extend(stream.problems().iter().take(20).cloned());
        }
    }
    let result = (|| -> Result<()> {
        let mut in_flight = 0usize;
        let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
        let mut next = start;
        let emit_epoch_end = |epoch: usize, seq: u64| -> Option<usize> {
            (epoch_last(epoch) == Some(seq)).then_some(epoch)
        };
        while next < total {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            while in_flight < plan.prefetch.max(1) {
                match jobs.next().transpose()? {
                    Some(job) => {
                        job_tx.send(job).map_err(|_| Error::Panic {
                            stage: "loader",
                            message: "every decode worker exited".into(),
                        })?;
                        in_flight += 1;
                    }
                    None => break,
                }
            }
            let t = Instant::now();
            let done = done_rx.recv().map_err(|_| Error::Panic {
                stage: "loader",
                message: "every decode worker exited".into(),
            })?;
            stats.waited(t.elapsed());
            in_flight -= 1;
            pending.insert(done.seq, done);
            while let Some(done) = pending.remove(&next) {
                let (mut sb, skipped) = done.result?;
                summary.skipped += skipped.len() as u64;
                for s in skipped {
                    if summary.first_skipped.len() < 20 {
                        summary.first_skipped.push(s);
                    }
                }
                summary.superbatches += 1;
                summary.samples += sb.len() as u64;
                stats.item(sb.len());
                sb.loaded = summary.clone();
                let epoch_end = emit_epoch_end(done.epoch, done.seq);
                let t = Instant::now();
                if !sb.is_empty() && out.blocking_send(Msg::Data(sb)).is_err() {
                    return Err(Error::Cancelled);
                }
                if let Some(epoch) = epoch_end {
                    if out.blocking_send(Msg::EpochEnd { epoch }).is_err() {
                        return Err(Error::Cancelled);
                    }
                }
                stats.blocked(t.elapsed());
                next += 1;
            }
        }
        Ok(())
    })();
    drop(job_tx);
    for w in workers {
        let _ = w.join();
    }
    match result {
        Ok(()) => Ok(summary),
        // The consumer went away or the run was cancelled: not the loader's failure.
        Err(Error::Cancelled) => Ok(summary),
        Err(e) => Err(e),
    }
}

// ---- configuration ----

/// Super-batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuperBatchConfig {
    /// Samples per super-batch (B).
    #[serde(default = "d_superbatch")]
    pub size: usize,
    /// Super-batches being decoded ahead of the one the extractor needs.
    #[serde(default = "d_prefetch")]
    pub prefetch: usize,
    /// Drop the last, incomplete super-batch of each epoch (default: keep it, nothing lost).
    #[serde(default)]
    pub drop_last: bool,
    /// Data-parallel sharding: which share of every epoch this process loads.
    #[serde(default)]
    pub shard: ShardConfig,
}

/// Data-parallel sharding (`superbatch.shard`). Unset values come from the `RANK` and
/// `WORLD_SIZE` environment variables that `torchrun` sets, else rank 0 of 1.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// This process's rank, `0..world_size` (default: `$RANK`, else 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    /// Number of processes (default: `$WORLD_SIZE`, else 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world_size: Option<usize>,
    /// When the data set does not divide evenly: `drop` the last few samples of each epoch
    /// order, or `pad` by repeating its first ones. Either way every rank gets the same number
    /// of samples and super-batches.
    #[serde(default)]
    pub uneven: Uneven,
}

impl ShardConfig {
    /// The shard, with unset values from the process environment.
    pub fn resolve(&self) -> Result<Shard> {
        self.resolve_with(|k| std::env::var(k).ok())
    }

    /// The shard, with unset values from `env` (a lookup such as `std::env::var`).
    pub fn resolve_with(&self, env: impl Fn(&str) -> Option<String>) -> Result<Shard> {
        let mut issues = Vec::new();
        let mut get = |set: Option<usize>, var: &str, key: &str, default: usize| match set {
            Some(v) => v,
            None => match env(var) {
                None => default,
                Some(text) => text.trim().parse().unwrap_or_else(|_| {
                    issues.push(crate::error::ConfigIssue {
                        line: None,
                        column: None,
                        key: format!("superbatch.shard.{key}"),
                        message: format!("${var} is `{text}`, not a whole number"),
                    });
                    default
                }),
            },
        };
        let rank = get(self.rank, "RANK", "rank", 0);
        let world_size = get(self.world_size, "WORLD_SIZE", "world_size", 1);
        if world_size == 0 {
            issues.push(crate::error::ConfigIssue {
                line: None,
                column: None,
                key: "superbatch.shard.world_size".into(),
                message: "must be at least 1".into(),
            });
        } else if rank >= world_size {
            issues.push(crate::error::ConfigIssue {
                line: None,
                column: None,
                key: "superbatch.shard.rank".into(),
                message: format!(
                    "rank {rank} is not below world_size {world_size} (from the config, or $RANK / $WORLD_SIZE)"
                ),
            });
        }
        if issues.is_empty() {
            Ok(Shard {
                rank,
                world_size,
                uneven: self.uneven,
            })
        } else {
            Err(Error::ConfigInvalid {
                path: "<config>".into(),
                issues,
            })
        }
    }

    /// Adds this block's problems to `v` (values given in the config; the environment is
    /// read by [`ShardConfig::resolve`]).
    pub fn validate(&self, v: &mut Issues) {
        if let Some(ws) = self.world_size {
            v.check(ws > 0, "superbatch.shard.world_size", || {
                "must be at least 1".into()
            });
            if let Some(r) = self.rank {
                v.check(ws == 0 || r < ws, "superbatch.shard.rank", || {
                    format!("rank {r} is not below world_size {ws}")
                });
            }
        }
    }
}

pub(crate) fn d_prefetch() -> usize {
    4
}
pub(crate) fn d_superbatch() -> usize {
    256
}

impl SuperBatchConfig {
    /// Adds this section's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        v.check(self.size >= 2, "superbatch.size", || {
            format!("must be at least 2, got {}", self.size)
        });
        v.check(self.prefetch > 0, "superbatch.prefetch", || {
            "must be at least 1".into()
        });
        self.shard.validate(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::AugmentOp;
    use crate::source::test_data::synthetic;
    use crate::source::{MemorySource, RawImage, Sample};

    fn plan(n: usize, workers: usize) -> LoaderPlan {
        LoaderPlan {
            indices: (0..n).collect(),
            epochs: 2,
            size: 16,
            drop_last: false,
            seed: 11,
            workers,
            prefetch: 3,
            on_error: OnError::Fail,
            shard: Shard::default(),
            start: 0,
            carried: LoaderSummary::default(),
        }
    }

    fn collect(source: Arc<dyn Source>, plan: LoaderPlan) -> (Vec<Msg<SuperBatch>>, LoaderSummary) {
        let aug = Arc::new(Augmenter::new(vec![
            AugmentOp::Hflip { p: 0.5 },
            AugmentOp::Rotate { max_degrees: 10.0 },
        ]));
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let stats = Arc::new(StageStats::new("loader"));
        let cancel = Cancel::default();
        let h = std::thread::spawn(move || {
            let mut v = Vec::new();
            while let Some(m) = rx.blocking_recv() {
                v.push(m);
            }
            v
        });
        let summary = run_loader(source, aug, plan, tx, &stats, &cancel).unwrap();
        (h.join().unwrap(), summary)
    }

    #[test]
    fn output_is_identical_for_any_worker_count() {
        let (one, _) = collect(synthetic(100), plan(100, 1));
        for workers in [2, 3, 8] {
            let (many, _) = collect(synthetic(100), plan(100, workers));
            assert_eq!(one, many, "{workers} workers");
        }
    }

    #[test]
    fn every_sample_appears_once_per_epoch_and_epochs_differ() {
        let (msgs, summary) = collect(synthetic(100), plan(100, 2));
        let mut epochs: Vec<Vec<u64>> = vec![vec![], vec![]];
        let mut ends = vec![];
        for m in &msgs {
            match m {
                Msg::Data(sb) => epochs[sb.epoch].extend(&sb.ids),
                Msg::EpochEnd { epoch } => ends.push(*epoch),
            }
        }
        assert_eq!(ends, vec![0, 1]);
        assert_ne!(epochs[0], epochs[1], "epochs are shuffled differently");
        for e in &mut epochs {
            e.sort_unstable();
            assert_eq!(*e, (0..100).collect::<Vec<u64>>());
        }
        // Progress is seq / total: 0 first, evenly spaced, below 1.
        let progress: Vec<f64> = msgs
            .iter()
            .filter_map(|m| match m {
                Msg::Data(sb) => Some(sb.progress),
                Msg::EpochEnd { .. } => None,
            })
            .collect();
        assert_eq!(progress.len(), 14);
        for (i, p) in progress.iter().enumerate() {
            assert!((p - i as f64 / 14.0).abs() < 1e-12, "{i}: {p}");
        }
        // 100 = 6 * 16 + 4: seven super-batches per epoch, the last one partial.
        assert_eq!(summary.superbatches, 14);
        assert_eq!(summary.samples, 200);
    }

    #[test]
    fn drop_last_drops_the_partial_superbatch() {
        let mut p = plan(100, 2);
        p.drop_last = true;
        let (_, summary) = collect(synthetic(100), p);
        assert_eq!(summary.superbatches, 12);
        assert_eq!(summary.samples, 192);
    }

    struct Flaky(Arc<dyn Source>);
    impl Source for Flaky {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn get(&self, i: usize) -> Result<crate::source::Sample> {
            if i % 25 == 7 {
                Err(Error::Sample {
                    sample: self.locate(i),
                    message: "corrupt".into(),
                })
            } else {
                self.0.get(i)
            }
        }
        fn locate(&self, i: usize) -> String {
            format!("flaky#{i}")
        }
        fn num_classes(&self) -> usize {
            10
        }
        fn shape(&self) -> crate::source::SourceShape {
            self.0.shape()
        }
    }

    #[test]
    fn bad_samples_are_skipped_and_counted_or_fail_the_run() {
        let flaky: Arc<dyn Source> = Arc::new(Flaky(synthetic(100)));
        let mut p = plan(100, 2);
        p.on_error = OnError::Skip;
        let (_, summary) = collect(flaky.clone(), p.clone());
        assert_eq!(summary.skipped, 8, "4 bad samples x 2 epochs");
        assert_eq!(summary.samples, 192);
        assert!(
            summary.first_skipped[0].contains("flaky#")
                && summary.first_skipped[0].contains("corrupt")
        );

        p.on_error = OnError::Fail;
        let aug = Arc::new(Augmenter::new(vec![]));
        let (tx, _rx) = tokio::sync::mpsc::channel(64);
        let e = run_loader(
            flaky,
            aug,
            p,
            tx,
            &Arc::new(StageStats::new("loader")),
            &Cancel::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("flaky#") && e.contains("corrupt"), "{e}");
    }

    #[test]
    fn a_dropped_consumer_stops_the_loader() {
        let aug = Arc::new(Augmenter::new(vec![]));
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        drop(rx);
        let s = run_loader(
            synthetic(100),
            aug,
            plan(100, 2),
            tx,
            &Arc::new(StageStats::new("loader")),
            &Cancel::default(),
        )
        .unwrap();
        assert!(s.superbatches <= 1);
    }

    // ---- sharding ----

    fn sharded(n: usize, size: usize, drop_last: bool, shard: Shard) -> LoaderPlan {
        LoaderPlan {
            indices: (100..100 + n).collect(),
            epochs: 2,
            size,
            drop_last,
            seed: 5,
            workers: 1,
            prefetch: 1,
            on_error: OnError::Fail,
            shard,
            start: 0,
            carried: LoaderSummary::default(),
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]
        /// Shares of one epoch are disjoint, cover the data set (all of it with `pad`, all but
        /// `n mod world_size` with `drop`), and every rank gets the same number of samples and
        /// super-batches, for world sizes 1 to 8 and sizes that do not divide evenly.
        #[test]
        fn shards_are_disjoint_complete_and_equal(
            n in 1usize..300,
            world_size in 1usize..=8,
            size in 2usize..40,
            drop_last: bool,
            pad: bool,
            epoch in 0usize..3,
        ) {
            let uneven = if pad { Uneven::Pad } else { Uneven::Drop };
            let mut seen: Vec<usize> = Vec::new();
            let mut counts = Vec::new();
            for rank in 0..world_size {
                let p = sharded(n, size, drop_last, Shard { rank, world_size, uneven });
                let order = epoch_order(&p.indices, p.seed, epoch);
                let share = p.shard.share(&order);
                proptest::prop_assert_eq!(share.len(), p.shard.share_len(n));
                seen.extend(&share);
                let sbs = epoch_superbatches(&p, epoch);
                proptest::prop_assert_eq!(sbs.len(), superbatches_per_epoch(&p));
                counts.push(sbs.len());
            }
            proptest::prop_assert!(counts.iter().all(|&c| c == counts[0]), "{:?}", counts);
            let total = seen.len();
            seen.sort_unstable();
            let distinct = { let mut d = seen.clone(); d.dedup(); d };
            proptest::prop_assert!(distinct.iter().all(|i| (100..100 + n).contains(i)));
            if pad {
                proptest::prop_assert_eq!(distinct.len(), n, "pad covers everything");
                proptest::prop_assert_eq!(total, n.div_ceil(world_size) * world_size);
            } else {
                proptest::prop_assert_eq!(distinct.len(), total, "drop: disjoint");
                proptest::prop_assert_eq!(total, n - n % world_size);
            }
        }
    }

    #[test]
    fn pad_repeats_deterministically_and_drop_changes_per_epoch() {
        let p = |rank| {
            sharded(
                10,
                2,
                false,
                Shard {
                    rank,
                    world_size: 4,
                    uneven: Uneven::Pad,
                },
            )
        };
        let a = epoch_superbatches(&p(3), 0);
        assert_eq!(a, epoch_superbatches(&p(3), 0));
        let order = epoch_order(&p(0).indices, 5, 0);
        // Rank 3 gets positions 3, 7 and then 11 = 1 mod 10 (the second sample of the order).
        assert_eq!(a.concat(), vec![order[3], order[7], order[1]]);
        let d = |epoch| {
            let q = sharded(
                10,
                2,
                false,
                Shard {
                    rank: 0,
                    world_size: 4,
                    uneven: Uneven::Drop,
                },
            );
            let order = epoch_order(&q.indices, 5, epoch);
            order[8..].to_vec()
        };
        assert_ne!(d(0), d(1), "the dropped samples differ between epochs");
    }

    #[test]
    fn shard_comes_from_torchrun_variables_unless_configured() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let none = ShardConfig::default();
        assert_eq!(none.resolve_with(env(&[])).unwrap(), Shard::default());
        let s = none
            .resolve_with(env(&[("RANK", "2"), ("WORLD_SIZE", "4")]))
            .unwrap();
        assert_eq!((s.rank, s.world_size), (2, 4));
        let cfg = ShardConfig {
            rank: Some(1),
            world_size: None,
            uneven: Uneven::Pad,
        };
        let s = cfg
            .resolve_with(env(&[("RANK", "2"), ("WORLD_SIZE", "4")]))
            .unwrap();
        assert_eq!((s.rank, s.world_size, s.uneven), (1, 4, Uneven::Pad));
        let e = none
            .resolve_with(env(&[("RANK", "x"), ("WORLD_SIZE", "4")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("superbatch.shard.rank") && e.contains("$RANK"),
            "{e}"
        );
        let e = none
            .resolve_with(env(&[("RANK", "4"), ("WORLD_SIZE", "4")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not below world_size 4"), "{e}");
    }

    #[test]
    fn sharded_loaders_emit_disjoint_equal_streams() {
        let n = 103;
        let mut all = Vec::new();
        let mut counts = Vec::new();
        for rank in 0..4 {
            let mut p = plan(n, 2);
            p.shard = Shard {
                rank,
                world_size: 4,
                uneven: Uneven::Drop,
            };
            let (msgs, summary) = collect(synthetic(n), p);
            counts.push(summary.superbatches);
            for m in msgs {
                if let Msg::Data(sb) = m {
                    if sb.epoch == 0 {
                        all.extend(sb.ids);
                    }
                }
            }
        }
        assert!(counts.iter().all(|&c| c == counts[0]), "{counts:?}");
        let len = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!((len, all.len()), (100, 100));
    }

    // ---- image files through the loader ----

    use crate::pixel::Size;
    use crate::source::folder::{open_pair, ImageFolderConfig};

    /// A folder of 24 JPEG and PNG images of assorted sizes in 3 classes, and the bad files
    /// named in `bad` (relative paths) of the kinds the loader must survive.
    fn photo_folder(dir: &std::path::Path, bad: bool) -> Vec<&'static str> {
        for i in 0..24usize {
            let (h, w) = (20 + (i * 7) % 23, 25 + (i * 11) % 31);
            let img = RawImage {
                channels: 3,
                height: h,
                width: w,
                data: (0..3 * h * w)
                    .map(|p| ((p * (i + 3)) % 256) as u8)
                    .collect(),
            };
            let ext = if i % 3 == 0 { "png" } else { "jpg" };
            let fmt = if ext == "png" {
                image::ImageFormat::Png
            } else {
                image::ImageFormat::Jpeg
            };
            let path = dir.join(format!("c{}/{i:02}.{ext}", i % 3));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, crate::source::decode::encode(&img, fmt).unwrap()).unwrap();
        }
        if !bad {
            return vec![];
        }
        let good = std::fs::read(dir.join("c1/01.jpg")).unwrap();
        std::fs::write(dir.join("c0/empty.jpg"), b"").unwrap();
        std::fs::write(dir.join("c1/truncated.jpg"), &good[..good.len() / 2]).unwrap();
        std::fs::write(
            dir.join("c2/garbage.png"),
            b"\x89PNG\r\n\x1a\nthis is no png",
        )
        .unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("/nonexistent/saln/photo.jpg", dir.join("c2/dangling.jpg"))
            .unwrap();
        #[cfg(not(unix))]
        std::fs::write(dir.join("c2/dangling.jpg"), b"").unwrap();
        vec![
            "c0/empty.jpg",
            "c1/truncated.jpg",
            "c2/dangling.jpg",
            "c2/garbage.png",
        ]
    }

    fn photo_ops() -> Vec<AugmentOp> {
        vec![
            AugmentOp::RandomResizedCrop {
                size: Size::Exact([16, 20]),
                scale: [0.3, 1.0],
                ratio: [0.75, 1.333],
            },
            AugmentOp::Hflip { p: 0.5 },
            AugmentOp::Rotate { max_degrees: 15.0 },
            AugmentOp::Brightness { max_delta: 0.2 },
            AugmentOp::Contrast { max_delta: 0.2 },
            AugmentOp::Normalize {
                mean: vec![0.485, 0.456, 0.406],
                std: vec![0.229, 0.224, 0.225],
            },
        ]
    }

    fn run_files(
        source: Arc<dyn Source>,
        ops: Vec<AugmentOp>,
        workers: usize,
        on_error: OnError,
    ) -> Result<(Vec<Msg<SuperBatch>>, LoaderSummary)> {
        let n = source.len();
        let plan = LoaderPlan {
            indices: (0..n).collect(),
            epochs: 2,
            size: 5,
            drop_last: false,
            seed: 3,
            workers,
            prefetch: 3,
            on_error,
            shard: Shard::default(),
            start: 0,
            carried: LoaderSummary::default(),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let h = std::thread::spawn(move || {
            let mut v = Vec::new();
            while let Some(m) = rx.blocking_recv() {
                v.push(m);
            }
            v
        });
        let r = run_loader(
            source,
            Arc::new(Augmenter::new(ops)),
            plan,
            tx,
            &Arc::new(StageStats::new("loader")),
            &Cancel::default(),
        );
        let msgs = h.join().unwrap();
        r.map(|s| (msgs, s))
    }

    fn folder_source(dir: &std::path::Path) -> Arc<dyn Source> {
        let cfg = ImageFolderConfig {
            train: dir.to_path_buf(),
            test: None,
            test_fraction: Some(0.0),
        };
        Arc::new(open_pair(&cfg, 3).unwrap().0)
    }

    #[test]
    fn decoded_files_are_identical_for_1_2_and_8_workers() {
        let t = tempfile::tempdir().unwrap();
        photo_folder(t.path(), false);
        let src = folder_source(t.path());
        let (one, s1) = run_files(src.clone(), photo_ops(), 1, OnError::Fail).unwrap();
        assert_eq!(s1.samples, 48);
        for m in &one {
            if let Msg::Data(sb) = m {
                assert_eq!(sb.shape, (3, 16, 20));
                assert_eq!(sb.pixels.len(), sb.len() * 3 * 16 * 20);
            }
        }
        for workers in [2, 8] {
            let (many, _) = run_files(src.clone(), photo_ops(), workers, OnError::Fail).unwrap();
            assert_eq!(one, many, "{workers} workers");
        }
    }

    #[test]
    fn bad_files_are_skipped_and_named_or_fail_the_run_naming_the_file() {
        let t = tempfile::tempdir().unwrap();
        let bad = photo_folder(t.path(), true);
        let src = folder_source(t.path());
        assert_eq!(src.len(), 28);
        let (_, summary) = run_files(src.clone(), photo_ops(), 2, OnError::Skip).unwrap();
        assert_eq!(summary.skipped, 8, "4 bad files x 2 epochs");
        assert_eq!(summary.samples, 48);
        for b in &bad {
            assert!(
                summary.first_skipped.iter().any(|s| s.contains(b)),
                "{b} not named in {:?}",
                summary.first_skipped
            );
        }
        let why = |name: &str| {
            summary
                .first_skipped
                .iter()
                .find(|s| s.contains(name))
                .unwrap()
                .clone()
        };
        assert!(why("empty.jpg").contains("empty file"));
        assert!(why("truncated.jpg").contains("truncated"));
        assert!(why("dangling.jpg").contains("cannot read"));
        assert!(why("garbage.png").contains("Png"));

        let e = run_files(src, photo_ops(), 2, OnError::Fail)
            .unwrap_err()
            .to_string();
        assert!(bad.iter().any(|b| e.contains(b)), "{e}");
    }

    #[test]
    fn variable_sizes_without_a_fixing_op_fail_before_loading() {
        let t = tempfile::tempdir().unwrap();
        photo_folder(t.path(), false);
        let e = run_files(
            folder_source(t.path()),
            vec![AugmentOp::Hflip { p: 0.5 }],
            2,
            OnError::Skip,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("augment.ops[") && e.contains("several sizes"),
            "{e}"
        );
    }

    #[test]
    fn an_image_of_the_wrong_channel_count_is_a_named_sample_error() {
        let mut samples: Vec<Sample> = (0..6)
            .map(|i| Sample {
                id: i,
                label: 0,
                image: RawImage {
                    channels: 3,
                    height: 4,
                    width: 4,
                    data: vec![9; 48],
                },
            })
            .collect();
        samples[4].image = RawImage {
            channels: 1,
            height: 4,
            width: 4,
            data: vec![9; 16],
        };
        let src: Arc<dyn Source> = Arc::new(MemorySource::new("mixed", samples, 1));
        let ops = vec![AugmentOp::Resize {
            size: Size::Exact([4, 4]),
        }];
        let (_, s) = run_files(src.clone(), ops.clone(), 2, OnError::Skip).unwrap();
        assert_eq!(s.skipped, 2);
        assert!(
            s.first_skipped[0].contains("mixed#4") && s.first_skipped[0].contains("1 channels")
        );
        let e = run_files(src, ops, 2, OnError::Fail)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mixed#4"), "{e}");
    }
}
