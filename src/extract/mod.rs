//! The extract stage: the frozen reference network, and the selection that runs on its
//! features.
//!
//! The stage owns the model on its own OS thread (libtorch tensors are `Send` but not
//! `Sync`, and grad mode is thread-local), receives super-batches, computes features in
//! micro-batches under `no_grad`, asks the [`Selector`] which samples to keep, and sends the
//! kept images on as a [`SubBatch`] of tensors on the configured device.
//!
//! | file | what |
//! |---|---|
//! | [`pretrain`] | trains the reference CNN on the held-out split and saves it |
//! | [`backbone`] | `extractor.kind`: reference CNN, TorchScript or ResNet; building one |
//! | [`torchscript`] | a user's TorchScript module |
//! | [`resnet`] | torchvision ResNet-18/34/50 from safetensors |
//! | [`input`] | input adaptation: channels, size, normalisation, precision |
use crate::config::Issues;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::path::PathBuf;
use std::time::Instant;

use tch::{nn, Device, Kind, Tensor};

use crate::batch::SuperBatch;
use crate::error::{Error, Result};
use crate::model::{Cnn, CnnArch};
use crate::pipeline::{Cancel, Msg, StageStats};
use crate::select::learner::{LearnerScorer, LearnerStats};
use crate::select::{Selection, Selector};

pub mod backbone;
pub mod input;
pub mod pretrain;
pub mod resnet;
pub mod torchscript;

/// The feature network (any [`backbone::ExtractorKind`]), loaded and frozen; built from the
/// config by [`Extractor::build`].
pub struct Extractor {
    net: backbone::Backbone,
    input: input::InputAdapter,
    device: Device,
    micro_batch: usize,
}

impl Extractor {
    /// Loads the reference CNN's weights written by [`pretrain::pretrain`] for inputs of
    /// `shape` and `classes` classes. A missing file or one of another architecture is an
    /// [`Error::Model`]. [`Extractor::build`] builds any `extractor.kind` from the config.
    pub fn load(
        weights: &Path,
        arch: &CnnArch,
        shape: (usize, usize, usize),
        classes: usize,
        device: Device,
        micro_batch: usize,
    ) -> Result<Extractor> {
        if !weights.exists() {
            return Err(Error::Model {
                path: weights.to_path_buf(),
                message: "not found: train the reference model first with `saln-pipe pretrain <pipeline.yaml>`".into(),
            });
        }
        let mut vs = nn::VarStore::new(device);
        let model = Cnn::new(&vs.root(), arch, shape, classes);
        vs.load(weights).map_err(|e| Error::Model {
            path: weights.to_path_buf(),
            message: format!(
                "cannot load into a CNN of {arch:?} for {shape:?} images and {classes} classes \
                 (was it trained with another `extractor.arch`?): {e}"
            ),
        })?;
        vs.freeze();
        Extractor::reference(vs, model, weights, shape, device, micro_batch)
    }

    /// The device the model lives on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Features of `images` (`[n, C, H, W]` float32 on the model's device, as the pipeline
    /// makes them) -> `[n, d]` float32, computed `micro_batch` samples at a time (input
    /// adaptation included) without gradients.
    pub fn features(&self, images: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let n = images.size()[0];
        let mut parts = Vec::new();
        let mut start = 0;
        while start < n {
            let len = (self.micro_batch as i64).min(n - start);
            parts.push(self.forward(&images.f_narrow(0, start, len)?)?);
            start += len;
        }
        Ok(Tensor::f_cat(&parts, 0)?)
    }
}

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
}

/// What the extract stage keeps of each super-batch for an export
/// (see [`crate::export`]).
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
    /// The learner-aware policies (`loss`, `rho-loss`, `jest`): how fresh the learner's
    /// weights were when they scored super-batches. For them, `ms_per_forward` is the
    /// learner's and the reference model's forward passes (snapshot waits excluded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learner: Option<LearnerStats>,
}

#[derive(Default)]
struct Acc {
    n: u64,
    spectra: u64,
    solvers: std::collections::BTreeMap<String, u64>,
    degenerate: u64,
    unconverged: u64,
    samples_in: u64,
    kept: u64,
    l2: f64,
    l3: f64,
    min_gap: f64,
    sel_s: f64,
    fwd_s: f64,
    digest: u64,
}

impl Acc {
    fn new() -> Self {
        Acc {
            min_gap: f64::INFINITY,
            digest: 0xcbf2_9ce4_8422_2325,
            ..Default::default()
        }
    }
    fn add(&mut self, s: &Selection, n_in: usize, ids: &[u64], fwd: f64) {
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
    fn finish(&self) -> SelectionStats {
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
            learner: None,
        }
    }
}

/// Runs the extract stage: super-batches in, sub-batches out.
/// `extractor` may be `None` only for policies that need no reference model and runs that
/// export no features; `learner` is required by the learner-aware policies
/// ([`crate::select::learner`]).
#[allow(clippy::too_many_arguments)]
pub fn run_extract(
    extractor: Option<Extractor>,
    mut learner: Option<LearnerScorer>,
    selector: Selector,
    device: Device,
    record: RecordMode,
    mut input: tokio::sync::mpsc::Receiver<Msg<SuperBatch>>,
    out: tokio::sync::mpsc::Sender<Msg<SubBatch>>,
    stats: &StageStats,
    cancel: &Cancel,
) -> Result<SelectionStats> {
    let mut acc = Acc::new();
    // Sub-batches sent so far: the trainer's step count once it has consumed them.
    let mut sent = 0u64;
    loop {
        let t = Instant::now();
        let Some(msg) = input.blocking_recv() else {
            break;
        };
        stats.waited(t.elapsed());
        if cancel.is_cancelled() {
            break;
        }
        let sb = match msg {
            Msg::EpochEnd { epoch } => {
                if out.blocking_send(Msg::EpochEnd { epoch }).is_err() {
                    break;
                }
                continue;
            }
            Msg::Data(sb) => sb,
        };
        stats.received();
        let t = Instant::now();
        let n = sb.len();
        let scorer = learner.as_mut().map(|l| (l, sent, cancel));
        let Some((sub, waited)) = curate(
            extractor.as_ref(),
            scorer,
            &selector,
            device,
            record,
            sb,
            &mut acc,
        )?
        else {
            break; // cancelled while waiting for the learner's weights
        };
        stats.item(n);
        stats.waited(waited);
        stats.busy(t.elapsed().saturating_sub(waited));
        let t = Instant::now();
        if out.blocking_send(Msg::Data(sub)).is_err() {
            break;
        }
        sent += 1;
        stats.blocked(t.elapsed());
    }
    let mut summary = acc.finish();
    summary.learner = learner.map(|l| l.stats());
    Ok(summary)
}

/// Curates one super-batch; `learner` is the learner-aware policies' scorer with the number
/// of sub-batches sent so far. Returns the sub-batch and the time spent waiting for the
/// learner's weights, or `None` when cancelled while waiting.
fn curate(
    extractor: Option<&Extractor>,
    learner: Option<(&mut LearnerScorer, u64, &Cancel)>,
    selector: &Selector,
    device: Device,
    record: RecordMode,
    sb: SuperBatch,
    acc: &mut Acc,
) -> Result<Option<(SubBatch, std::time::Duration)>> {
    let n = sb.len();
    let (c, h, w) = sb.shape;
    let images = Tensor::f_from_slice(&sb.pixels)?
        .f_view([n as i64, c as i64, h as i64, w as i64])?
        .f_to_device(device)?;
    let t = Instant::now();
    let mut waited = 0.0;
    let policy = selector.config().policy;
    let features = match (policy.needs_features(), extractor) {
        (true, Some(x)) => Some(x.features(&images)?),
        (true, None) => {
            return Err(Error::Selection {
                superbatch: sb.seq,
                message: "features are needed (policy or export) but no extractor is loaded".into(),
            })
        }
        (false, _) if policy.needs_learner() => {
            let Some((scorer, sent, cancel)) = learner else {
                return Err(Error::Selection {
                    superbatch: sb.seq,
                    message: "policy needs the learner's losses but no learner is loaded".into(),
                });
            };
            let labels = Tensor::f_from_slice(&sb.labels)?.f_to_device(device)?;
            let reference = extractor.filter(|_| policy.needs_reference());
            let scored = scorer
                .losses(&images, &labels, sent, reference, cancel)
                .map_err(|e| match e {
                    Error::Selection { message, .. } => Error::Selection {
                        superbatch: sb.seq,
                        message,
                    },
                    e => e,
                })?;
            let Some(scored) = scored else {
                return Ok(None);
            };
            waited = scored.waited;
            Some(scored.losses)
        }
        (false, _) => None,
    };
    let fwd = t.elapsed().as_secs_f64() - waited;
    let sel = selector
        .select(n, features.as_ref(), sb.seq, sb.progress)
        .map_err(|e| match e {
            // Name the sample by id, not by its position in the super-batch.
            Error::Selection {
                superbatch,
                message,
            } => Error::Selection {
                superbatch,
                message: rename_position(&message, &sb.ids),
            },
            e => e,
        })?;
    let ids: Vec<u64> = sel.kept.iter().map(|&i| sb.ids[i]).collect();
    acc.add(&sel, n, &ids, fwd);
    let index = Tensor::f_from_slice(&sel.kept.iter().map(|&i| i as i64).collect::<Vec<_>>())?
        .f_to_device(device)?;
    let labels: Vec<i64> = sel.kept.iter().map(|&i| sb.labels[i]).collect();
    // The export's features come from the reference model whatever the policy scored with.
    let export_features = match (record, policy.needs_features(), extractor) {
        (RecordMode::Features, true, _) => features.as_ref().map(Tensor::shallow_clone),
        (RecordMode::Features, false, Some(x)) => Some(x.features(&images)?),
        _ => None,
    };
    let record = match record {
        RecordMode::Off => None,
        mode => {
            let mut kept = vec![false; n];
            sel.kept.iter().for_each(|&i| kept[i] = true);
            let (feature_dim, features) = match (mode, &export_features) {
                (RecordMode::Features, Some(f)) => (
                    f.size().get(1).copied().unwrap_or(0) as usize,
                    Vec::<f32>::try_from(
                        f.f_to_kind(Kind::Float)?
                            .f_to_device(Device::Cpu)?
                            .f_flatten(0, -1)?,
                    )?,
                ),
                _ => (0, Vec::new()),
            };
            Some(SelectionRecord {
                indices: sb.indices.clone(),
                ids: sb.ids.clone(),
                labels: sb.labels.clone(),
                scores: sel.scores.clone(),
                kept,
                feature_dim,
                features,
            })
        }
    };
    let sub = SubBatch {
        seq: sb.seq,
        epoch: sb.epoch,
        superbatch_len: n,
        images: images.f_index_select(0, &index)?,
        labels: Tensor::f_from_slice(&labels)?
            .f_to_kind(Kind::Int64)?
            .f_to_device(device)?,
        scores: sel.kept.iter().map(|&i| sel.scores[i]).collect(),
        ids,
        record,
    };
    Ok(Some((sub, std::time::Duration::from_secs_f64(waited))))
}

/// "sample 3 ..." (position) -> "sample id 1234 (position 3) ...".
fn rename_position(message: &str, ids: &[u64]) -> String {
    let Some((prefix, rest)) = ["feature vector of sample ", "loss of sample "]
        .iter()
        .find_map(|p| {
            message
                .strip_prefix(p)
                .map(|rest| (&p[..p.len() - 1], rest))
        })
    else {
        return message.to_string();
    };
    let (num, tail) = rest.split_once(' ').unwrap_or((rest, ""));
    match num
        .parse::<usize>()
        .ok()
        .and_then(|p| ids.get(p).map(|id| (p, id)))
    {
        Some((p, id)) => format!("{prefix} id {id} (position {p}) {tail}"),
        None => message.to_string(),
    }
}

// ---- configuration ----

/// The feature network (`docs/extractors.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractorConfig {
    /// Which network: `reference` (default: the built-in CNN that `saln-pipe pretrain`
    /// trains), `torchscript` (an exported TorchScript module) or `resnet` (torchvision
    /// ResNet-18/34/50 weights as safetensors).
    #[serde(default)]
    pub kind: backbone::ExtractorKind,
    /// `kind: torchscript`: the module file and which output to use.
    #[serde(default)]
    pub torchscript: Option<torchscript::TorchScriptConfig>,
    /// `kind: resnet`: architecture, weights file and output layer.
    #[serde(default)]
    pub resnet: Option<resnet::ResNetConfig>,
    /// `kind: torchscript | resnet`: the input the model expects (channels, size,
    /// normalisation); the pipeline's images are adapted to it.
    #[serde(default)]
    pub input: input::InputConfig,
    /// Run the model in float16 on CUDA (features are returned as float32). A configuration
    /// error on the CPU.
    #[serde(default)]
    pub half: bool,
    /// `kind: reference`: safetensors file with the reference CNN's weights, written by
    /// `saln-pipe pretrain`.
    #[serde(default = "d_weights")]
    pub weights: PathBuf,
    /// `kind: reference`: width of the reference CNN (channels of its two conv layers and its
    /// feature size).
    #[serde(default)]
    pub arch: crate::model::CnnArch,
    /// Samples per forward pass (a large super-batch is cut into micro-batches; input
    /// adaptation happens per micro-batch too). Lower it for big models and inputs, e.g.
    /// 64 to 256 for a ResNet-50 at 224 x 224.
    #[serde(default = "d_micro_batch")]
    pub micro_batch: usize,
    /// `kind: reference`: pretraining on the held-out split.
    #[serde(default)]
    pub pretrain: pretrain::PretrainConfig,
}

pub(crate) fn d_micro_batch() -> usize {
    1024
}
pub(crate) fn d_weights() -> PathBuf {
    "target/saln/reference.safetensors".into()
}

impl ExtractorConfig {
    /// Adds this section's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        v.check(self.micro_batch > 0, "extractor.micro_batch", || {
            "must be at least 1".into()
        });
        if let Err(e) = self.arch.validate() {
            v.at("extractor.arch", e);
        }
        self.pretrain.validate(v);
        self.validate_kind(v);
    }
}

#[cfg(test)]
mod tests {
    use crate::select::{Selection, Solver};

    #[test]
    fn selection_stats_summarise_solvers_gaps_and_degenerate_spectra() {
        let sel = |solver: Option<Solver>, l2: f64, l3: f64, degenerate: bool| Selection {
            kept: vec![0, 1],
            scores: vec![0.0; 4],
            keep_ratio: 0.5,
            lambda2: l2,
            lambda3: l3,
            solver,
            degenerate,
            converged: true,
            matvecs: 0,
            seconds: 0.01,
        };
        let mut acc = super::Acc::new();
        acc.add(&sel(Some(Solver::Dense), 1.0, 2.0, false), 4, &[1, 2], 0.1);
        acc.add(
            &sel(Some(Solver::Lanczos), 3.0, 3.5, false),
            4,
            &[3, 4],
            0.1,
        );
        acc.add(&sel(Some(Solver::Lanczos), 2.0, 2.0, true), 4, &[5, 6], 0.1);
        let s = acc.finish();
        assert_eq!(
            (s.superbatches, s.spectra, s.degenerate, s.unconverged),
            (3, 3, 1, 0)
        );
        assert_eq!(s.solvers.get("dense"), Some(&1));
        assert_eq!(s.solvers.get("lanczos"), Some(&2));
        assert!((s.mean_lambda2 - 2.0).abs() < 1e-12 && (s.mean_gap - 0.5).abs() < 1e-12);
        assert_eq!(s.min_gap, 0.0);
        assert!((s.selection_over_forward - 0.1).abs() < 1e-12);
        // Policies without a spectrum do not drag the eigenvalue means to 0.
        let mut acc = super::Acc::new();
        acc.add(&sel(Some(Solver::Dense), 4.0, 5.0, false), 4, &[1, 2], 0.1);
        acc.add(&sel(None, 0.0, 0.0, false), 4, &[1, 2], 0.1);
        let s = acc.finish();
        assert_eq!((s.spectra, s.mean_lambda2), (1, 4.0));
    }

    #[test]
    fn positions_become_ids() {
        assert_eq!(
            super::rename_position("feature vector of sample 1 is all zeros", &[10, 20]),
            "feature vector of sample id 20 (position 1) is all zeros"
        );
        assert_eq!(
            super::rename_position(
                "loss of sample 0 under the learner is not finite (NaN)",
                &[7]
            ),
            "loss of sample id 7 (position 0) under the learner is not finite (NaN)"
        );
    }
}
