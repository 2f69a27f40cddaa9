//! The train stage: the learner, trained on curated sub-batches and evaluated on the test
//! split after every epoch.
//!
//! Each sub-batch is one optimizer step, so with `keep_ratio = 0.25` and `B = 256` the
//! learner takes steps of 64 samples; with the `none` policy, steps of 256. The learner's
//! initialisation comes from the run seed.
//!
//! The learner is any [`Learner`] (`trainer.model`: saln's CNN, a torchvision ResNet, a
//! TorchScript module), trained by one of [`crate::model::optim`]'s optimizers with the
//! usual recipe knobs: linear warm-up then a constant, cosine or step schedule, label
//! smoothing, gradient clipping, and float16 mixed precision with a dynamic loss scale on
//! CUDA.
use crate::error::Issues;
use serde::Deserialize;
use std::time::Instant;

use serde::Serialize;
use tch::nn;
use tch::{Device, Kind, Tensor};

use crate::augment::Augmenter;
use crate::error::{Error, Result};
use crate::model::learner::{
    Learner, LearnerKind, LearnerSpec, ResNetLearnerConfig, TorchScriptLearnerConfig,
};
use crate::model::optim::{LossScaler, Optimizer, OptimizerConfig};
use crate::model::{correct, smoothed_cross_entropy};
use crate::select::outcome::SubBatch;
use crate::source::{OnError, Source};
use crate::stage::{Cancel, Msg, StageStats};

/// One epoch's figures, as printed and reported.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    /// Epoch (1-based, as printed).
    pub epoch: usize,
    /// Accuracy on the test split after the epoch, in [0, 1].
    pub test_accuracy: f64,
    /// Mean training loss over the epoch's steps.
    pub train_loss: f64,
    /// Samples the loader delivered (super-batch samples).
    pub images_seen: u64,
    /// Samples the learner trained on (kept samples).
    pub images_trained: u64,
    /// Optimizer steps.
    pub steps: u64,
    /// Wall seconds from the start of the run to the end of this epoch's evaluation.
    pub wall_seconds: f64,
}

/// Packs `[n*C*H*W]` pixels and `[n]` labels into tensors on `device`:
/// images `[n, C, H, W]` float32, labels `[n]` int64.
pub fn images_tensor(
    pixels: &[f32],
    labels: &[i64],
    shape: (usize, usize, usize),
    device: Device,
) -> Result<(Tensor, Tensor)> {
    let (c, h, w) = shape;
    let x = Tensor::f_from_slice(pixels)?
        .f_view([labels.len() as i64, c as i64, h as i64, w as i64])?
        .f_to_device(device)?;
    let y = Tensor::f_from_slice(labels)?
        .f_to_kind(Kind::Int64)?
        .f_to_device(device)?;
    Ok((x, y))
}

/// The test split, ready to evaluate on.
#[derive(Debug)]
pub struct TestSet {
    /// Images, `[n, C, H, W]`.
    pub x: Tensor,
    /// Labels, `[n]`.
    pub y: Tensor,
    /// Test samples left out as unreadable (`on_error: skip`).
    pub skipped: u64,
    /// The first of them (at most 20), each with its error.
    pub first_skipped: Vec<String>,
}

/// The test split as tensors (deterministic transforms only), at most `limit` samples.
/// A sample that cannot be read or transformed fails with an error naming it, or with
/// `OnError::Skip` is left out and counted, exactly as in the loader stage.
pub fn eval_set(
    source: &dyn Source,
    aug: &Augmenter,
    limit: Option<usize>,
    on_error: OnError,
    device: Device,
) -> Result<TestSet> {
    let shape = aug.output_shape(source.shape())?;
    let n = limit.map_or(source.len(), |l| l.min(source.len()));
    let (c, h, w) = shape;
    let mut pixels = Vec::new();
    let mut labels = Vec::with_capacity(n);
    let (mut skipped, mut first_skipped) = (0u64, Vec::new());
    for i in 0..n {
        let sample = source.get(i).and_then(|s| {
            let sample_err = |message: String| Error::Sample {
                sample: source.locate(i),
                message,
            };
            let img = aug.eval(&s.image).map_err(|e| match e {
                Error::Sample { message, .. } => sample_err(message),
                e => e,
            })?;
            if let Some(m) = crate::augment::shape_mismatch(&img, (c, h, w)) {
                return Err(sample_err(m));
            }
            Ok((s.label, img))
        });
        match sample {
            Ok((label, img)) => {
                pixels.extend_from_slice(&img.data);
                labels.push(label);
            }
            Err(e @ Error::Sample { .. }) if on_error == OnError::Skip => {
                skipped += 1;
                if first_skipped.len() < 20 {
                    first_skipped.push(e.to_string());
                }
            }
            Err(e) => return Err(e),
        }
    }
    if labels.is_empty() && n > 0 {
        return Err(Error::Data {
            path: "test split".into(),
            message: format!(
                "every one of its {n} samples was skipped as unreadable; first: {}",
                first_skipped.first().map_or("", String::as_str)
            ),
        });
    }
    let (x, y) = images_tensor(&pixels, &labels, shape, device)?;
    Ok(TestSet {
        x,
        y,
        skipped,
        first_skipped,
    })
}

/// Accuracy of the model whose logits `logits` gives on `x` (`[n, C, H, W]`) against `y`
/// (`[n]`), `batch` at a time.
pub fn evaluate(
    logits: impl Fn(&Tensor) -> Result<Tensor>,
    x: &Tensor,
    y: &Tensor,
    batch: usize,
) -> Result<f64> {
    let _guard = tch::no_grad_guard();
    let n = x.size()[0];
    let (mut right, mut start) = (0i64, 0i64);
    while start < n {
        let len = (batch as i64).min(n - start);
        let logits = logits(&x.f_narrow(0, start, len)?)?;
        right += correct(&logits, &y.f_narrow(0, start, len)?)?;
        start += len;
    }
    Ok(right as f64 / n.max(1) as f64)
}

/// The learner with its optimizer and the test set.
pub struct Trainer {
    learner: Learner,
    opt: Optimizer,
    scaler: Option<LossScaler>,
    test_x: Tensor,
    test_y: Tensor,
    cfg: TrainerConfig,
    total_steps: u64,
    steps: u64,
    /// Snapshots for the extract stage (learner-aware selection policies).
    publisher: Option<crate::select::learner::Publisher>,
}

impl Trainer {
    /// A fresh learner initialised from `seed`. `total_steps` is the number of optimizer
    /// steps the run will take (it sets the learning-rate schedule's length).
    pub fn new(
        cfg: &TrainerConfig,
        shape: (usize, usize, usize),
        classes: usize,
        seed: u64,
        device: Device,
        test: (Tensor, Tensor),
        total_steps: u64,
    ) -> Result<Trainer> {
        let learner = Learner::build(&cfg.learner_spec()?, shape, classes, seed, device)?;
        let opt = Optimizer::new(&cfg.optimizer, learner.var_store())?;
        let scaler = (cfg.mixed_precision && device.is_cuda()).then(LossScaler::default);
        Ok(Trainer {
            learner,
            opt,
            scaler,
            test_x: test.0,
            test_y: test.1,
            cfg: cfg.clone(),
            total_steps: total_steps.max(1),
            steps: 0,
            publisher: None,
        })
    }

    /// The learning rate of the next step.
    pub fn current_lr(&self) -> f64 {
        self.cfg.lr_at(self.steps, self.total_steps)
    }

    /// Publishes snapshots of the learner through `publisher` from now on (every
    /// `selection.refresh_every` steps), starting with the current weights
    /// ([`crate::select::learner`]).
    pub fn publish_to(&mut self, publisher: crate::select::learner::Publisher) -> Result<()> {
        publisher.after_step(self.steps, self.learner.var_store())?;
        self.publisher = Some(publisher);
        Ok(())
    }

    /// One optimizer step on `images` `[b, C, H, W]`, `labels` `[b]`; returns the loss.
    /// With mixed precision, a step whose scaled gradients overflow is skipped (and
    /// counted in [`Trainer::skipped_steps`]); the step count still advances, so the
    /// schedule and the learner snapshots stay aligned with the sub-batches.
    pub fn step(&mut self, images: &Tensor, labels: &Tensor) -> Result<f64> {
        let lr = self.current_lr();
        self.opt.zero_grad()?;
        // Autocast only when asked: entering and leaving it clears libtorch's cast cache.
        let logits = if self.scaler.is_some() {
            tch::autocast(true, || self.learner.forward(images))?
        } else {
            self.learner.forward(images)?
        };
        let loss = smoothed_cross_entropy(&logits, labels, self.cfg.label_smoothing)?;
        let take = match &mut self.scaler {
            Some(scaler) => {
                loss.f_mul_scalar(scaler.scale())?.f_backward()?;
                scaler.unscale(&mut self.opt)?
            }
            None => {
                loss.f_backward()?;
                true
            }
        };
        if take {
            if let Some(max) = self.cfg.grad_clip {
                self.opt.clip_grad_norm(max)?;
            }
            self.opt.step(lr)?;
        }
        self.steps += 1;
        if let Some(p) = &self.publisher {
            p.after_step(self.steps, self.learner.var_store())?;
        }
        Ok(loss.f_double_value(&[])?)
    }

    /// Steps skipped by mixed precision's loss scale (0 without it).
    pub fn skipped_steps(&self) -> u64 {
        self.scaler.as_ref().map_or(0, |s| s.skipped)
    }

    /// Test accuracy now (the learner in evaluation mode, then back in training mode).
    pub fn evaluate(&mut self) -> Result<f64> {
        self.learner.set_train(false)?;
        let learner = &self.learner;
        let acc = evaluate(
            |x| learner.forward(x),
            &self.test_x,
            &self.test_y,
            self.cfg.eval_batch.max(1),
        );
        self.learner.set_train(true)?;
        acc
    }

    /// Number of test samples.
    pub fn test_len(&self) -> usize {
        self.test_y.size()[0] as usize
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The learner (to save it, or read its variables).
    pub fn learner(&self) -> &Learner {
        &self.learner
    }

    /// The learner's variables.
    pub fn var_store(&self) -> &nn::VarStore {
        self.learner.var_store()
    }

    /// Saves the learner where `trainer.save` says, if it says.
    pub fn save(&self) -> Result<()> {
        match &self.cfg.save {
            Some(path) => self.learner.save(path, self.steps),
            None => Ok(()),
        }
    }

    /// The snapshot publisher, when one is attached ([`Trainer::publish_to`]).
    pub fn publisher(&self) -> Option<&crate::select::learner::Publisher> {
        self.publisher.as_ref()
    }

    /// Everything a checkpoint needs of the learner besides [`Trainer::steps`]: every
    /// variable of the learner (`param/NAME`, a ResNet's batch-norm running statistics
    /// included), the optimizer's state (`opt/m1/NAME`, `opt/m2/NAME`: see
    /// [`Optimizer::state_tensors`]) and, with mixed precision, the loss scale (`scaler`),
    /// in name order, as contiguous CPU tensors.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let _guard = tch::no_grad_guard();
        let mut out = Vec::new();
        for (name, t) in self.learner.var_store().variables() {
            out.push((
                format!("param/{name}"),
                t.f_to_device(Device::Cpu)?.f_contiguous()?,
            ));
        }
        for (name, t) in self.opt.state_tensors()? {
            out.push((format!("opt/{name}"), t.f_contiguous()?));
        }
        if let Some(s) = &self.scaler {
            out.push(("scaler".into(), s.state()));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Puts back a state saved by [`Trainer::state_tensors`] after `steps` steps. Every
    /// tensor must be there with its shape; the snapshot publisher (if any) is attached
    /// afterwards with [`Trainer::publish_to`].
    pub fn restore(&mut self, tensors: &[(String, Tensor)], steps: u64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let err = |message: String| Error::Data {
            path: "checkpoint".into(),
            message,
        };
        let map: std::collections::HashMap<&str, &Tensor> =
            tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        for (name, mut dst) in self.learner.var_store().variables() {
            let key = format!("param/{name}");
            let src = map
                .get(key.as_str())
                .ok_or_else(|| err(format!("the learner state has no tensor `{key}`")))?;
            if src.size() != dst.size() {
                return Err(err(format!(
                    "tensor `{key}` has shape {:?}, the learner's is {:?} (was `trainer.model` \
                     or its section changed?)",
                    src.size(),
                    dst.size()
                )));
            }
            dst.f_copy_(src)?;
        }
        let opt: Vec<(String, Tensor)> = tensors
            .iter()
            .filter_map(|(n, t)| {
                n.strip_prefix("opt/")
                    .map(|n| (n.to_string(), t.shallow_clone()))
            })
            .collect();
        self.opt.restore(&opt, steps)?;
        if let Some(scaler) = &mut self.scaler {
            // A checkpoint of a mixed-precision run on CUDA has the scaler's state.
            *scaler = map
                .get("scaler")
                .and_then(|t| LossScaler::from_state(t))
                .ok_or_else(|| {
                    err(
                        "the learner state has no valid loss scale `scaler` (written by a run \
                         without mixed precision on CUDA, or on another device?)"
                            .into(),
                    )
                })?;
        }
        self.steps = steps;
        Ok(())
    }
}

/// Where the train stage stands: the epochs evaluated so far, the running figures of the
/// current epoch, and the first super-batch it has not trained on. A checkpoint holds it
/// (with the learner's tensors); [`run_train`] continues from it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TrainProgress {
    /// Epochs finished and evaluated.
    pub records: Vec<EpochRecord>,
    /// Super-batch samples delivered in the current epoch.
    pub seen: u64,
    /// Samples trained on in the current epoch.
    pub trained: u64,
    /// Optimizer steps in the current epoch.
    pub steps: u64,
    /// Sum of the current epoch's step losses.
    pub loss_sum: f64,
    /// Global sequence number of the first super-batch not yet trained on (the loader's
    /// restart point).
    pub next_seq: u64,
}

/// What the train stage just did, for [`TrainHook::after`].
pub enum TrainEvent<'a> {
    /// One optimizer step on this sub-batch (its `record` is still there for an export).
    Trained(&'a mut SubBatch),
    /// An epoch ended and was evaluated (its record is the last of the progress).
    EpochEnd(usize),
}

/// Called by [`run_train`] after each step and each evaluation, on the train thread, with
/// the learner and the progress as they are at that point: the place where the pipeline
/// writes what the trainer received (the export) and checkpoints.
pub trait TrainHook {
    /// See the trait's doc. An error stops the stage.
    fn after(
        &mut self,
        event: TrainEvent<'_>,
        trainer: &Trainer,
        progress: &TrainProgress,
    ) -> Result<()>;
}

/// The hook that does nothing.
impl TrainHook for () {
    fn after(&mut self, _: TrainEvent<'_>, _: &Trainer, _: &TrainProgress) -> Result<()> {
        Ok(())
    }
}

/// Runs the train stage from `progress` until the input closes. `on_epoch` sees each
/// epoch's record as soon as it is evaluated. `start` is the run's start, for
/// `wall_seconds`; `per_epoch` the super-batches of one epoch (to know where the next one
/// starts).
#[allow(clippy::too_many_arguments)]
pub fn run_train(
    trainer: &mut Trainer,
    mut input: tokio::sync::mpsc::Receiver<Msg<SubBatch>>,
    stats: &StageStats,
    cancel: &Cancel,
    start: Instant,
    on_epoch: &(dyn Fn(&EpochRecord) + Send + Sync),
    mut progress: TrainProgress,
    per_epoch: u64,
    hook: &mut dyn TrainHook,
) -> Result<Vec<EpochRecord>> {
    loop {
        let t = Instant::now();
        let Some(msg) = input.blocking_recv() else {
            break;
        };
        stats.waited(t.elapsed());
        if cancel.is_cancelled() {
            break;
        }
        let t = Instant::now();
        match msg {
            Msg::Data(mut sub) => {
                stats.received();
                crate::stage::test_pause("train");
                let p = &mut progress;
                p.loss_sum += trainer.step(&sub.images, &sub.labels)?;
                p.steps += 1;
                p.seen += sub.superbatch_len as u64;
                p.trained += sub.ids.len() as u64;
                p.next_seq = sub.seq + 1;
                stats.item(sub.ids.len());
                hook.after(TrainEvent::Trained(&mut sub), trainer, &progress)?;
            }
            Msg::EpochEnd { epoch } => {
                crate::stage::test_pause("eval");
                let p = &mut progress;
                let rec = EpochRecord {
                    epoch: epoch + 1,
                    test_accuracy: trainer.evaluate()?,
                    train_loss: p.loss_sum / p.steps.max(1) as f64,
                    images_seen: p.seen,
                    images_trained: p.trained,
                    steps: p.steps,
                    wall_seconds: start.elapsed().as_secs_f64(),
                };
                on_epoch(&rec);
                p.records.push(rec);
                (p.seen, p.trained, p.steps, p.loss_sum) = (0, 0, 0, 0.0);
                p.next_seq = (epoch as u64 + 1) * per_epoch;
                hook.after(TrainEvent::EpochEnd(epoch), trainer, &progress)?;
            }
        }
        stats.busy(t.elapsed());
    }
    Ok(progress.records)
}

// ---- configuration ----

/// The learner and how it is trained.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerConfig {
    /// Passes over the learner's share of the training data.
    #[serde(default = "d_epochs")]
    pub epochs: usize,
    /// The network: `cnn` (saln's small CNN, `trainer.arch`; the default), `resnet`
    /// (`trainer.resnet`) or `torchscript` (`trainer.torchscript`).
    #[serde(default)]
    pub model: LearnerKind,
    /// Width of the learner CNN (`model: cnn`).
    #[serde(default)]
    pub arch: crate::model::CnnArch,
    /// The ResNet (`model: resnet`): `arch`, `stem`, optional initial `weights`.
    #[serde(default)]
    pub resnet: Option<ResNetLearnerConfig>,
    /// The TorchScript module (`model: torchscript`): `path`.
    #[serde(default)]
    pub torchscript: Option<TorchScriptLearnerConfig>,
    /// The optimizer: `kind` (`adam`, the default; `adamw`; `sgd`), `momentum`, `nesterov`,
    /// `weight_decay` (tensors of two or more dimensions only).
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Base learning rate. Each curated sub-batch is one optimizer step.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// Learning rate over the run after the warm-up: `constant` keeps `lr` (the default),
    /// `cosine` decays from `lr` to 0, `step` multiplies it by `lr_gamma` at each of
    /// `lr_milestones`. On the demo, constant reached 87.5% and cosine 87.0%.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Fraction of the run (in [0, 1)) over which the rate rises linearly from `lr / W` to
    /// `lr` (W: the warm-up's steps), before the schedule starts. Default 0.
    #[serde(default)]
    pub warmup: f64,
    /// `step` schedule: progress points in (0, 1) (after the warm-up) where the rate is
    /// multiplied by `lr_gamma`. Default [0.5, 0.75].
    #[serde(default = "d_milestones")]
    pub lr_milestones: Vec<f64>,
    /// `step` schedule: the factor. Default 0.1.
    #[serde(default = "d_gamma")]
    pub lr_gamma: f64,
    /// Label smoothing of the cross-entropy, in [0, 1). Default 0.
    #[serde(default)]
    pub label_smoothing: f64,
    /// Largest L2 norm of all gradients together; larger ones are scaled down. Default none.
    #[serde(default)]
    pub grad_clip: Option<f64>,
    /// Float16 autocast with a dynamic loss scale, on CUDA (ignored on the CPU, where
    /// libtorch's autocast does nothing). Default false.
    #[serde(default)]
    pub mixed_precision: bool,
    /// Where the trained learner is written at the end of the run: safetensors for `cnn`
    /// and `resnet` (torchvision names), a TorchScript module for `torchscript`. Default:
    /// not written.
    #[serde(default)]
    pub save: Option<std::path::PathBuf>,
    /// Test samples per forward pass during evaluation.
    #[serde(default = "d_eval_batch")]
    pub eval_batch: usize,
}

/// Learning-rate schedule of the learner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// `lr` throughout.
    #[default]
    Constant,
    /// `lr * (1 + cos(pi * t)) / 2` at progress `t` in [0, 1].
    Cosine,
    /// `lr * gamma^k` after the `k`-th milestone.
    Step,
}

impl LrSchedule {
    /// The rate at progress `t` (clamped to [0, 1]) for base rate `lr`; `milestones` and
    /// `gamma` are the `step` schedule's.
    ///
    /// ```
    /// use saln::train::LrSchedule;
    /// assert_eq!(LrSchedule::Constant.at(0.1, 0.7, &[], 0.1), 0.1);
    /// assert_eq!(LrSchedule::Cosine.at(0.1, 0.0, &[], 0.1), 0.1);
    /// assert!((LrSchedule::Cosine.at(0.1, 0.5, &[], 0.1) - 0.05).abs() < 1e-12);
    /// assert!((LrSchedule::Step.at(1.0, 0.8, &[0.5, 0.75], 0.1) - 0.01).abs() < 1e-12);
    /// assert_eq!(LrSchedule::Step.at(1.0, 0.4, &[0.5, 0.75], 0.1), 1.0);
    /// ```
    pub fn at(self, lr: f64, t: f64, milestones: &[f64], gamma: f64) -> f64 {
        let t = t.clamp(0.0, 1.0);
        match self {
            LrSchedule::Constant => lr,
            LrSchedule::Cosine => lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
            LrSchedule::Step => {
                let passed = milestones.iter().filter(|&&m| t >= m).count();
                lr * gamma.powi(passed as i32)
            }
        }
    }
}

pub(crate) fn d_epochs() -> usize {
    5
}
pub(crate) fn d_eval_batch() -> usize {
    1000
}
pub(crate) fn d_lr() -> f64 {
    1e-3
}
fn d_milestones() -> Vec<f64> {
    vec![0.5, 0.75]
}
fn d_gamma() -> f64 {
    0.1
}

impl TrainerConfig {
    /// The learning rate of step `step` (0-based) of `total`: linear warm-up over the first
    /// `warmup * total` steps (step `i` gets `lr * (i + 1) / W`), then the schedule over the
    /// remaining steps.
    ///
    /// ```
    /// let mut t: saln::train::TrainerConfig = serde_saphyr::from_str("lr: 1.0\nwarmup: 0.1").unwrap();
    /// assert_eq!(t.lr_at(0, 100), 0.1);
    /// assert_eq!(t.lr_at(9, 100), 1.0);
    /// assert_eq!(t.lr_at(50, 100), 1.0);
    /// t.lr_schedule = saln::train::LrSchedule::Cosine;
    /// assert!((t.lr_at(55, 100) - 0.5).abs() < 1e-9); // halfway through the 90 steps after
    /// ```
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        let total = total.max(1);
        let warm = (self.warmup * total as f64).floor() as u64;
        if step < warm {
            return self.lr * (step + 1) as f64 / warm as f64;
        }
        let t = (step - warm) as f64 / (total - warm).max(1) as f64;
        self.lr_schedule
            .at(self.lr, t, &self.lr_milestones, self.lr_gamma)
    }

    /// The learner to build, from `model` and its section.
    pub fn learner_spec(&self) -> Result<LearnerSpec> {
        let missing = |key: &str| {
            Error::config(
                key,
                format!("trainer.model: {} needs this section", self.model.name()),
            )
        };
        Ok(match self.model {
            LearnerKind::Cnn => LearnerSpec::Cnn(self.arch.clone()),
            LearnerKind::Resnet => LearnerSpec::ResNet(
                self.resnet
                    .clone()
                    .ok_or_else(|| missing("trainer.resnet"))?,
            ),
            LearnerKind::Torchscript => LearnerSpec::TorchScript(
                self.torchscript
                    .clone()
                    .ok_or_else(|| missing("trainer.torchscript"))?,
            ),
        })
    }

    /// Adds this section's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        v.check(self.epochs > 0, "trainer.epochs", || {
            "must be at least 1".into()
        });
        v.check(self.lr > 0.0 && self.lr.is_finite(), "trainer.lr", || {
            format!("must be positive, got {}", self.lr)
        });
        if let Err(e) = self.arch.validate() {
            v.at("trainer.arch", e);
        }
        for (kind, key, present) in [
            (LearnerKind::Resnet, "trainer.resnet", self.resnet.is_some()),
            (
                LearnerKind::Torchscript,
                "trainer.torchscript",
                self.torchscript.is_some(),
            ),
        ] {
            v.check(self.model != kind || present, key, || {
                format!("trainer.model: {} needs this section", kind.name())
            });
        }
        for (key, present) in [
            (
                "resnet",
                self.resnet.is_some() && self.model != LearnerKind::Resnet,
            ),
            (
                "torchscript",
                self.torchscript.is_some() && self.model != LearnerKind::Torchscript,
            ),
        ] {
            v.check(!present, &format!("trainer.{key}"), || {
                format!(
                    "is set but trainer.model is {}; set trainer.model: {key} or remove the section",
                    self.model.name()
                )
            });
        }
        self.optimizer.validate(v);
        v.check((0.0..1.0).contains(&self.warmup), "trainer.warmup", || {
            format!("must be in [0, 1), got {}", self.warmup)
        });
        v.check(
            self.lr_milestones.iter().all(|m| *m > 0.0 && *m < 1.0)
                && self.lr_milestones.windows(2).all(|w| w[0] < w[1]),
            "trainer.lr_milestones",
            || {
                format!(
                    "must be increasing progress points in (0, 1), got {:?}",
                    self.lr_milestones
                )
            },
        );
        v.check(
            self.lr_gamma > 0.0 && self.lr_gamma.is_finite(),
            "trainer.lr_gamma",
            || format!("must be positive, got {}", self.lr_gamma),
        );
        v.check(
            (0.0..1.0).contains(&self.label_smoothing),
            "trainer.label_smoothing",
            || format!("must be in [0, 1), got {}", self.label_smoothing),
        );
        if let Some(c) = self.grad_clip {
            v.check(c > 0.0 && c.is_finite(), "trainer.grad_clip", || {
                format!("must be positive, got {c}")
            });
        }
        v.check(self.eval_batch > 0, "trainer.eval_batch", || {
            "must be at least 1".into()
        });
    }
}
