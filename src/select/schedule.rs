//! The keep ratio over training (GSTDS's scheduled filtering ratio).
//!
//! A schedule maps training progress `t` in `[0, 1]` to a keep ratio `rho(t)`. It always
//! ends at `selection.keep_ratio`; it starts at `start`. Progress is the fraction of the
//! run's super-batches that came before this one (`seq / total`, see
//! [`crate::batch::SuperBatch::progress`]), so it is the same whatever the epoch length.
//!
//! ```yaml
//! selection:
//!   keep_ratio: 0.25                          # where every schedule ends
//!   schedule: { kind: linear, start: 1.0 }    # 1.0 -> 0.25 over the run
//! ```
//!
//! | kind | `rho(t)` with `end = keep_ratio` |
//! |---|---|
//! | `constant` (default) | `end` |
//! | `linear` | `start + (end - start) t` |
//! | `cosine` | `end + (start - end) (1 + cos(pi t)) / 2`: slow at both ends |
//! | `step` | `steps` equal plateaus from `start` to `end`: plateau `k = min(floor(t steps), steps - 1)` has `start + (end - start) k / (steps - 1)` |
use serde::{Deserialize, Serialize};

use crate::error::Issues;

/// How the keep ratio moves from `start` to `selection.keep_ratio` over training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// `keep_ratio` all along.
    #[default]
    Constant,
    /// A straight line from `start` to `keep_ratio`.
    Linear {
        /// Keep ratio at the start of training, in (0, 1].
        start: f64,
    },
    /// Half a cosine from `start` to `keep_ratio`: it changes slowly at both ends.
    Cosine {
        /// Keep ratio at the start of training, in (0, 1].
        start: f64,
    },
    /// `steps` plateaus of equal length, evenly spaced from `start` (the first) to
    /// `keep_ratio` (the last).
    Step {
        /// Keep ratio of the first plateau, in (0, 1].
        start: f64,
        /// Number of plateaus, at least 2.
        steps: usize,
    },
}

impl Schedule {
    /// The keep ratio at progress `t` (clamped to `[0, 1]`; a NaN counts as 0) for a
    /// schedule that ends at `end`.
    ///
    /// ```
    /// use saln::select::Schedule;
    /// let lin = Schedule::Linear { start: 1.0 };
    /// assert_eq!(lin.keep_ratio(0.25, 0.0), 1.0);
    /// assert_eq!(lin.keep_ratio(0.25, 0.5), 0.625);
    /// assert_eq!(lin.keep_ratio(0.25, 1.0), 0.25);
    /// let step = Schedule::Step { start: 1.0, steps: 4 };
    /// assert_eq!(step.keep_ratio(0.25, 0.3), 0.75);
    /// assert_eq!(Schedule::Constant.keep_ratio(0.25, 0.9), 0.25);
    /// ```
    pub fn keep_ratio(&self, end: f64, t: f64) -> f64 {
        let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
        match *self {
            Schedule::Constant => end,
            Schedule::Linear { start } => start + (end - start) * t,
            Schedule::Cosine { start } => {
                end + (start - end) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Schedule::Step { start, steps } => {
                let steps = steps.max(2);
                let k = ((t * steps as f64).floor() as usize).min(steps - 1);
                start + (end - start) * k as f64 / (steps - 1) as f64
            }
        }
    }

    /// Adds this schedule's problems to `v` (keys under `selection.schedule`).
    pub fn validate(&self, v: &mut Issues) {
        let start = match *self {
            Schedule::Constant => return,
            Schedule::Linear { start }
            | Schedule::Cosine { start }
            | Schedule::Step { start, .. } => start,
        };
        v.check(
            start > 0.0 && start <= 1.0,
            "selection.schedule.start",
            || format!("must be in (0, 1], got {start}"),
        );
        if let Schedule::Step { steps, .. } = *self {
            v.check(steps >= 2, "selection.schedule.steps", || {
                format!("must be at least 2 (one plateau is `kind: constant`), got {steps}")
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_starts_at_start_and_ends_at_end() {
        for s in [
            Schedule::Linear { start: 0.9 },
            Schedule::Cosine { start: 0.9 },
            Schedule::Step {
                start: 0.9,
                steps: 3,
            },
        ] {
            assert!((s.keep_ratio(0.1, 0.0) - 0.9).abs() < 1e-12, "{s:?}");
            assert!((s.keep_ratio(0.1, 1.0) - 0.1).abs() < 1e-12, "{s:?}");
            // Monotone between the two.
            let mut prev = f64::INFINITY;
            for i in 0..=100 {
                let r = s.keep_ratio(0.1, i as f64 / 100.0);
                assert!(r <= prev + 1e-12 && (0.1 - 1e-12..=0.9 + 1e-12).contains(&r));
                prev = r;
            }
        }
    }

    #[test]
    fn step_has_equal_plateaus() {
        let s = Schedule::Step {
            start: 1.0,
            steps: 3,
        };
        let levels: Vec<f64> = (0..9).map(|i| s.keep_ratio(0.4, i as f64 / 9.0)).collect();
        assert_eq!(levels, vec![1.0, 1.0, 1.0, 0.7, 0.7, 0.7, 0.4, 0.4, 0.4]);
    }

    #[test]
    fn cosine_is_halfway_at_the_middle_and_flat_at_the_ends() {
        let s = Schedule::Cosine { start: 1.0 };
        assert!((s.keep_ratio(0.0, 0.5) - 0.5).abs() < 1e-12);
        let early = 1.0 - s.keep_ratio(0.0, 0.05);
        let linear_early = 0.05;
        assert!(early < linear_early / 5.0, "{early}");
    }

    #[test]
    fn out_of_range_progress_is_clamped() {
        let s = Schedule::Linear { start: 1.0 };
        assert_eq!(s.keep_ratio(0.5, -3.0), 1.0);
        assert_eq!(s.keep_ratio(0.5, 7.0), 0.5);
        assert_eq!(s.keep_ratio(0.5, f64::NAN), 1.0);
    }

    #[test]
    fn validation_names_the_keys() {
        let mut v = Issues::default();
        Schedule::Step {
            start: 1.5,
            steps: 1,
        }
        .validate(&mut v);
        let keys: Vec<&str> = v.0.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            vec!["selection.schedule.start", "selection.schedule.steps"]
        );
    }
}
