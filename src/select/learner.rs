//! The learner's weights in the extract stage, for the learner-aware policies (`loss`,
//! `rho-loss`, `jest`).
//!
//! The learner trains on the `saln-train` thread; selection runs on `saln-extract`, ahead
//! of it by the channel between them. The train stage *publishes* a deep copy of its
//! variables every `K = selection.refresh_every` optimizer steps (and at step 0) on a shared
//! [`SnapshotBoard`] ([`Publisher`], held by the train stage's `Trainer`); the extract
//! stage keeps its own copy of the learner ([`LearnerScorer`]) and copies a snapshot in
//! (`f_copy_` under `no_grad`) when it needs a newer one.
//!
//! ## Determinism: which snapshot scores which super-batch
//! "The latest snapshot" would depend on how far the trainer happened to get, so on thread
//! timing. Instead, the `j`-th sub-batch the extract stage sends (0-based; each is exactly
//! one optimizer step) is scored with the snapshot published after step
//!
//! ```text
//! s(j) = K * floor(max(0, j - lag) / K)         (lag = selection.snapshot_lag)
//! ```
//!
//! and the extract stage blocks (checking for cancellation) until that snapshot exists.
//! It always will: the trainer needs only the `s(j) <= j` sub-batches already sent to
//! reach step `s(j)`. So the selection depends on the seed, `K` and the lag, never on
//! channel capacities, worker counts or machine load ([`snapshot_step`]).
//!
//! The lag decides whether the stages overlap. When the extract stage is about to score
//! sub-batch `j`, the trainer has finished at least `j - capacity - 1` steps (at most
//! `capacity` sub-batches wait in the channel, one is being trained on), so with
//! `lag >= channels.extract_to_train + 1` it never waits in steady state; a smaller lag is
//! just as deterministic but makes it wait for the trainer every `K` sub-batches.
//!
//! ## Staleness
//! The weights that score sub-batch `j` are `j - s(j)` steps older than the weights that
//! train on it: between `lag` and `lag + K - 1` steps once `j >= lag`. That is the
//! *staleness* the design accepts, and [`LearnerStats`] reports its mean and maximum, next
//! to the staleness at scoring time (trainer's step then minus `s(j)`, which depends on
//! timing and is reported only) and the seconds spent waiting.
//!
//! Memory: the board holds the snapshots published but not yet needed; as the trainer is
//! at most `lag + K` steps ahead of the one the extract stage needs, that is at most
//! `lag / K + 2` copies of the learner.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::learner::{Learner, LearnerSpec};
use crate::stage::Cancel;

/// The reference model's logits of a micro-batch `[m, C, H, W]` -> `[m, K]` (the extract
/// stage's reference CNN), for `rho-loss` and `jest`.
pub type ReferenceLogits<'a> = &'a dyn Fn(&Tensor) -> Result<Tensor>;

/// The optimizer step whose snapshot scores the `j`-th sub-batch (0-based):
/// `every * floor(max(0, j - lag) / every)`.
///
/// ```
/// use saln::select::learner::snapshot_step;
/// // K = 10, lag = 4: sub-batches 0..=13 use step 0, 14..=23 step 10, ...
/// assert_eq!(snapshot_step(0, 10, 4), 0);
/// assert_eq!(snapshot_step(13, 10, 4), 0);
/// assert_eq!(snapshot_step(14, 10, 4), 10);
/// assert_eq!(snapshot_step(23, 10, 4), 10);
/// assert_eq!(snapshot_step(5, 1, 0), 5);
/// ```
pub fn snapshot_step(j: u64, every: u64, lag: u64) -> u64 {
    let every = every.max(1);
    every * (j.saturating_sub(lag) / every)
}

/// A deep copy of the learner's variables after optimizer step `step`.
pub struct Snapshot {
    /// Optimizer steps the learner had taken.
    pub step: u64,
    vars: Vec<(String, Tensor)>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("step", &self.step)
            .field("variables", &self.vars.len())
            .finish()
    }
}

impl Snapshot {
    /// Copies every variable of `vs` (new storage, detached, same device).
    pub fn of(step: u64, vs: &nn::VarStore) -> Result<Snapshot> {
        let _guard = tch::no_grad_guard();
        let mut vars = Vec::new();
        for (name, t) in vs.variables() {
            let mut copy = t.f_empty_like()?;
            copy.f_copy_(&t)?;
            vars.push((name, copy));
        }
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Snapshot { step, vars })
    }

    /// Copies this snapshot's values into the variables of `vs`, which must have the same
    /// names and shapes.
    pub fn load_into(&self, vs: &nn::VarStore) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let mut dst = vs.variables();
        if dst.len() != self.vars.len() {
            return Err(Error::Selection {
                superbatch: 0,
                message: format!(
                    "the learner snapshot has {} variables, the extract stage's learner {}",
                    self.vars.len(),
                    dst.len()
                ),
            });
        }
        for (name, src) in &self.vars {
            let d = dst.get_mut(name).ok_or_else(|| Error::Selection {
                superbatch: 0,
                message: format!("the extract stage's learner has no variable `{name}`"),
            })?;
            d.f_copy_(src)?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct BoardState {
    snapshots: VecDeque<Snapshot>,
    closed: bool,
}

/// Where the train stage leaves snapshots of the learner for the extract stage (shared
/// through an `Arc`; created by `pipeline::run` when the policy needs the learner).
#[derive(Default)]
pub struct SnapshotBoard {
    state: Mutex<BoardState>,
    ready: Condvar,
    trainer_step: AtomicU64,
}

impl std::fmt::Debug for SnapshotBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotBoard")
            .field("trainer_step", &self.trainer_step())
            .field("held", &self.held())
            .finish()
    }
}

impl SnapshotBoard {
    /// An empty board.
    pub fn new() -> Arc<SnapshotBoard> {
        Arc::new(SnapshotBoard::default())
    }

    fn lock(&self) -> MutexGuard<'_, BoardState> {
        // A panic while holding the lock leaves consistent data (pushes and pops only).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `snapshot` (steps must increase from one publication to the next).
    pub fn publish(&self, snapshot: Snapshot) {
        self.lock().snapshots.push_back(snapshot);
        self.ready.notify_all();
    }

    /// Records the trainer's step count (for the staleness figures).
    pub fn set_trainer_step(&self, step: u64) {
        self.trainer_step.store(step, Ordering::SeqCst);
    }

    /// The trainer's step count, as last recorded.
    pub fn trainer_step(&self) -> u64 {
        self.trainer_step.load(Ordering::SeqCst)
    }

    /// No more snapshots will come (the trainer is gone); waiters stop waiting.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Snapshots held now.
    pub fn held(&self) -> usize {
        self.lock().snapshots.len()
    }

    /// Waits until the snapshot of `step` is published, drops it and every older one from
    /// the board and returns it. `Ok(None)` when `cancel` fires first. An error when the
    /// board closes first or when `step` was skipped (a later one is there but not `step`).
    pub fn take(&self, step: u64, cancel: &Cancel) -> Result<Option<Snapshot>> {
        let mut state = self.lock();
        loop {
            while state.snapshots.front().is_some_and(|s| s.step < step) {
                state.snapshots.pop_front();
            }
            if let Some(front) = state.snapshots.front() {
                if front.step == step {
                    return Ok(state.snapshots.pop_front());
                }
                return Err(Error::Selection {
                    superbatch: 0,
                    message: format!(
                        "the snapshot of the learner after step {step} was never published \
                         (the next one is of step {})",
                        front.step
                    ),
                });
            }
            if cancel.is_cancelled() {
                return Ok(None);
            }
            if state.closed {
                return Err(Error::Selection {
                    superbatch: 0,
                    message: format!(
                        "the trainer stopped before publishing its weights after step {step}"
                    ),
                });
            }
            state = self
                .ready
                .wait_timeout(state, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// The trainer's end of a [`SnapshotBoard`]: publishes a snapshot every `every` steps.
/// Dropping it closes the board.
#[derive(Debug)]
pub struct Publisher {
    board: Arc<SnapshotBoard>,
    every: u64,
    /// With `Some(lag)`: copies of the published snapshots the extract stage may still
    /// need, for checkpoints ([`Publisher::retained`]).
    keep: Option<(u64, Mutex<VecDeque<Snapshot>>)>,
}

impl Publisher {
    /// Publishes on `board` every `every` (at least 1) optimizer steps.
    pub fn new(board: Arc<SnapshotBoard>, every: u64) -> Publisher {
        Publisher {
            board,
            every: every.max(1),
            keep: None,
        }
    }

    /// Also keeps a copy of every published snapshot the extract stage may still need
    /// after the trainer's current step (those of steps `>= snapshot_step(step, every,
    /// lag)`), so that a checkpoint can hold them ([`Publisher::retained`]): a resumed run
    /// must score its first sub-batches with the same, older weights as the uninterrupted
    /// run did. At most `lag / every + 1` copies.
    pub fn retaining(mut self, lag: u64) -> Publisher {
        self.keep = Some((lag, Mutex::new(VecDeque::new())));
        self
    }

    /// The snapshots kept by [`Publisher::retaining`] (oldest first) that the extract stage
    /// may still need at `step`: each as `(step, variables)`.
    pub fn retained(&self) -> Vec<(u64, Vec<(String, Tensor)>)> {
        let Some((_, kept)) = &self.keep else {
            return Vec::new();
        };
        let kept = kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter()
            .map(|s| {
                let vars = s
                    .vars
                    .iter()
                    .map(|(n, t)| (n.clone(), t.shallow_clone()))
                    .collect();
                (s.step, vars)
            })
            .collect()
    }

    /// Publishes snapshots saved by a checkpoint (oldest first, each older than the
    /// trainer's restored step) before the trainer's `publish_to`
    /// publishes the current weights, and keeps them as [`Publisher::retaining`] would have.
    pub fn republish(&self, saved: Vec<(u64, Vec<(String, Tensor)>)>) {
        for (step, mut vars) in saved {
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            if let Some((_, kept)) = &self.keep {
                let copy = vars
                    .iter()
                    .map(|(n, t)| (n.clone(), t.shallow_clone()))
                    .collect();
                kept.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back(Snapshot { step, vars: copy });
            }
            self.board.publish(Snapshot { step, vars });
        }
    }

    /// Called with the learner's step count after each optimizer step (and once before the
    /// first, with 0): records it and publishes a snapshot when it is a multiple of `every`.
    pub fn after_step(&self, step: u64, vs: &nn::VarStore) -> Result<()> {
        if step % self.every == 0 {
            self.board.publish(Snapshot::of(step, vs)?);
        }
        if let Some((lag, kept)) = &self.keep {
            let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
            if step % self.every == 0 && kept.back().is_none_or(|s| s.step < step) {
                kept.push_back(Snapshot::of(step, vs)?);
            }
            // The extract stage's next sub-batch is the trainer's next step at the earliest.
            let oldest = snapshot_step(step, self.every, *lag);
            while kept.front().is_some_and(|s| s.step < oldest) {
                kept.pop_front();
            }
        }
        self.board.set_trainer_step(step);
        Ok(())
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.board.close();
    }
}

/// How fresh the learner's weights were when they scored super-batches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LearnerStats {
    /// `selection.refresh_every`.
    pub refresh_every: u64,
    /// `selection.snapshot_lag`.
    pub snapshot_lag: u64,
    /// Snapshots copied into the extract stage's learner.
    pub refreshes: u64,
    /// Mean of `j - s(j)`: optimizer steps between the weights that scored a sub-batch and
    /// the weights that trained on it (deterministic).
    pub mean_staleness: f64,
    /// Largest `j - s(j)`.
    pub max_staleness: u64,
    /// Mean of the trainer's step at scoring time minus `s(j)` (depends on timing).
    pub mean_staleness_at_scoring: f64,
    /// Largest such difference.
    pub max_staleness_at_scoring: u64,
    /// Seconds the extract stage waited for snapshots.
    pub wait_seconds: f64,
}

/// The extract stage's copy of the learner: it computes per-sample losses of super-batches
/// with the snapshot [`snapshot_step`] prescribes.
pub struct LearnerScorer {
    learner: Learner,
    board: Arc<SnapshotBoard>,
    every: u64,
    lag: u64,
    micro_batch: usize,
    loaded: Option<u64>,
    scored: u64,
    stale_sum: u64,
    stale_at_scoring_sum: u64,
    stats: LearnerStats,
}

/// Per-sample losses of one super-batch and the seconds spent waiting for the snapshot.
#[derive(Debug)]
pub struct Scored {
    /// `[n, 2]` float32 on the device: the learner's loss, the reference model's (0 when
    /// not asked for).
    pub losses: Tensor,
    /// Seconds waited for the learner's snapshot.
    pub waited: f64,
}

impl LearnerScorer {
    /// A learner of `spec` for `shape` `(C, H, W)` images and `classes` classes on `device`
    /// (the trainer's), in evaluation mode, fed from `board`, refreshed every `every` steps
    /// with `lag`. Its initial weights are never used (every score waits for a snapshot);
    /// they are drawn under [`crate::model::seeded`] so that making them does not disturb
    /// another model's seeded initialisation. A snapshot holds every variable, a ResNet's
    /// batch-norm running statistics included.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        spec: &LearnerSpec,
        shape: (usize, usize, usize),
        classes: usize,
        device: Device,
        board: Arc<SnapshotBoard>,
        every: u64,
        lag: u64,
        micro_batch: usize,
    ) -> Result<LearnerScorer> {
        let mut learner = Learner::build(spec, shape, classes, 0, device)?;
        learner.freeze();
        learner.set_train(false)?;
        Ok(LearnerScorer {
            learner,
            board,
            every: every.max(1),
            lag,
            micro_batch: micro_batch.max(1),
            loaded: None,
            scored: 0,
            stale_sum: 0,
            stale_at_scoring_sum: 0,
            stats: LearnerStats {
                refresh_every: every.max(1),
                snapshot_lag: lag,
                ..Default::default()
            },
        })
    }

    /// Per-sample losses of `images` (`[n, C, H, W]` float32 on the device) against
    /// `labels` (`[n]` int64) for the `j`-th sub-batch: the learner's with the snapshot of
    /// step [`snapshot_step`]`(j)` (waiting for it), and, when `reference` (the reference
    /// CNN's logits of a micro-batch) is given, the reference model's. `Ok(None)` when
    /// `cancel` fires while waiting.
    pub fn losses(
        &mut self,
        images: &Tensor,
        labels: &Tensor,
        j: u64,
        reference: Option<ReferenceLogits<'_>>,
        cancel: &Cancel,
    ) -> Result<Option<Scored>> {
        let step = snapshot_step(j, self.every, self.lag);
        let mut waited = 0.0;
        if self.loaded != Some(step) {
            let t = Instant::now();
            let Some(snapshot) = self.board.take(step, cancel)? else {
                return Ok(None);
            };
            waited = t.elapsed().as_secs_f64();
            snapshot.load_into(self.learner.var_store())?;
            self.loaded = Some(step);
            self.stats.refreshes += 1;
            self.stats.wait_seconds += waited;
        }
        let now = self.board.trainer_step();
        let (stale, stale_now) = (j - step, now.saturating_sub(step));
        self.scored += 1;
        self.stale_sum += stale;
        self.stale_at_scoring_sum += stale_now;
        self.stats.max_staleness = self.stats.max_staleness.max(stale);
        self.stats.max_staleness_at_scoring = self.stats.max_staleness_at_scoring.max(stale_now);

        let _guard = tch::no_grad_guard();
        let learner = per_sample_loss(
            |x| self.learner.forward(x),
            images,
            labels,
            self.micro_batch,
        )?;
        let reference = match reference {
            Some(r) => per_sample_loss(r, images, labels, self.micro_batch)?,
            None => learner.f_zeros_like()?,
        };
        Ok(Some(Scored {
            losses: Tensor::f_stack(&[learner, reference], 1)?,
            waited,
        }))
    }

    /// The staleness figures so far.
    pub fn stats(&self) -> LearnerStats {
        let n = self.scored.max(1) as f64;
        LearnerStats {
            mean_staleness: self.stale_sum as f64 / n,
            mean_staleness_at_scoring: self.stale_at_scoring_sum as f64 / n,
            ..self.stats.clone()
        }
    }
}

/// Cross-entropy of each sample: `logits(x)` `[m, K]` per micro-batch of `micro` images,
/// against `labels` `[n]` -> `[n]` float32.
pub(crate) fn per_sample_loss(
    logits: impl Fn(&Tensor) -> Result<Tensor>,
    images: &Tensor,
    labels: &Tensor,
    micro: usize,
) -> Result<Tensor> {
    let n = images.size()[0];
    let mut parts = Vec::new();
    let mut start = 0;
    while start < n {
        let len = (micro as i64).min(n - start);
        let l = logits(&images.f_narrow(0, start, len)?)?;
        parts.push(l.f_log_softmax(-1, Kind::Float)?.f_nll_loss(
            &labels.f_narrow(0, start, len)?,
            None::<Tensor>,
            tch::Reduction::None,
            -100,
        )?);
        start += len;
    }
    Ok(Tensor::f_cat(&parts, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Cnn, CnnArch};

    fn learner(seed: u64) -> (nn::VarStore, Cnn) {
        let arch = CnnArch {
            conv1: 2,
            conv2: 3,
            hidden: 4,
        };
        crate::model::seeded(seed, || {
            let vs = nn::VarStore::new(Device::Cpu);
            let m = Cnn::new(&vs.root(), &arch, (1, 8, 8), 3);
            (vs, m)
        })
    }

    #[test]
    fn a_snapshot_is_a_deep_copy_and_loads_into_another_learner() {
        let (vs, model) = learner(1);
        let snap = Snapshot::of(5, &vs).unwrap();
        // Change the source after the snapshot: the snapshot must not follow.
        {
            let _g = tch::no_grad_guard();
            for (_, mut t) in vs.variables() {
                let _ = t.f_add_scalar_(1.0).unwrap();
            }
        }
        let (vs2, model2) = learner(2);
        snap.load_into(&vs2).unwrap();
        let x = Tensor::randn([4, 1, 8, 8], (Kind::Float, Device::Cpu));
        let (a, b) = (model.logits(&x).unwrap(), model2.logits(&x).unwrap());
        assert!(
            (&a - &b).abs().max().double_value(&[]) > 1e-3,
            "the copy kept the old values"
        );
        let (vs3, model3) = learner(1);
        snap.load_into(&vs3).unwrap();
        let c = model3.logits(&x).unwrap();
        assert_eq!(b.size(), c.size());
        assert!((&b - &c).abs().max().double_value(&[]) == 0.0);
    }

    #[test]
    fn take_waits_for_the_step_it_needs_and_drops_older_ones() {
        let board = SnapshotBoard::new();
        let (vs, _m) = learner(1);
        let publisher = Publisher::new(board.clone(), 3);
        for step in 0..=7 {
            publisher.after_step(step, &vs).unwrap();
        }
        assert_eq!(board.held(), 3, "steps 0, 3, 6");
        assert_eq!(board.trainer_step(), 7);
        let cancel = Cancel::default();
        let s = board.take(3, &cancel).unwrap().unwrap();
        assert_eq!(s.step, 3);
        assert_eq!(board.held(), 1, "step 0 dropped, 3 taken, 6 left");
        // Step 9 is not there yet: a publisher on another thread brings it.
        let (b2, vs_steps) = (board.clone(), vs.variables().len());
        let waiter = std::thread::spawn(move || {
            let s = b2.take(9, &Cancel::default()).unwrap().unwrap();
            (s.step, s.vars.len())
        });
        std::thread::sleep(Duration::from_millis(100));
        publisher.after_step(8, &vs).unwrap();
        publisher.after_step(9, &vs).unwrap();
        assert_eq!(waiter.join().unwrap(), (9, vs_steps));
        // A step that was skipped is an error, not a hang.
        publisher.after_step(12, &vs).unwrap();
        let e = board.take(10, &cancel).unwrap_err();
        assert!(e.to_string().contains("after step 10"), "{e}");
    }

    #[test]
    fn take_stops_on_cancel_and_on_a_closed_board() {
        let board = SnapshotBoard::new();
        let cancel = Cancel::default();
        let (b2, c2) = (board.clone(), cancel.clone());
        let waiter = std::thread::spawn(move || b2.take(0, &c2).map(|s| s.is_none()));
        std::thread::sleep(Duration::from_millis(80));
        cancel.cancel();
        assert!(waiter.join().unwrap().unwrap(), "cancelled: None");

        let board = SnapshotBoard::new();
        let publisher = Publisher::new(board.clone(), 1);
        let b2 = board.clone();
        let waiter = std::thread::spawn(move || b2.take(4, &Cancel::default()).map(|_| ()));
        std::thread::sleep(Duration::from_millis(80));
        drop(publisher);
        let e = waiter.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("trainer stopped"), "{e}");
    }

    #[test]
    fn snapshot_step_never_needs_a_step_not_yet_sent() {
        for every in 1..12 {
            for lag in 0..8 {
                let mut last = 0;
                for j in 0..200 {
                    let s = snapshot_step(j, every, lag);
                    assert!(s <= j && s % every == 0 && s >= last);
                    if j >= lag {
                        assert!(j - s >= lag && j - s < lag + every, "j {j} s {s}");
                    }
                    last = s;
                }
            }
        }
    }
}
