//! `saln-pipe eval` and `saln-pipe viz` end to end on a tiny grid of the real data set: the
//! table and the plots exist and agree with the per-run JSON reports, and a second
//! invocation runs nothing again.
use std::path::{Path, PathBuf};
use std::process::Command;

use super::common::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_saln-pipe"))
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The pipeline part of the tiny grid (also used alone by `viz`).
fn pipeline_yaml(indent: &str, weights: &Path, report: &Path) -> String {
    let body = format!(
        r#"seed: 0
device: cpu
source:
  idx: {{ dir: {FMNIST} }}
  holdout: 600
  limit: 384
  test_limit: 400
augment:
  workers: 2
  ops:
    - hflip: {{ p: 0.5 }}
    - normalize: {{ mean: [0.286], std: [0.353] }}
superbatch: {{ size: 64 }}
extractor:
  weights: {weights}
  arch: {{ conv1: 4, conv2: 8, hidden: 16 }}
  pretrain: {{ epochs: 2, batch_size: 64 }}
selection: {{ refresh_every: 2, snapshot_lag: 3 }}
trainer:
  epochs: 2
  lr: 0.003
  arch: {{ conv1: 4, conv2: 8, hidden: 16 }}
report: {{ path: {report}, progress_seconds: 0 }}
"#,
        weights = weights.display(),
        report = report.display()
    );
    body.lines().map(|l| format!("{indent}{l}\n")).collect()
}

/// The PNG's width and height, after checking its signature.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The table row of `policy` at `ratio`, split into trimmed cells.
fn row(md: &str, ratio: &str, policy: &str) -> Vec<String> {
    let rows: Vec<Vec<String>> = md
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
        .filter(|c: &Vec<String>| c.len() > 3 && c[1] == ratio && c[2] == policy)
        .collect();
    assert_eq!(rows.len(), 1, "one row for {policy} at {ratio} in:\n{md}");
    rows.into_iter().next().unwrap()
}

#[test]
fn tiny_grid_writes_a_table_and_plots_that_match_the_run_reports() {
    require_fmnist();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results");
    let file = dir.path().join("eval.yaml");
    let yaml =
        format!(
        "pipeline:\n{}grid:\n  policies: [loss, \"saln:quantile\"]\n  keep_ratios: [0.5, 0.25]\n  \
         seeds: [4]\n  target_accuracy: 0.5\n  output: {}\n",
        pipeline_yaml("  ", Path::new("ignored.safetensors"), Path::new("ignored.json")),
        out.display()
    );
    std::fs::write(&file, yaml).unwrap();

    let o = bin().arg("validate").arg(&file).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("an eval grid of 4 runs"), "{}", text(&o));

    let o = bin().arg("eval").arg(&file).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let log = text(&o);
    assert!(
        log.contains("pretraining the reference CNN of seed 4"),
        "{log}"
    );
    assert!(log.contains("4 run now, 0 skipped"), "{log}");
    assert!(out.join("reference/seed-4.safetensors").is_file());

    let names = [
        ("0.5", "loss", "loss_r0.5_s4"),
        ("0.5", "saln:quantile", "saln-quantile_r0.5_s4"),
        ("0.25", "loss", "loss_r0.25_s4"),
        ("0.25", "saln:quantile", "saln-quantile_r0.25_s4"),
    ];
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    let summary = json(&out.join("results.json"));
    assert_eq!(summary["runs_completed"], 4);
    assert_eq!(summary["cells"].as_array().unwrap().len(), 4);
    let mut fastest = f64::INFINITY;
    for (ratio, policy, name) in names {
        let report = json(&out.join("runs").join(format!("{name}.json")));
        assert_eq!(report["status"], "completed", "{name}");
        assert_eq!(report["seed"], 4);
        assert_eq!(
            report["config"]["selection"]["keep_ratio"].to_string(),
            ratio
        );
        let epochs = report["epochs"].as_array().unwrap();
        assert_eq!(epochs.len(), 2);
        fastest = fastest.min(epochs[1]["wall_seconds"].as_f64().unwrap());
        // One seed: mean = the run's value, spread 0.
        let r = row(&md, ratio, policy);
        let acc = report["final_test_accuracy"].as_f64().unwrap();
        assert_eq!(r[3], "1", "{name}: runs");
        assert_eq!(
            r[4],
            format!("{:.2} ± 0.00", 100.0 * acc),
            "{name}: accuracy"
        );
        let wall = report["wall_seconds"].as_f64().unwrap();
        assert_eq!(r[5], format!("{wall:.1} ± 0.0"), "{name}: wall-clock");
        let sel = &report["selection"];
        let sel_s = sel["superbatches"].as_f64().unwrap()
            * (sel["ms_per_forward"].as_f64().unwrap() + sel["ms_per_selection"].as_f64().unwrap())
            / 1e3;
        assert_eq!(r[6], format!("{sel_s:.1}"), "{name}: selection seconds");
        let reached = epochs
            .iter()
            .find(|e| e["test_accuracy"].as_f64().unwrap() >= 0.5)
            .map(|e| e["wall_seconds"].as_f64().unwrap());
        let want = reached.map_or("not reached".to_string(), |t| format!("{t:.1} ± 0.0"));
        assert_eq!(r[7], want, "{name}: time to target");
        // loss scores with the learner: staleness is reported; saln has none.
        if policy == "loss" {
            let l = &sel["learner"];
            let cell = format!(
                "{:.1} / {}",
                l["mean_staleness"].as_f64().unwrap(),
                l["max_staleness"]
            );
            assert_eq!(r[9], cell, "{name}: staleness");
        } else {
            assert!(sel.get("learner").is_none());
            assert_eq!(r[9], "—");
        }
    }
    assert_eq!(summary["budget_seconds"].as_f64().unwrap(), fastest);
    assert!(md.contains(&format!("T = {fastest:.1} s")), "{md}");
    for ratio in ["0.5", "0.25"] {
        assert_eq!(
            png_size(&out.join(format!("accuracy-r{ratio}.png"))),
            (1440, 560)
        );
    }
    let leftovers: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Resumable: nothing runs again, and the reports stay as they were.
    let before = std::fs::read(out.join("runs/loss_r0.25_s4.json")).unwrap();
    let o = bin().arg("eval").arg(&file).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("0 run now, 4 skipped"), "{}", text(&o));
    assert_eq!(
        before,
        std::fs::read(out.join("runs/loss_r0.25_s4.json")).unwrap()
    );
    // A budget past every run's end: nothing runs again, and every cell is marked as holding
    // its final accuracy (a stopped run, not one the budget cut short).
    let long = dir.path().join("eval-long-budget.yaml");
    std::fs::write(
        &long,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("grid:\n", "grid:\n  budget_seconds: 100000\n"),
    )
    .unwrap();
    let o = bin().arg("eval").arg(&long).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("0 run now, 4 skipped"), "{}", text(&o));
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    let summary = json(&out.join("results.json"));
    for (ratio, policy, name) in names {
        let r = row(&md, ratio, policy);
        let acc = json(&out.join("runs").join(format!("{name}.json")))["final_test_accuracy"]
            .as_f64()
            .unwrap();
        assert_eq!(r[8], format!("{:.2} ± 0.00 ‡", 100.0 * acc), "{name}");
    }
    for c in summary["cells"].as_array().unwrap() {
        assert_eq!(c["budget_after_last_evaluation"], 1, "{c}");
    }
    assert!(md.contains("‡ Some of these runs had finished"), "{md}");

    // viz on the grid's reference: both pictures, the spectral one square-ish.
    let pipe = dir.path().join("p.yaml");
    std::fs::write(
        &pipe,
        pipeline_yaml(
            "",
            &out.join("reference/seed-0.safetensors"),
            &dir.path().join("r.json"),
        )
        .replace(
            "refresh_every",
            "policy: saln, rule: extremes, keep_ratio: 0.5, refresh_every",
        ),
    )
    .unwrap();
    let o = bin()
        .arg("viz")
        .arg(&pipe)
        .arg("--superbatch")
        .arg("7")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "seed 0 has no reference yet: {}",
        text(&o)
    );
    assert!(text(&o).contains("saln-pipe pretrain"), "{}", text(&o));
    std::fs::copy(
        out.join("reference/seed-4.safetensors"),
        out.join("reference/seed-0.safetensors"),
    )
    .unwrap();
    let pics = dir.path().join("viz");
    let o = bin()
        .arg("viz")
        .arg(&pipe)
        .arg("--superbatch")
        .arg("7")
        .arg("--out")
        .arg(&pics)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("32 of 64 kept"), "{}", text(&o));
    let (w, h) = png_size(&pics.join("superbatch-7-images.png"));
    assert!(w >= 8 * 56 && h >= 8 * 56, "{w}x{h}: 64 images of 56 px");
    assert_eq!(
        png_size(&pics.join("superbatch-7-spectrum.png")),
        (1000, 860)
    );
    // 384 samples / 64 = 6 super-batches per epoch, 2 epochs: 12 in all.
    let o = bin()
        .arg("viz")
        .arg(&pipe)
        .arg("--superbatch")
        .arg("12")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("the run has 12 super-batches"),
        "{}",
        text(&o)
    );
}

/// The grids committed under `docs/results/` resume with nothing to do: pointed at its
/// folder, each eval file finds a completed report of the same configuration for every run
/// (the reports were written under `target/saln/...` and before `superbatch.shard` existed;
/// `saln::eval::existing` documents why both still match). Run `saln-pipe eval` on such a
/// grid and it only rewrites the table.
#[test]
fn the_committed_grids_resume_with_zero_runs_to_do() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (yaml, folder, total) in [
        (
            "pipelines/eval-fashion-mnist.yaml",
            "docs/results/fashion-mnist",
            75,
        ),
        (
            "pipelines/eval-fashion-mnist-uniform-8-epochs.yaml",
            "docs/results/fashion-mnist-uniform-8-epochs",
            9,
        ),
        (
            "pipelines/eval-fashion-mnist-resnet.yaml",
            "docs/results/fashion-mnist-resnet",
            21,
        ),
        (
            "pipelines/eval-fashion-mnist-resnet-redundant.yaml",
            "docs/results/fashion-mnist-resnet-redundant",
            21,
        ),
    ] {
        let mut cfg = saln::eval::EvalConfig::load(&root.join(yaml)).unwrap();
        cfg.grid.output = root.join(folder);
        assert_eq!(cfg.runs().len(), total, "{yaml}");
        let pending = saln::eval::pending(&cfg).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        let names: Vec<&str> = pending.iter().map(|r| r.name.as_str()).collect();
        assert!(names.is_empty(), "{yaml}: runs to do: {names:?}");
    }
}
