//! SIGINT / SIGTERM at any moment of `saln-pipe curate`: exit 130, a report with
//! `status: cancelled`, and no `.partial` file left in the export folder.
//!
//! `make test` sends the signal at a few moments (the first instant the process runs code of
//! its own, during start-up, during the run); `make signal-loop` runs the ignored
//! [`signal_at_random_moments`] 50 times at random moments.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::common::synthetic_idx;
use super::within::within;

/// A curation that runs far longer than any moment tried (it is always stopped).
fn setup(dir: &Path) -> PathBuf {
    let data = synthetic_idx(dir, 3000, 200);
    let cfg = dir.join("p.yaml");
    std::fs::write(
        &cfg,
        format!(
            "device: cpu\nsource: {{ idx: {{ dir: {} }}, holdout: 100 }}\n\
             selection: {{ policy: uniform }}\nsuperbatch: {{ size: 64 }}\n\
             trainer: {{ epochs: 100000 }}\nreport: {{ path: {}, progress_seconds: 0 }}\n\
             export: {{ dir: {}, overwrite: true }}\n",
            data.display(),
            dir.join("report.json").display(),
            dir.join("out").display()
        ),
    )
    .unwrap();
    cfg
}

/// Whether the process has a handler for SIGINT and SIGTERM (`SigCgt` in /proc): from then
/// on our code runs. Before it, the dynamic linker is still loading libtorch.
fn catches_signals(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or(0);
    let bit = |sig: u32| 1u64 << (sig - 1);
    mask & bit(2) != 0 && mask & bit(15) != 0
}

/// Starts a curation, sends `signal` `after` the first instant it catches signals, and
/// checks how it ended. Returns a description for the failure message.
fn stop_at(dir: &Path, cfg: &Path, signal: &str, after: Duration) {
    let _ = std::fs::remove_dir_all(dir.join("out"));
    let _ = std::fs::remove_file(dir.join("report.json"));
    let child = Command::new(env!("CARGO_BIN_EXE_saln-pipe"))
        .arg("curate")
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let t = Instant::now();
    while !catches_signals(pid) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no handlers after 60 s"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    std::thread::sleep(after);
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = within(Duration::from_secs(120), move || {
        child.wait_with_output().unwrap()
    });
    let what = format!(
        "SIG{signal} {after:?} after start-up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(130), "{what}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).expect(&what)).unwrap();
    assert_eq!(report["status"], "cancelled", "{what}");
    let partial: Vec<_> = std::fs::read_dir(dir.join("out"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(
        !partial
            .iter()
            .any(|p: &PathBuf| p.to_string_lossy().contains(".partial")),
        "{what}: {partial:?}"
    );
}

#[test]
fn a_signal_at_several_moments_cancels_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path());
    for (signal, ms) in [
        ("TERM", 0),
        ("INT", 0),
        ("TERM", 300),
        ("INT", 1500),
        ("TERM", 4000),
    ] {
        stop_at(dir.path(), &cfg, signal, Duration::from_millis(ms));
    }
}

/// `make signal-loop`: `SALN_SIGNAL_TRIES` (default 50) tries at random moments in the first
/// 8 s, SIGINT or SIGTERM at random; prints each moment.
#[test]
#[ignore = "long: run by `make signal-loop`"]
fn signal_at_random_moments() {
    let tries: usize = std::env::var("SALN_SIGNAL_TRIES")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path());
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..tries {
        let ms = next() % 8000;
        let signal = if next() % 2 == 0 { "INT" } else { "TERM" };
        eprintln!("try {}/{tries}: SIG{signal} at {ms} ms", i + 1);
        stop_at(dir.path(), &cfg, signal, Duration::from_millis(ms));
    }
    eprintln!("{tries} of {tries} tries: exit 130, status cancelled, no .partial file");
}
