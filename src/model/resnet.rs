//! torchvision's ResNet-18/34/50, built by one builder for its two uses: the frozen feature
//! network (`extractor.kind: resnet`: every tensor from a `.safetensors` file, batch norm on
//! the stored running statistics) and a learner (`trainer.model: resnet`: fresh variables in
//! a `VarStore`, trained with batch statistics).
//!
//! The tensor names are torchvision's `state_dict()` keys (`conv1.weight`, `bn1.running_mean`,
//! `layer1.0.conv1.weight`, `layer2.0.downsample.0.weight`, ..., `fc.weight`). The layout is
//! torchvision's: a stem, four stages of basic (18, 34) or bottleneck (50) blocks with the
//! stride on the bottleneck's 3x3 convolution ("ResNet v1.5"), 1x1/stride downsample
//! convolutions, global average pool, `fc`. The stem is torchvision's 7x7/2 convolution and
//! 3x3/2 max pool ([`Stem::Imagenet`]), or for 28-32 px images the 3x3/1 convolution without
//! the pool that CIFAR ResNets use ([`Stem::Small`]): on a 32 px image the ImageNet stem
//! leaves an 8x8 map after two layers and a 1x1 map in `layer4`, which throws away most of
//! what the network could learn.
//!
//! Where the tensors come from is a [`TensorSource`]: the builder asks for each one by name,
//! shape and [`Role`], so the file loader can be strict about names and shapes and the learner
//! can initialise each tensor as torchvision does. Forward passes use the fallible `f_` ops.
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::error::Result;

/// The torchvision architectures supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResNetArch {
    /// `torchvision.models.resnet18`: basic blocks [2, 2, 2, 2], 512-d features.
    Resnet18,
    /// `torchvision.models.resnet34`: basic blocks [3, 4, 6, 3], 512-d features.
    Resnet34,
    /// `torchvision.models.resnet50`: bottleneck blocks [3, 4, 6, 3], 2048-d features.
    Resnet50,
}

impl ResNetArch {
    /// Blocks per stage.
    pub fn blocks(self) -> [usize; 4] {
        match self {
            ResNetArch::Resnet18 => [2, 2, 2, 2],
            ResNetArch::Resnet34 | ResNetArch::Resnet50 => [3, 4, 6, 3],
        }
    }

    /// Whether the blocks are bottlenecks (1x1, 3x3, 1x1 with 4x expansion).
    pub fn bottleneck(self) -> bool {
        self == ResNetArch::Resnet50
    }

    /// Size of the pooled features (the input of `fc`).
    pub fn feature_dim(self) -> i64 {
        if self.bottleneck() {
            2048
        } else {
            512
        }
    }

    /// The name in the config and in torchvision (`resnet18`).
    pub fn name(self) -> &'static str {
        match self {
            ResNetArch::Resnet18 => "resnet18",
            ResNetArch::Resnet34 => "resnet34",
            ResNetArch::Resnet50 => "resnet50",
        }
    }
}

/// The first layers, before `layer1`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stem {
    /// torchvision's: 7x7 stride-2 convolution (padding 3), then a 3x3 stride-2 max pool.
    #[default]
    Imagenet,
    /// For 28-32 px inputs: 3x3 stride-1 convolution (padding 1), no pool. Same names
    /// (`conv1`, `bn1`); in PyTorch, set `model.conv1 = nn.Conv2d(C, 64, 3, 1, 1,
    /// bias=False)` and `model.maxpool = nn.Identity()` before `load_state_dict`.
    Small,
}

/// What a tensor is, so a [`TensorSource`] can initialise it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A convolution's weight `[out, in, k, k]` (no bias: batch norm follows).
    ConvWeight,
    /// Batch norm's scale `[c]`.
    NormWeight,
    /// Batch norm's shift `[c]`.
    NormBias,
    /// Batch norm's running mean `[c]` (a buffer, not trained).
    RunningMean,
    /// Batch norm's running variance `[c]` (a buffer, not trained).
    RunningVar,
    /// The classifier's weight `[classes, dim]`.
    FcWeight,
    /// The classifier's bias `[classes]`.
    FcBias,
}

/// Hands the builder its tensors.
pub trait TensorSource {
    /// The tensor called `name` (torchvision's key) with `shape`.
    fn tensor(&mut self, name: &str, shape: &[i64], role: Role) -> Result<Tensor>;
}

/// Fresh variables under a `VarStore` path, initialised as torchvision initialises a ResNet:
/// convolutions He-normal on fan-out, batch norm scale 1 and shift 0, running mean 0 and
/// variance 1 (buffers: not trainable), `fc` uniform in `±1/sqrt(fan_in)` (PyTorch's `Linear`
/// default). The variables get the state_dict names, so `vs.variables()` is a torchvision
/// `state_dict()` less `num_batches_tracked`.
pub struct Fresh<'a> {
    root: nn::Path<'a>,
    /// The fan-in of the last `fc.weight` handed out (the bias's bound uses it).
    fc_fan_in: i64,
}

impl<'a> Fresh<'a> {
    /// Variables under `root`.
    pub fn new(root: nn::Path<'a>) -> Fresh<'a> {
        Fresh { root, fc_fan_in: 1 }
    }
}

impl TensorSource for Fresh<'_> {
    fn tensor(&mut self, name: &str, shape: &[i64], role: Role) -> Result<Tensor> {
        let mut parts: Vec<&str> = name.split('.').collect();
        let leaf = parts.pop().unwrap_or(name);
        let mut path = self.root.clone();
        for p in parts {
            path = &path / p;
        }
        let t = match role {
            Role::ConvWeight => {
                let fan_out = (shape[0] * shape[2] * shape[3]) as f64;
                path.f_var(
                    leaf,
                    shape,
                    nn::Init::Randn {
                        mean: 0.0,
                        stdev: (2.0 / fan_out).sqrt(),
                    },
                )?
            }
            Role::NormWeight => path.f_ones(leaf, shape)?,
            Role::NormBias => path.f_zeros(leaf, shape)?,
            Role::RunningMean => path.f_zeros_no_train(leaf, shape)?,
            Role::RunningVar => path.f_ones_no_train(leaf, shape)?,
            Role::FcWeight | Role::FcBias => {
                // The fan-in is the weight's second dimension; the bias is drawn with the
                // weight's bound, as PyTorch's Linear.reset_parameters does.
                if role == Role::FcWeight {
                    self.fc_fan_in = shape[1];
                }
                let fan_in = self.fc_fan_in;
                let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
                path.f_var(
                    leaf,
                    shape,
                    nn::Init::Uniform {
                        lo: -bound,
                        up: bound,
                    },
                )?
            }
        };
        Ok(t)
    }
}

#[derive(Debug)]
struct ConvBn {
    weight: Tensor,
    stride: i64,
    padding: i64,
    /// Scale, shift, running mean, running variance.
    bn: [Tensor; 4],
}

impl ConvBn {
    /// Batch norm with momentum 0.1 and eps 1e-5 (PyTorch's defaults). With `train`, it
    /// normalises by the batch's statistics and updates the running ones in place.
    fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let (s, p) = (self.stride, self.padding);
        let [w, b, mean, var] = &self.bn;
        let y = xs.f_conv2d(&self.weight, None::<Tensor>, [s, s], [p, p], [1, 1], 1)?;
        Ok(y.f_batch_norm(
            Some(w),
            Some(b),
            Some(mean),
            Some(var),
            train,
            0.1,
            1e-5,
            true,
        )?)
    }
}

#[derive(Debug)]
struct Block {
    /// Two (basic) or three (bottleneck) conv + batch-norm pairs; ReLU between them.
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Block {
    fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = xs.shallow_clone();
        for (i, c) in self.convs.iter().enumerate() {
            y = c.forward(&y, train)?;
            if i + 1 < self.convs.len() {
                y = y.f_relu()?;
            }
        }
        let identity = match &self.downsample {
            Some(d) => d.forward(xs, train)?,
            None => xs.shallow_clone(),
        };
        Ok(y.f_add(&identity)?.f_relu()?)
    }
}

/// What to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResNetSpec {
    /// Depth and block kind.
    pub arch: ResNetArch,
    /// First layers.
    pub stem: Stem,
    /// Image channels (3 for ImageNet weights; 1 for a learner on grey images).
    pub in_channels: i64,
    /// Classes of `fc`; `None` builds no classifier.
    pub classes: Option<i64>,
}

/// A torchvision ResNet.
#[derive(Debug)]
pub struct ResNet {
    stem: ConvBn,
    pool: bool,
    stages: Vec<Vec<Block>>,
    fc: Option<(Tensor, Tensor)>,
}

impl ResNet {
    /// Builds `spec`, asking `src` for every tensor in torchvision's order (`conv1`, `bn1`,
    /// then each block's convolutions and batch norms, its downsample, and `fc` last).
    pub fn build(spec: ResNetSpec, src: &mut dyn TensorSource) -> Result<ResNet> {
        let arch = spec.arch;
        let (k, stride, pad) = match spec.stem {
            Stem::Imagenet => (7, 2, 3),
            Stem::Small => (3, 1, 1),
        };
        let stem = conv_bn(src, "conv1", "bn1", (spec.in_channels, 64), k, stride, pad)?;
        let widths = [64i64, 128, 256, 512];
        let expansion = if arch.bottleneck() { 4 } else { 1 };
        let mut c_in = 64i64;
        let mut stages = Vec::new();
        for (l, (&width, &count)) in widths.iter().zip(arch.blocks().iter()).enumerate() {
            let mut blocks = Vec::new();
            for b in 0..count {
                let p = format!("layer{}.{b}", l + 1);
                let stride = if l > 0 && b == 0 { 2 } else { 1 };
                let c_out = width * expansion;
                // (in, out, kernel, stride, padding) of conv1, conv2[, conv3]: torchvision's
                // BasicBlock and Bottleneck.
                let specs = if arch.bottleneck() {
                    vec![
                        (c_in, width, 1, 1, 0),
                        (width, width, 3, stride, 1),
                        (width, c_out, 1, 1, 0),
                    ]
                } else {
                    vec![(c_in, width, 3, stride, 1), (width, width, 3, 1, 1)]
                };
                let convs = specs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (ci, co, k, s, pad))| {
                        let n = i + 1;
                        let (conv, bn) = (format!("{p}.conv{n}"), format!("{p}.bn{n}"));
                        conv_bn(src, &conv, &bn, (ci, co), k, s, pad)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let downsample = if stride != 1 || c_in != c_out {
                    let (conv, bn) = (format!("{p}.downsample.0"), format!("{p}.downsample.1"));
                    Some(conv_bn(src, &conv, &bn, (c_in, c_out), 1, stride, 0)?)
                } else {
                    None
                };
                blocks.push(Block { convs, downsample });
                c_in = c_out;
            }
            stages.push(blocks);
        }
        let fc = match spec.classes {
            Some(classes) => {
                let dim = arch.feature_dim();
                let w = src.tensor("fc.weight", &[classes, dim], Role::FcWeight)?;
                let b = src.tensor("fc.bias", &[classes], Role::FcBias)?;
                Some((w, b))
            }
            None => None,
        };
        Ok(ResNet {
            stem,
            pool: spec.stem == Stem::Imagenet,
            stages,
            fc,
        })
    }

    /// The pooled features `[n, 512 | 2048]` of `xs` `[n, C, H, W]`. `train` uses and
    /// updates batch statistics; otherwise the running ones (call under `no_grad` then).
    pub fn features(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = self.stem.forward(xs, train)?.f_relu()?;
        if self.pool {
            x = x.f_max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)?;
        }
        for stage in &self.stages {
            for block in stage {
                x = block.forward(&x, train)?;
            }
        }
        Ok(x.f_adaptive_avg_pool2d([1, 1])?.f_flatten(1, -1)?)
    }

    /// Class logits `[n, classes]`, or the pooled features when built without `fc`.
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let pooled = self.features(xs, train)?;
        match &self.fc {
            Some((w, b)) => Ok(pooled.f_linear(w, Some(b))?),
            None => Ok(pooled),
        }
    }
}

fn conv_bn(
    src: &mut dyn TensorSource,
    conv: &str,
    bn: &str,
    (c_in, c_out): (i64, i64),
    k: i64,
    stride: i64,
    padding: i64,
) -> Result<ConvBn> {
    let weight = src.tensor(
        &format!("{conv}.weight"),
        &[c_out, c_in, k, k],
        Role::ConvWeight,
    )?;
    let mut norm = |leaf: &str, role| src.tensor(&format!("{bn}.{leaf}"), &[c_out], role);
    let bn = [
        norm("weight", Role::NormWeight)?,
        norm("bias", Role::NormBias)?,
        norm("running_mean", Role::RunningMean)?,
        norm("running_var", Role::RunningVar)?,
    ];
    Ok(ConvBn {
        weight,
        stride,
        padding,
        bn,
    })
}
