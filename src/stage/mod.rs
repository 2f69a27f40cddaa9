//! The stage kit: what every stage of a pipeline is made of, and nothing that knows a stage.
//!
//! - [`Msg`]: what flows through a channel between two stages (data, or an epoch's end);
//! - [`Cancel`]: the flag that stops every stage of a run;
//! - [`spawn_stage`] / [`join`]: a stage on its own named OS thread, a panic turned into
//!   [`Error::Panic`], an error tagged with the stage's name and cancelling the others;
//!   [`catching`] and [`spawn_thread`] for a stage's own worker threads;
//! - [`StageStats`] and its snapshots ([`metrics`]): busy / waiting / blocked time per stage;
//! - [`ChannelConfig`]: the depths of the bounded channels between stages.
//!
//! Stages (`source` .. `export`) build on this module; the wiring that knows every stage
//! (`pipeline`) sits above them. Nothing here imports a stage.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Issues, Result};

pub mod metrics;
pub use metrics::{Overlap, StageSnapshot, StageStats};

/// What flows through a channel: data, or the end of an epoch.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg<T> {
    /// One item.
    Data(T),
    /// Every item of `epoch` (0-based) has been sent.
    EpochEnd {
        /// The epoch that ended.
        epoch: usize,
    },
}

/// A cancellation flag shared by every stage of a run. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Asks every stage to stop after its current item.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Turns a panic payload into text.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Sets libtorch's intra-op thread count (0 leaves libtorch's default).
pub fn set_torch_threads(n: usize) {
    if n > 0 {
        tch::set_num_threads(n as i32);
    }
}

/// Runs `f`, turning a panic inside it into [`Error::Panic`] of `stage`: a stage (or one
/// job of a stage's worker) never takes the process down with it.
pub fn catching<T>(stage: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(Error::Panic {
            stage,
            message: panic_message(&p),
        })
    })
}

/// Starts an OS thread named `name` (a stage's helper thread, such as a decode worker).
pub fn spawn_thread<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|e| Error::io("<thread>", e))
}

/// Runs `f` on a new OS thread named `saln-{name}`. A panic inside becomes
/// [`Error::Panic`]; an error is tagged with the stage ([`Error::in_stage`]); either sets
/// `cancel`, so the other stages of the run stop.
pub fn spawn_stage<T: Send + 'static>(
    name: &'static str,
    cancel: &Cancel,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<JoinHandle<Result<T>>> {
    let cancel = cancel.clone();
    spawn_thread(format!("saln-{name}"), move || {
        let r = catching(name, f).map_err(|e| e.in_stage(name));
        if r.is_err() {
            cancel.cancel();
        }
        r
    })
}

/// Waits for a thread started by [`spawn_stage`]; a panic that escaped it becomes
/// [`Error::Panic`] of `stage`.
pub fn join<T>(h: JoinHandle<Result<T>>, stage: &'static str) -> Result<T> {
    h.join().unwrap_or_else(|p| {
        Err(Error::Panic {
            stage,
            message: panic_message(&p),
        })
    })
}

/// Capacities of the bounded channels between stages (in super-batches).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// loader -> extract.
    #[serde(default = "d_capacity")]
    pub loader_to_extract: usize,
    /// extract -> train.
    #[serde(default = "d_capacity")]
    pub extract_to_train: usize,
}

/// The default depth of a channel between two stages, in items.
pub fn d_capacity() -> usize {
    2
}

impl ChannelConfig {
    /// Adds this section's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        v.check(
            self.loader_to_extract > 0,
            "channels.loader_to_extract",
            || "must be at least 1".into(),
        );
        v.check(
            self.extract_to_train > 0,
            "channels.extract_to_train",
            || "must be at least 1".into(),
        );
    }
}

/// A test-only hook for killing a run at a chosen place: with the environment variable
/// `SALN_TEST_PAUSE_AT=POINT:N`, the `N`-th time (1-based) the run reaches the place named
/// `POINT`, the calling thread prints `saln-test-paused POINT` on stderr and sleeps until
/// the process is killed. Without the variable this is one load of a cached `None`.
///
/// The points: `train` (before an optimizer step), `eval` (before an epoch's evaluation),
/// `checkpoint` (a checkpoint half written: its tensors on disk, its state not yet),
/// `export` (an export file half written: open under its temporary name). The resume tests
/// (`tests/it/resume.rs`) SIGKILL a paused `saln-pipe run` there, so "killed while writing
/// a checkpoint" is hit every time instead of by luck.
pub fn test_pause(point: &str) {
    use std::sync::{Mutex, OnceLock};
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static SEEN: Mutex<u64> = Mutex::new(0);
    let target = TARGET.get_or_init(|| {
        let v = std::env::var("SALN_TEST_PAUSE_AT").ok()?;
        let (p, n) = v.split_once(':').unwrap_or((v.as_str(), "1"));
        Some((p.to_string(), n.parse().unwrap_or(1)))
    });
    let Some((p, n)) = target else { return };
    if p != point {
        return;
    }
    let hit = {
        let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        *seen += 1;
        *seen == *n
    };
    if hit {
        eprintln!("saln-test-paused {point}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}
