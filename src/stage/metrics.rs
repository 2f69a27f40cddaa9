//! Per-stage counters, shared between a stage's thread and whoever watches the run.
//!
//! Each stage accounts for its wall time in three buckets: *busy* (doing its own work),
//! *waiting for input* (blocked on its input channel: upstream is the bottleneck) and
//! *blocked on output* (its output channel is full: downstream is the bottleneck).
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Live counters of one stage. Cheap to update from the stage's thread (relaxed atomics).
#[derive(Debug)]
pub struct StageStats {
    name: &'static str,
    threads: usize,
    received: AtomicU64,
    items: AtomicU64,
    samples: AtomicU64,
    busy_ns: AtomicU64,
    wait_ns: AtomicU64,
    blocked_ns: AtomicU64,
}

/// A copy of a stage's counters, as written in the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StageSnapshot {
    /// Stage name.
    pub stage: String,
    /// Threads doing the stage's work (its busy seconds are summed over them).
    pub threads: usize,
    /// Items the stage took from its input queue.
    pub received: u64,
    /// Items (super-batches or sub-batches) the stage finished.
    pub items: u64,
    /// Samples in those items.
    pub samples: u64,
    /// Seconds of own work.
    pub busy_seconds: f64,
    /// Seconds blocked waiting for input.
    pub wait_input_seconds: f64,
    /// Seconds blocked because the next stage's queue was full.
    pub blocked_output_seconds: f64,
}

impl StageStats {
    /// Zeroed counters for stage `name`, whose work is done by one thread.
    pub fn new(name: &'static str) -> Self {
        Self::with_threads(name, 1)
    }

    /// Zeroed counters for stage `name`, whose work is spread over `threads` threads.
    pub fn with_threads(name: &'static str, threads: usize) -> Self {
        StageStats {
            name,
            threads: threads.max(1),
            received: AtomicU64::new(0),
            items: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            wait_ns: AtomicU64::new(0),
            blocked_ns: AtomicU64::new(0),
        }
    }

    /// The stage's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// One more item taken from the input queue.
    pub fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// One more item of `samples` samples done.
    pub fn item(&self, samples: usize) {
        self.items.fetch_add(1, Ordering::Relaxed);
        self.samples.fetch_add(samples as u64, Ordering::Relaxed);
    }

    /// Adds own-work time.
    pub fn busy(&self, d: Duration) {
        self.busy_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Adds time waiting for input.
    pub fn waited(&self, d: Duration) {
        self.wait_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Adds time blocked on output.
    pub fn blocked(&self, d: Duration) {
        self.blocked_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Runs `f`, counting its time as busy.
    pub fn time_busy<T>(&self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.busy(t.elapsed());
        r
    }

    /// Current values.
    pub fn snapshot(&self) -> StageSnapshot {
        let s = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 * 1e-9;
        StageSnapshot {
            stage: self.name.to_string(),
            threads: self.threads,
            received: self.received.load(Ordering::Relaxed),
            items: self.items.load(Ordering::Relaxed),
            samples: self.samples.load(Ordering::Relaxed),
            busy_seconds: s(&self.busy_ns),
            wait_input_seconds: s(&self.wait_ns),
            blocked_output_seconds: s(&self.blocked_ns),
        }
    }
}

impl StageSnapshot {
    /// Samples per second the stage would sustain alone, never waiting for input nor
    /// blocked on output: samples / (busy seconds / threads). `None` before any work.
    pub fn standalone_rate(&self) -> Option<f64> {
        let busy = self.busy_seconds / self.threads as f64;
        (busy > 0.0 && self.samples > 0).then(|| self.samples as f64 / busy)
    }
}

/// How well the stages overlapped. Only stages that ran (received or produced something)
/// appear, and a figure that would be computed from zero time or zero samples is absent
/// rather than 0: a curation with `policy: uniform` has no feature stage to be the slowest.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Overlap {
    /// Samples per second through the whole pipeline (samples the loader delivered / wall
    /// seconds of the streaming part of the run). Absent when nothing was delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_to_end_rate: Option<f64>,
    /// The stage with the lowest standalone rate (absent when no stage was busy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slowest_stage: Option<String>,
    /// That stage's standalone rate (samples / busy seconds per thread).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slowest_standalone_rate: Option<f64>,
    /// `end_to_end_rate / slowest_standalone_rate`: 1.0 means the pipeline runs as fast as
    /// its slowest stage (perfect overlap); with no overlap at all it approaches
    /// `slowest / sum of stages`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlap: Option<f64>,
    /// Each stage's busy seconds per thread as a fraction of the streaming wall time.
    pub utilisation: Vec<(String, f64)>,
}

impl Overlap {
    /// Computes the figures from the stages' counters and the streaming wall time. Stage
    /// rates are in the loader's samples (what enters the pipeline), so a stage that sees
    /// only the kept samples is compared on the same scale. Stages that did nothing are
    /// left out.
    pub fn from_stages(stages: &[StageSnapshot], wall_seconds: f64) -> Overlap {
        let Some(first) = stages.first() else {
            return Overlap::default();
        };
        let input = first.samples as f64;
        let ran: Vec<&StageSnapshot> = stages.iter().filter(|s| s.ran()).collect();
        let mut slowest: Option<(String, f64)> = None;
        for s in &ran {
            let busy = s.busy_seconds / s.threads as f64;
            if busy > 0.0 && input > 0.0 {
                let rate = input / busy;
                if slowest.as_ref().is_none_or(|(_, r)| rate < *r) {
                    slowest = Some((s.stage.clone(), rate));
                }
            }
        }
        let end_to_end = (input > 0.0 && wall_seconds > 0.0).then(|| input / wall_seconds);
        Overlap {
            end_to_end_rate: end_to_end,
            slowest_standalone_rate: slowest.as_ref().map(|s| s.1),
            overlap: end_to_end.zip(slowest.as_ref()).map(|(e, s)| e / s.1),
            slowest_stage: slowest.map(|s| s.0),
            utilisation: if wall_seconds > 0.0 {
                ran.iter()
                    .map(|s| {
                        let busy = s.busy_seconds / s.threads as f64;
                        (s.stage.clone(), busy / wall_seconds)
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    /// The one-line summary the CLI prints: only figures that were measured, for instance
    /// `1351 samples/s end to end; slowest stage extract alone 1670/s; overlap 0.81`.
    /// `None` when nothing was measured.
    ///
    /// ```
    /// use saln::pipeline::Overlap;
    /// assert_eq!(Overlap::default().summary(), None);
    /// let o = Overlap { end_to_end_rate: Some(900.0), ..Default::default() };
    /// assert_eq!(o.summary().unwrap(), "900 samples/s end to end");
    /// ```
    pub fn summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(r) = self.end_to_end_rate {
            parts.push(format!("{r:.0} samples/s end to end"));
        }
        if let (Some(s), Some(r)) = (&self.slowest_stage, self.slowest_standalone_rate) {
            parts.push(format!("slowest stage {s} alone {r:.0}/s"));
        }
        if let Some(o) = self.overlap {
            parts.push(format!("overlap {o:.2}"));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

impl StageSnapshot {
    /// Whether the stage did anything: received or produced an item, or spent time busy.
    pub fn ran(&self) -> bool {
        self.received > 0 || self.items > 0 || self.busy_seconds > 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(stage: &str, samples: u64, busy: f64, threads: usize) -> StageSnapshot {
        StageSnapshot {
            stage: stage.into(),
            threads,
            received: 0,
            items: 1,
            samples,
            busy_seconds: busy,
            wait_input_seconds: 0.0,
            blocked_output_seconds: 0.0,
        }
    }

    #[test]
    fn overlap_is_one_when_wall_time_equals_the_slowest_stage() {
        let stages = [
            snap("loader", 1000, 4.0, 2),
            snap("extract", 1000, 9.0, 1),
            snap("train", 250, 10.0, 1),
        ];
        let o = Overlap::from_stages(&stages, 10.0);
        assert_eq!(o.slowest_stage.as_deref(), Some("train"));
        assert!((o.slowest_standalone_rate.unwrap() - 100.0).abs() < 1e-9);
        assert!((o.overlap.unwrap() - 1.0).abs() < 1e-9);
        // Run one after the other: wall = 2 + 9 + 10.
        let serial = Overlap::from_stages(&stages, 21.0);
        assert!((serial.overlap.unwrap() - 10.0 / 21.0).abs() < 1e-9);
        assert_eq!(serial.utilisation[0], ("loader".to_string(), 2.0 / 21.0));
    }

    #[test]
    fn stages_that_did_nothing_and_zero_times_give_no_figures() {
        let idle = StageSnapshot {
            items: 0,
            ..snap("extract", 0, 0.0, 1)
        };
        let stages = [snap("loader", 1000, 0.0, 2), idle];
        let o = Overlap::from_stages(&stages, 0.0);
        assert_eq!(o.end_to_end_rate, None);
        assert_eq!(o.slowest_stage, None);
        assert_eq!(o.overlap, None);
        assert_eq!(o.summary(), None);
        let o = Overlap::from_stages(&stages, 2.0);
        assert_eq!(o.summary().as_deref(), Some("500 samples/s end to end"));
        assert_eq!(o.utilisation, [("loader".to_string(), 0.0)]);
    }
}
