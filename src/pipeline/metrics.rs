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
    /// Zeroed counters for stage `name`.
    pub fn new(name: &'static str) -> Self {
        StageStats {
            name,
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
            items: self.items.load(Ordering::Relaxed),
            samples: self.samples.load(Ordering::Relaxed),
            busy_seconds: s(&self.busy_ns),
            wait_input_seconds: s(&self.wait_ns),
            blocked_output_seconds: s(&self.blocked_ns),
        }
    }
}
