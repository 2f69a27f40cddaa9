//! The real `saln-pipe` binary, run in temporary folders.
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::common::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_saln-pipe"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn yamls(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_pipeline_yaml_validates() {
    require_fmnist();
    let files = yamls(&root().join("pipelines"));
    assert!(!files.is_empty());
    for f in files {
        let o = bin()
            .arg("validate")
            .arg(&f)
            .current_dir(root())
            .output()
            .unwrap();
        // A pipeline that trains on another pipeline's export (under target/) validates once
        // that export exists; until then the one acceptable problem is that it is missing.
        let waits_for_export = text(&o).contains("source: target/saln/")
            && text(&o).contains("No such file or directory");
        assert!(
            o.status.success() || waits_for_export,
            "{}: {}",
            f.display(),
            text(&o)
        );
    }
}

/// Each `fixtures/configs/invalid/NAME.yaml` has `NAME.expected`: lines that must all appear
/// in the output of `saln-pipe validate`, which must exit with code 2.
#[test]
fn every_invalid_fixture_reports_all_its_problems() {
    let files = yamls(&root().join("fixtures/configs/invalid"));
    assert!(files.len() >= 3);
    for f in files {
        let expected = std::fs::read_to_string(f.with_extension("expected")).unwrap();
        let o = bin()
            .arg("validate")
            .arg(&f)
            .current_dir(root())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}: {}", f.display(), text(&o));
        let out = text(&o);
        for line in expected.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                out.contains(line.trim()),
                "{}: missing `{line}` in:\n{out}",
                f.display()
            );
        }
    }
}

#[test]
fn run_without_reference_weights_fails_with_the_fix() {
    require_fmnist();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.yaml");
    std::fs::write(
        &cfg,
        format!(
            "source: {{ idx: {{ dir: {FMNIST} }} }}\nextractor: {{ weights: {}/none.safetensors }}\nreport: {{ path: {}/r.json }}\n",
            dir.path().display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let o = bin().arg("run").arg(&cfg).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("saln-pipe pretrain"), "{}", text(&o));
}

#[test]
fn sigint_stops_the_run_and_leaves_a_valid_report() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_idx(dir.path(), 3000, 200);
    let report = dir.path().join("report.json");
    let cfg = dir.path().join("p.yaml");
    std::fs::write(
        &cfg,
        format!(
            "device: cpu\nsource: {{ idx: {{ dir: {} }}, holdout: 100 }}\nselection: {{ policy: uniform }}\n\
             trainer: {{ epochs: 1000, arch: {{ conv1: 2, conv2: 2, hidden: 4 }} }}\nreport: {{ path: {}, progress_seconds: 0 }}\n",
            data.display(),
            report.display()
        ),
    )
    .unwrap();
    let mut child = bin()
        .arg("run")
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first epoch line, then interrupt.
    let stdout = child.stdout.take().unwrap();
    let first = within(Duration::from_secs(60), move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next().unwrap().unwrap();
        std::thread::spawn(move || lines.for_each(drop));
        first
    });
    assert!(first.starts_with("epoch"), "{first}");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let status = within(Duration::from_secs(30), move || child.wait().unwrap());
    assert_eq!(status.code(), Some(130));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(json["status"], "cancelled");
    let epochs = json["epochs"].as_array().unwrap().len();
    assert!((1..1000).contains(&epochs), "{epochs}");
}
