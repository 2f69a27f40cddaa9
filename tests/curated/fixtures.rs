//! A synthetic 8x8 IDX data set (10 classes, 1200 training and 200 test images) and a tiny
//! reference CNN pretrained on its held-out share, made once per test process.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use saln::config::PipelineConfig;

pub const TRAIN: usize = 1200;
pub const HOLDOUT: usize = 300;
pub const LEARNER: usize = TRAIN - HOLDOUT;
pub const B: usize = 64;

pub struct Fixture {
    /// The reference model, pretrained on the held-out share.
    pub weights: PathBuf,
}

/// Deterministic pixel noise.
fn noise(i: usize, p: usize) -> u8 {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (p as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (x >> 58) as u8 // 0..63
}

/// Images of class `k` are dark with a bright 3x3 block whose place depends on `k`.
pub fn images(n: usize, seed: usize, label_shift: u8) -> (Vec<u8>, Vec<u8>) {
    let mut px = Vec::with_capacity(n * 64);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let k = (i * 7 + seed) % 10;
        let (r0, c0) = (k / 4 * 2, k % 4 + (k / 8));
        for p in 0..64 {
            let (r, c) = (p / 8, p % 8);
            let on = (r0..r0 + 3).contains(&r) && (c0..c0 + 3).contains(&c);
            px.push(if on { 192 } else { 0 } + noise(i + seed * 10_000, p));
        }
        labels.push((k as u8 + label_shift) % 10);
    }
    (px, labels)
}

/// Writes the four IDX files of a data set into `dir`.
pub fn write_idx(dir: &Path, label_shift: u8) {
    std::fs::create_dir_all(dir).unwrap();
    let (px, lab) = images(TRAIN, 0, label_shift);
    saln::source::idx::write_pair(
        &dir.join("train-images-idx3-ubyte"),
        &dir.join("train-labels-idx1-ubyte"),
        &px,
        &lab,
        8,
        8,
        false,
    )
    .unwrap();
    let (px, lab) = images(200, 3, label_shift);
    saln::source::idx::write_pair(
        &dir.join("t10k-images-idx3-ubyte"),
        &dir.join("t10k-labels-idx1-ubyte"),
        &px,
        &lab,
        8,
        8,
        true,
    )
    .unwrap();
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let root = root();
        remove_stale_fixtures(&root);
        let data = root.join("data");
        write_idx(&data, 0);
        let f = Fixture {
            weights: root.join("reference.safetensors"),
        };
        let cfg = base_config(&root.join("pretrain"));
        saln::pipeline::pretrain(&cfg, &mut |_, _| {}).unwrap();
        f
    })
}

/// Fixtures of earlier test processes that are no longer running.
fn remove_stale_fixtures(mine: &Path) {
    let Some(parent) = mine.parent() else { return };
    for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("saln-curated-") {
            if e.path() != mine && !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("saln-curated-{}", std::process::id()))
}

/// The base pipeline for a test working in `tmp`: saln, keep 25%, B = 64, 2 epochs,
/// tiny CNNs, report in `tmp`. The data and the reference weights exist.
pub fn config(tmp: &Path) -> PipelineConfig {
    fixture();
    base_config(tmp)
}

fn base_config(tmp: &Path) -> PipelineConfig {
    let root = root();
    let yaml = format!(
        "seed: 5\n\
         source: {{ idx: {{ dir: '{data}' }}, holdout: {HOLDOUT}, test_limit: 200 }}\n\
         augment: {{ workers: 2, ops: [ {{ hflip: {{ p: 0.5 }} }}, {{ normalize: {{ mean: [0.4], std: [0.3] }} }} ] }}\n\
         superbatch: {{ size: {B}, prefetch: 2 }}\n\
         extractor: {{ weights: '{w}', arch: {{ conv1: 4, conv2: 8, hidden: 16 }}, pretrain: {{ epochs: 2, batch_size: 32 }} }}\n\
         selection: {{ policy: saln, keep_ratio: 0.25 }}\n\
         trainer: {{ epochs: 2, arch: {{ conv1: 4, conv2: 8, hidden: 16 }} }}\n\
         report: {{ path: '{r}', progress_seconds: 0 }}\n",
        data = root.join("data").display(),
        w = root.join("reference.safetensors").display(),
        r = tmp.join("report.json").display(),
    );
    PipelineConfig::from_yaml_str(&yaml, "fixture.yaml").unwrap()
}

pub use crate::within::within;

/// `keep_count` of every super-batch of one epoch of the learner share.
pub fn kept_per_epoch(keep_ratio: f64) -> usize {
    let full = LEARNER / B;
    let rest = LEARNER % B;
    full * saln::select::keep_count(B, keep_ratio)
        + if rest > 0 {
            saln::select::keep_count(rest, keep_ratio)
        } else {
            0
        }
}
