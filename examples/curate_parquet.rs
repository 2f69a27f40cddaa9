//! Curation without training: select with SALN and write the selected set as Parquet, for
//! training in another framework (see docs/parquet-schema.md for the columns and how to
//! read them with pandas, polars or DuckDB).
//!
//! The example pretrains a tiny reference model on 1000 held-out Fashion-MNIST images
//! (seconds), then curates 2000 others: super-batches of 256, a quarter kept by the
//! spectral rule, kept and rejected rows written to `OUT/curated/`.
//!
//! Run: `cargo run --release --example curate_parquet [-- OUT_DIR [FASHION_MNIST_DIR]]`
//! (default `target/saln/examples`).
use std::path::{Path, PathBuf};

use saln::config::PipelineConfig;
use saln::pipeline::Cancel;

/// What the curation wrote.
pub struct Outcome {
    /// The export folder.
    pub dir: PathBuf,
    /// Rows written, kept rows, rejected rows.
    pub rows: (u64, u64, u64),
    /// Learner samples curated.
    pub samples: usize,
}

/// Curates Fashion-MNIST from `data` into `out/curated`.
pub fn curate(data: &Path, out: &Path) -> Result<Outcome, Box<dyn std::error::Error>> {
    let yaml = format!(
        "seed: 3\n\
         source: {{ idx: {{ dir: '{data}' }}, holdout: 1000, limit: 2000, test_limit: 500 }}\n\
         augment: {{ ops: [ {{ normalize: {{ mean: [0.286], std: [0.353] }} }} ] }}\n\
         superbatch: {{ size: 256 }}\n\
         extractor:\n  weights: '{out}/reference.safetensors'\n  arch: {{ conv1: 8, conv2: 16, hidden: 32 }}\n  pretrain: {{ epochs: 5 }}\n\
         selection: {{ policy: saln, keep_ratio: 0.25, rule: quantile }}\n\
         trainer: {{ epochs: 1 }}\n\
         export: {{ dir: '{out}/curated', include_rejected: true, overwrite: true }}\n\
         report: {{ path: '{out}/curate-report.json', progress_seconds: 0 }}\n",
        data = data.display(),
        out = out.display()
    );
    let cfg = PipelineConfig::from_yaml_str(&yaml, "curate_parquet.yaml")?;
    if !cfg.extractor.weights.exists() {
        let s = saln::pipeline::pretrain(&cfg, &mut |_, _| {})?;
        println!(
            "reference model: {} held-out images, test accuracy {:.1}%",
            s.samples,
            100.0 * s.test_accuracy
        );
    }
    let report = saln::pipeline::curate(&cfg, Cancel::default(), None)?;
    let x = report.export.expect("curate always reports its export");
    println!(
        "{} rows ({} kept, {} rejected) in {:?} under {}",
        x.rows,
        x.kept_rows,
        x.rejected_rows,
        x.files,
        x.dir.display()
    );

    // Read it back: the kept samples of the first super-batch, in the rule's order.
    let rows = saln::export::read::read(&x.dir, false)?;
    let mut first: Vec<_> = rows
        .iter()
        .filter(|r| r.superbatch == 0 && r.kept)
        .collect();
    first.sort_by_key(|r| r.rank);
    for r in first.iter().take(5) {
        println!(
            "  rank {:>3}  score {:+.4}  label {}  {}",
            r.rank, r.score, r.label, r.source
        );
    }
    Ok(Outcome {
        dir: x.dir,
        rows: (x.rows, x.kept_rows, x.rejected_rows),
        samples: report.data.learner_samples,
    })
}

/// `SALN_FASHION_MNIST_DIR`, else Debian's location.
fn default_data_dir() -> PathBuf {
    std::env::var("SALN_FASHION_MNIST_DIR")
        .unwrap_or_else(|_| "/usr/share/datasets/fashion-mnist".into())
        .into()
}

#[cfg_attr(test, allow(dead_code))]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args.next().unwrap_or_else(|| "target/saln/examples".into());
    let data = args.next().map_or_else(default_data_dir, Into::into);
    curate(&data, Path::new(&out))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn curation_writes_every_sample_once_with_a_quarter_kept() {
        let out = tempfile::tempdir().unwrap();
        let o = super::curate(&super::default_data_dir(), out.path()).unwrap();
        assert_eq!(o.samples, 2000);
        let (rows, kept, rejected) = o.rows;
        // 2000 = 7 x 256 + 208: 7 x 64 + 52 kept.
        assert_eq!(
            (rows, kept, rejected),
            (2000, 7 * 64 + 52, 2000 - 7 * 64 - 52)
        );
        let back = saln::export::read::read(&o.dir, false).unwrap();
        let mut ids: Vec<u64> = back.iter().map(|r| r.sample_id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(
            ids.len(),
            2000,
            "every learner sample appears once in one epoch"
        );
    }
}
