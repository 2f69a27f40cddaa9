//! Pretraining of the reference network on the held-out split: its settings
//! (`extractor.pretrain`) and how its weights are saved. The run mode that trains it is
//! `pipeline::pretrain`.
//!
//! ImageNet weights cannot be downloaded here, and the paper's "frozen pretrained network"
//! only has to give features in which similar images are close. So, as RHO-LOSS and JEST do
//! with their reference models, saln trains its reference CNN on a held-out part of the
//! training split: samples the learner never sees, and never the test split.
use crate::error::Issues;
use serde::{Deserialize, Serialize};

use tch::nn;

use crate::error::{Error, Result};

/// Writes `vs` to `path` (safetensors) through a temporary file in the same folder, so a
/// crash never leaves a half-written weights file under the real name.
pub fn save_atomic(vs: &nn::VarStore, path: &std::path::Path) -> Result<()> {
    crate::io::write_atomic_with(path, ".safetensors", |tmp| {
        vs.save(tmp).map_err(|e| Error::Model {
            path: tmp.to_path_buf(),
            message: format!("cannot write: {e}"),
        })
    })
}

// ---- configuration ----

/// Pretraining of the reference model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    /// Epochs over the held-out samples.
    #[serde(default = "d_pretrain_epochs")]
    pub epochs: usize,
    /// Mini-batch size.
    #[serde(default = "d_batch_size")]
    pub batch_size: usize,
    /// Adam learning rate.
    #[serde(default = "d_lr")]
    pub lr: f64,
}

pub(crate) fn d_batch_size() -> usize {
    128
}
pub(crate) fn d_lr() -> f64 {
    1e-3
}
pub(crate) fn d_pretrain_epochs() -> usize {
    4
}

impl PretrainConfig {
    /// Adds this section's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        v.check(self.batch_size > 0, "extractor.pretrain.batch_size", || {
            "must be at least 1".into()
        });
        v.check(
            self.lr > 0.0 && self.lr.is_finite(),
            "extractor.pretrain.lr",
            || format!("must be positive, got {}", self.lr),
        );
    }
}
