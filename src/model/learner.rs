//! The network the train stage trains (`trainer.model`): saln's small CNN (`cnn`, the
//! default), a torchvision ResNet (`resnet`, built by [`crate::model::resnet`], the builder
//! the ResNet feature extractor uses), or the user's own TorchScript module (`torchscript`,
//! trained through its parameters).
//!
//! All three live in one `VarStore`, so the optimizer ([`crate::model::optim`]), the
//! learner snapshots of the learner-aware policies (`select::learner`) and the
//! saved weights treat them alike. The variables of a `resnet` carry torchvision's
//! `state_dict()` names, so the saved file loads into `torchvision.models.resnet18` (with
//! the stem swapped for [`Stem::Small`]); a `torchscript` learner is saved as a TorchScript
//! module (`.pt`) with its trained parameters.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::error::{Error, Issues, Result};
use crate::model::resnet::{Fresh, ResNet, ResNetArch, ResNetSpec, Stem};
use crate::model::{Cnn, CnnArch};

/// `trainer.model`: which network the learner is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LearnerKind {
    /// saln's small CNN (`trainer.arch`).
    #[default]
    Cnn,
    /// A torchvision ResNet (`trainer.resnet`).
    Resnet,
    /// A TorchScript module (`trainer.torchscript`).
    Torchscript,
}

impl LearnerKind {
    /// The name in the config.
    pub fn name(self) -> &'static str {
        match self {
            LearnerKind::Cnn => "cnn",
            LearnerKind::Resnet => "resnet",
            LearnerKind::Torchscript => "torchscript",
        }
    }

    /// Whether the learner's whole state is in its `VarStore`, so that a snapshot of the
    /// variables is a snapshot of the learner. A TorchScript module's buffers (batch-norm
    /// statistics, say) are not: tch registers only its parameters.
    pub fn state_in_var_store(self) -> bool {
        self != LearnerKind::Torchscript
    }
}

/// `trainer.resnet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetLearnerConfig {
    /// `resnet18`, `resnet34` or `resnet50`.
    pub arch: ResNetArch,
    /// `imagenet` (torchvision's 7x7/2 convolution and max pool, the default) or `small`
    /// (3x3/1, no pool: for 28-32 px images).
    #[serde(default)]
    pub stem: Stem,
    /// Initial weights: a `.safetensors` file of a torchvision `state_dict()` of this
    /// architecture, stem, input channels and class count. Random initialisation (from the
    /// run seed, as torchvision initialises) without it.
    #[serde(default)]
    pub weights: Option<PathBuf>,
}

/// `trainer.torchscript`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TorchScriptLearnerConfig {
    /// The module, saved with `torch.jit.script(model).save(path)` (or `trace`): its
    /// `forward` takes `[n, C, H, W]` float32 images and returns `[n, classes]` logits.
    pub path: PathBuf,
}

/// What to build: the kind with its own section (see [`LearnerSpec::validate`]).
#[derive(Debug, Clone, PartialEq)]
pub enum LearnerSpec {
    /// saln's CNN.
    Cnn(CnnArch),
    /// A torchvision ResNet.
    ResNet(ResNetLearnerConfig),
    /// A TorchScript module.
    TorchScript(TorchScriptLearnerConfig),
}

impl LearnerSpec {
    /// The kind.
    pub fn kind(&self) -> LearnerKind {
        match self {
            LearnerSpec::Cnn(_) => LearnerKind::Cnn,
            LearnerSpec::ResNet(_) => LearnerKind::Resnet,
            LearnerSpec::TorchScript(_) => LearnerKind::Torchscript,
        }
    }

    /// Checks that need the file system: the files named exist.
    pub fn check_resources(&self, v: &mut Issues) {
        let (key, file) = match self {
            LearnerSpec::ResNet(ResNetLearnerConfig {
                weights: Some(w), ..
            }) => ("trainer.resnet.weights", w),
            LearnerSpec::TorchScript(t) => ("trainer.torchscript.path", &t.path),
            _ => return,
        };
        v.check(file.is_file(), key, || {
            format!("{}: not found", file.display())
        });
    }
}

enum Net {
    Cnn(Box<Cnn>),
    ResNet(ResNet),
    Script(tch::CModule),
}

/// A learner: its network and the `VarStore` of its variables.
pub struct Learner {
    vs: nn::VarStore,
    net: Net,
    spec: LearnerSpec,
    train: bool,
}

impl std::fmt::Debug for Learner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Learner")
            .field("kind", &self.spec.kind())
            .field("train", &self.train)
            .finish_non_exhaustive()
    }
}

impl Learner {
    /// Builds `spec` on `device` for `shape` `(C, H, W)` images and `classes` classes,
    /// initialised from `seed` (under [`crate::model::seeded`]), or from the ResNet's
    /// `weights` file, or as the TorchScript module was saved. Starts in training mode.
    ///
    /// Errors name the file or config key: a weights file that does not fit (every tensor
    /// must be there with its shape, as PyTorch's strict `load_state_dict`), a module that
    /// cannot be loaded, or one whose output is not `[n, classes]` for such images.
    pub fn build(
        spec: &LearnerSpec,
        shape: (usize, usize, usize),
        classes: usize,
        seed: u64,
        device: Device,
    ) -> Result<Learner> {
        let (c, h, w) = shape;
        let (vs, net) = crate::model::seeded(seed, || -> Result<(nn::VarStore, Net)> {
            let vs = nn::VarStore::new(device);
            let net = match spec {
                LearnerSpec::Cnn(arch) => {
                    Net::Cnn(Box::new(Cnn::new(&vs.root(), arch, shape, classes)))
                }
                LearnerSpec::ResNet(r) => Net::ResNet(ResNet::build(
                    ResNetSpec {
                        arch: r.arch,
                        stem: r.stem,
                        in_channels: c as i64,
                        classes: Some(classes as i64),
                    },
                    &mut Fresh::new(vs.root()),
                )?),
                LearnerSpec::TorchScript(t) => Net::Script(load_script(&t.path, &vs.root())?),
            };
            Ok((vs, net))
        })?;
        let mut learner = Learner {
            vs,
            net,
            spec: spec.clone(),
            train: true,
        };
        if let LearnerSpec::ResNet(ResNetLearnerConfig {
            weights: Some(file),
            ..
        }) = spec
        {
            learner.load_weights(file)?;
        }
        learner.set_train(false)?;
        if let Err(e) = learner.check_output(shape, classes) {
            let message =
                format!("as the learner, for {c}x{h}x{w} images and {classes} classes: {e}");
            return Err(match spec {
                LearnerSpec::TorchScript(t) => Error::Model {
                    path: t.path.clone(),
                    message,
                },
                _ => Error::config("trainer.model", message),
            });
        }
        learner.set_train(true)?;
        Ok(learner)
    }

    /// Training (batch statistics, dropout) or evaluation mode for the next forward passes.
    pub fn set_train(&mut self, train: bool) -> Result<()> {
        if let Net::Script(m) = &mut self.net {
            if train {
                m.f_set_train()?;
            } else {
                m.f_set_eval()?;
            }
        }
        self.train = train;
        Ok(())
    }

    /// Whether the learner is in training mode.
    pub fn is_train(&self) -> bool {
        self.train
    }

    /// Class logits `[n, classes]` of `xs` `[n, C, H, W]` in the current mode. In training
    /// mode a ResNet's batch norm updates its running statistics.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match &self.net {
            Net::Cnn(m) => m.logits(xs),
            Net::ResNet(m) => m.forward(xs, self.train),
            Net::Script(m) => Ok(m.forward_ts(&[xs])?),
        }
    }

    /// Stops gradients to every variable (a copy that only scores, never trains).
    pub fn freeze(&mut self) {
        self.vs.freeze();
    }

    /// The variables (the optimizer's, the snapshots').
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The spec it was built from.
    pub fn spec(&self) -> &LearnerSpec {
        &self.spec
    }

    /// Saves the trained learner to `path` atomically: a `resnet` or `cnn` as safetensors
    /// (a ResNet with torchvision's names, `num_batches_tracked` set to `steps`), a
    /// `torchscript` learner as a TorchScript module.
    pub fn save(&self, path: &Path, steps: u64) -> Result<()> {
        let model_err = |e: tch::TchError| Error::Model {
            path: path.to_path_buf(),
            message: format!("cannot write the learner: {e}"),
        };
        match &self.net {
            Net::Script(m) => {
                crate::io::write_atomic_with(path, ".pt", |tmp| m.save(tmp).map_err(model_err))
            }
            _ => {
                let tensors = self.state_dict(steps)?;
                crate::io::write_atomic_with(path, ".safetensors", |tmp| {
                    Tensor::write_safetensors(&tensors, tmp).map_err(model_err)
                })
            }
        }
    }

    /// The variables as `(name, CPU tensor)` in name order; a ResNet's with a
    /// `num_batches_tracked` per batch norm, as in torchvision's `state_dict()`.
    pub fn state_dict(&self, steps: u64) -> Result<Vec<(String, Tensor)>> {
        let _guard = tch::no_grad_guard();
        let mut out = Vec::new();
        for (name, t) in self.vs.variables() {
            if let (Net::ResNet(_), Some(bn)) = (&self.net, name.strip_suffix(".running_var")) {
                out.push((
                    format!("{bn}.num_batches_tracked"),
                    Tensor::f_scalar_tensor(steps as i64, (Kind::Int64, Device::Cpu))?,
                ));
            }
            out.push((name, t.f_to_device(Device::Cpu)?.f_contiguous()?));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Copies a torchvision `state_dict()` file into the ResNet's variables, strictly.
    fn load_weights(&mut self, file: &Path) -> Result<()> {
        let err = |message: String| Error::Model {
            path: file.to_path_buf(),
            message,
        };
        let tensors = Tensor::read_safetensors(file)
            .map_err(|e| err(format!("not a readable safetensors file: {e}")))?;
        let mut mine = self.vs.variables();
        let _guard = tch::no_grad_guard();
        let mut extra = Vec::new();
        for (name, src) in tensors {
            let Some(mut dst) = mine.remove(&name) else {
                if !name.ends_with(".num_batches_tracked") {
                    extra.push(name);
                }
                continue;
            };
            if src.size() != dst.size() {
                return Err(err(format!(
                    "tensor `{name}` has shape {:?}, this learner's is {:?} (check \
                     trainer.resnet.arch and stem, the image channels and the class count)",
                    src.size(),
                    dst.size()
                )));
            }
            dst.f_copy_(&src.f_to_kind(dst.kind())?)?;
        }
        let mut missing: Vec<String> = mine.into_keys().collect();
        missing.sort();
        extra.sort();
        if let Some(m) = missing.first() {
            return Err(err(format!(
                "missing tensor `{m}` ({} missing in all)",
                missing.len()
            )));
        }
        if !extra.is_empty() {
            return Err(err(format!(
                "{} tensor(s) this learner does not have: `{}`",
                extra.len(),
                extra.join("`, `")
            )));
        }
        Ok(())
    }

    /// One forward pass (in evaluation mode, so no running statistic moves) on a zero batch
    /// of two images: the logits must be `[2, classes]`.
    fn check_output(
        &self,
        (c, h, w): (usize, usize, usize),
        classes: usize,
    ) -> std::result::Result<(), String> {
        let _guard = tch::no_grad_guard();
        let x = Tensor::f_zeros(
            [2, c as i64, h as i64, w as i64],
            (Kind::Float, self.vs.device()),
        )
        .map_err(|e| e.to_string())?;
        let out = self.forward(&x).map_err(|e| e.to_string())?;
        if out.size() != [2, classes as i64] {
            return Err(format!(
                "it returns shape {:?} for 2 images, not [2, {classes}]",
                out.size()
            ));
        }
        Ok(())
    }
}

/// Loads a TorchScript module onto the path's device and registers its parameters in the
/// path's `VarStore` (their names with `.` written `_`, which a `VarStore` name cannot hold).
fn load_script(file: &Path, root: &nn::Path) -> Result<tch::CModule> {
    let module = tch::CModule::load_on_device(file, root.device()).map_err(|e| Error::Model {
        path: file.to_path_buf(),
        message: format!(
            "not a TorchScript module (write one with torch.jit.script(model).save(path)): {e}"
        ),
    })?;
    for (name, t) in module.named_parameters()? {
        let trainable = t.requires_grad();
        let _ = root.add(&name.replace('.', "_"), t, trainable);
    }
    Ok(module)
}
