//! The whole pipeline, in process: on a slice of the real data set and on data the tests make.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saln::pipeline::{self, Cancel, Curation, Event, Msg};
use saln::report::Status;
use saln::source::{idx::IdxSource, DataSet, OnError, Sample, Source};
use saln::Error;

use super::common::*;

#[test]
fn real_data_slice_trains_on_a_quarter_of_each_superbatch() {
    let weights = fmnist_reference();
    let dir = tempfile::tempdir().unwrap();
    let cfg = fmnist_config(dir.path(), &weights);
    let epochs = Arc::new(Mutex::new(Vec::new()));
    let seen = epochs.clone();
    let observer: pipeline::Observer = Arc::new(move |e: &Event| {
        if let Event::Epoch(r) = e {
            seen.lock().unwrap().push(r.clone());
        }
    });
    let report = pipeline::run(&cfg, Cancel::default(), Some(observer)).unwrap();
    assert_eq!(report.status, Status::Completed);
    assert_eq!(report.epochs.len(), 3);
    assert_eq!(
        *epochs.lock().unwrap(),
        report.epochs,
        "observer saw every epoch"
    );
    // 3000 learner samples in super-batches of 128: 23 full ones (32 kept each) and one of 56 (14 kept).
    for e in &report.epochs {
        assert_eq!(e.images_seen, 3000);
        assert_eq!(e.images_trained, 23 * 32 + 14);
        assert_eq!(e.steps, 24);
    }
    let acc = report.final_test_accuracy.unwrap();
    assert!(
        acc > 0.65,
        "accuracy {acc} on 2000 test images (chance is 0.10)"
    );
    assert_eq!(report.data.test_samples, 2000);
    assert_eq!(report.data.holdout_samples, 1000);
    assert_eq!(report.selection.superbatches, 72);
    assert!(report.selection.mean_lambda2 > 0.0);
    assert!(report.selection.mean_lambda3 >= report.selection.mean_lambda2);
    // The report on disk is the same report.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg.report.path).unwrap()).unwrap();
    assert_eq!(json["status"], "completed");
    assert_eq!(
        json["selection"]["kept_digest"],
        report.selection.kept_digest.as_str()
    );
    assert_eq!(json["config"]["selection"]["keep_ratio"], 0.25);
    let stages: Vec<&str> = json["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["loader", "extract", "train"]);
}

#[test]
fn same_seed_same_selection_and_accuracy_whatever_the_worker_count() {
    let weights = fmnist_reference();
    let run = |workers: usize, seed: u64| {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = fmnist_config(dir.path(), &weights);
        cfg.source.limit = Some(1200);
        cfg.source.test_limit = Some(500);
        cfg.trainer.epochs = 1;
        cfg.augment.workers = workers;
        cfg.seed = seed;
        pipeline::run(&cfg, Cancel::default(), None).unwrap()
    };
    let one = run(1, 5);
    let four = run(4, 5);
    assert_eq!(one.selection.kept_digest, four.selection.kept_digest);
    assert_eq!(one.epochs[0].test_accuracy, four.epochs[0].test_accuracy);
    assert_eq!(one.epochs[0].train_loss, four.epochs[0].train_loss);
    let other = run(2, 6);
    assert_ne!(one.selection.kept_digest, other.selection.kept_digest);
}

#[test]
fn synthetic_data_is_learned_through_spectral_selection() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_idx(dir.path(), 1600, 400);
    let yaml = format!(
        r#"
device: cpu
source: {{ idx: {{ dir: {data} }}, holdout: 400 }}
augment: {{ workers: 2, ops: [ {{ normalize: {{ mean: [0.3], std: [0.3] }} }} ] }}
superbatch: {{ size: 64 }}
extractor:
  weights: {dir}/ref.safetensors
  arch: {{ conv1: 4, conv2: 8, hidden: 16 }}
  pretrain: {{ epochs: 2, batch_size: 32 }}
selection: {{ keep_ratio: 0.5, rule: balanced }}
trainer: {{ epochs: 3, arch: {{ conv1: 4, conv2: 8, hidden: 16 }}, lr: 0.01 }}
report: {{ path: {dir}/report.json, progress_seconds: 0 }}
"#,
        data = data.display(),
        dir = dir.path().display()
    );
    let cfg = saln::config::PipelineConfig::from_yaml_str(&yaml, "synthetic.yaml").unwrap();
    let pre = saln::pipeline::pretrain(&cfg, &mut |_, _| {}).unwrap();
    assert!(
        pre.test_accuracy > 0.9,
        "reference accuracy {}",
        pre.test_accuracy
    );
    let report = pipeline::run(&cfg, Cancel::default(), None).unwrap();
    assert!(
        report.final_test_accuracy.unwrap() > 0.9,
        "{:?}",
        report.epochs
    );
    assert_eq!(
        report.epochs[0].images_trained, 600,
        "half of 1200 learner samples"
    );
}

/// A source that fails on samples whose index is 3 modulo `every` (never when `every` is 0).
struct Failing {
    inner: IdxSource,
    name: &'static str,
    every: usize,
    calls: AtomicUsize,
}

impl Source for Failing {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn get(&self, i: usize) -> saln::Result<Sample> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.every > 0 && i % self.every == 3 {
            Err(Error::Sample {
                sample: self.locate(i),
                message: "corrupt image".into(),
            })
        } else {
            self.inner.get(i)
        }
    }
    fn locate(&self, i: usize) -> String {
        format!("{}#{i}", self.name)
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn shape(&self) -> saln::source::SourceShape {
        self.inner.shape()
    }
}

/// 2000 training samples failing every `every`, 200 test samples failing every `test_every`.
fn failing_data(
    dir: &std::path::Path,
    every: usize,
    test_every: usize,
) -> (Arc<DataSet>, saln::config::PipelineConfig) {
    let root = synthetic_idx(dir, 2000, 200);
    let open = |i: &str, l: &str| IdxSource::open(&root.join(i), &root.join(l)).unwrap();
    let data = DataSet {
        train: Arc::new(Failing {
            inner: open("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
            name: "failing.bin",
            every,
            calls: AtomicUsize::new(0),
        }),
        test: Arc::new(Failing {
            inner: open("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
            name: "failing-test.bin",
            every: test_every,
            calls: AtomicUsize::new(0),
        }),
    };
    let yaml = format!(
        "device: cpu\nsource: {{ idx: {{ dir: {root} }}, holdout: 100 }}\n\
         selection: {{ policy: uniform }}\nsuperbatch: {{ size: 32 }}\n\
         trainer: {{ epochs: 30, arch: {{ conv1: 2, conv2: 2, hidden: 4 }} }}\n\
         report: {{ path: {dir}/report.json, progress_seconds: 0 }}\n",
        root = root.display(),
        dir = dir.display()
    );
    (
        Arc::new(data),
        saln::config::PipelineConfig::from_yaml_str(&yaml, "t").unwrap(),
    )
}

#[test]
fn a_bad_sample_stops_the_run_with_its_name_and_a_failed_report() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = failing_data(dir.path(), 1500, 0);
    let report_path = cfg.report.path.clone();
    let err = within(Duration::from_secs(60), move || {
        pipeline::run_with(&cfg, data, Cancel::default(), None).unwrap_err()
    });
    let msg = err.to_string();
    assert!(
        msg.contains("loader stage")
            && msg.contains("failing.bin#")
            && msg.contains("corrupt image"),
        "{msg}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report_path).unwrap()).unwrap();
    assert_eq!(json["status"], "failed");
    assert!(json["error"].as_str().unwrap().contains("failing.bin#"));
}

#[test]
fn a_bad_test_sample_fails_the_run_by_default_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = failing_data(dir.path(), 0, 50);
    let err = within(Duration::from_secs(60), move || {
        pipeline::run_with(&cfg, data, Cancel::default(), None).unwrap_err()
    });
    let msg = err.to_string();
    assert!(
        msg.contains("failing-test.bin#3") && msg.contains("corrupt image"),
        "{msg}"
    );
}

#[test]
fn skipped_samples_are_counted_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let (data, mut cfg) = failing_data(dir.path(), 100, 50);
    cfg.source.on_error = OnError::Skip;
    cfg.trainer.epochs = 2;
    let report = pipeline::run_with(&cfg, data, Cancel::default(), None).unwrap();
    // Learner samples whose index is 3 mod 100 fail; each is met once per epoch.
    let split = saln::source::Split::new(2000, 100, None, cfg.seed).unwrap();
    let bad = split.learner.iter().filter(|&&i| i % 100 == 3).count() as u64;
    assert!(bad > 0);
    assert_eq!(report.data.skipped, 2 * bad);
    assert_eq!(
        report.epochs[0].images_seen + report.data.skipped / 2,
        report.data.learner_samples as u64
    );
    assert!(
        report.data.first_skipped[0].contains("failing.bin#")
            && report.data.first_skipped[0].contains("corrupt")
    );
    // Test samples 3, 53, 103 and 153 fail: left out of the evaluation, counted and named.
    assert_eq!(report.data.test_skipped, 4);
    assert_eq!(report.data.test_samples, 196);
    assert!(report.data.test_first_skipped[0].contains("failing-test.bin#3"));
}

#[test]
fn cancel_stops_every_stage_and_keeps_completed_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = failing_data(dir.path(), 0, 0);
    let cancel = Cancel::default();
    let trigger = cancel.clone();
    let observer: pipeline::Observer = Arc::new(move |e: &Event| {
        if let Event::Epoch(r) = e {
            if r.epoch == 2 {
                trigger.cancel();
            }
        }
    });
    let report = within(Duration::from_secs(60), move || {
        pipeline::run_with(&cfg, data, cancel, Some(observer)).unwrap()
    });
    assert_eq!(report.status, Status::Cancelled);
    assert!(
        report.epochs.len() >= 2 && report.epochs.len() < 30,
        "{}",
        report.epochs.len()
    );
}

#[test]
fn a_slow_consumer_makes_upstream_wait_with_bounded_queues() {
    let dir = tempfile::tempdir().unwrap();
    let (data, mut cfg) = failing_data(dir.path(), 0, 0);
    cfg.superbatch.prefetch = 2;
    cfg.channels.loader_to_extract = 1;
    cfg.channels.extract_to_train = 1;
    let curation = Curation::start_with(&cfg, data, Cancel::default()).unwrap();
    let (mut rx, handle) = curation.into_parts();
    let mut consumed = 0u64;
    let mut max_ahead = 0u64;
    for _ in 0..15 {
        match rx.blocking_recv() {
            Some(Msg::Data(_)) => consumed += 1,
            Some(Msg::EpochEnd { .. }) => continue,
            None => break,
        }
        std::thread::sleep(Duration::from_millis(40));
        let produced = handle.stats[0].snapshot().items;
        max_ahead = max_ahead.max(produced - consumed);
    }
    // Super-batches decoded but not consumed: at most the loader's in-flight jobs, one in each
    // channel, one held by each stage thread, plus one in the reorder buffer.
    assert!(
        max_ahead <= 2 + 1 + 1 + 2 + 1,
        "loader ran {max_ahead} super-batches ahead"
    );
    assert!(consumed == 15);
    drop(rx);
    let (_, err) = within(Duration::from_secs(20), move || handle.finish());
    assert!(err.is_none(), "{err:?}");
}

#[test]
fn missing_reference_weights_say_how_to_make_them() {
    let dir = tempfile::tempdir().unwrap();
    require_fmnist();
    let cfg = fmnist_config(dir.path(), &dir.path().join("nope.safetensors"));
    let e = pipeline::run(&cfg, Cancel::default(), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("nope.safetensors") && e.contains("saln-pipe pretrain"),
        "{e}"
    );
}
