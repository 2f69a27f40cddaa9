//! `saln-pipe curate` and the example pipelines.
use std::process::Command;

use crate::fixtures::{config, kept_per_epoch};

#[test]
fn curate_writes_parquet_and_refuses_to_mix_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.trainer.epochs = 1;
    let yaml_path = tmp.path().join("curate.yaml");
    std::fs::write(&yaml_path, serde_saphyr::to_string(&cfg).unwrap()).unwrap();
    let out_dir = tmp.path().join("out");
    let curate = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_saln-pipe"))
            .arg("curate")
            .arg(&yaml_path)
            .arg("--out")
            .arg(&out_dir)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = curate(&[]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains(&format!("{} kept", kept_per_epoch(0.25))),
        "{stdout}"
    );
    let rows = saln::export::read::read(&out_dir, false).unwrap();
    assert_eq!(rows.len(), kept_per_epoch(0.25));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(report["status"], "completed");
    assert_eq!(report["export"]["kept_rows"], kept_per_epoch(0.25));

    let o = curate(&[]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("--overwrite") || stderr.contains("export.overwrite"),
        "{stderr}"
    );
    assert!(curate(&["--overwrite"]).status.success());

    // Without an export section or --out: a usage error.
    let o = Command::new(env!("CARGO_BIN_EXE_saln-pipe"))
        .arg("curate")
        .arg(&yaml_path)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("export"));
}

#[test]
fn every_example_pipeline_parses() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines");
    let (mut n, mut evals) = (0, 0);
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            let text = std::fs::read_to_string(&p).unwrap();
            if saln::eval::is_eval_yaml(&text) {
                saln::eval::EvalConfig::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                evals += 1;
            } else {
                saln::config::PipelineConfig::load(&p)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
    }
    assert!(n >= 3, "{n} pipeline files");
    assert!(evals >= 1, "{evals} evaluation files");
}
