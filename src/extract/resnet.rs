//! torchvision's ResNet-18/34/50 with `.safetensors` weights (`extractor.kind: resnet`).
//!
//! The tensor names are torchvision's `state_dict()` keys (`conv1.weight`, `bn1.running_mean`,
//! `layer1.0.conv1.weight`, `layer2.0.downsample.0.weight`, ..., `fc.weight`), so a
//! torchvision model converted with `safetensors.torch.save_file(model.state_dict(), path)`
//! loads as it is (recipe in `docs/extractors.md`). The architecture is built by
//! [`crate::model::resnet`], the same builder that makes the `resnet` learner, with
//! torchvision's ImageNet stem; this module is the strict file side of it (a
//! [`TensorSource`] that checks every name and shape). Batch norm runs in eval mode on the stored
//! running statistics (eps 1e-5); `num_batches_tracked` only matters to training and is
//! accepted and ignored.
//!
//! Why not `tch::vision::resnet`, whose variable names are the same: its forward pass uses
//! the panicking op wrappers, and `VarStore::load` ignores tensors the model does not have,
//! so a ResNet-34 file loads into a ResNet-18 without a word. This loader is strict like
//! PyTorch's `load_state_dict(strict=True)`: every tensor must be present with its exact
//! shape, and a tensor the architecture does not use is an error; errors name the file, the
//! tensor and, when the names reveal it, the architecture the file really holds.
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use crate::error::Issues;
use crate::error::{Error, Result};
use crate::model::resnet::{ResNetSpec, Role, Stem, TensorSource};

pub use crate::model::resnet::ResNetArch;

/// Which layer's output is the feature vector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResNetLayer {
    /// The global-average-pooled features before `fc`: 512 (18, 34) or 2048 (50) values.
    #[default]
    Pool,
    /// The `fc` logits (1000 for ImageNet weights).
    Fc,
}

/// `extractor.resnet`: architecture, weights and output layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    /// `resnet18`, `resnet34` or `resnet50`.
    pub arch: ResNetArch,
    /// A `.safetensors` file of the model's torchvision `state_dict()`.
    pub weights: PathBuf,
    /// `pool` (default): the pooled features before `fc`; `fc`: the logits.
    #[serde(default)]
    pub layer: ResNetLayer,
}

impl ResNetConfig {
    /// Adds this section's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        v.check(
            !self.weights.as_os_str().is_empty(),
            "extractor.resnet.weights",
            || "must name a .safetensors file".into(),
        );
    }

    /// Checks that need the file system: the weights file exists.
    pub fn check_resources(&self, v: &mut Issues) {
        v.check(self.weights.is_file(), "extractor.resnet.weights", || {
            format!(
                "{}: not found (convert torchvision weights as in docs/extractors.md)",
                self.weights.display()
            )
        });
    }
}

/// A torchvision ResNet, loaded and frozen (eval mode, no gradients): the kit's
/// [`crate::model::resnet::ResNet`] built from a file's tensors.
#[derive(Debug)]
pub struct ResNet {
    net: crate::model::resnet::ResNet,
    layer: ResNetLayer,
}

impl ResNet {
    /// Loads `cfg.weights` as a `cfg.arch` onto `device` with floating-point tensors in
    /// `kind` (`Float`, or `Half` on CUDA).
    ///
    /// Errors ([`Error::Model`] naming the file): not a safetensors file; a tensor missing
    /// (named), of the wrong shape (named, with both shapes) or not floating point; tensors
    /// the architecture does not have (named). When the names show which ResNet the file
    /// holds, the message says so. `fc` is needed only for `layer: fc`.
    pub fn load(cfg: &ResNetConfig, device: Device, kind: Kind) -> Result<ResNet> {
        let path = &cfg.weights;
        if !path.is_file() {
            return Err(model_error(path, "not found".into()));
        }
        let tensors = Tensor::read_safetensors(path).map_err(|e| {
            model_error(
                path,
                format!(
                    "not a readable safetensors file (write one with \
                     safetensors.torch.save_file(model.state_dict(), path)): {e}"
                ),
            )
        })?;
        let mut w = Weights::new(path, cfg.arch, tensors, device, kind);
        let classes = w.fc_classes(cfg.arch.feature_dim(), cfg.layer == ResNetLayer::Fc)?;
        let spec = ResNetSpec {
            arch: cfg.arch,
            stem: Stem::Imagenet,
            in_channels: 3,
            classes,
        };
        let net = crate::model::resnet::ResNet::build(spec, &mut w)?;
        w.finish()?;
        Ok(ResNet {
            net,
            layer: cfg.layer,
        })
    }

    /// Features of `xs`: `[n, 3, H, W]` in the model's kind and device -> `[n, 512 | 2048]`
    /// (`pool`) or `[n, classes]` (`fc`). Call under `no_grad`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self.layer {
            ResNetLayer::Fc => self.net.forward(xs, false),
            ResNetLayer::Pool => self.net.features(xs, false),
        }
    }
}

/// The tensors of a file, handed out by name with their shapes checked.
struct Weights<'a> {
    path: &'a Path,
    arch: ResNetArch,
    map: HashMap<String, Tensor>,
    used: BTreeSet<String>,
    device: Device,
    kind: Kind,
}

impl<'a> Weights<'a> {
    fn new(
        path: &'a Path,
        arch: ResNetArch,
        tensors: Vec<(String, Tensor)>,
        device: Device,
        kind: Kind,
    ) -> Self {
        Weights {
            path,
            arch,
            map: tensors.into_iter().collect(),
            used: BTreeSet::new(),
            device,
            kind,
        }
    }

    fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let Some(t) = self.map.get(name) else {
            return Err(self.error(format!(
                "missing tensor `{name}`{}",
                self.missing_hint(name)
            )));
        };
        if t.size() != shape {
            return Err(self.error(format!(
                "tensor `{name}` has shape {:?}, a {} needs {shape:?}{}",
                t.size(),
                self.arch.name(),
                self.guess_hint()
            )));
        }
        if !t.is_floating_point() {
            return Err(self.error(format!(
                "tensor `{name}` holds {:?} values, not floating point",
                t.kind()
            )));
        }
        let t = t.f_to_device(self.device)?.f_to_kind(self.kind)?;
        self.used.insert(name.to_string());
        Ok(t)
    }

    /// The classes of the file's `fc.weight` `[classes, dim]`: required when `needed`;
    /// when present and not needed it is still checked (and otherwise unused).
    fn fc_classes(&mut self, dim: i64, needed: bool) -> Result<Option<i64>> {
        match self.map.get("fc.weight") {
            Some(t) if t.dim() == 2 => Ok(Some(t.size()[0])),
            Some(t) => Err(self.error(format!(
                "tensor `fc.weight` has shape {:?}, a {} needs [classes, {dim}]",
                t.size(),
                self.arch.name()
            ))),
            None if needed => Err(self.error(
                "missing tensor `fc.weight` (layer: fc needs the classifier; use layer: pool \
                 for a model without it)"
                    .into(),
            )),
            None => Ok(None),
        }
    }

    /// Errors on tensors the architecture does not use.
    fn finish(&self) -> Result<()> {
        let mut extra: Vec<&String> = self
            .map
            .keys()
            .filter(|k| !self.used.contains(k.as_str()))
            .collect();
        if extra.is_empty() {
            return Ok(());
        }
        extra.sort();
        let n = extra.len();
        let shown: Vec<String> = extra.iter().take(5).map(|k| format!("`{k}`")).collect();
        Err(self.error(format!(
            "{n} tensor(s) that a {} does not have: {}{}{}",
            self.arch.name(),
            shown.join(", "),
            if n > 5 { ", ..." } else { "" },
            self.guess_hint()
        )))
    }

    fn error(&self, message: String) -> Error {
        model_error(self.path, message)
    }

    fn missing_hint(&self, name: &str) -> String {
        // A wrapper's prefix (`module.` from DataParallel, `model.`, `backbone.`).
        if let Some(k) = self
            .map
            .keys()
            .filter(|k| k.ends_with(&format!(".{name}")))
            .min_by_key(|k| k.len())
        {
            let prefix = &k[..k.len() - name.len()];
            return format!(
                "; the file has `{k}`: its names carry the prefix `{prefix}` (save the inner \
                 model's state_dict, or strip the prefix)"
            );
        }
        if name.ends_with(".running_mean") || name.ends_with(".running_var") {
            let weight = format!("{}.weight", name.rsplit_once('.').map_or(name, |p| p.0));
            if self.map.contains_key(&weight) {
                return "; the file has the batch-norm weights but not their running statistics: \
                        save model.state_dict(), not model.named_parameters()"
                    .into();
            }
        }
        self.guess_hint()
    }

    /// "; the file looks like a resnet34" when its names say so.
    fn guess_hint(&self) -> String {
        match guess_arch(self.map.keys().map(String::as_str)) {
            Some(g) if g != self.arch.name() => {
                format!("; the file looks like a {g} (extractor.resnet.arch)")
            }
            _ => String::new(),
        }
    }
}

impl TensorSource for Weights<'_> {
    fn tensor(&mut self, name: &str, shape: &[i64], role: Role) -> Result<Tensor> {
        if role == Role::RunningVar {
            // Training bookkeeping only: accepted, not needed in eval mode.
            let bn = name.strip_suffix(".running_var").unwrap_or(name);
            self.used.insert(format!("{bn}.num_batches_tracked"));
        }
        self.take(name, shape)
    }
}

/// Which torchvision ResNet a set of state_dict names belongs to, from the block counts.
fn guess_arch<'a>(names: impl Iterator<Item = &'a str>) -> Option<&'static str> {
    let mut blocks = [
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
    ];
    let mut bottleneck = false;
    for name in names {
        let mut parts = name.split('.');
        let (Some(layer), Some(block)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some(l) = layer
            .strip_prefix("layer")
            .and_then(|l| l.parse::<usize>().ok())
        else {
            continue;
        };
        if let (1..=4, Ok(b)) = (l, block.parse::<usize>()) {
            blocks[l - 1].insert(b);
        }
        bottleneck |= parts.next() == Some("conv3");
    }
    let counts = blocks.map(|b| b.len());
    match (bottleneck, counts) {
        (false, [2, 2, 2, 2]) => Some("resnet18"),
        (false, [3, 4, 6, 3]) => Some("resnet34"),
        (true, [3, 4, 6, 3]) => Some("resnet50"),
        (true, [3, 4, 23, 3]) => Some("resnet101 (not supported)"),
        (true, [3, 8, 36, 3]) => Some("resnet152 (not supported)"),
        _ => None,
    }
}

fn model_error(path: &Path, message: String) -> Error {
    Error::Model {
        path: path.to_path_buf(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_are_told_apart_by_their_names() {
        let names = |bottleneck: bool, counts: [usize; 4]| {
            let mut v = vec!["conv1.weight".to_string()];
            for (l, &n) in counts.iter().enumerate() {
                for b in 0..n {
                    v.push(format!("layer{}.{b}.conv1.weight", l + 1));
                    if bottleneck {
                        v.push(format!("layer{}.{b}.conv3.weight", l + 1));
                    }
                }
            }
            v
        };
        let g = |b, c| guess_arch(names(b, c).iter().map(String::as_str));
        assert_eq!(g(false, [2, 2, 2, 2]), Some("resnet18"));
        assert_eq!(g(false, [3, 4, 6, 3]), Some("resnet34"));
        assert_eq!(g(true, [3, 4, 6, 3]), Some("resnet50"));
        assert_eq!(g(false, [1, 1, 1, 1]), None);
    }
}
