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
use crate::error::Issues;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::path::PathBuf;
use std::time::Instant;

use tch::{nn, Device, Kind, Tensor};

use crate::batch::SuperBatch;
use crate::error::{Error, Result};
use crate::model::{Cnn, CnnArch};
use crate::select::baselines::Losses;
use crate::select::feedback::FeedbackReader;
use crate::select::learner::{per_sample_loss, LearnerScorer, ReferenceLogits};
use crate::select::outcome::Acc;
pub use crate::select::outcome::{RecordMode, SelectionRecord, SelectionStats, SubBatch};
use crate::select::{Policy, Selection, Selector};
use crate::source::repeat;
use crate::stage::{Cancel, Msg, StageStats};

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
    /// Loads the reference CNN's weights written by `pipeline::pretrain` for inputs of
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

/// Where the learner-aware policies (`loss`, `rho-loss`, `jest`) get the learner's losses.
pub enum Learner {
    /// A training run: the extract stage's copy of the trainer's weights
    /// ([`crate::select::learner`]).
    Weights(Box<LearnerScorer>),
    /// A loader run: the losses the caller's training loop reported
    /// ([`crate::select::feedback`]); `micro_batch` bounds the reference model's passes.
    Reported {
        /// The reader of the loader's loss table.
        reader: FeedbackReader,
        /// Samples per forward pass of the reference model (`rho-loss`, `jest`).
        micro_batch: usize,
    },
}

/// Where the extract stage starts (see [`run_extract`]).
#[derive(Debug, Clone)]
pub struct ExtractStart {
    /// Sub-batches sent before (the index of the next one; learner-aware policies pick
    /// their snapshot from it).
    pub sent: u64,
    /// The selection's figures so far.
    pub tally: Acc,
}

impl Default for ExtractStart {
    fn default() -> Self {
        ExtractStart {
            sent: 0,
            tally: Acc::new(),
        }
    }
}

/// Runs the extract stage: super-batches in, sub-batches out.
/// `extractor` may be `None` only for policies that need no reference model and runs that
/// export no features; `learner` is required by the learner-aware policies
/// ([`crate::select::learner`], [`crate::select::feedback`]). `start` is where a resumed run continues: the sub-batches
/// sent before (the trainer's step count) and the selection tally as of them
/// (`ExtractStart::default()` for a fresh run).
#[allow(clippy::too_many_arguments)]
pub fn run_extract(
    extractor: Option<Extractor>,
    mut learner: Option<Learner>,
    selector: Selector,
    device: Device,
    record: RecordMode,
    mut input: tokio::sync::mpsc::Receiver<Msg<SuperBatch>>,
    out: tokio::sync::mpsc::Sender<Msg<SubBatch>>,
    stats: &StageStats,
    cancel: &Cancel,
    start: ExtractStart,
) -> Result<SelectionStats> {
    let mut acc = start.tally;
    // Sub-batches sent so far: the trainer's step count once it has consumed them.
    let mut sent = start.sent;
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
    match learner {
        Some(Learner::Weights(l)) => summary.learner = Some(l.stats()),
        Some(Learner::Reported { reader, .. }) => summary.feedback = Some(reader.stats()),
        None => {}
    }
    Ok(summary)
}

/// Curates one super-batch; `learner` is the learner-aware policies' scorer with the number
/// of sub-batches sent so far. Returns the sub-batch and the time spent waiting for the
/// learner's weights, or `None` when cancelled while waiting.
fn curate(
    extractor: Option<&Extractor>,
    learner: Option<(&mut Learner, u64, &Cancel)>,
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
    let policy = selector.config().policy;
    let Some((scores_input, waited)) = policy_input(extractor, learner, policy, &images, &sb)?
    else {
        return Ok(None); // cancelled while waiting for the learner's weights
    };
    let fwd = t.elapsed().as_secs_f64() - waited;
    let sel = match &scores_input {
        Input::Tensor(x) => selector.select(n, x.as_ref(), sb.seq, sb.progress),
        Input::Losses(l) => selector.select_losses(n, l, sb.seq, sb.progress),
    }
    // Name a faulty sample by its id, not only by its position in the super-batch.
    .map_err(|e| e.with_sample_ids(&sb.ids))?;
    let ids: Vec<u64> = sel.kept.iter().map(|&i| sb.ids[i]).collect();
    acc.add(&sel, n, &ids, fwd);
    acc.add_repeats(repeat::repeats(&sb.ids), repeat::repeats(&ids));
    let index = Tensor::f_from_slice(&sel.kept.iter().map(|&i| i as i64).collect::<Vec<_>>())?
        .f_to_device(device)?;
    let labels: Vec<i64> = sel.kept.iter().map(|&i| sb.labels[i]).collect();
    // The export's features come from the reference model whatever the policy scored with.
    let export_features = match (record, policy.needs_features(), extractor) {
        (RecordMode::Features, true, _) => match &scores_input {
            Input::Tensor(x) => x.as_ref().map(Tensor::shallow_clone),
            Input::Losses(_) => None,
        },
        (RecordMode::Features, false, Some(x)) => Some(x.features(&images)?),
        _ => None,
    };
    let record = selection_record(record, &sb, &sel, export_features.as_ref())?;
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
        loaded: sb.loaded.clone(),
        tally: acc.clone(),
    };
    Ok(Some((sub, std::time::Duration::from_secs_f64(waited))))
}

/// What a policy scores a super-batch from.
enum Input {
    /// The reference model's features (`saln`), the learner's and reference model's
    /// `[n, 2]` losses of a training run (`loss`, `rho-loss`, `jest`), or nothing
    /// (`uniform`, `none`).
    Tensor(Option<Tensor>),
    /// The losses a loader's loop reported, with the reference model's (loader runs of
    /// `loss`, `rho-loss`, `jest`).
    Losses(Losses),
}

/// What the policy scores a super-batch from ([`Input`]), and the seconds spent waiting for
/// the learner (its weights, or its loop's reports). `None` when cancelled while waiting.
fn policy_input(
    extractor: Option<&Extractor>,
    learner: Option<(&mut Learner, u64, &Cancel)>,
    policy: Policy,
    images: &Tensor,
    sb: &SuperBatch,
) -> Result<Option<(Input, f64)>> {
    match (policy.needs_features(), extractor) {
        (true, Some(x)) => Ok(Some((Input::Tensor(Some(x.features(images)?)), 0.0))),
        (true, None) => Err(Error::Selection {
            superbatch: sb.seq,
            message: "features are needed (policy or export) but no extractor is loaded".into(),
        }),
        (false, _) if policy.needs_learner() => {
            let Some((learner, sent, cancel)) = learner else {
                return Err(Error::Selection {
                    superbatch: sb.seq,
                    message: "policy needs the learner's losses but no learner is loaded".into(),
                });
            };
            let labels = Tensor::f_from_slice(&sb.labels)?.f_to_device(images.device())?;
            let in_superbatch = |e: Error| match e {
                Error::Selection { message, .. } => Error::Selection {
                    superbatch: sb.seq,
                    message,
                },
                e => e,
            };
            let reference_logits = extractor
                .filter(|_| policy.needs_reference())
                .map(|x| move |t: &Tensor| x.reference_logits(t));
            let reference: Option<ReferenceLogits<'_>> =
                reference_logits.as_ref().map(|f| f as ReferenceLogits<'_>);
            match learner {
                Learner::Weights(scorer) => {
                    let scored = scorer
                        .losses(images, &labels, sent, reference, cancel)
                        .map_err(in_superbatch)?;
                    Ok(scored.map(|s| (Input::Tensor(Some(s.losses)), s.waited)))
                }
                Learner::Reported {
                    reader,
                    micro_batch,
                } => {
                    let Some((learner, waited)) = reader.losses(&sb.ids, sent, cancel)? else {
                        return Ok(None);
                    };
                    let reference = match reference {
                        Some(r) => Vec::<f64>::try_from(
                            per_sample_loss(r, images, &labels, *micro_batch)?
                                .f_to_kind(Kind::Double)?
                                .f_to_device(Device::Cpu)?,
                        )?,
                        None => vec![0.0; sb.len()],
                    };
                    Ok(Some((Input::Losses(Losses { learner, reference }), waited)))
                }
            }
        }
        (false, _) => Ok(Some((Input::Tensor(None), 0.0))),
    }
}

/// The whole super-batch as the selector saw it, for an export (`None` without one): every
/// sample's id, label, score and kept flag, and with `RecordMode::Features` its feature vector.
fn selection_record(
    mode: RecordMode,
    sb: &SuperBatch,
    sel: &Selection,
    features: Option<&Tensor>,
) -> Result<Option<SelectionRecord>> {
    if mode == RecordMode::Off {
        return Ok(None);
    }
    let mut kept = vec![false; sb.len()];
    sel.kept.iter().for_each(|&i| kept[i] = true);
    let (feature_dim, features) = match (mode, features) {
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
    Ok(Some(SelectionRecord {
        indices: sb.indices.clone(),
        ids: sb.ids.clone(),
        labels: sb.labels.clone(),
        scores: sel.scores.clone(),
        kept,
        feature_dim,
        features,
    }))
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
        use crate::error::SampleFault;
        let fault = |position, what, problem: &str| crate::Error::BadSample {
            superbatch: 3,
            id: None,
            fault: SampleFault {
                position,
                what,
                problem: problem.into(),
            },
        };
        assert_eq!(
            fault(1, "feature vector", "is all zeros")
                .with_sample_ids(&[10, 20])
                .to_string(),
            "selection, super-batch 3: feature vector of sample id 20 (position 1) is all zeros"
        );
        assert_eq!(
            fault(0, "loss", "under the learner is not finite (NaN)")
                .with_sample_ids(&[7])
                .to_string(),
            "selection, super-batch 3: loss of sample id 7 (position 0) under the learner is not \
             finite (NaN)"
        );
    }
}
