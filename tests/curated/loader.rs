//! The loader API: what it yields, feedback, export, errors, and shutdown on early drop.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_core::Stream;
use saln::config::ExportConfig;
use saln::loader::{Item, Loader};
use saln::select::Policy;
use saln::source::{MemorySource, RawImage, Sample, Source};

use crate::fixtures::{config, fixture, images, kept_per_epoch, within, B, LEARNER};

#[test]
fn batches_match_the_export_and_losses_arrive() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.selection.policy = Policy::Uniform;
    cfg.export = Some(ExportConfig::new(tmp.path().join("export")));
    let mut loader = Loader::from_config(&cfg).unwrap();
    let losses = loader.losses();
    let mut steps: Vec<(u64, usize, Vec<u64>)> = Vec::new();
    let mut ends = Vec::new();
    for item in &mut loader {
        match item.unwrap() {
            Item::Batch(b) => {
                assert_eq!(b.step, steps.len() as u64);
                assert_eq!(b.images.size(), [b.len() as i64, 1, 8, 8]);
                assert_eq!(b.images.kind(), tch::Kind::Float);
                assert_eq!(b.labels.size(), [b.len() as i64]);
                assert_eq!(b.labels.kind(), tch::Kind::Int64);
                assert!(b.scores.iter().all(|&s| s == 0.0), "uniform scores nothing");
                // A per-sample "loss" that says which step and sample it came from.
                let l: Vec<f32> = b
                    .ids
                    .iter()
                    .map(|&id| b.step as f32 + id as f32 * 1e-4)
                    .collect();
                b.report_losses(&tch::Tensor::from_slice(&l)).unwrap();
                steps.push((b.step, b.epoch, b.ids));
            }
            Item::EpochEnd { epoch } => ends.push(epoch),
        }
    }
    assert_eq!(ends, [0, 1]);
    let report = loader.finish().unwrap();
    assert!(report.completed && report.error.is_none());
    assert_eq!(report.steps as usize, steps.len());
    let total: usize = steps.iter().map(|s| s.2.len()).sum();
    assert_eq!(total, 2 * kept_per_epoch(0.25));

    // The export holds, step by step, exactly the ids the loop received.
    let x = report.export.unwrap();
    assert_eq!(x.kept_rows as usize, total);
    assert_eq!(x.discarded_rows, 0);
    let rows = saln::export::read::read(&tmp.path().join("export"), false).unwrap();
    for (step, epoch, ids) in &steps {
        let exported: Vec<u64> = rows
            .iter()
            .filter(|r| r.step == *step)
            .map(|r| r.sample_id)
            .collect();
        assert_eq!(&exported, ids, "step {step}");
        assert!(rows
            .iter()
            .filter(|r| r.step == *step)
            .all(|r| r.epoch as usize == *epoch));
    }

    // Every sample's latest loss is the one reported at the last step that trained on it.
    for (step, _, ids) in &steps {
        for &id in ids {
            let e = losses.get(id).unwrap();
            assert!(e.step >= *step);
            if e.step == *step {
                assert_eq!(e.loss, *step as f32 + id as f32 * 1e-4);
            }
        }
    }
    let distinct: std::collections::BTreeSet<u64> =
        steps.iter().flat_map(|s| s.2.iter().copied()).collect();
    assert_eq!(losses.len(), distinct.len());
}

#[test]
fn bad_feedback_is_refused_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.selection.policy = Policy::Uniform;
    let mut loader = Loader::from_config(&cfg).unwrap();
    let b = loader.find_map(|i| i.unwrap().batch()).unwrap();
    let short = tch::Tensor::from_slice(&[1.0f32, 2.0]);
    let e = b.report_losses(&short).unwrap_err().to_string();
    assert!(
        e.contains("2 losses") && e.contains(&format!("{} samples", b.len())),
        "{e}"
    );
    let mut v = vec![0.5f32; b.len()];
    v[3] = f32::INFINITY;
    let e = b.report_loss_values(&v).unwrap_err().to_string();
    assert!(e.contains(&format!("id {}", b.ids[3])), "{e}");
    assert!(loader.losses().is_empty());
}

/// A source that counts `get` calls: stages still running would keep calling it.
struct Counting {
    inner: MemorySource,
    gets: AtomicU64,
}

impl Source for Counting {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn get(&self, i: usize) -> saln::Result<Sample> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(i)
    }
    fn locate(&self, i: usize) -> String {
        self.inner.locate(i)
    }
    fn num_classes(&self) -> usize {
        10
    }
    fn shape(&self) -> saln::source::SourceShape {
        saln::source::SourceShape::fixed(1, 8, 8)
    }
}

fn big_source(n: usize) -> Arc<Counting> {
    let (px, labels) = images(n, 1, 0);
    let samples = (0..n)
        .map(|i| Sample {
            id: i as u64,
            label: labels[i] as i64,
            image: RawImage {
                channels: 1,
                height: 8,
                width: 8,
                data: px[i * 64..(i + 1) * 64].to_vec(),
            },
        })
        .collect();
    Arc::new(Counting {
        inner: MemorySource::new("big", samples, 10),
        gets: AtomicU64::new(0),
    })
}

fn saln_loader(src: Arc<Counting>) -> Loader {
    let mut b = Loader::builder(src)
        .policy(Policy::Saln)
        .keep_ratio(0.25)
        .superbatch_size(B)
        .epochs(5)
        .workers(2)
        .extractor_weights(&fixture().weights);
    b.config_mut().extractor.arch = saln::model::CnnArch {
        conv1: 4,
        conv2: 8,
        hidden: 16,
    };
    b.build().unwrap()
}

/// After the loader is gone, no stage holds the source and nobody reads from it.
fn assert_all_stages_ended(src: &Arc<Counting>) {
    assert_eq!(
        Arc::strong_count(src),
        1,
        "a stage thread still holds the source"
    );
    let gets = src.gets.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        src.gets.load(Ordering::SeqCst),
        gets,
        "samples are still being read"
    );
}

#[test]
fn dropping_the_iterator_mid_epoch_stops_every_stage() {
    let src = big_source(20_000);
    let s = src.clone();
    let (dropped_in, total_gets) = within(Duration::from_secs(20), move || {
        let mut loader = saln_loader(s.clone());
        for _ in 0..3 {
            loader.next().unwrap().unwrap();
        }
        let t = Instant::now();
        drop(loader);
        (t.elapsed(), s.gets.load(Ordering::SeqCst))
    });
    assert_all_stages_ended(&src);
    assert!(
        dropped_in < Duration::from_secs(5),
        "drop took {dropped_in:?}"
    );
    assert!(
        total_gets < 20_000,
        "stopped mid-epoch, after {total_gets} reads"
    );
}

#[test]
fn dropping_the_stream_mid_epoch_stops_every_stage() {
    let src = big_source(20_000);
    let s = src.clone();
    let held_after_drop = within(Duration::from_secs(20), move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut stream = Box::pin(saln_loader(s.clone()).into_stream());
            for _ in 0..3 {
                let item = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await;
                assert!(matches!(item, Some(Ok(Item::Batch(_)))));
            }
            drop(stream);
            // Only this task's and the test's handles are left the moment drop returns.
            Arc::strong_count(&s)
        })
    });
    assert_eq!(
        held_after_drop, 2,
        "a stage thread still held the source after drop"
    );
    assert_all_stages_ended(&src);
}

#[test]
fn finishing_early_discards_the_unfinished_epoch_of_the_export() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.selection.policy = Policy::Uniform;
    cfg.export = Some(ExportConfig::new(tmp.path().join("export")));
    let mut loader = Loader::from_config(&cfg).unwrap();
    let per_epoch = LEARNER.div_ceil(B);
    let mut yielded = 0;
    // All of epoch 0 (and its end), then 5 batches of epoch 1.
    while yielded < per_epoch + 5 {
        if let Item::Batch(_) = loader.next().unwrap().unwrap() {
            yielded += 1;
        }
    }
    let report = within(Duration::from_secs(20), move || loader.finish().unwrap());
    assert!(!report.completed);
    let x = report.export.unwrap();
    assert_eq!(x.files, ["epoch-0000-part-0000.parquet"]);
    assert_eq!(x.kept_rows as usize, kept_per_epoch(0.25));
    assert_eq!(
        x.discarded_rows,
        5 * 16,
        "the 5 batches of epoch 1 the loop got"
    );
    let names: Vec<String> = std::fs::read_dir(tmp.path().join("export"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["epoch-0000-part-0000.parquet"],
        "no temporary file left"
    );
}

/// A source whose sample 17 cannot be read.
struct Broken(MemorySource);

impl Source for Broken {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, i: usize) -> saln::Result<Sample> {
        if i == 17 {
            return Err(saln::Error::Sample {
                sample: self.locate(i),
                message: "corrupt".into(),
            });
        }
        self.0.get(i)
    }
    fn locate(&self, i: usize) -> String {
        format!("broken#{i}")
    }
    fn num_classes(&self) -> usize {
        10
    }
    fn shape(&self) -> saln::source::SourceShape {
        saln::source::SourceShape::fixed(1, 8, 8)
    }
}

#[test]
fn a_stage_error_is_yielded_once_then_the_loader_ends() {
    let src = big_source(200);
    let inner = MemorySource::new("x", (0..200).map(|i| src.get(i).unwrap()).collect(), 10);
    let loader = Loader::builder(Arc::new(Broken(inner)))
        .policy(Policy::None)
        .superbatch_size(16)
        .build()
        .unwrap();
    let items: Vec<_> = within(Duration::from_secs(20), move || loader.collect::<Vec<_>>());
    let errors: Vec<String> = items
        .iter()
        .filter_map(|i| i.as_ref().err())
        .map(|e| e.to_string())
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("broken#17") && errors[0].contains("corrupt"),
        "{}",
        errors[0]
    );
    assert!(items.last().unwrap().is_err(), "nothing after the error");
}
