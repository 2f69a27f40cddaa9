//! Super-batches: the epoch order, grouping into super-batches of `B`, and the parallel
//! decode/augment workers.
//!
//! The *loader* stage owns a pool of worker threads (`saln-decode-N`). Each super-batch is
//! one job; at most `prefetch` jobs are in flight. Workers finish in any order; a reorder
//! buffer releases super-batches strictly in sequence. Each sample is augmented with a
//! random stream derived from `(seed, epoch, sample id)`. Together these make the output a
//! function of the seed alone: 1, 2 or 8 workers give byte-identical super-batches.
//!
//! Memory is bounded by `prefetch + channel capacity` super-batches.
use crate::config::Issues;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::augment::Augmenter;
use crate::error::{Error, Result};
use crate::pipeline::{Cancel, Msg, StageStats};
use crate::rng::{self, Rng};
use crate::source::OnError;
use crate::source::Source;

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
}

/// The order of `indices` in `epoch`: a permutation drawn from `(seed, epoch)`.
pub fn epoch_order(indices: &[usize], seed: u64, epoch: usize) -> Vec<usize> {
    let mut order = indices.to_vec();
    Rng::derive(seed, &[rng::SHUFFLE, epoch as u64]).shuffle(&mut order);
    order
}

/// The super-batches (lists of source indices) of one epoch.
pub fn epoch_superbatches(plan: &LoaderPlan, epoch: usize) -> Vec<Vec<usize>> {
    epoch_order(&plan.indices, plan.seed, epoch)
        .chunks(plan.size)
        .filter(|c| !(plan.drop_last && c.len() < plan.size))
        .map(<[usize]>::to_vec)
        .collect()
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
    let total: u64 = (0..plan.epochs)
        .map(|e| epoch_superbatches(plan, e).len() as u64)
        .sum();
    let mut first = 0u64;
    for epoch in 0..plan.epochs {
        let sbs = epoch_superbatches(plan, epoch);
        let n = sbs.len() as u64;
        if seq < first + n {
            let job = Job {
                seq,
                epoch,
                progress: seq as f64 / total.max(1) as f64,
                indices: sbs[(seq - first) as usize].clone(),
            };
            return build(source, aug, plan.seed, plan.on_error, &job).map(Some);
        }
        first += n;
    }
    Ok(None)
}

/// What the loader did, for the report.
#[derive(Debug, Clone, Default, PartialEq)]
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
}

struct Done {
    seq: u64,
    epoch: usize,
    result: Result<(SuperBatch, Vec<String>)>,
}

/// Decodes and augments one super-batch.
fn build(
    source: &dyn Source,
    aug: &Augmenter,
    seed: u64,
    on_error: OnError,
    job: &Job,
) -> Result<(SuperBatch, Vec<String>)> {
    let (c, h, w) = source.shape();
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
    };
    let mut skipped = Vec::new();
    for &i in &job.indices {
        let res = source.get(i).and_then(|s| {
            let mut r = Rng::derive(seed, &[rng::AUGMENT, job.epoch as u64, s.id]);
            let img = aug.train(&s.image, &mut r).map_err(|e| match e {
                Error::Sample { message, .. } => Error::Sample {
                    sample: source.locate(i),
                    message,
                },
                e => e,
            })?;
            if img.data.len() != per {
                return Err(Error::Sample {
                    sample: source.locate(i),
                    message: format!(
                        "image is {}x{}x{} but the data set's shape is {c}x{h}x{w}",
                        img.channels, img.height, img.width
                    ),
                });
            }
            Ok((s, img))
        });
        match res {
            Ok((s, img)) => {
                sb.ids.push(s.id);
                sb.indices.push(i);
                sb.labels.push(s.label);
                sb.pixels.extend_from_slice(&img.data);
            }
            Err(e) if on_error == OnError::Skip => skipped.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    Ok((sb, skipped))
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
    let epochs: Vec<Vec<Vec<usize>>> = (0..plan.epochs)
        .map(|e| epoch_superbatches(&plan, e))
        .collect();
    let total: u64 = epochs.iter().map(|e| e.len() as u64).sum();
    // Which sequence number closes each epoch (none for an epoch without super-batches).
    let epoch_last: Vec<Option<u64>> = epochs
        .iter()
        .scan(0u64, |seq, sbs| {
            *seq += sbs.len() as u64;
            Some((!sbs.is_empty()).then(|| *seq - 1))
        })
        .collect();
    let mut jobs = epochs
        .into_iter()
        .enumerate()
        .flat_map(|(epoch, sbs)| sbs.into_iter().map(move |indices| (epoch, indices)))
        .enumerate()
        .map(|(seq, (epoch, indices))| Job {
            seq: seq as u64,
            epoch,
            progress: seq as f64 / total.max(1) as f64,
            indices,
        });
    let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(plan.prefetch.max(1));
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Done>();
    let mut workers = Vec::with_capacity(plan.workers);
    for w in 0..plan.workers.max(1) {
        let (job_rx, done_tx) = (job_rx.clone(), done_tx.clone());
        let (source, aug) = (source.clone(), aug.clone());
        let (seed, on_error, stats) = (plan.seed, plan.on_error, stats.clone());
        let handle = std::thread::Builder::new()
            .name(format!("saln-decode-{w}"))
            .spawn(move || {
                for job in job_rx {
                    let (seq, epoch) = (job.seq, job.epoch);
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        stats.time_busy(|| build(source.as_ref(), &aug, seed, on_error, &job))
                    }))
                    .unwrap_or_else(|p| {
                        Err(Error::Panic {
                            stage: "loader",
                            message: crate::pipeline::panic_message(&p),
                        })
                    });
                    if done_tx.send(Done { seq, epoch, result }).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::io("<thread>", e))?;
        workers.push(handle);
    }
    drop(done_tx);
    drop(job_rx);

    let mut summary = LoaderSummary::default();
    let result = (|| -> Result<()> {
        let mut in_flight = 0usize;
        let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
        let mut next = 0u64;
        let emit_epoch_end = |epoch: usize, seq: u64| -> Option<usize> {
            (epoch_last[epoch] == Some(seq)).then_some(epoch)
        };
        while next < total {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            while in_flight < plan.prefetch.max(1) {
                match jobs.next() {
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
                let (sb, skipped) = done.result?;
                summary.skipped += skipped.len() as u64;
                for s in skipped {
                    if summary.first_skipped.len() < 20 {
                        summary.first_skipped.push(s);
                    }
                }
                summary.superbatches += 1;
                summary.samples += sb.len() as u64;
                stats.item(sb.len());
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::AugmentOp;
    use crate::source::{MemorySource, RawImage, Sample};

    pub(crate) fn synthetic(n: usize) -> Arc<dyn Source> {
        let samples = (0..n)
            .map(|i| Sample {
                id: i as u64,
                label: (i % 10) as i64,
                image: RawImage {
                    channels: 1,
                    height: 8,
                    width: 8,
                    data: (0..64).map(|p| ((p * 7 + i * 13) % 256) as u8).collect(),
                },
            })
            .collect();
        Arc::new(MemorySource::new("mem", samples, 10))
    }

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
        fn shape(&self) -> (usize, usize, usize) {
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
}
