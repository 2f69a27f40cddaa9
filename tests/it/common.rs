//! Helpers shared by the integration tests.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use saln::config::PipelineConfig;

/// Where Debian's dataset-fashion-mnist puts the files (`make test` installs it).
pub const FMNIST: &str = "/usr/share/datasets/fashion-mnist";

/// Panics with the fix when the real data set is missing: these tests must not pass silently.
pub fn require_fmnist() {
    assert!(
        Path::new(FMNIST).join("train-images-idx3-ubyte.gz").exists(),
        "Fashion-MNIST is missing from {FMNIST}: run `make test` (it installs dataset-fashion-mnist) \
         or `apt-get install dataset-fashion-mnist`"
    );
}

/// A small pipeline on a slice of the real data set, writing under `dir`.
pub fn fmnist_config(dir: &Path, weights: &Path) -> PipelineConfig {
    let yaml = format!(
        r#"
seed: 3
device: cpu
source:
  idx: {{ dir: {FMNIST} }}
  holdout: 1000
  limit: 3000
  test_limit: 2000
augment:
  workers: 2
  ops:
    - hflip: {{ p: 0.5 }}
    - shift: {{ max_px: 2 }}
    - normalize: {{ mean: [0.286], std: [0.353] }}
superbatch: {{ size: 128, prefetch: 3 }}
extractor:
  weights: {weights}
  arch: {{ conv1: 8, conv2: 16, hidden: 32 }}
  pretrain: {{ epochs: 2, batch_size: 64 }}
selection: {{ policy: saln, keep_ratio: 0.25 }}
trainer:
  epochs: 3
  lr: 0.002
  arch: {{ conv1: 16, conv2: 32, hidden: 64 }}
report:
  path: {report}
  progress_seconds: 0
"#,
        weights = weights.display(),
        report = dir.join("report.json").display()
    );
    PipelineConfig::from_yaml_str(&yaml, "test.yaml").unwrap()
}

/// Reference weights for [`fmnist_config`], pretrained once per test process.
pub fn fmnist_reference() -> PathBuf {
    static WEIGHTS: OnceLock<PathBuf> = OnceLock::new();
    WEIGHTS
        .get_or_init(|| {
            require_fmnist();
            let dir = std::env::temp_dir().join(format!("saln-it-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let weights = dir.join("reference.safetensors");
            let cfg = fmnist_config(&dir, &weights);
            saln::pipeline::pretrain(&cfg, &mut |_, _| {}).unwrap();
            weights
        })
        .clone()
}

/// Writes a small synthetic IDX data set: `classes` classes of 16x16 images, each class a
/// bright bar at its own position and angle, plus noise. Returns its folder.
pub fn synthetic_idx(dir: &Path, train: usize, test: usize) -> PathBuf {
    let root = dir.join("synthetic");
    std::fs::create_dir_all(&root).unwrap();
    let mut state = 12345u64;
    let mut noise = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 58) as u8
    };
    let mut make = |n: usize| {
        let mut images = Vec::with_capacity(n * 256);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let c = i % 4;
            for y in 0..16usize {
                for x in 0..16usize {
                    let on = match c {
                        0 => (6..10).contains(&y),
                        1 => (6..10).contains(&x),
                        2 => x.abs_diff(y) < 2,
                        _ => x.abs_diff(15 - y) < 2,
                    };
                    images.push(if on { 200 + noise() } else { noise() });
                }
            }
            labels.push(c as u8);
        }
        (images, labels)
    };
    let (ti, tl) = make(train);
    let (vi, vl) = make(test);
    saln::source::idx::write_pair(
        &root.join("train-images-idx3-ubyte.gz"),
        &root.join("train-labels-idx1-ubyte.gz"),
        &ti,
        &tl,
        16,
        16,
        true,
    )
    .unwrap();
    saln::source::idx::write_pair(
        &root.join("t10k-images-idx3-ubyte"),
        &root.join("t10k-labels-idx1-ubyte"),
        &vi,
        &vl,
        16,
        16,
        false,
    )
    .unwrap();
    root
}

pub use super::within::within;
