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

/// `dir/p.yaml`: a pipeline over a synthetic IDX set in `dir` (1000 training images, 100 of
/// them held out, 100 test images) reporting to `dir/report.json`; `source` is added to the
/// source block, `rest` holds the other sections.
fn synthetic_pipeline(dir: &Path, source: &str, rest: &str) -> PathBuf {
    let data = dir.join("synthetic");
    if !data.exists() {
        synthetic_idx(dir, 1000, 100);
    }
    let cfg = dir.join("p.yaml");
    std::fs::write(
        &cfg,
        format!(
            "device: cpu\nsource: {{ idx: {{ dir: {} }}, holdout: 100{source} }}\n{rest}\
             report: {{ path: {} }}\n",
            data.display(),
            dir.join("report.json").display()
        ),
    )
    .unwrap();
    cfg
}

/// `saln-pipe curate CFG --out OUT`, which must succeed: its output and the JSON report of a
/// [`synthetic_pipeline`].
fn curate(cfg: &Path, out: &Path) -> (Output, serde_json::Value) {
    let o = bin()
        .arg("curate")
        .arg(cfg)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let report = std::fs::read(cfg.with_file_name("report.json")).unwrap();
    (o, serde_json::from_slice(&report).unwrap())
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
        // Likewise a pipeline whose reference model `saln-pipe pretrain` has not trained yet.
        let waits = text(&o).lines().all(|l| {
            (l.contains("source (line") && l.contains("target/saln/") && l.contains("No such file"))
                || (l.contains("extractor.weights") && l.contains("saln-pipe pretrain"))
        });
        assert!(o.status.success() || waits, "{}: {}", f.display(), text(&o));
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

/// Issue 16: one run of `validate` lists every mistake of a file, each with its key path and
/// line, ordered by line: parse errors of several sections (two unknown enum values, a wrong
/// type, an unknown key), the value problems of the sections that parsed, and the missing
/// data folder.
#[test]
fn validate_reports_every_mistake_of_a_file_in_one_run() {
    let f = root().join("fixtures/configs/invalid/several-mistakes.yaml");
    let o = bin()
        .arg("validate")
        .arg(&f)
        .current_dir(root())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let found: Vec<(String, usize)> = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter_map(|l| {
            let rest = l.split_once(".yaml: ")?.1;
            let (key, at) = rest.split_once(" (line ")?;
            let line = at.split([',', ')']).next()?.parse().ok()?;
            Some((key.to_string(), line))
        })
        .collect();
    let want = [
        ("device", 2),
        ("source", 3),
        ("selection.rule", 7),
        ("superbatch.size", 8),
        ("extractor.kind", 10),
        ("trainer.epochs", 12),
        ("report.progress_seconds", 13),
        ("foo", 14),
    ];
    let want: Vec<(String, usize)> = want.iter().map(|(k, l)| (k.to_string(), *l)).collect();
    assert_eq!(found, want, "{}", text(&o));
    let out = text(&o);
    for part in [
        "unknown variant `sideways`",
        "unknown variant `magic`",
        "unknown field `foo`",
        "/nonexistent/fashion-mnist/train-images-idx3-ubyte.gz: not found",
    ] {
        assert!(out.contains(part), "{part} missing in\n{out}");
    }
}

/// Issue 18: the reference weights, `$RANK` / `$WORLD_SIZE` and the image-size rule are
/// checked by `validate`, not first met by `run`.
#[test]
fn validate_checks_what_the_run_will_open_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_idx(dir.path(), 200, 50);
    let cfg = dir.path().join("p.yaml");
    std::fs::write(
        &cfg,
        format!(
            "source: {{ idx: {{ dir: {} }}, holdout: 50 }}
extractor: {{ weights: {}/none.safetensors }}
",
            data.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let o = bin()
        .arg("validate")
        .arg(&cfg)
        .env("RANK", "one")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("extractor.weights (line 2): ") && out.contains("saln-pipe pretrain"),
        "{out}"
    );
    assert!(
        out.contains("superbatch.shard.rank: $RANK is `one`, not a whole number"),
        "{out}"
    );
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

/// Issue 16: `curate` with `policy: uniform` (no feature stage to be the slowest) prints a
/// summary with only measured figures: no empty stage name, no rate of zero; its report
/// lists only the stages that ran.
#[test]
fn curate_with_uniform_summarises_only_what_ran() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = synthetic_pipeline(
        dir.path(),
        "",
        "selection: { policy: uniform }\ntrainer: { epochs: 1 }\n",
    );
    let (o, json) = curate(&cfg, &dir.path().join("out"));
    let err = String::from_utf8_lossy(&o.stderr);
    let summary = err
        .lines()
        .find(|l| l.contains("end to end"))
        .unwrap_or_else(|| panic!("no summary line in\n{err}"));
    assert!(!summary.contains("stage  "), "{summary}");
    assert!(!summary.contains(" 0/s"), "{summary}");
    assert!(!summary.contains(" 0 samples/s"), "{summary}");
    assert!(!summary.contains("overlap 0.00"), "{summary}");
    for s in json["stages"].as_array().unwrap() {
        assert!(
            s["items"].as_u64().unwrap() > 0 || s["received"].as_u64().unwrap() > 0,
            "{s}"
        );
    }
    let overlap = &json["overlap"];
    if let Some(stage) = overlap.get("slowest_stage") {
        assert!(!stage.as_str().unwrap().is_empty(), "{overlap}");
        assert!(
            overlap["slowest_standalone_rate"].as_f64().unwrap() > 0.0,
            "{overlap}"
        );
    }
    assert!(
        overlap["end_to_end_rate"].as_f64().unwrap() > 0.0,
        "{overlap}"
    );
}

/// Issue 15's redundant variant: `source.repeat` offers every learner sample several times
/// (the held-out share once), and the report counts the repeats offered and kept.
#[test]
fn a_repeated_source_offers_copies_and_counts_the_repeats_kept() {
    let dir = tempfile::tempdir().unwrap();
    let rest = "superbatch: { size: 64 }\nselection: { policy: uniform, keep_ratio: 0.5 }\n\
                trainer: { epochs: 1 }\n";
    let cfg = synthetic_pipeline(dir.path(), ", limit: 200, repeat: 4", rest);
    let (_, json) = curate(&cfg, &dir.path().join("out"));
    assert_eq!(json["data"]["learner_samples"], 800, "{}", json["data"]);
    assert_eq!(json["data"]["holdout_samples"], 100, "{}", json["data"]);
    let sel = &json["selection"];
    let (offered, kept) = (
        sel["repeats_in"].as_u64().unwrap(),
        sel["repeats_kept"].as_u64().unwrap(),
    );
    // 800 samples in super-batches of 64: a copy often meets another copy of its original.
    assert!(offered > 20, "{sel}");
    assert!(kept > 0 && kept < offered, "{sel}");
    // Without `repeat` nothing repeats.
    let cfg = synthetic_pipeline(dir.path(), ", limit: 200", rest);
    let (_, json) = curate(&cfg, &dir.path().join("out2"));
    assert_eq!(json["selection"]["repeats_in"], 0);
    assert_eq!(json["data"]["learner_samples"], 200);
}
