//! The train stage: the learner, trained on curated sub-batches and evaluated on the test
//! split after every epoch.
//!
//! Each sub-batch is one Adam step, so with `keep_ratio = 0.25` and `B = 256` the learner
//! takes steps of 64 samples; with the `none` policy, steps of 256. The learner's
//! initialisation comes from the run seed.
//!
//! The optimizer is Adam written out here (the update of `torch.optim.Adam`, betas 0.9 /
//! 0.999, eps 1e-8) rather than tch's, because a checkpoint must hold its moment estimates
//! and tch gives no access to them ([`Trainer::state_tensors`], [`Trainer::restore`]).
//! Nothing in the learner draws random numbers after initialisation (no dropout), so
//! weights + moments + step count are its whole state: a run resumed from them takes
//! exactly the steps the uninterrupted run takes.
use crate::error::Issues;
use serde::Deserialize;
use std::time::Instant;

use serde::Serialize;
use tch::nn;
use tch::{Device, Kind, Tensor};

use crate::augment::Augmenter;
use crate::error::{Error, Result};
use crate::model::{correct, cross_entropy, Cnn};
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

/// Accuracy of `model` on `x` (`[n, C, H, W]`) against `y` (`[n]`), `batch` at a time.
pub fn evaluate(model: &Cnn, x: &Tensor, y: &Tensor, batch: usize) -> Result<f64> {
    let _guard = tch::no_grad_guard();
    let n = x.size()[0];
    let (mut right, mut start) = (0i64, 0i64);
    while start < n {
        let len = (batch as i64).min(n - start);
        let logits = model.logits(&x.f_narrow(0, start, len)?)?;
        right += correct(&logits, &y.f_narrow(0, start, len)?)?;
        start += len;
    }
    Ok(right as f64 / n.max(1) as f64)
}

/// The learner with its optimizer and the test set.
pub struct Trainer {
    vs: nn::VarStore,
    model: Cnn,
    adam: Adam,
    test_x: Tensor,
    test_y: Tensor,
    eval_batch: usize,
    lr: f64,
    schedule: LrSchedule,
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
        let (vs, model) = crate::model::seeded(seed, || {
            let vs = nn::VarStore::new(device);
            let model = Cnn::new(&vs.root(), &cfg.arch, shape, classes);
            (vs, model)
        });
        let adam = Adam::new(&vs)?;
        Ok(Trainer {
            vs,
            model,
            adam,
            test_x: test.0,
            test_y: test.1,
            eval_batch: cfg.eval_batch.max(1),
            lr: cfg.lr,
            schedule: cfg.lr_schedule,
            total_steps: total_steps.max(1),
            steps: 0,
            publisher: None,
        })
    }

    /// The learning rate of the next step.
    pub fn current_lr(&self) -> f64 {
        self.schedule
            .at(self.lr, self.steps as f64 / self.total_steps as f64)
    }

    /// Publishes snapshots of the learner through `publisher` from now on (every
    /// `selection.refresh_every` steps), starting with the current weights
    /// ([`crate::select::learner`]).
    pub fn publish_to(&mut self, publisher: crate::select::learner::Publisher) -> Result<()> {
        publisher.after_step(self.steps, &self.vs)?;
        self.publisher = Some(publisher);
        Ok(())
    }

    /// One optimizer step on `images` `[b, C, H, W]`, `labels` `[b]`; returns the loss.
    pub fn step(&mut self, images: &Tensor, labels: &Tensor) -> Result<f64> {
        let loss = cross_entropy(&self.model.logits(images)?, labels)?;
        let lr = self.current_lr();
        self.steps += 1;
        self.adam.zero_grad()?;
        loss.f_backward()?;
        self.adam.step(lr)?;
        if let Some(p) = &self.publisher {
            p.after_step(self.steps, &self.vs)?;
        }
        Ok(loss.f_double_value(&[])?)
    }

    /// Test accuracy now.
    pub fn evaluate(&self) -> Result<f64> {
        evaluate(&self.model, &self.test_x, &self.test_y, self.eval_batch)
    }

    /// Number of test samples.
    pub fn test_len(&self) -> usize {
        self.test_y.size()[0] as usize
    }

    /// The learner's variables (to save them).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The snapshot publisher, when one is attached ([`Trainer::publish_to`]).
    pub fn publisher(&self) -> Option<&crate::select::learner::Publisher> {
        self.publisher.as_ref()
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Everything a checkpoint needs of the learner besides [`Trainer::steps`]: every
    /// variable (`param/NAME`) and Adam's two moment estimates (`adam_m/NAME`,
    /// `adam_v/NAME`), in name order, as CPU tensors.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let _guard = tch::no_grad_guard();
        let mut out = Vec::new();
        for (i, (name, p)) in self.adam.params.iter().enumerate() {
            out.push((
                format!("param/{name}"),
                p.f_to_device(Device::Cpu)?.f_contiguous()?,
            ));
            out.push((
                format!("adam_m/{name}"),
                self.adam.m[i].f_to_device(Device::Cpu)?.f_contiguous()?,
            ));
            out.push((
                format!("adam_v/{name}"),
                self.adam.v[i].f_to_device(Device::Cpu)?.f_contiguous()?,
            ));
        }
        Ok(out)
    }

    /// Puts back a state saved by [`Trainer::state_tensors`] after `steps` steps. Every
    /// tensor must be there with its shape; the snapshot publisher (if any) is attached
    /// afterwards with [`Trainer::publish_to`].
    pub fn restore(&mut self, tensors: &[(String, Tensor)], steps: u64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let find = |key: String| -> Result<&Tensor> {
            tensors
                .iter()
                .find(|(n, _)| *n == key)
                .map(|(_, t)| t)
                .ok_or_else(|| Error::Data {
                    path: "checkpoint".into(),
                    message: format!("the learner state has no tensor `{key}`"),
                })
        };
        for (i, (name, p)) in self.adam.params.iter_mut().enumerate() {
            for (key, dst) in [
                (format!("param/{name}"), &mut *p),
                (format!("adam_m/{name}"), &mut self.adam.m[i]),
                (format!("adam_v/{name}"), &mut self.adam.v[i]),
            ] {
                let src = find(key.clone())?;
                if src.size() != dst.size() {
                    return Err(Error::Data {
                        path: "checkpoint".into(),
                        message: format!(
                            "tensor `{key}` has shape {:?}, the learner's is {:?} (was `trainer.arch` changed?)",
                            src.size(),
                            dst.size()
                        ),
                    });
                }
                dst.f_copy_(src)?;
            }
        }
        self.steps = steps;
        self.adam.t = steps;
        Ok(())
    }
}

/// Adam (`torch.optim.Adam` with its defaults and no weight decay) over a var store's
/// variables, in name order, with its moments where a checkpoint can reach them.
struct Adam {
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: u64,
}

impl Adam {
    const BETA1: f64 = 0.9;
    const BETA2: f64 = 0.999;
    const EPS: f64 = 1e-8;

    fn new(vs: &nn::VarStore) -> Result<Adam> {
        let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let mut m = Vec::with_capacity(params.len());
        let mut v = Vec::with_capacity(params.len());
        for (_, p) in &params {
            m.push(p.f_zeros_like()?);
            v.push(p.f_zeros_like()?);
        }
        Ok(Adam { params, m, v, t: 0 })
    }

    fn zero_grad(&mut self) -> Result<()> {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.f_zero_()?;
            }
        }
        Ok(())
    }

    fn step(&mut self, lr: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.t += 1;
        let bc1 = 1.0 - Self::BETA1.powf(self.t as f64);
        let bc2 = 1.0 - Self::BETA2.powf(self.t as f64);
        for (i, (_, p)) in self.params.iter_mut().enumerate() {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            let _ = m.f_mul_scalar_(Self::BETA1)?;
            let _ = m.f_add_(&g.f_mul_scalar(1.0 - Self::BETA1)?)?;
            let _ = v.f_mul_scalar_(Self::BETA2)?;
            let _ = v.f_addcmul_(&g.f_mul_scalar(1.0 - Self::BETA2)?, &g)?;
            let denom = v
                .f_sqrt()?
                .f_div_scalar(bc2.sqrt())?
                .f_add_scalar(Self::EPS)?;
            let update = m.f_div(&denom)?.f_mul_scalar(lr / bc1)?;
            let _ = p.f_sub_(&update)?;
        }
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

/// The learner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerConfig {
    /// Passes over the learner's share of the training data.
    #[serde(default = "d_epochs")]
    pub epochs: usize,
    /// Adam learning rate. Each curated sub-batch is one optimizer step.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// Learning rate over the run: `constant` keeps `lr` (the default), `cosine` decays from
    /// `lr` to 0 over all steps. On the demo, constant reached 87.5% and cosine 87.0%.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Width of the learner CNN.
    #[serde(default)]
    pub arch: crate::model::CnnArch,
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
}

impl LrSchedule {
    /// The rate at progress `t` (clamped to [0, 1]) for base rate `lr`.
    ///
    /// ```
    /// use saln::train::LrSchedule;
    /// assert_eq!(LrSchedule::Constant.at(0.1, 0.7), 0.1);
    /// assert_eq!(LrSchedule::Cosine.at(0.1, 0.0), 0.1);
    /// assert!((LrSchedule::Cosine.at(0.1, 0.5) - 0.05).abs() < 1e-12);
    /// ```
    pub fn at(self, lr: f64, t: f64) -> f64 {
        match self {
            LrSchedule::Constant => lr,
            LrSchedule::Cosine => {
                lr * 0.5 * (1.0 + (std::f64::consts::PI * t.clamp(0.0, 1.0)).cos())
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

impl TrainerConfig {
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
        v.check(self.eval_batch > 0, "trainer.eval_batch", || {
            "must be at least 1".into()
        });
    }
}
