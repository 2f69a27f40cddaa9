//! `saln-pipe run --resume`: a run SIGKILLed anywhere (mid-epoch, during an evaluation,
//! while writing a checkpoint, while writing an export file) and resumed gives the
//! uninterrupted run's result: the same `kept_digest`, per-epoch accuracies and export
//! rows. The kill points are hit deterministically with the test-only pause hook
//! `SALN_TEST_PAUSE_AT=POINT:N` (`saln::stage::test_pause`): the run stops there and says
//! so on stderr, and the test SIGKILLs it.
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::common::{synthetic_idx, within};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_saln-pipe"))
}

fn text(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A tiny run: 1100 learner images of 16x16 in super-batches of 64 (18 per epoch), 3
/// epochs, the learner-aware `loss` policy (so the checkpoint must carry learner
/// snapshots: refresh every 3 steps, lag 2), an export with rejected rows in files of at
/// most 150 rows, a checkpoint every 4 steps.
fn pipeline(dir: &Path, data: &Path, keep_ratio: f64, report: &Path) -> PathBuf {
    let cfg = dir.join("p.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"seed: 7
device: cpu
source: {{ idx: {{ dir: {data} }}, holdout: 100, test_limit: 200 }}
augment:
  workers: 2
  ops: [ {{ hflip: {{ p: 0.5 }} }}, {{ shift: {{ max_px: 2 }} }} ]
superbatch: {{ size: 64 }}
selection: {{ policy: loss, keep_ratio: {keep_ratio}, refresh_every: 3, snapshot_lag: 2 }}
trainer: {{ epochs: 3, arch: {{ conv1: 4, conv2: 4, hidden: 8 }} }}
report: {{ path: {report}, progress_seconds: 0 }}
export: {{ dir: {export}, include_rejected: true, rows_per_file: 150 }}
checkpoint: {{ dir: {ckpt}, every_steps: 4, every_seconds: 0 }}
"#,
            data = data.display(),
            report = report.display(),
            export = dir.join("export").display(),
            ckpt = dir.join("ckpt").display(),
        ),
    )
    .unwrap();
    cfg
}

fn run(cfg: &Path, resume: bool) -> Output {
    let mut c = bin();
    c.arg("run").arg(cfg);
    if resume {
        c.arg("--resume");
    }
    c.output().unwrap()
}

/// Runs `cfg` until it pauses at `point` (its `n`-th arrival), then SIGKILLs it.
fn kill_at(cfg: &Path, point: &str, n: u32) {
    kill_command_at("run", cfg, point, n)
}

/// `saln-pipe COMMAND cfg` until it pauses at `point` (its `n`-th arrival), then SIGKILL.
pub(super) fn kill_command_at(command: &str, cfg: &Path, point: &str, n: u32) {
    let mut child = bin()
        .arg(command)
        .arg(cfg)
        .env("SALN_TEST_PAUSE_AT", format!("{point}:{n}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let want = format!("saln-test-paused {point}");
    let seen = within(Duration::from_secs(120), move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stderr).lines();
        let mut all = String::new();
        for l in lines.by_ref() {
            let l = l.unwrap();
            all.push_str(&l);
            all.push('\n');
            if l == want {
                std::thread::spawn(move || lines.for_each(drop));
                return Ok(());
            }
        }
        Err(all)
    });
    if let Err(all) = seen {
        let _ = child.kill();
        panic!("the run never paused at {point}:{n}; stderr:\n{all}");
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

struct Outcome {
    digest: String,
    accuracies: Vec<f64>,
    losses: Vec<f64>,
    rows: Vec<saln::export::ExportRow>,
}

fn outcome(dir: &Path, report: &Path) -> Outcome {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
    assert_eq!(json["status"], "completed", "{json}");
    let epochs = json["epochs"].as_array().unwrap();
    let mut rows = saln::export::read::read(&dir.join("export"), false).unwrap();
    rows.sort_by_key(|r| (r.superbatch, r.position));
    Outcome {
        digest: json["selection"]["kept_digest"]
            .as_str()
            .unwrap()
            .to_string(),
        accuracies: epochs
            .iter()
            .map(|e| e["test_accuracy"].as_f64().unwrap())
            .collect(),
        losses: epochs
            .iter()
            .map(|e| e["train_loss"].as_f64().unwrap())
            .collect(),
        rows,
    }
}

/// Row count and distinct (super-batch, position) pairs of the export, read by pyarrow
/// (the venv's Python, which `make test` gives pyarrow).
fn pyarrow_rows(export: &Path) -> (u64, u64) {
    let python = std::env::var("SALN_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/saln/venv"))
        .join("bin/python");
    let o = Command::new(python)
        .args([
            "-c",
            "import sys, pyarrow.dataset as ds\n\
             t = ds.dataset(sys.argv[1], format='parquet').to_table(columns=['superbatch', 'position'])\n\
             pairs = set(zip(t['superbatch'].to_pylist(), t['position'].to_pylist()))\n\
             print(t.num_rows, len(pairs))",
        ])
        .arg(export)
        .output()
        .expect("the venv's python (make test installs it with pyarrow)");
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let v: Vec<u64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    (v[0], v[1])
}

#[test]
fn a_killed_run_resumes_to_the_uninterrupted_result() {
    let root = tempfile::tempdir().unwrap();
    let data = synthetic_idx(root.path(), 1200, 200);

    let whole_dir = root.path().join("whole");
    std::fs::create_dir_all(&whole_dir).unwrap();
    let whole_report = whole_dir.join("report.json");
    let cfg = pipeline(&whole_dir, &data, 0.5, &whole_report);
    let o = run(&cfg, false);
    assert!(o.status.success(), "{}", text(&o));
    let whole = outcome(&whole_dir, &whole_report);
    assert_eq!(whole.accuracies.len(), 3);
    // 3 epochs of 1100 samples, every sample exported (kept or rejected).
    assert_eq!(whole.rows.len(), 3300);

    // (point, n): mid-epoch (step 25 of 54), during epoch 2's evaluation, while writing
    // the 5th checkpoint (its tensors written, its state not), while writing an export file.
    for (point, n) in [
        ("train", 25),
        ("eval", 2),
        ("checkpoint", 5),
        ("export", 30),
    ] {
        let dir = root.path().join(format!("killed-{point}"));
        std::fs::create_dir_all(&dir).unwrap();
        let report = dir.join("report.json");
        let cfg = pipeline(&dir, &data, 0.5, &report);
        kill_at(&cfg, point, n);
        assert!(!report.exists(), "{point}: SIGKILL leaves no report");
        let o = run(&cfg, true);
        assert!(o.status.success(), "{point}: {}", text(&o));
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let from = json["checkpoints"]["resumed_from_step"].as_u64().unwrap();
        assert!(from > 0 && from < 54, "{point}: resumed from step {from}");
        let got = outcome(&dir, &report);
        assert_eq!(got.digest, whole.digest, "{point}: kept_digest");
        assert_eq!(got.accuracies, whole.accuracies, "{point}: accuracies");
        assert_eq!(got.losses, whole.losses, "{point}: train losses");
        assert_eq!(got.rows.len(), whole.rows.len(), "{point}: row count");
        for (a, b) in got.rows.iter().zip(&whole.rows) {
            assert_eq!(a, b, "{point}: export rows differ");
        }
        let (rows, distinct) = pyarrow_rows(&dir.join("export"));
        assert_eq!(
            (rows, distinct),
            (3300, 3300),
            "{point}: pyarrow sees duplicates or gaps"
        );
        // No temporary files left behind, and only the last two checkpoints kept.
        let leftovers: Vec<String> = std::fs::read_dir(dir.join("export"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".parquet") || n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{point}: {leftovers:?}");
        assert_eq!(saln::pipeline::checkpoint::list(&dir.join("ckpt")).len(), 2);
    }
}

#[test]
fn resume_refuses_a_changed_keep_ratio_and_accepts_a_new_report_path() {
    let root = tempfile::tempdir().unwrap();
    let data = synthetic_idx(root.path(), 1200, 200);
    let dir = root.path().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.json");
    let cfg = pipeline(&dir, &data, 0.5, &report);
    kill_at(&cfg, "train", 30);

    let cfg = pipeline(&dir, &data, 0.25, &report);
    let o = run(&cfg, true);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("selection.keep_ratio")
            && err.contains("0.5 -> 0.25")
            && err.contains("cannot resume"),
        "{err}"
    );
    assert!(!report.exists());

    let other = dir.join("elsewhere.json");
    let cfg = pipeline(&dir, &data, 0.5, &other);
    let o = run(&cfg, true);
    assert!(o.status.success(), "{}", text(&o));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&other).unwrap()).unwrap();
    assert!(json["checkpoints"]["resumed_from_step"].as_u64().unwrap() > 0);
    assert_eq!(json["epochs"].as_array().unwrap().len(), 3);

    // Without a checkpoint there is nothing to resume, and the message says so.
    let empty = root.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let cfg = pipeline(&empty, &data, 0.5, &empty.join("r.json"));
    let o = run(&cfg, true);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("no complete checkpoint"), "{}", text(&o));
}

/// `saln-pipe curate --resume`: a curation SIGKILLed while writing an export file or a
/// checkpoint continues to the uninterrupted curation's export (same rows, none twice);
/// `run --resume` refuses its checkpoints and says whose they are.
#[test]
fn a_killed_curation_resumes_to_the_uninterrupted_export() {
    let root = tempfile::tempdir().unwrap();
    let data = synthetic_idx(root.path(), 1200, 200);
    // The run's pipeline with a curation policy (`loss` needs a learner).
    let curation = |dir: &Path| -> (PathBuf, PathBuf) {
        std::fs::create_dir_all(dir).unwrap();
        let report = dir.join("report.json");
        let cfg = pipeline(dir, &data, 0.5, &report);
        let text = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(&cfg, text.replace("policy: loss", "policy: uniform")).unwrap();
        (cfg, report)
    };
    let rows = |dir: &Path| {
        let mut r = saln::export::read::read(&dir.join("export"), false).unwrap();
        r.sort_by_key(|r| (r.superbatch, r.position));
        r
    };
    let whole_dir = root.path().join("whole");
    let (cfg, _) = curation(&whole_dir);
    let o = bin().arg("curate").arg(&cfg).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let whole = rows(&whole_dir);
    assert_eq!(whole.len(), 3300);

    for (point, n) in [("export", 30), ("checkpoint", 5)] {
        let dir = root.path().join(format!("killed-{point}"));
        let (cfg, report) = curation(&dir);
        kill_command_at("curate", &cfg, point, n);
        assert!(!report.exists(), "{point}: SIGKILL leaves no report");
        // A run cannot take a curation's checkpoint.
        let o = run(&cfg, true);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            text(&o).contains("written by `saln-pipe curate`"),
            "{}",
            text(&o)
        );
        let o = bin()
            .args(["curate", "--resume"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(o.status.success(), "{point}: {}", text(&o));
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert_eq!(json["status"], "completed");
        let from = json["checkpoints"]["resumed_from_step"].as_u64().unwrap();
        assert!(from > 0 && from < 54, "{point}: resumed from step {from}");
        let got = rows(&dir);
        assert_eq!(got.len(), whole.len(), "{point}: row count");
        for (a, b) in got.iter().zip(&whole) {
            assert_eq!(a, b, "{point}: export rows differ");
        }
        assert_eq!(pyarrow_rows(&dir.join("export")), (3300, 3300), "{point}");
        assert_eq!(
            json["selection"]["samples_kept"].as_u64(),
            Some(1650),
            "{point}: the report counts the whole curation"
        );
    }
}
