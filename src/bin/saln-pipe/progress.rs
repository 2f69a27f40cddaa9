//! What `saln-pipe run` shows while it runs: a live status line on a terminal (indicatif),
//! plain log lines otherwise (CI logs, files), with the same content: per-stage rates, queue
//! depths, the current bottleneck and an ETA.
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use saln::pipeline::{Event, StageSnapshot};

pub struct Display {
    bar: Option<ProgressBar>,
    last: Mutex<Option<(f64, Vec<StageSnapshot>)>>,
}

impl Display {
    pub fn new() -> Display {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {percent:>3}% eta {eta:>4} | {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Display {
            bar,
            last: Mutex::new(None),
        }
    }

    /// Prints a line to stdout without tearing the status line.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    /// Prints a line to stderr without tearing the status line.
    pub fn eprintln(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    pub fn event(&self, e: &Event) {
        match e {
            Event::Started {
                learner_samples,
                epochs,
                device,
            } => {
                if let Some(bar) = &self.bar {
                    bar.set_length((*learner_samples * *epochs) as u64);
                }
                self.eprintln(&format!(
                    "saln: {learner_samples} learner samples x {epochs} epochs on {device}"
                ));
            }
            Event::Epoch(r) => self.println(&format!(
                "epoch {:>3}  test accuracy {:6.2}%  train loss {:.4}  trained on {}/{} images  {:.1}s",
                r.epoch,
                100.0 * r.test_accuracy,
                r.train_loss,
                r.images_trained,
                r.images_seen,
                r.wall_seconds
            )),
            Event::Progress {
                elapsed,
                total_samples,
                stages,
            } => {
                let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
                let line = status_line(*elapsed, *total_samples, stages, last.as_ref());
                *last = Some((*elapsed, stages.clone()));
                let done = stages.get(1).map_or(0, |s| s.samples);
                match &self.bar {
                    Some(bar) => {
                        bar.set_position(done);
                        bar.set_message(line);
                    }
                    None => {
                        let eta = eta(*elapsed, done, *total_samples);
                        eprintln!("[{elapsed:7.1}s] {line} | eta {eta}");
                    }
                }
            }
        }
    }
}

fn eta(elapsed: f64, done: u64, total: u64) -> String {
    if done == 0 || total <= done {
        return "-".into();
    }
    let s = elapsed * (total - done) as f64 / done as f64;
    format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
}

/// `loader 1850/s [q 2] extract 1840/s [q 1] train 460/s | bottleneck extract (busy 78%)`,
/// with rates and busy shares over the last interval.
fn status_line(
    elapsed: f64,
    _total: u64,
    stages: &[StageSnapshot],
    last: Option<&(f64, Vec<StageSnapshot>)>,
) -> String {
    let (t0, prev) = match last {
        Some((t, p)) if p.len() == stages.len() => (*t, Some(p)),
        _ => (0.0, None),
    };
    let dt = (elapsed - t0).max(1e-9);
    let mut parts = Vec::new();
    let mut bottleneck = (String::new(), -1.0f64);
    for (i, s) in stages.iter().enumerate() {
        let p = prev.map(|p| &p[i]);
        let samples = s.samples - p.map_or(0, |p| p.samples);
        let busy = s.busy_seconds - p.map_or(0.0, |p| p.busy_seconds);
        let share = busy / s.threads as f64 / dt;
        if share > bottleneck.1 {
            bottleneck = (s.stage.clone(), share);
        }
        let mut part = format!("{} {:.0}/s", s.stage, samples as f64 / dt);
        if let Some(next) = stages.get(i + 1) {
            part.push_str(&format!(" [q {}]", s.items.saturating_sub(next.received)));
        }
        parts.push(part);
    }
    format!(
        "{} | bottleneck {} (busy {:.0}%)",
        parts.join(" "),
        bottleneck.0,
        100.0 * bottleneck.1.min(1.0)
    )
}
