//! Learner feedback: per-sample losses handed back by the training loop, and the selection
//! that reads them.
//!
//! A training loop that embeds saln as a loader (the `loader` module, `saln.Loader` in
//! Python) reports the loss of each sample it trained on ([`LossTable::record`], through
//! `Batch::report_losses`). The losses land in a [`LossTable`] shared (through an `Arc`)
//! between the loop's thread and the selection stage, keyed by stable sample id.
//!
//! ## Who reads them
//! In a loader run the learner-aware policies (`loss`, `rho-loss`, `jest`) have no built-in
//! trainer whose weights they could score with, so they score from this table instead
//! ([`FeedbackReader`]): the learner's loss of a sample is the latest loss the loop
//! reported for it, and `rho-loss` / `jest` subtract the reference model's loss as in a
//! training run. In `saln-pipe run` the same policies keep scoring with snapshots of the
//! built-in trainer's weights (`select::learner`); nothing reads the table there.
//!
//! ## Samples with no loss yet
//! A sample the loop never trained on has no loss. It scores `+inf`: the policy prefers it
//! to every sample with a known loss (ties among such samples break by position in the
//! super-batch, which is the seeded epoch order; `jest` draws among them uniformly, the
//! limit of `p ~ exp(s)` as `s -> inf`). So every sample is trained on at least once
//! (after about `1 / keep_ratio` epochs), and from then on the samples the learner finds
//! hard are the ones kept. The scores the batches and the export carry are these `+inf`s.
//!
//! ## Determinism: which losses score which super-batch
//! The `j`-th sub-batch the selection stage sends is the loop's batch (step) `j`. It is
//! scored with the losses reported for batches `0 .. j - lag` only (`lag =
//! selection.snapshot_lag`, default 4; [`cutoff`]), and for each sample with the latest
//! such loss. Before scoring, the stage waits until each of those batches is *settled*:
//! its losses were reported, or the loop asked for batch `s + lag + 1` without reporting
//! batch `s` (then batch `s` counts as reported with no losses, and a report of it that
//! comes later is refused with an error). Both events are points in the loop's own
//! program order, so the selection is a function of the seed and of the losses the loop
//! reports, never of thread timing, channel depths or worker counts. The usual loop
//! (`for batch in loader: ...; batch.report_losses(l)`) reports each batch before asking
//! for the next, so nothing it reports is ever refused; a loop that reports a batch later
//! (pipelined, asynchronous) has `lag` batches of slack.
//!
//! The wait cannot dead-lock: to be settled, batch `s = j - lag - 1` needs at most the loop
//! asking for batch `j - lag <= j - 1`, which was already sent. With `lag >=
//! channels.extract_to_train + 1` the stage does not wait in steady state (the loop is at
//! most that far behind); a smaller lag is just as deterministic and makes the stages take
//! turns.
//!
//! ## Staleness
//! A loss is the learner's opinion when the sample was trained on: at least `lag + 1`
//! steps, and typically about an epoch, older than the weights that train on the selected
//! batch. [`FeedbackStats`] reports its mean and largest age in steps, and how many scored
//! samples had a loss at all. Losses are not decayed: the latest one stands until the
//! sample is trained on again.
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::stage::Cancel;

/// The latest loss reported for one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossEntry {
    /// The loss.
    pub loss: f32,
    /// The step (the loader's sub-batch counter) it was reported for.
    pub step: u64,
    /// How many times a loss was reported for this sample.
    pub reports: u32,
}

/// The losses of batches `0 .. cutoff(j, lag)` score sub-batch `j`: `max(0, j - lag)`.
///
/// ```
/// use saln::select::feedback::cutoff;
/// assert_eq!(cutoff(0, 4), 0);  // the first batches: no loss is known yet
/// assert_eq!(cutoff(10, 4), 6); // batch 10 is scored with the losses of batches 0..=5
/// assert_eq!(cutoff(10, 0), 10);
/// ```
pub fn cutoff(j: u64, lag: u64) -> u64 {
    j.saturating_sub(lag)
}

#[derive(Debug, Default)]
struct Versions {
    latest: Option<LossEntry>,
    /// While a reader is attached: every report not yet superseded for the reader, by
    /// ascending step.
    history: Vec<(u64, f32)>,
}

/// The settlement bookkeeping while a [`FeedbackReader`] reads the table.
#[derive(Debug)]
struct Gate {
    lag: u64,
    /// The loop asked for batch `asked` (it is done with batches `0 .. asked`).
    asked: u64,
    /// Every batch below this one is settled.
    settled_below: u64,
    /// Reported batches at or above `settled_below`.
    reported: BTreeSet<u64>,
    /// The cutoff of the reader's last read (later reads never use a smaller one).
    read_cutoff: u64,
}

impl Gate {
    fn advance(&mut self) {
        loop {
            let s = self.settled_below;
            if self.reported.remove(&s) || s + self.lag < self.asked {
                self.settled_below += 1;
            } else {
                break;
            }
        }
    }
}

#[derive(Debug, Default)]
struct State {
    map: HashMap<u64, Versions>,
    gate: Option<Gate>,
}

/// Per-sample learner losses, by sample id, as a training loop reported them. Cheap to
/// share: each call holds the lock for one lookup or one report.
///
/// ```
/// use saln::select::feedback::LossTable;
/// let t = LossTable::default();
/// t.record(0, &[7, 9], &[0.5, 2.0]).unwrap();
/// t.record(1, &[7], &[0.25]).unwrap();
/// assert_eq!(t.lookup(&[7, 8, 9]), vec![Some(0.25), None, Some(2.0)]);
/// assert_eq!(t.get(7).unwrap().reports, 2);
/// // A NaN loss is refused, naming the sample, and nothing of that report is stored.
/// assert!(t.record(2, &[1, 2], &[0.1, f32::NAN]).unwrap_err().to_string().contains("id 2"));
/// assert_eq!(t.len(), 2);
/// ```
#[derive(Debug, Default)]
pub struct LossTable {
    state: Mutex<State>,
    changed: Condvar,
}

impl LossTable {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is complete before the lock is released: a panic leaves no half.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `losses[k]` as the latest loss of sample `ids[k]`, reported for batch `step`.
    /// All or nothing: lengths must agree and every loss must be finite, or nothing is
    /// stored and the error names the first bad sample. While a selection policy reads the
    /// table ([`FeedbackReader`]), a batch is reported at most once, and not after the loop
    /// asked for batch `step + lag + 1` (the selection went on without it; see the module
    /// doc).
    pub fn record(&self, step: u64, ids: &[u64], losses: &[f32]) -> Result<()> {
        if ids.len() != losses.len() {
            return Err(Error::Feedback {
                message: format!(
                    "{} losses reported for a batch of {} samples",
                    losses.len(),
                    ids.len()
                ),
            });
        }
        if let Some((id, loss)) = ids.iter().zip(losses).find(|(_, l)| !l.is_finite()) {
            return Err(Error::Feedback {
                message: format!("loss of sample id {id} is {loss} (not finite)"),
            });
        }
        let mut state = self.lock();
        let read_cutoff = match &mut state.gate {
            None => None,
            Some(g) => {
                if step + g.lag < g.asked {
                    return Err(Error::Feedback {
                        message: format!(
                            "the losses of batch {step} came after the loop asked for batch {}: \
                             the selection has gone on without them (report a batch's losses \
                             before asking for the batch {} after it; selection.snapshot_lag)",
                            g.asked,
                            g.lag + 1
                        ),
                    });
                }
                if step < g.settled_below || !g.reported.insert(step) {
                    return Err(Error::Feedback {
                        message: format!("the losses of batch {step} were already reported"),
                    });
                }
                g.advance();
                Some(g.read_cutoff)
            }
        };
        for (&id, &loss) in ids.iter().zip(losses) {
            let v = state.map.entry(id).or_default();
            let reports = v.latest.map_or(0, |e| e.reports).saturating_add(1);
            v.latest = Some(LossEntry {
                loss,
                step,
                reports,
            });
            if let Some(c) = read_cutoff {
                v.history.push((step, loss));
                v.history.sort_by_key(|e| e.0);
                prune(&mut v.history, c);
            }
        }
        drop(state);
        self.changed.notify_all();
        Ok(())
    }

    /// The latest entry of sample `id`.
    pub fn get(&self, id: u64) -> Option<LossEntry> {
        self.lock().map.get(&id).and_then(|v| v.latest)
    }

    /// The latest loss of each of `ids` (`None` where none was reported), under one lock.
    pub fn lookup(&self, ids: &[u64]) -> Vec<Option<f32>> {
        let state = self.lock();
        ids.iter()
            .map(|id| state.map.get(id).and_then(|v| v.latest).map(|e| e.loss))
            .collect()
    }

    /// Number of samples with a reported loss.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// True when no loss was reported yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The loop is about to ask for batch `step` (it is done with every batch before it).
    /// The loader calls this before it waits for each item.
    pub fn asked(&self, step: u64) {
        let mut state = self.lock();
        if let Some(g) = &mut state.gate {
            if step > g.asked {
                g.asked = step;
                g.advance();
                drop(state);
                self.changed.notify_all();
            }
        }
    }

    /// Starts the settlement bookkeeping for a reader with `lag` (before any batch).
    fn attach(&self, lag: u64) {
        self.lock().gate = Some(Gate {
            lag,
            asked: 0,
            settled_below: 0,
            reported: BTreeSet::new(),
            read_cutoff: 0,
        });
    }

    /// Waits until every batch below `cutoff` is settled; `false` when `cancel` fires first.
    fn wait_settled(&self, cutoff: u64, cancel: &Cancel) -> bool {
        let mut state = self.lock();
        loop {
            if state
                .gate
                .as_ref()
                .is_none_or(|g| g.settled_below >= cutoff)
            {
                return true;
            }
            if cancel.is_cancelled() {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// For each of `ids`, its latest loss reported for a batch below `cutoff`, with that
    /// batch's step. Forgets what later reads (whose cutoff is never smaller) cannot need.
    fn read(&self, ids: &[u64], cutoff: u64) -> Vec<Option<(f32, u64)>> {
        let mut state = self.lock();
        if let Some(g) = &mut state.gate {
            g.read_cutoff = g.read_cutoff.max(cutoff);
        }
        ids.iter()
            .map(|id| {
                let v = state.map.get_mut(id)?;
                prune(&mut v.history, cutoff);
                v.history
                    .iter()
                    .rev()
                    .find(|e| e.0 < cutoff)
                    .map(|&(step, loss)| (loss, step))
            })
            .collect()
    }
}

/// Drops the entries older than the newest one below `cutoff` (`history` is by step).
fn prune(history: &mut Vec<(u64, f32)>, cutoff: u64) {
    let below = history.iter().filter(|e| e.0 < cutoff).count();
    if below > 1 {
        history.drain(..below - 1);
    }
}

/// How the losses a loader's loop reported scored super-batches (loader runs of `loss`,
/// `rho-loss` and `jest`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FeedbackStats {
    /// `selection.snapshot_lag`: batch `j` is scored with the losses of batches
    /// `0 .. j - lag`.
    pub lag: u64,
    /// Super-batches scored.
    pub superbatches: u64,
    /// Samples scored with a reported loss.
    pub samples_with_loss: u64,
    /// Samples scored `+inf`: no loss reported for them yet (preferred).
    pub samples_without_loss: u64,
    /// Mean age, in steps, of the losses used (`j` minus the step they were reported for).
    pub mean_loss_age: f64,
    /// Largest such age.
    pub max_loss_age: u64,
    /// Seconds the selection stage waited for the loop to report (or to move on).
    pub wait_seconds: f64,
}

/// The selection stage's reader of a [`LossTable`]: the learner's loss of every sample of a
/// super-batch, from what the loop reported, deterministically (see the module doc).
#[derive(Debug)]
pub struct FeedbackReader {
    table: Arc<LossTable>,
    lag: u64,
    age_sum: u64,
    stats: FeedbackStats,
}

impl FeedbackReader {
    /// A reader of `table` with `lag`; from now on the table settles batches and refuses
    /// late or repeated reports. Attach it before the first batch is handed out.
    pub fn new(table: Arc<LossTable>, lag: u64) -> FeedbackReader {
        table.attach(lag);
        FeedbackReader {
            table,
            lag,
            age_sum: 0,
            stats: FeedbackStats {
                lag,
                ..Default::default()
            },
        }
    }

    /// The learner's loss of each of `ids` for sub-batch `j`: the latest reported for a
    /// batch below [`cutoff`]`(j, lag)`, `+inf` where there is none. Waits until those
    /// batches are settled; `Ok(None)` when `cancel` fires first. Also returns the seconds
    /// waited.
    pub fn losses(
        &mut self,
        ids: &[u64],
        j: u64,
        cancel: &Cancel,
    ) -> Result<Option<(Vec<f64>, f64)>> {
        let c = cutoff(j, self.lag);
        let t = Instant::now();
        if !self.table.wait_settled(c, cancel) {
            return Ok(None);
        }
        let waited = t.elapsed().as_secs_f64();
        self.stats.wait_seconds += waited;
        self.stats.superbatches += 1;
        let losses = self
            .table
            .read(ids, c)
            .into_iter()
            .map(|e| match e {
                Some((loss, step)) => {
                    let age = j - step;
                    self.stats.samples_with_loss += 1;
                    self.age_sum += age;
                    self.stats.max_loss_age = self.stats.max_loss_age.max(age);
                    f64::from(loss)
                }
                None => {
                    self.stats.samples_without_loss += 1;
                    f64::INFINITY
                }
            })
            .collect();
        Ok(Some((losses, waited)))
    }

    /// The figures so far.
    pub fn stats(&self) -> FeedbackStats {
        FeedbackStats {
            mean_loss_age: self.age_sum as f64 / self.stats.samples_with_loss.max(1) as f64,
            ..self.stats.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_mismatch_stores_nothing() {
        let t = LossTable::default();
        let e = t.record(0, &[1, 2, 3], &[0.1, 0.2]).unwrap_err();
        assert!(e.to_string().contains("2 losses") && e.to_string().contains("3 samples"));
        assert!(t.is_empty());
    }

    #[test]
    fn concurrent_writers_and_readers_agree() {
        let t = std::sync::Arc::new(LossTable::default());
        let writers: Vec<_> = (0..4u64)
            .map(|w| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for step in 0..100u64 {
                        let ids: Vec<u64> = (0..10).map(|k| w * 10 + k).collect();
                        t.record(step, &ids, &[step as f32; 10]).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(t.len(), 40);
        let e = t.get(35).unwrap();
        assert_eq!((e.loss, e.step, e.reports), (99.0, 99, 100));
    }

    #[test]
    fn a_reader_sees_only_the_batches_below_its_cutoff() {
        let t = Arc::new(LossTable::default());
        let mut r = FeedbackReader::new(t.clone(), 1);
        let cancel = Cancel::default();
        // Sub-batches 0 and 1 need nothing: every sample is unseen.
        let (l, _) = r.losses(&[1, 2], 1, &cancel).unwrap().unwrap();
        assert_eq!(l, [f64::INFINITY, f64::INFINITY]);
        t.record(0, &[1], &[0.5]).unwrap();
        t.record(1, &[2], &[0.75]).unwrap();
        t.record(2, &[1], &[9.0]).unwrap(); // too recent for sub-batch 3
        let (l, _) = r.losses(&[1, 2, 3], 3, &cancel).unwrap().unwrap();
        assert_eq!(l, [0.5, 0.75, f64::INFINITY]);
        // The table's own view is the latest.
        assert_eq!(t.lookup(&[1]), [Some(9.0)]);
        let (l, _) = r.losses(&[1], 4, &cancel).unwrap().unwrap();
        assert_eq!(l, [9.0]);
        let s = r.stats();
        assert_eq!((s.samples_with_loss, s.samples_without_loss), (3, 3));
        assert_eq!((s.max_loss_age, s.mean_loss_age), (3, 7.0 / 3.0));
    }

    #[test]
    fn the_reader_waits_for_a_report_or_for_the_loop_to_move_on() {
        let t = Arc::new(LossTable::default());
        let mut r = FeedbackReader::new(t.clone(), 0);
        let cancel = Cancel::default();
        // Sub-batch 1 needs batch 0: reported on another thread.
        let t2 = t.clone();
        let reporter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(60));
            t2.record(0, &[4], &[2.0]).unwrap();
        });
        let (l, _) = r.losses(&[4], 1, &cancel).unwrap().unwrap();
        assert_eq!(l, [2.0]);
        reporter.join().unwrap();
        // Batch 1 is never reported: the loop asks for batch 2, which settles it.
        let t2 = t.clone();
        let asker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(60));
            t2.asked(2);
        });
        let (l, _) = r.losses(&[5], 2, &cancel).unwrap().unwrap();
        assert_eq!(l, [f64::INFINITY]);
        asker.join().unwrap();
        // Its report now comes too late.
        let e = t.record(1, &[5], &[1.0]).unwrap_err().to_string();
        assert!(
            e.contains("batch 1 came after the loop asked for batch 2"),
            "{e}"
        );
        assert_eq!(t.get(5), None);
        // A batch is reported once.
        let other = Arc::new(LossTable::default());
        let _reader = FeedbackReader::new(other.clone(), 4);
        other.record(0, &[4], &[1.0]).unwrap();
        let e = other.record(0, &[4], &[1.0]).unwrap_err().to_string();
        assert!(e.contains("batch 0 were already reported"), "{e}");
        // Cancelled while waiting: None, no hang.
        let (t2, c2) = (t.clone(), cancel.clone());
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(60));
            drop(t2);
            c2.cancel();
        });
        assert!(r.losses(&[5], 9, &cancel).unwrap().is_none());
        stopper.join().unwrap();
    }

    #[test]
    fn without_a_reader_reports_are_never_refused() {
        let t = LossTable::default();
        t.asked(10);
        t.record(0, &[1], &[1.0]).unwrap();
        t.record(0, &[1], &[2.0]).unwrap();
        assert_eq!(t.get(1).unwrap().reports, 2);
    }
}
