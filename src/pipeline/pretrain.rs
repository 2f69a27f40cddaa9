//! The `pretrain` run mode: trains the reference network on the held-out split.
//!
//! ImageNet weights cannot be downloaded here, and the paper's "frozen pretrained network"
//! only has to give features in which similar images are close. So, as RHO-LOSS and JEST do
//! with their reference models, saln trains its reference CNN on a held-out part of the
//! training split: samples the learner never sees, and never the test split. Its settings
//! are `extractor.pretrain` ([`crate::extract::pretrain::PretrainConfig`]).
use std::path::PathBuf;
use std::time::Instant;

use tch::nn::{self, OptimizerConfig};

use crate::augment::Augmenter;
use crate::config::PipelineConfig;
use crate::error::{Error, Result};
use crate::extract::backbone::ExtractorKind;
use crate::extract::pretrain::save_atomic;
use crate::model::{cross_entropy, Cnn};
use crate::rng::{self, Rng};
use crate::source;
use crate::train::{eval_set, evaluate, images_tensor};

/// Stream tag separating pretraining's randomness from the learner's.
const PRETRAIN: u64 = 0x5052_4554;

/// What pretraining did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PretrainSummary {
    /// Held-out samples trained on.
    pub samples: usize,
    /// Epochs.
    pub epochs: usize,
    /// Mean loss of the last epoch.
    pub final_loss: f64,
    /// Test accuracy of the reference model (for information; the test split is not used
    /// to train or tune it).
    pub test_accuracy: f64,
    /// Wall seconds.
    pub seconds: f64,
    /// Where the weights were written.
    pub weights: PathBuf,
}

/// Trains the reference CNN on the held-out split and writes its weights (safetensors) to
/// `cfg.extractor.weights`, atomically (a temporary file renamed when complete).
/// `on_epoch(epoch, mean_loss)` is called after each epoch.
pub fn pretrain(
    cfg: &PipelineConfig,
    on_epoch: &mut dyn FnMut(usize, f64),
) -> Result<PretrainSummary> {
    let start = Instant::now();
    if cfg.extractor.kind != ExtractorKind::Reference {
        return Err(Error::config(
            "extractor.kind",
            "pretraining is for the built-in reference CNN (kind: reference); \
             this extractor's model comes from its own file",
        ));
    }
    // A CUDA device that is not there is a configuration error, not a libtorch panic.
    crate::device::check(cfg.device()).map_err(|e| Error::config("device", e))?;
    crate::stage::set_torch_threads(cfg.torch_threads);
    let data = source::open(&cfg.source)?;
    let split = cfg.split(data.train.len())?;
    if split.holdout.is_empty() {
        return Err(Error::config(
            "source.holdout",
            "is 0: the reference model needs held-out samples to train on",
        ));
    }
    let device = cfg.device();
    let aug = Augmenter::new(cfg.augment.ops.clone());
    let shape = aug.output_shape(data.train.shape())?;
    let classes = data.train.num_classes();
    let (vs, model) = crate::model::seeded(cfg.seed, || {
        let vs = nn::VarStore::new(device);
        let model = Cnn::new(&vs.root(), &cfg.extractor.arch, shape, classes);
        (vs, model)
    });
    let p = &cfg.extractor.pretrain;
    let mut opt = nn::Adam::default().build(&vs, p.lr)?;
    let mut final_loss = f64::NAN;
    for epoch in 0..p.epochs {
        let mut order = split.holdout.clone();
        Rng::derive(cfg.seed, &[rng::SHUFFLE, PRETRAIN, epoch as u64]).shuffle(&mut order);
        let (mut sum, mut steps) = (0.0, 0usize);
        for chunk in order.chunks(p.batch_size) {
            let mut pixels = Vec::new();
            let mut labels = Vec::new();
            for &i in chunk {
                let s = data.train.get(i)?;
                let mut r = Rng::derive(cfg.seed, &[rng::AUGMENT, PRETRAIN, epoch as u64, s.id]);
                let img = aug.train(&s.image, &mut r).map_err(|e| match e {
                    Error::Sample { message, .. } => Error::Sample {
                        sample: data.train.locate(i),
                        message,
                    },
                    e => e,
                })?;
                pixels.extend_from_slice(&img.data);
                labels.push(s.label);
            }
            let (x, y) = images_tensor(&pixels, &labels, shape, device)?;
            let loss = cross_entropy(&model.logits(&x)?, &y)?;
            opt.zero_grad();
            loss.f_backward()?;
            opt.step();
            sum += loss.f_double_value(&[])?;
            steps += 1;
        }
        final_loss = sum / steps.max(1) as f64;
        on_epoch(epoch, final_loss);
    }
    let test = eval_set(
        data.test.as_ref(),
        &aug,
        cfg.source.test_limit,
        cfg.source.on_error,
        device,
    )?;
    let test_accuracy = evaluate(
        |x| model.logits(x),
        &test.x,
        &test.y,
        cfg.trainer.eval_batch,
    )?;
    let weights = cfg.extractor.weights.clone();
    save_atomic(&vs, &weights)?;
    Ok(PretrainSummary {
        samples: split.holdout.len(),
        epochs: p.epochs,
        final_loss,
        test_accuracy,
        seconds: start.elapsed().as_secs_f64(),
        weights,
    })
}
