//! The `selection` source: a curated set read back and trained on.
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use saln::config::{ExportConfig, PipelineConfig};
use saln::loader::{Item, Loader};
use saln::pipeline::Cancel;
use saln::select::Policy;
use saln::source::selection::{EpochPick, SelectionSourceConfig};

use crate::fixtures::{config, within, write_idx, LEARNER};

/// Curates the fixture (uniform, 2 epochs, rejected rows too) into `dir`.
fn curate(tmp: &Path) -> Vec<saln::export::ExportRow> {
    let mut cfg = config(tmp);
    cfg.selection.policy = Policy::Uniform;
    let mut e = ExportConfig::new(tmp.join("export"));
    e.include_rejected = true;
    cfg.export = Some(e);
    let report = saln::pipeline::curate(&cfg, Cancel::default(), None).unwrap();
    assert!(report.epochs.is_empty(), "curation trains nothing");
    saln::export::read::read(&tmp.join("export"), false).unwrap()
}

/// Ids one epoch of a `policy: none` loader over the selection delivers.
fn served(cfg: &PipelineConfig) -> saln::Result<Vec<u64>> {
    let cfg = cfg.clone();
    within(Duration::from_secs(30), move || {
        let mut ids = Vec::new();
        for item in Loader::from_config(&cfg)? {
            if let Item::Batch(b) = item? {
                ids.extend(b.ids);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    })
}

fn over_selection(tmp: &Path, pick: EpochPick, include_rejected: bool) -> PipelineConfig {
    let mut cfg = config(tmp);
    cfg.source.selection = Some(SelectionSourceConfig {
        export: tmp.join("export"),
        epoch: pick,
        include_rejected,
    });
    cfg.source.holdout = 0;
    cfg.selection.policy = Policy::None;
    cfg.trainer.epochs = 1;
    cfg
}

#[test]
fn a_curated_set_is_served_back_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = curate(tmp.path());
    let kept = |epoch: Option<u32>| -> Vec<u64> {
        let s: BTreeSet<u64> = rows
            .iter()
            .filter(|r| r.kept && epoch.is_none_or(|e| r.epoch == e))
            .map(|r| r.sample_id)
            .collect();
        s.into_iter().collect()
    };
    let epoch1 = served(&over_selection(tmp.path(), EpochPick::Epoch(1), false)).unwrap();
    assert_eq!(epoch1, kept(Some(1)));
    assert!(epoch1.len() < LEARNER / 3);
    let all = served(&over_selection(tmp.path(), EpochPick::All, false)).unwrap();
    assert_eq!(all, kept(None));
    assert!(
        all.len() > epoch1.len(),
        "the union of two epochs' selections"
    );
    let everything = served(&over_selection(tmp.path(), EpochPick::Epoch(0), true)).unwrap();
    assert_eq!(
        everything.len(),
        LEARNER,
        "kept and rejected: the whole learner share"
    );
}

#[test]
fn a_selection_over_the_wrong_data_set_or_epoch_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    curate(tmp.path());
    // Same size, other labels: the export's ids and labels do not match.
    let other = tmp.path().join("other");
    write_idx(&other, 1);
    let mut cfg = over_selection(tmp.path(), EpochPick::Epoch(0), false);
    cfg.source.idx.as_mut().unwrap().dir = other;
    let e = served(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("another data set") && e.contains("train-images-idx3-ubyte#"),
        "{e}"
    );

    let e = served(&over_selection(tmp.path(), EpochPick::Epoch(7), false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("epoch") && e.contains("[0, 1]"), "{e}");

    let mut cfg = over_selection(tmp.path(), EpochPick::All, false);
    cfg.source.selection.as_mut().unwrap().export = tmp.path().join("nothing-here");
    std::fs::create_dir(tmp.path().join("nothing-here")).unwrap();
    let e = served(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("nothing-here") && e.contains("no Parquet files"),
        "{e}"
    );
}
