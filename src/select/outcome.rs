//! What selection produces: the curated [`SubBatch`] that flows to the trainer (and the
//! export), the [`SelectionRecord`] of a whole super-batch, and a run's [`SelectionStats`].
//!
//! These types live in `select` because they are the selector's output; the extract stage
//! (which runs the selector on its features) and every stage after it use them.
use tch::Tensor;

use super::feedback::FeedbackStats;
use super::learner::LearnerStats;
use super::Selection;

/// The curated part of a super-batch, as the trainer receives it.
#[derive(Debug)]
pub struct SubBatch {
    /// Global sequence number of the super-batch it came from.
    pub seq: u64,
    /// Epoch.
    pub epoch: usize,
    /// Size of the super-batch it came from (B).
    pub superbatch_len: usize,
    /// Stable ids of the kept samples.
    pub ids: Vec<u64>,
    /// Kept images, `[b, C, H, W]` float32 on the configured device.
    pub images: Tensor,
    /// Their labels, `[b]` int64 on the same device.
    pub labels: Tensor,
    /// The selector's score of each kept sample.
    pub scores: Vec<f32>,
    /// The whole super-batch as the selector saw it; filled only when an export asks for
    /// it ([`RecordMode`]), `None` otherwise.
    pub record: Option<SelectionRecord>,
    /// The loader's figures up to and including this super-batch.
    pub loaded: crate::batch::LoaderSummary,
    /// The selection's figures up to and including this super-batch.
    pub tally: Acc,
}

/// What the extract stage keeps of each super-batch for an export
/// (see the `export` stage).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RecordMode {
    /// Nothing: sub-batches carry `record: None`.
    #[default]
    Off,
    /// Ids, labels, scores and the kept mask of every sample of the super-batch.
    Scores,
    /// As `Scores`, plus every sample's feature vector (computes features even for
    /// policies that need none).
    Features,
}

/// One super-batch as the selector saw it: every sample, kept or not, in super-batch order.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectionRecord {
    /// Source indices of the samples.
    pub indices: Vec<usize>,
    /// Stable ids.
    pub ids: Vec<u64>,
    /// Labels.
    pub labels: Vec<i64>,
    /// The selector's score of each sample ([`Selection::scores`]).
    pub scores: Vec<f32>,
    /// Whether each sample reached the trainer.
    pub kept: Vec<bool>,
    /// Length of each feature vector (0 when features were not recorded).
    pub feature_dim: usize,
    /// Feature vectors, `[n * feature_dim]` row-major float32 (empty when not recorded).
    pub features: Vec<f32>,
}

/// Selection figures of a run.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SelectionStats {
    /// Super-batches selected from.
    pub superbatches: u64,
    /// Samples seen by the selector.
    pub samples_in: u64,
    /// Samples kept.
    pub samples_kept: u64,
    /// Super-batches whose spectrum was computed (the saln policy).
    pub spectra: u64,
    /// Spectra per solver (`dense`, `lanczos`).
    pub solvers: std::collections::BTreeMap<String, u64>,
    /// Spectra with a repeated `lambda2` or no edge: zero scores, kept by position.
    pub degenerate: u64,
    /// Spectra where the iterative solver stopped before its tolerance.
    pub unconverged: u64,
    /// Mean lambda2 over spectra (0 for policies without a spectrum).
    pub mean_lambda2: f64,
    /// Mean lambda3.
    pub mean_lambda3: f64,
    /// Mean `lambda3 - lambda2`.
    pub mean_gap: f64,
    /// Smallest `lambda3 - lambda2` seen (how close the Fiedler vector came to unstable).
    pub min_gap: f64,
    /// Mean milliseconds of selection per super-batch.
    pub ms_per_selection: f64,
    /// Mean milliseconds of feature extraction per super-batch.
    pub ms_per_forward: f64,
    /// Selection time as a fraction of feature-extraction time.
    pub selection_over_forward: f64,
    /// FNV-1a digest of every kept id in order: equal digests mean equal selections.
    pub kept_digest: String,
    /// Samples offered that repeat an original already in their super-batch (`source.repeat`
    /// copies; 0 without them).
    pub repeats_in: u64,
    /// Kept samples that repeat an original already kept from their super-batch: a policy
    /// that avoids redundancy keeps fewer than uniform sampling's share of `repeats_in`.
    pub repeats_kept: u64,
    /// The learner-aware policies (`loss`, `rho-loss`, `jest`): how fresh the learner's
    /// weights were when they scored super-batches. For them, `ms_per_forward` is the
    /// learner's and the reference model's forward passes (snapshot waits excluded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learner: Option<LearnerStats>,
    /// The learner-aware policies in a loader run: how the losses the loop reported scored
    /// super-batches (`select::feedback`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedback: Option<FeedbackStats>,
}

/// The running figures behind [`SelectionStats`] (the digest of the kept ids included), up
/// to some super-batch: each [`SubBatch`] carries the tally as of itself, so a checkpoint
/// taken after training on it records the selection's figures at exactly that point, and a
/// resumed run continues the tally (and so the `kept_digest`) from there.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Acc {
    n: u64,
    spectra: u64,
    solvers: std::collections::BTreeMap<String, u64>,
    degenerate: u64,
    unconverged: u64,
    samples_in: u64,
    kept: u64,
    l2: f64,
    l3: f64,
    #[serde(with = "finite_or_inf")]
    min_gap: f64,
    sel_s: f64,
    fwd_s: f64,
    digest: u64,
    #[serde(default)]
    repeats_in: u64,
    #[serde(default)]
    repeats_kept: u64,
}

impl Acc {
    /// An empty tally.
    pub fn new() -> Self {
        Acc {
            min_gap: f64::INFINITY,
            digest: 0xcbf2_9ce4_8422_2325,
            ..Default::default()
        }
    }
    /// Counts a super-batch's repeated samples, offered and kept (`source.repeat`).
    pub(crate) fn add_repeats(&mut self, offered: u64, kept: u64) {
        self.repeats_in += offered;
        self.repeats_kept += kept;
    }
    pub(crate) fn add(&mut self, s: &Selection, n_in: usize, ids: &[u64], fwd: f64) {
        self.n += 1;
        self.samples_in += n_in as u64;
        self.kept += s.kept.len() as u64;
        if let Some(solver) = s.solver {
            self.spectra += 1;
            *self.solvers.entry(solver.name().to_string()).or_default() += 1;
            self.degenerate += u64::from(s.degenerate);
            self.unconverged += u64::from(!s.converged);
            self.l2 += s.lambda2;
            self.l3 += s.lambda3;
            self.min_gap = self.min_gap.min(s.lambda3 - s.lambda2);
        }
        self.sel_s += s.seconds;
        self.fwd_s += fwd;
        for id in ids {
            for b in id.to_le_bytes() {
                self.digest = (self.digest ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    /// The figures of the tally.
    pub fn finish(&self) -> SelectionStats {
        let n = self.n.max(1) as f64;
        let spectra = self.spectra.max(1) as f64;
        SelectionStats {
            superbatches: self.n,
            samples_in: self.samples_in,
            samples_kept: self.kept,
            spectra: self.spectra,
            solvers: self.solvers.clone(),
            degenerate: self.degenerate,
            unconverged: self.unconverged,
            mean_lambda2: self.l2 / spectra,
            mean_lambda3: self.l3 / spectra,
            mean_gap: (self.l3 - self.l2) / spectra,
            min_gap: if self.min_gap.is_finite() {
                self.min_gap
            } else {
                0.0
            },
            ms_per_selection: 1e3 * self.sel_s / n,
            ms_per_forward: 1e3 * self.fwd_s / n,
            selection_over_forward: if self.fwd_s > 0.0 {
                self.sel_s / self.fwd_s
            } else {
                0.0
            },
            kept_digest: format!("{:016x}", self.digest),
            repeats_in: self.repeats_in,
            repeats_kept: self.repeats_kept,
            learner: None,
            feedback: None,
        }
    }
}

/// `f64` in JSON with the infinities written as strings (JSON has no infinity).
mod finite_or_inf {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if *v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum V {
            N(f64),
            S(String),
        }
        Ok(match V::deserialize(d)? {
            V::N(x) => x,
            V::S(s) if s == "-inf" => f64::NEG_INFINITY,
            V::S(_) => f64::INFINITY,
        })
    }
}
