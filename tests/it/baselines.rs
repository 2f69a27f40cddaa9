//! The learner-aware baselines (`loss`, `rho-loss`, `jest`) in the real pipeline: the
//! learner's snapshots make the selection a function of the seed, never of thread timing.
use std::time::Duration;

use saln::pipeline::{self, Cancel, Curation};
use saln::report::Status;
use saln::select::Policy;

use super::common::*;

fn run(
    policy: Policy,
    workers: usize,
    capacity: usize,
    refresh_every: u64,
) -> saln::report::Report {
    let weights = fmnist_reference();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fmnist_config(dir.path(), &weights);
    cfg.source.limit = Some(1280);
    cfg.source.test_limit = Some(300);
    cfg.trainer.epochs = 2;
    cfg.selection.policy = policy;
    cfg.selection.keep_ratio = 0.25;
    cfg.selection.refresh_every = refresh_every;
    cfg.selection.snapshot_lag = 3;
    cfg.augment.workers = workers;
    cfg.channels.extract_to_train = capacity;
    cfg.channels.loader_to_extract = capacity;
    within(Duration::from_secs(300), move || {
        pipeline::run(&cfg, Cancel::default(), None).unwrap()
    })
}

#[test]
fn snapshots_make_loss_based_selection_independent_of_timing() {
    for policy in [Policy::Loss, Policy::RhoLoss, Policy::Jest] {
        // 1 worker and queues of 1: the extract stage often waits for the trainer.
        // 3 workers and queues of 6: it runs ahead as far as the lag allows.
        let a = run(policy, 1, 1, 2);
        let b = run(policy, 3, 6, 2);
        assert_eq!(a.status, Status::Completed);
        assert_eq!(
            a.selection.kept_digest, b.selection.kept_digest,
            "{policy:?}: same seed, same selection"
        );
        assert_eq!(
            a.epochs[1].test_accuracy, b.epochs[1].test_accuracy,
            "{policy:?}"
        );
        assert_eq!(a.epochs[0].images_trained, 320, "a quarter of 1280");
        let (la, lb) = (a.selection.learner.unwrap(), b.selection.learner.unwrap());
        // Sub-batch j is scored with the weights of step 2 * floor((j - 3) / 2): with 20
        // sub-batches, j - s(j) is 0..=2 for j < 3 then 3 or 4, so the deterministic
        // staleness figures are equal too.
        assert_eq!(la.max_staleness, 4);
        assert_eq!(la.mean_staleness, lb.mean_staleness);
        assert_eq!(la.refreshes, lb.refreshes);
        assert_eq!(la.refreshes, 1 + (19 - 3) / 2, "steps 0, 2, ..., 16");
    }
}

#[test]
fn the_learner_changes_what_loss_selects() {
    // Refreshing every step and every 1000 steps (never, after step 0) score with different
    // weights, so they must select differently: the snapshots are really used.
    let fresh = run(Policy::Loss, 2, 2, 1);
    let frozen = run(Policy::Loss, 2, 2, 1000);
    assert_ne!(fresh.selection.kept_digest, frozen.selection.kept_digest);
    assert_eq!(frozen.selection.learner.unwrap().refreshes, 1);
    let uniform = run(Policy::Uniform, 2, 2, 1);
    assert!(uniform.selection.learner.is_none());
    assert_ne!(uniform.selection.kept_digest, fresh.selection.kept_digest);
}

#[test]
fn curating_without_a_trainer_rejects_learner_aware_policies() {
    let weights = fmnist_reference();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fmnist_config(dir.path(), &weights);
    cfg.selection.policy = Policy::Jest;
    let e = Curation::start(&cfg, Cancel::default())
        .err()
        .expect("no trainer, no learner");
    let msg = e.to_string();
    assert!(
        msg.contains("selection.policy") && msg.contains("learner"),
        "{msg}"
    );
}
