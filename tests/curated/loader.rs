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

// ---- feedback: the losses a loop reports steer the learner-aware policies ----

/// `n` 2x2 grey samples with ids `1000 + i` (the `loss` policy needs no features).
fn plain_source(n: u64) -> Arc<MemorySource> {
    let samples = (0..n)
        .map(|i| Sample {
            id: 1000 + i,
            label: (i % 3) as i64,
            image: RawImage {
                channels: 1,
                height: 2,
                width: 2,
                data: vec![(i % 251) as u8; 4],
            },
        })
        .collect();
    Arc::new(MemorySource::new("mem", samples, 3))
}

/// The loss a test loop reports for sample `id` at `step`: 100 for the "hard" ids (a
/// multiple of 5), about 1 for the others.
fn reported_loss(id: u64, step: u64) -> f32 {
    if id % 5 == 0 {
        100.0
    } else {
        1.0 + ((id * 7 + step) % 13) as f32 * 0.01
    }
}

struct FeedbackRun {
    /// `(step, epoch, ids)` of every batch.
    batches: Vec<(u64, usize, Vec<u64>)>,
    report: saln::loader::LoaderReport,
}

/// A `loss` loader over 200 samples (B = 20, keep 0.5, 4 epochs) whose loop reports
/// [`reported_loss`] for every batch, with every super-batch exported.
fn feedback_run(dir: &std::path::Path, workers: usize, depth: usize, slow: bool) -> FeedbackRun {
    let mut export = ExportConfig::new(dir.join("export"));
    export.include_rejected = true;
    let mut b = Loader::builder(plain_source(200))
        .policy(Policy::Loss)
        .keep_ratio(0.5)
        .superbatch_size(20)
        .epochs(4)
        .seed(3)
        .workers(workers)
        .export(export);
    b.config_mut().channels.extract_to_train = depth;
    b.config_mut().channels.loader_to_extract = depth;
    let mut loader = b.build().unwrap();
    let mut batches = Vec::new();
    for item in &mut loader {
        if let Item::Batch(b) = item.unwrap() {
            if slow && b.step % 3 == 0 {
                // A slow step lets the selection stage run ahead as far as it may.
                std::thread::sleep(Duration::from_millis(20));
            }
            let l: Vec<f32> = b.ids.iter().map(|&id| reported_loss(id, b.step)).collect();
            b.report_loss_values(&l).unwrap();
            batches.push((b.step, b.epoch, b.ids));
        }
    }
    let report = loader.finish().unwrap();
    assert!(report.completed);
    FeedbackRun { batches, report }
}

#[test]
fn reported_losses_decide_what_the_loss_policy_keeps() {
    let tmp = tempfile::tempdir().unwrap();
    let run = feedback_run(tmp.path(), 2, 2, false);
    let lag = 4; // selection.snapshot_lag's default
    let rows = saln::export::read::read(&tmp.path().join("export"), false).unwrap();
    assert_eq!(rows.len(), 4 * 200);
    // Each super-batch's scores are the latest loss reported for a batch below
    // `step - lag` (+inf without one), and the kept samples are the top half by score.
    for (step, _, ids) in &run.batches {
        let mut sb: Vec<_> = rows.iter().filter(|r| r.step == *step).collect();
        sb.sort_by_key(|r| r.position);
        let mut want_scores = Vec::new();
        for r in &sb {
            let seen = run
                .batches
                .iter()
                .filter(|(s, _, kept)| *s + lag < *step && kept.contains(&r.sample_id))
                .map(|(s, _, _)| reported_loss(r.sample_id, *s))
                .next_back();
            want_scores.push(seen.unwrap_or(f32::INFINITY));
        }
        let got: Vec<f32> = sb.iter().map(|r| r.score).collect();
        assert_eq!(got, want_scores, "scores of step {step}");
        let as_f64: Vec<f64> = want_scores.iter().map(|&s| s as f64).collect();
        let kept: Vec<u64> = saln::select::baselines::top_b(&as_f64, 10)
            .into_iter()
            .map(|p| sb[p].sample_id)
            .collect();
        assert_eq!(&kept, ids, "kept at step {step}");
    }
    // So: every sample is trained on once before any twice, then the hard ones are kept.
    let last: Vec<u64> = run
        .batches
        .iter()
        .filter(|b| b.1 == 3)
        .flat_map(|b| b.2.iter().copied())
        .collect();
    let hard = last.iter().filter(|&&id| id % 5 == 0).count();
    assert_eq!(hard, 40, "all 40 hard samples are kept in the last epoch");
    let f = run.report.selection.feedback.as_ref().unwrap();
    assert_eq!(f.lag, 4);
    assert_eq!(f.samples_with_loss + f.samples_without_loss, 800);
    assert!(f.samples_with_loss > 0 && f.max_loss_age > lag);
}

#[test]
fn the_feedback_selection_does_not_depend_on_timing_or_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let a = feedback_run(&tmp.path().join("a"), 1, 1, false);
    let b = feedback_run(&tmp.path().join("b"), 3, 6, true);
    assert_eq!(a.batches, b.batches);
    assert_eq!(
        a.report.selection.kept_digest,
        b.report.selection.kept_digest
    );
}

#[test]
fn a_loop_that_reports_nothing_still_ends_and_a_late_report_is_refused() {
    let mut b = Loader::builder(plain_source(60))
        .policy(Policy::Loss)
        .keep_ratio(0.25)
        .superbatch_size(20)
        .epochs(2);
    b.config_mut().selection.snapshot_lag = 0;
    let mut loader = b.build().unwrap();
    let first = loader.find_map(|i| i.unwrap().batch()).unwrap();
    let second = loader.find_map(|i| i.unwrap().batch()).unwrap();
    // Asking for batch 1 settled batch 0 without losses: its report is refused now.
    let e = first
        .report_loss_values(&vec![1.0; first.len()])
        .unwrap_err();
    assert!(e.to_string().contains("batch 0 came after"), "{e}");
    second.report_loss_values(&vec![1.0; second.len()]).unwrap();
    let e = second
        .report_loss_values(&vec![1.0; second.len()])
        .unwrap_err();
    assert!(e.to_string().contains("already reported"), "{e}");
    // Nothing else is reported; the loader still delivers both epochs.
    let rest = loader.by_ref().filter_map(|i| i.unwrap().batch()).count();
    assert_eq!(rest, 6 - 2);
    assert!(loader.finish().unwrap().completed);
}

#[test]
fn rho_loss_in_a_loader_subtracts_the_reference_models_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.selection.policy = Policy::RhoLoss;
    cfg.selection.keep_ratio = 0.5;
    let mut loader = Loader::from_config(&cfg).unwrap();
    let mut finite = 0;
    for item in &mut loader {
        if let Item::Batch(b) = item.unwrap() {
            // Reducible loss = reported - reference: below the reported 50 once known.
            finite += b.scores.iter().filter(|s| s.is_finite()).count();
            assert!(b.scores.iter().all(|&s| s == f32::INFINITY || s < 50.0));
            b.report_loss_values(&vec![50.0; b.len()]).unwrap();
        }
    }
    let report = loader.finish().unwrap();
    assert!(finite > 0, "the second epoch scores reported losses");
    assert!(report.selection.feedback.unwrap().samples_with_loss as usize >= finite);
}

/// A resume state outside the run (another configuration's) and a resumed loader with an
/// export (whose folder would lose the rows before the state) are configuration errors.
#[test]
fn a_resume_state_outside_the_run_or_with_an_export_is_refused() {
    use saln::batch::LoaderState;
    let build = || {
        Loader::builder(plain_source(40))
            .policy(Policy::Uniform)
            .keep_ratio(0.5)
            .superbatch_size(10)
            .epochs(2)
    };
    // 4 super-batches an epoch, 2 epochs: (2, 0) is the end, (1, 3) the last one.
    for (epoch, superbatch, ok) in [(1, 3, true), (2, 0, true), (1, 4, false), (3, 0, false)] {
        let r = build().resume(LoaderState { epoch, superbatch }).build();
        match (r, ok) {
            (Ok(l), true) => drop(l),
            (Err(e), false) => {
                let e = e.to_string();
                assert!(
                    e.contains("resume") && e.contains("outside this run"),
                    "{e}"
                );
            }
            (r, _) => panic!("({epoch}, {superbatch}): {:?}", r.map(|_| ())),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let e = build()
        .export(ExportConfig::new(dir.path().join("x")))
        .resume(LoaderState::at(2, 4))
        .build()
        .unwrap_err()
        .to_string();
    assert!(e.contains("export") && e.contains("resumed"), "{e}");
}
