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

/// How well the stages overlapped.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Overlap {
    /// Samples per second through the whole pipeline (samples the loader delivered / wall
    /// seconds of the streaming part of the run).
    pub end_to_end_rate: f64,
    /// The stage with the lowest standalone rate.
    pub slowest_stage: String,
    /// That stage's standalone rate (samples / busy seconds per thread).
    pub slowest_standalone_rate: f64,
    /// `end_to_end_rate / slowest_standalone_rate`: 1.0 means the pipeline runs as fast as
    /// its slowest stage (perfect overlap); with no overlap at all it approaches
    /// `slowest / sum of stages`.
    pub overlap: f64,
    /// Each stage's busy seconds per thread as a fraction of the streaming wall time.
    pub utilisation: Vec<(String, f64)>,
}

impl Overlap {
    /// Computes the figures from the stages' counters and the streaming wall time. Stage
    /// rates are in the loader's samples (what enters the pipeline), so a stage that sees
    /// only the kept samples is compared on the same scale.
    pub fn from_stages(stages: &[StageSnapshot], wall_seconds: f64) -> Overlap {
        let Some(first) = stages.first() else {
            return Overlap::default();
        };
        let input = first.samples as f64;
        let wall = wall_seconds.max(1e-9);
        let mut slowest = (String::new(), f64::INFINITY);
        for s in stages {
            let busy = s.busy_seconds / s.threads as f64;
            if busy > 0.0 {
                let rate = input / busy;
                if rate < slowest.1 {
                    slowest = (s.stage.clone(), rate);
                }
            }
        }
        let end_to_end = input / wall;
        Overlap {
            end_to_end_rate: end_to_end,
            slowest_standalone_rate: if slowest.1.is_finite() {
                slowest.1
            } else {
                0.0
            },
            overlap: if slowest.1.is_finite() {
                end_to_end / slowest.1
            } else {
                0.0
            },
            slowest_stage: slowest.0,
            utilisation: stages
                .iter()
                .map(|s| (s.stage.clone(), s.busy_seconds / s.threads as f64 / wall))
                .collect(),
        }
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
        assert_eq!(o.slowest_stage, "train");
        assert!((o.slowest_standalone_rate - 100.0).abs() < 1e-9);
        assert!((o.overlap - 1.0).abs() < 1e-9);
        // Run one after the other: wall = 2 + 9 + 10.
        let serial = Overlap::from_stages(&stages, 21.0);
        assert!((serial.overlap - 10.0 / 21.0).abs() < 1e-9);
        assert_eq!(serial.utilisation[0], ("loader".to_string(), 2.0 / 21.0));
    }
}
