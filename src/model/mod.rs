//! Networks: the small CNN used both as the reference (feature) network and as the default
//! learner (here), the torchvision ResNet builder ([`resnet`]), the learner the train stage
//! trains ([`learner`]) and its optimizers ([`optim`]).
//!
//! `conv(3x3, conv1) -> relu -> maxpool 2 -> conv(3x3, conv2) -> relu -> maxpool 2 -> fc(hidden) -> relu -> fc(classes)`.
//! Features are the `fc` output *before* its ReLU: a post-ReLU vector can be exactly zero,
//! which has no direction and so no cosine similarity.
//!
//! Forward passes use libtorch's fallible `f_` ops, so a shape mismatch is an error that the
//! stage reports, not a panic.
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::error::Result;

pub mod learner;
pub mod optim;
pub mod resnet;

/// Widths of the CNN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CnnArch {
    /// Output channels of the first conv layer.
    #[serde(default = "d_conv1")]
    pub conv1: usize,
    /// Output channels of the second conv layer.
    #[serde(default = "d_conv2")]
    pub conv2: usize,
    /// Size of the hidden (feature) layer.
    #[serde(default = "d_hidden")]
    pub hidden: usize,
}

fn d_conv1() -> usize {
    32
}
fn d_conv2() -> usize {
    64
}
fn d_hidden() -> usize {
    128
}

impl Default for CnnArch {
    fn default() -> Self {
        CnnArch {
            conv1: d_conv1(),
            conv2: d_conv2(),
            hidden: d_hidden(),
        }
    }
}

impl CnnArch {
    /// Every width must be at least 1.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.conv1 == 0 || self.conv2 == 0 || self.hidden == 0 {
            Err(format!("widths must be at least 1, got {self:?}"))
        } else {
            Ok(())
        }
    }
}

/// The network. Variable names (`conv1`, `conv2`, `fc`, `head`) are the safetensors keys.
#[derive(Debug)]
pub struct Cnn {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    fc: nn::Linear,
    head: nn::Linear,
}

impl Cnn {
    /// Creates the layers under `path` for inputs of shape `(channels, height, width)`.
    /// Height and width must be at least 4 (two 2x2 poolings).
    pub fn new(
        path: &nn::Path,
        arch: &CnnArch,
        shape: (usize, usize, usize),
        classes: usize,
    ) -> Cnn {
        let (c, h, w) = shape;
        let conv = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let flat = (arch.conv2 * (h / 4) * (w / 4)) as i64;
        Cnn {
            conv1: nn::conv2d(path / "conv1", c as i64, arch.conv1 as i64, 3, conv),
            conv2: nn::conv2d(
                path / "conv2",
                arch.conv1 as i64,
                arch.conv2 as i64,
                3,
                conv,
            ),
            fc: nn::linear(path / "fc", flat, arch.hidden as i64, Default::default()),
            head: nn::linear(
                path / "head",
                arch.hidden as i64,
                classes as i64,
                Default::default(),
            ),
        }
    }

    /// Features. `xs`: `[N, C, H, W]` float32 -> `[N, hidden]` float32 (pre-activation).
    pub fn features(&self, xs: &Tensor) -> Result<Tensor> {
        let x = xs
            .f_conv2d(
                &self.conv1.ws,
                self.conv1.bs.as_ref(),
                [1, 1],
                [1, 1],
                [1, 1],
                1,
            )?
            .f_relu()?
            .f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?
            .f_conv2d(
                &self.conv2.ws,
                self.conv2.bs.as_ref(),
                [1, 1],
                [1, 1],
                [1, 1],
                1,
            )?
            .f_relu()?
            .f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?
            .f_flatten(1, -1)?;
        Ok(x.f_linear(&self.fc.ws, self.fc.bs.as_ref())?)
    }

    /// Class logits from features. `[N, hidden]` -> `[N, classes]`.
    pub fn head(&self, features: &Tensor) -> Result<Tensor> {
        Ok(features
            .f_relu()?
            .f_linear(&self.head.ws, self.head.bs.as_ref())?)
    }

    /// Class logits. `[N, C, H, W]` -> `[N, classes]`.
    pub fn logits(&self, xs: &Tensor) -> Result<Tensor> {
        self.head(&self.features(xs)?)
    }
}

/// Runs `f` (which creates model variables) right after seeding libtorch's global random
/// generator with `seed`, holding a process-wide lock. libtorch has one global generator:
/// without the lock, two models initialised at the same time in one process (two runs, or
/// parallel tests) would interleave their draws and neither would be reproducible.
pub fn seeded<T>(seed: u64, f: impl FnOnce() -> T) -> T {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    tch::manual_seed(seed as i64);
    f()
}

/// Mean cross-entropy of `logits` `[N, K]` against `labels` `[N]` (int64), with label
/// smoothing `smoothing` (0: none; `torch.nn.functional.cross_entropy`'s `label_smoothing`).
pub fn smoothed_cross_entropy(logits: &Tensor, labels: &Tensor, smoothing: f64) -> Result<Tensor> {
    if smoothing == 0.0 {
        return cross_entropy(logits, labels);
    }
    Ok(logits.f_to_kind(Kind::Float)?.f_cross_entropy_loss(
        labels,
        None::<Tensor>,
        tch::Reduction::Mean,
        -100,
        smoothing,
    )?)
}

/// Mean cross-entropy of `logits` `[N, K]` against `labels` `[N]` (int64).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(logits.f_log_softmax(-1, Kind::Float)?.f_nll_loss(
        labels,
        None::<Tensor>,
        tch::Reduction::Mean,
        -100,
    )?)
}

/// Number of rows where `argmax(logits) == labels`.
pub fn correct(logits: &Tensor, labels: &Tensor) -> Result<i64> {
    Ok(logits
        .f_argmax(-1, false)?
        .f_eq_tensor(labels)?
        .f_sum(Kind::Int64)?
        .f_int64_value(&[])?)
}
