//! Learner feedback: per-sample losses handed back by the training loop.
//!
//! A training loop that embeds saln as a loader (the `loader` module) can report the loss of
//! each sample it trained on. The losses land in a [`LossTable`] shared (through an `Arc`)
//! between the loop's thread and the pipeline, so that a learner-aware policy in the
//! selection stage can read the latest loss of every sample it is about to score without a
//! round trip. The table is keyed by stable sample id; each report overwrites the previous
//! value and records the optimizer step it came from, so a reader can tell how stale a
//! loss is.
use std::collections::HashMap;
use std::sync::RwLock;

use crate::error::{Error, Result};

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

/// Latest per-sample learner losses, by sample id. Cheap to share: readers take a read
/// lock for the duration of one lookup.
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
    map: RwLock<HashMap<u64, LossEntry>>,
}

impl LossTable {
    /// Stores `losses[k]` as the latest loss of sample `ids[k]`, reported at `step`.
    /// All or nothing: lengths must agree and every loss must be finite, or nothing is
    /// stored and the error names the first bad sample.
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
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        for (&id, &loss) in ids.iter().zip(losses) {
            let e = map.entry(id).or_insert(LossEntry {
                loss,
                step,
                reports: 0,
            });
            e.loss = loss;
            e.step = step;
            e.reports = e.reports.saturating_add(1);
        }
        Ok(())
    }

    /// The latest entry of sample `id`.
    pub fn get(&self, id: u64) -> Option<LossEntry> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
    }

    /// The latest loss of each of `ids` (`None` where none was reported), under one lock.
    pub fn lookup(&self, ids: &[u64]) -> Vec<Option<f32>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        ids.iter().map(|id| map.get(id).map(|e| e.loss)).collect()
    }

    /// Number of samples with a reported loss.
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when no loss was reported yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
}
