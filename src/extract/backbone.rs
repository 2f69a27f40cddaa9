//! Which network computes the features (`extractor.kind`), and building it from the config.
//!
//! | kind | model | file |
//! |---|---|---|
//! | `reference` (default) | the built-in CNN ([`crate::model::Cnn`]) trained by `saln-pipe pretrain` | `extractor.weights` (safetensors) |
//! | `torchscript` | any exported TorchScript module ([`TorchScriptNet`]) | `extractor.torchscript.path` (`.pt`) |
//! | `resnet` | torchvision ResNet-18/34/50 ([`ResNet`]) | `extractor.resnet.weights` (safetensors of the `state_dict()`) |
//!
//! Every kind runs frozen, in eval mode, under `no_grad`, on the pipeline's device, a
//! micro-batch at a time; the `torchscript` and `resnet` kinds first pass each micro-batch
//! through the [`InputAdapter`] (grey to 3 channels, resize, normalisation; see
//! [`super::input`]).
//!
//! Half precision (`extractor.half: true`) puts the model and its inputs in float16 on CUDA
//! and casts the features back to float32 for the selector. On the CPU it is a
//! configuration error (`extractor.half`), found by [`ExtractorConfig::check_resources`]
//! before anything loads: libtorch's CPU kernels gain nothing from float16, and silently
//! running in float32 instead would make a pipeline's numbers depend on the machine
//! unannounced. With `device: auto`, a pipeline that sets `half` therefore needs a GPU.
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::input::{InputAdapter, InputConfig};
use super::resnet::ResNet;
use super::torchscript::TorchScriptNet;
use super::{Extractor, ExtractorConfig};
use crate::augment::AugmentOp;
use crate::error::Issues;
use crate::error::{ConfigIssue, Error, Result};
use crate::model::Cnn;

/// `extractor.kind`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtractorKind {
    /// The built-in reference CNN (`extractor.weights`, `extractor.arch`).
    #[default]
    Reference,
    /// A TorchScript module (`extractor.torchscript`).
    Torchscript,
    /// A torchvision ResNet with safetensors weights (`extractor.resnet`).
    Resnet,
}

impl ExtractorKind {
    fn name(self) -> &'static str {
        match self {
            ExtractorKind::Reference => "reference",
            ExtractorKind::Torchscript => "torchscript",
            ExtractorKind::Resnet => "resnet",
        }
    }
}

/// The loaded network of an [`Extractor`].
pub(super) enum Backbone {
    /// The reference CNN; the var store owns its tensors.
    Reference { vs: nn::VarStore, model: Box<Cnn> },
    /// A TorchScript module.
    TorchScript(TorchScriptNet),
    /// A torchvision ResNet.
    ResNet(ResNet),
}

impl Backbone {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Backbone::Reference { model, .. } => model.features(xs),
            Backbone::TorchScript(m) => m.forward(xs),
            Backbone::ResNet(m) => m.forward(xs),
        }
    }
}

impl Extractor {
    /// Builds the extractor the `extractor:` section `x` describes, on `device`, for the
    /// pipeline's images of `shape` `(C, H, W)` (after the augmentation `ops`, whose
    /// normalisation the input adapter may undo) and `classes` classes (the reference CNN's
    /// head).
    ///
    /// The `torchscript` and `resnet` kinds are checked with a forward pass on a zero batch
    /// of two images, so a model that rejects the adapted input, or returns no `[n, d]`
    /// output, fails here, naming its file, instead of in the middle of a run.
    pub fn build(
        x: &ExtractorConfig,
        device: Device,
        ops: &[AugmentOp],
        shape: (usize, usize, usize),
        classes: usize,
    ) -> Result<Extractor> {
        let mut issues = Issues::default();
        x.check_device(device, &mut issues);
        if !issues.0.is_empty() {
            return Err(invalid(issues.0));
        }
        let kind = if x.half { Kind::Half } else { Kind::Float };
        let micro_batch = x.micro_batch.max(1);
        let (net, path, channels) = match x.kind {
            ExtractorKind::Reference => {
                let mut e =
                    Extractor::load(&x.weights, &x.arch, shape, classes, device, micro_batch)?;
                if let (true, Backbone::Reference { vs, .. }) = (x.half, &mut e.net) {
                    // `VarStore::half` has no fallible form; a libtorch error (out of
                    // memory) panics, and is reported as a load error.
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| vs.half())).map_err(
                        |p| Error::Model {
                            path: x.weights.clone(),
                            message: format!(
                                "cannot convert to float16: {}",
                                crate::stage::panic_message(&*p)
                            ),
                        },
                    )?;
                    e.input = InputAdapter::new(
                        &x.weights,
                        &InputConfig::default(),
                        None,
                        shape,
                        &[],
                        kind,
                        device,
                    )?;
                }
                return Ok(e);
            }
            ExtractorKind::Torchscript => {
                let ts = section(&x.torchscript, "torchscript")?;
                (
                    Backbone::TorchScript(TorchScriptNet::load(ts, device, kind)?),
                    ts.path.clone(),
                    x.input.channels,
                )
            }
            ExtractorKind::Resnet => {
                let r = section(&x.resnet, "resnet")?;
                (
                    Backbone::ResNet(ResNet::load(r, device, kind)?),
                    r.weights.clone(),
                    Some(x.input.channels.unwrap_or(3)),
                )
            }
        };
        let input = InputAdapter::new(&path, &x.input, channels, shape, ops, kind, device)?;
        let e = Extractor {
            net,
            input,
            device,
            micro_batch,
        };
        // The probe: two zero images of the pipeline's shape.
        let (c, h, w) = (shape.0 as i64, shape.1 as i64, shape.2 as i64);
        let probe = Tensor::f_zeros([2, c, h, w], (Kind::Float, device))?;
        let _probed = e.features(&probe)?;
        Ok(e)
    }

    /// Features of one micro-batch: adapt, forward, back to float32.
    /// `xs`: `[n, C, H, W]` float32 on the device -> `[n, d]` float32.
    pub(super) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let out = self.net.forward(&self.input.apply(xs)?)?;
        Ok(if out.kind() == Kind::Float {
            out
        } else {
            out.f_to_kind(Kind::Float)?
        })
    }

    /// Class logits of the reference CNN (`extractor.kind: reference` only; the `rho-loss`
    /// and `jest` policies need them). `xs`: `[n, C, H, W]` float32 on the device ->
    /// `[n, classes]` float32, in one forward pass (the caller micro-batches), no gradients.
    pub fn reference_logits(&self, xs: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let Backbone::Reference { model, .. } = &self.net else {
            return Err(Error::config(
                "extractor.kind",
                "class scores need the reference CNN (kind: reference)",
            ));
        };
        let out = model.logits(&self.input.apply(xs)?)?;
        Ok(if out.kind() == Kind::Float {
            out
        } else {
            out.f_to_kind(Kind::Float)?
        })
    }

    /// The reference CNN as [`Extractor::load`] builds it: float32, images as they come.
    pub(super) fn reference(
        vs: nn::VarStore,
        model: Cnn,
        weights: &std::path::Path,
        shape: (usize, usize, usize),
        device: Device,
        micro_batch: usize,
    ) -> Result<Extractor> {
        Ok(Extractor {
            net: Backbone::Reference {
                vs,
                model: Box::new(model),
            },
            input: InputAdapter::new(
                weights,
                &InputConfig::default(),
                None,
                shape,
                &[],
                Kind::Float,
                device,
            )?,
            device,
            micro_batch: micro_batch.max(1),
        })
    }
}

fn section<'a, T>(s: &'a Option<T>, name: &str) -> Result<&'a T> {
    s.as_ref().ok_or_else(|| {
        invalid(vec![ConfigIssue {
            key: format!("extractor.{name}"),
            message: format!("required when extractor.kind is {name}"),
            line: None,
            column: None,
        }])
    })
}

fn invalid(issues: Vec<ConfigIssue>) -> Error {
    Error::ConfigInvalid {
        path: "<config>".into(),
        issues,
    }
}

impl ExtractorConfig {
    /// The checks of `kind`, its section, `input` and `half` (called by
    /// [`ExtractorConfig::validate`]).
    pub(super) fn validate_kind(&self, v: &mut Issues) {
        let kind = self.kind;
        match (kind, &self.torchscript) {
            (ExtractorKind::Torchscript, None) => v.at(
                "extractor.torchscript",
                "required when extractor.kind is torchscript",
            ),
            (ExtractorKind::Torchscript, Some(t)) => t.validate(v),
            (_, Some(_)) => v.at(
                "extractor.torchscript",
                format!(
                    "is set but extractor.kind is {} (set kind: torchscript to use it)",
                    kind.name()
                ),
            ),
            (_, None) => {}
        }
        match (kind, &self.resnet) {
            (ExtractorKind::Resnet, None) => {
                v.at("extractor.resnet", "required when extractor.kind is resnet")
            }
            (ExtractorKind::Resnet, Some(r)) => r.validate(v),
            (_, Some(_)) => v.at(
                "extractor.resnet",
                format!(
                    "is set but extractor.kind is {} (set kind: resnet to use it)",
                    kind.name()
                ),
            ),
            (_, None) => {}
        }
        match kind {
            ExtractorKind::Reference => v.check(self.input.is_default(), "extractor.input", || {
                "only for the torchscript and resnet kinds: the reference CNN takes the pipeline's \
                 images as they are"
                    .into()
            }),
            ExtractorKind::Resnet => {
                if let Some(c) = self.input.channels {
                    v.check(c == 3, "extractor.input.channels", || {
                        format!("a ResNet takes 3 channels, not {c}")
                    });
                }
                self.input.validate(v);
            }
            ExtractorKind::Torchscript => self.input.validate(v),
        }
    }

    /// Checks that need the machine: the model file exists (`torchscript`, `resnet`; the
    /// reference CNN's weights are made by `saln-pipe pretrain` and checked when loaded),
    /// and `half` has a CUDA `device` (the pipeline's, resolved).
    pub fn check_resources(&self, device: Device, v: &mut Issues) {
        match (self.kind, &self.torchscript, &self.resnet) {
            (ExtractorKind::Torchscript, Some(t), _) => t.check_resources(v),
            (ExtractorKind::Resnet, _, Some(r)) => r.check_resources(v),
            _ => {}
        }
        self.check_device(device, v);
    }

    fn check_device(&self, device: Device, v: &mut Issues) {
        v.check(!self.half || device.is_cuda(), "extractor.half", || {
            format!(
                "float16 needs a CUDA device, and the pipeline runs on {} (set half: false)",
                crate::device::name(device)
            )
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::PipelineConfig;

    fn build(
        cfg: &PipelineConfig,
        shape: (usize, usize, usize),
        classes: usize,
    ) -> Result<Extractor> {
        Extractor::build(
            &cfg.extractor,
            cfg.device(),
            &cfg.augment.ops,
            shape,
            classes,
        )
    }
    use crate::extract::input::Normalize;
    use crate::extract::resnet::{ResNetArch, ResNetConfig, ResNetLayer};
    use crate::extract::torchscript::TorchScriptConfig;
    use std::path::{Path, PathBuf};

    /// A file made by `fixtures/make_models.py`; fails with the command to run when missing.
    pub(crate) fn fixture(name: &str) -> PathBuf {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/fixtures")
            .join(name);
        assert!(
            p.is_file(),
            "test fixture {} is missing: run `make fixtures` (it runs fixtures/make_models.py \
             in the project's Python venv)",
            p.display()
        );
        p
    }

    fn io(name: &str) -> std::collections::HashMap<String, Tensor> {
        Tensor::read_safetensors(fixture(name))
            .unwrap()
            .into_iter()
            .collect()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.size(), b.size());
        (a - b).abs().max().double_value(&[])
    }

    /// `max |a - b|` relative to the size of `b`'s values (at least 1): the deep random
    /// ResNet-50 of the fixtures has features in the hundreds, where float32 sums in another
    /// order differ by ~1e-4 in absolute terms.
    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
        max_abs_diff(a, b) / b.abs().max().double_value(&[]).max(1.0)
    }

    /// A pipeline config on the CPU with the given extractor section (YAML).
    fn pipeline(extractor: &str) -> PipelineConfig {
        let yaml = format!(
            "device: cpu\nsource:\n  idx: {{ dir: /usr/share/datasets/fashion-mnist }}\n\
             augment:\n  ops:\n    - normalize: {{ mean: [0.286], std: [0.353] }}\nextractor:\n{extractor}"
        );
        PipelineConfig::from_yaml_str(&yaml, "test.yaml").unwrap()
    }

    fn torchscript(method: &str, output_index: Option<usize>) -> ExtractorConfig {
        ExtractorConfig {
            kind: ExtractorKind::Torchscript,
            torchscript: Some(TorchScriptConfig {
                path: fixture("tiny.pt"),
                method: method.into(),
                output_index,
            }),
            ..Default::default()
        }
    }

    fn with(x: ExtractorConfig) -> PipelineConfig {
        let mut cfg = pipeline("  micro_batch: 1024\n");
        cfg.extractor = x;
        cfg
    }

    #[test]
    fn torchscript_features_equal_pythons() {
        let io = io("tiny_io.safetensors");
        for (method, index, want) in [
            ("forward", None, "forward"),
            ("features", None, "features"),
            ("both", Some(1), "features"),
            ("both", Some(0), "forward"),
        ] {
            let e = build(&with(torchscript(method, index)), (3, 32, 32), 10).unwrap();
            let got = e.features(&io["input"]).unwrap();
            let d = max_abs_diff(&got, &io[want]);
            eprintln!("{method}[{index:?}]: max |diff| {d:.1e}");
            assert!(d < 1e-5, "{method}[{index:?}]: max |diff| {d}");
        }
    }

    #[test]
    fn grey_images_are_adapted_as_python_does() {
        let io = io("tiny_io.safetensors");
        let mut x = torchscript("features", None);
        x.input = InputConfig {
            channels: Some(3),
            size: Some(32),
            normalize: Normalize::Imagenet,
        };
        let cfg = with(x);
        let e = build(&cfg, (1, 28, 28), 10).unwrap();
        let adapted = e.input.apply(&io["grey"]).unwrap();
        assert_eq!(adapted.size(), [3, 3, 32, 32]);
        let d = max_abs_diff(&adapted, &io["grey_adapted"]);
        assert!(d < 1e-5, "adapted input: max |diff| {d}");
        let d = max_abs_diff(&e.features(&io["grey"]).unwrap(), &io["grey_features"]);
        assert!(d < 1e-5, "features: max |diff| {d}");
    }

    #[test]
    fn micro_batches_give_the_features_of_one_big_batch() {
        let io = io("resnet18_io.safetensors");
        let xs = Tensor::cat(
            &[&io["input"], &io["input"].flip([3]), &(&io["input"] * 0.5)],
            0,
        );
        let mut x = resnet(
            ResNetArch::Resnet18,
            "resnet18.safetensors",
            ResNetLayer::Pool,
        );
        x.micro_batch = 1000;
        let whole = build(&with(x.clone()), (3, 64, 64), 10)
            .unwrap()
            .features(&xs)
            .unwrap();
        x.micro_batch = 4; // 6 images: a full micro-batch and a partial one
        let parts = build(&with(x), (3, 64, 64), 10)
            .unwrap()
            .features(&xs)
            .unwrap();
        assert_eq!(whole.size(), [6, 512]);
        let d = max_abs_diff(&whole, &parts);
        assert!(d < 1e-5, "max |diff| {d}");
    }

    fn resnet(arch: ResNetArch, file: &str, layer: ResNetLayer) -> ExtractorConfig {
        ExtractorConfig {
            kind: ExtractorKind::Resnet,
            resnet: Some(ResNetConfig {
                arch,
                weights: fixture(file),
                layer,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn resnet_features_equal_torchvisions() {
        for (arch, name, dim) in [
            (ResNetArch::Resnet18, "resnet18", 512),
            (ResNetArch::Resnet50, "resnet50", 2048),
        ] {
            let io = io(&format!("{name}_io.safetensors"));
            for (layer, key, d) in [
                (ResNetLayer::Pool, "pool", dim),
                (ResNetLayer::Fc, "fc", 1000),
            ] {
                let x = resnet(arch, &format!("{name}.safetensors"), layer);
                let e = build(&with(x), (3, 64, 64), 10).unwrap();
                let got = e.features(&io["input"]).unwrap();
                assert_eq!(got.size(), [2, d]);
                let diff = max_rel_diff(&got, &io[key]);
                eprintln!("{name} {key}: max |diff| / max |value| = {diff:.1e}");
                assert!(
                    diff < 1e-5,
                    "{name} {key}: max |diff| / max |value| = {diff}"
                );
            }
        }
    }

    #[test]
    fn the_documented_torchscript_export_matches_the_safetensors_resnet() {
        // docs/extractors.md: fc = Identity, torch.jit.trace, save.
        let io = io("resnet18_io.safetensors");
        let x = ExtractorConfig {
            kind: ExtractorKind::Torchscript,
            torchscript: Some(TorchScriptConfig {
                path: fixture("resnet18_features.pt"),
                method: "forward".into(),
                output_index: None,
            }),
            ..Default::default()
        };
        let got = build(&with(x), (3, 64, 64), 10)
            .unwrap()
            .features(&io["input"])
            .unwrap();
        let d = max_abs_diff(&got, &io["pool"]);
        assert!(d < 1e-4, "max |diff| {d}");
    }

    fn build_error(x: ExtractorConfig, shape: (usize, usize, usize)) -> String {
        match build(&with(x), shape, 10) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_resnet18_file_is_not_taken_for_a_resnet34_or_50() {
        let f = fixture("resnet18.safetensors");
        let e = build_error(
            resnet(
                ResNetArch::Resnet34,
                "resnet18.safetensors",
                ResNetLayer::Pool,
            ),
            (3, 64, 64),
        );
        assert!(e.contains(&f.display().to_string()), "{e}");
        assert!(e.contains("missing tensor `layer1.2.conv1.weight`"), "{e}");
        assert!(e.contains("looks like a resnet18"), "{e}");
        let e = build_error(
            resnet(
                ResNetArch::Resnet50,
                "resnet18.safetensors",
                ResNetLayer::Pool,
            ),
            (3, 64, 64),
        );
        assert!(e.contains("tensor `layer1.0.conv1.weight` has shape [64, 64, 3, 3], a resnet50 needs [64, 64, 1, 1]"), "{e}");
    }

    #[test]
    fn a_resnet50_file_is_not_taken_for_a_resnet18() {
        let e = build_error(
            resnet(
                ResNetArch::Resnet18,
                "resnet50.safetensors",
                ResNetLayer::Pool,
            ),
            (3, 64, 64),
        );
        assert!(e.contains("resnet50.safetensors"), "{e}");
        assert!(
            e.contains("`layer1.0.conv1.weight` has shape [64, 64, 1, 1]"),
            "{e}"
        );
        assert!(e.contains("looks like a resnet50"), "{e}");
    }

    /// Writes `tensors` (name, tensor) to a safetensors file in `dir`.
    fn write(dir: &Path, name: &str, tensors: &[(String, Tensor)]) -> PathBuf {
        let p = dir.join(name);
        Tensor::write_safetensors(tensors, &p).unwrap();
        p
    }

    #[test]
    fn missing_extra_and_prefixed_tensors_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let all = Tensor::read_safetensors(fixture("resnet18.safetensors")).unwrap();
        let cfg = |p: PathBuf| ExtractorConfig {
            kind: ExtractorKind::Resnet,
            resnet: Some(ResNetConfig {
                arch: ResNetArch::Resnet18,
                weights: p,
                layer: ResNetLayer::Pool,
            }),
            ..Default::default()
        };
        // Without the running statistics (named_parameters() instead of state_dict()).
        let params: Vec<_> = all
            .iter()
            .filter(|(k, _)| !k.contains("running_"))
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect();
        let p = write(dir.path(), "params.safetensors", &params);
        let e = build_error(cfg(p.clone()), (3, 64, 64));
        assert!(
            e.contains(&p.display().to_string()) && e.contains("missing tensor `bn1.running_mean`"),
            "{e}"
        );
        assert!(e.contains("state_dict()"), "{e}");
        // A DataParallel prefix.
        let prefixed: Vec<_> = all
            .iter()
            .map(|(k, t)| (format!("module.{k}"), t.shallow_clone()))
            .collect();
        let e = build_error(
            cfg(write(dir.path(), "prefixed.safetensors", &prefixed)),
            (3, 64, 64),
        );
        assert!(
            e.contains("missing tensor `conv1.weight`") && e.contains("prefix `module.`"),
            "{e}"
        );
        // A tensor no ResNet-18 has.
        let mut extra: Vec<_> = all
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect();
        extra.push((
            "head.weight".into(),
            Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)),
        ));
        let e = build_error(
            cfg(write(dir.path(), "extra.safetensors", &extra)),
            (3, 64, 64),
        );
        assert!(
            e.contains("1 tensor(s) that a resnet18 does not have: `head.weight`"),
            "{e}"
        );
        // No fc: fine for layer: pool, an error for layer: fc.
        let no_fc: Vec<_> = all
            .iter()
            .filter(|(k, _)| !k.starts_with("fc."))
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect();
        let p = write(dir.path(), "nofc.safetensors", &no_fc);
        build(&with(cfg(p.clone())), (3, 64, 64), 10).unwrap();
        let mut fc = cfg(p);
        fc.resnet.as_mut().unwrap().layer = ResNetLayer::Fc;
        assert!(build_error(fc, (3, 64, 64)).contains("missing tensor `fc.weight`"));
    }

    #[test]
    fn wrong_files_are_named() {
        // A TorchScript module given as ResNet weights, and the other way round.
        let e = build_error(
            resnet(ResNetArch::Resnet18, "tiny.pt", ResNetLayer::Pool),
            (3, 64, 64),
        );
        assert!(
            e.contains("tiny.pt") && e.contains("not a readable safetensors file"),
            "{e}"
        );
        let mut x = torchscript("forward", None);
        x.torchscript.as_mut().unwrap().path = fixture("resnet18.safetensors");
        let e = build_error(x, (3, 32, 32));
        assert!(
            e.contains("resnet18.safetensors") && e.contains("not a TorchScript module"),
            "{e}"
        );
    }

    #[test]
    fn a_model_that_rejects_its_input_fails_at_build_naming_file_and_method() {
        // tiny.pt takes 3 channels; the images are grey and no input.channels is set.
        let e = build_error(torchscript("features", None), (1, 28, 28));
        assert!(
            e.contains("tiny.pt")
                && e.contains("`features` failed on an input of shape [2, 1, 28, 28]"),
            "{e}"
        );
        assert!(e.contains("extractor.input"), "{e}");
        assert!(!e.contains("Exception raised from"), "{e}");
        let e = build_error(torchscript("embed", None), (3, 32, 32));
        assert!(e.contains("`embed` failed"), "{e}");
        let e = build_error(torchscript("both", Some(2)), (3, 32, 32));
        assert!(
            e.contains("has no element 2") && e.contains("Tuple(Tensor[2, 10], Tensor[2, 16])"),
            "{e}"
        );
        let e = build_error(torchscript("forward", Some(0)), (3, 32, 32));
        assert!(e.contains("is not a tuple or list"), "{e}");
    }

    #[test]
    fn half_on_the_cpu_is_a_config_error_before_anything_loads() {
        let mut x = torchscript("forward", None);
        x.half = true;
        let cfg = with(x);
        assert_eq!(
            cfg.check_resources()
                .iter()
                .map(|i| i.key.as_str())
                .collect::<Vec<_>>(),
            ["extractor.half"]
        );
        let e = build_error(cfg.extractor.clone(), (3, 32, 32));
        assert!(
            e.contains("extractor.half") && e.contains("needs a CUDA device"),
            "{e}"
        );
        // The reference kind too.
        let mut cfg = pipeline("  half: true\n");
        cfg.extractor.weights = "/nonexistent.safetensors".into();
        let e = build(&cfg, (1, 28, 28), 10).err().unwrap().to_string();
        assert!(e.contains("extractor.half"), "{e}");
    }

    /// Exercised on machines with a GPU only (CI has none); there it checks what the docs
    /// promise: float16 model, float32 features close to the float32 model's.
    #[test]
    fn half_on_cuda_gives_float32_features_close_to_full_precision() {
        if !tch::Cuda::is_available() {
            eprintln!("no CUDA device: half precision not exercised");
            return;
        }
        let tiny = io("tiny_io.safetensors");
        let r18 = io("resnet18_io.safetensors");
        // A reference CNN with random weights.
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("reference.safetensors");
        let vs = nn::VarStore::new(Device::Cpu);
        let _cnn = Cnn::new(&vs.root(), &Default::default(), (1, 28, 28), 10);
        vs.save(&weights).unwrap();
        let reference = ExtractorConfig {
            weights,
            ..Default::default()
        };
        let grey = Tensor::randn([8, 1, 28, 28], (Kind::Float, Device::Cpu));
        let cases = [
            (reference, (1, 28, 28), &grey),
            (torchscript("features", None), (3, 32, 32), &tiny["input"]),
            (
                resnet(
                    ResNetArch::Resnet18,
                    "resnet18.safetensors",
                    ResNetLayer::Pool,
                ),
                (3, 64, 64),
                &r18["input"],
            ),
        ];
        for (x, shape, input) in cases {
            let mut cfg = with(x);
            cfg.device = "cuda".into();
            let xs = input.to_device(Device::Cuda(0));
            let full = build(&cfg, shape, 10).unwrap().features(&xs).unwrap();
            cfg.extractor.half = true;
            assert!(cfg.check_resources().is_empty());
            let half = build(&cfg, shape, 10).unwrap().features(&xs).unwrap();
            assert_eq!(half.kind(), Kind::Float);
            assert_eq!(half.device(), Device::Cuda(0));
            let d = max_rel_diff(&half, &full);
            eprintln!("half vs float32, {shape:?}: max |diff| / max |value| = {d:.1e}");
            assert!(d < 2e-2, "{d}");
        }
    }

    #[test]
    fn kind_and_sections_must_agree() {
        let bad = |yaml: &str| -> Vec<String> {
            let text = format!("source:\n  idx: {{ dir: /tmp/x }}\nextractor:\n{yaml}");
            match PipelineConfig::from_yaml_str(&text, "t.yaml") {
                Err(Error::ConfigInvalid { issues, .. }) => issues
                    .into_iter()
                    .map(|i| format!("{}: {}", i.key, i.message))
                    .collect(),
                other => panic!("expected ConfigInvalid, got {other:?}"),
            }
        };
        assert_eq!(
            bad("  kind: torchscript\n"),
            ["extractor.torchscript: required when extractor.kind is torchscript"]
        );
        assert_eq!(
            bad("  kind: resnet\n"),
            ["extractor.resnet: required when extractor.kind is resnet"]
        );
        let e = bad("  resnet: { arch: resnet18, weights: r.safetensors }\n");
        assert!(
            e[0].starts_with("extractor.resnet: is set but extractor.kind is reference"),
            "{e:?}"
        );
        let e = bad("  input: { size: 224 }\n");
        assert!(
            e[0].starts_with("extractor.input: only for the torchscript and resnet kinds"),
            "{e:?}"
        );
        let e = bad("  kind: resnet\n  resnet: { arch: resnet50, weights: r.safetensors }\n  input: { channels: 1 }\n");
        assert_eq!(
            e,
            ["extractor.input.channels: a ResNet takes 3 channels, not 1"]
        );
        // An unknown architecture is a parse error naming the value.
        let text = "source:\n  idx: { dir: /tmp/x }\nextractor:\n  kind: resnet\n  resnet: { arch: resnet101, weights: r }\n";
        let e = PipelineConfig::from_yaml_str(text, "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("resnet101"), "{e}");
    }

    #[test]
    fn missing_model_files_are_found_by_the_resource_check() {
        let cfg = pipeline(
            "  kind: resnet\n  resnet: { arch: resnet50, weights: /nonexistent/r50.safetensors }\n",
        );
        let issues = cfg.check_resources();
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].key, "extractor.resnet.weights");
        assert!(
            issues[0]
                .message
                .contains("/nonexistent/r50.safetensors: not found"),
            "{issues:?}"
        );
        let cfg = pipeline("  kind: torchscript\n  torchscript: { path: /nonexistent/m.pt }\n");
        let issues = cfg.check_resources();
        assert_eq!(issues[0].key, "extractor.torchscript.path", "{issues:?}");
        // Not needed by a policy without features: no issue.
        let mut cfg = cfg;
        cfg.selection.policy = crate::select::Policy::Uniform;
        assert!(cfg.check_resources().is_empty());
    }

    #[test]
    fn the_example_torchscript_pipeline_validates_and_curates() {
        fixture("tiny.pt");
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/fashion-mnist-torchscript.yaml");
        let mut cfg = PipelineConfig::load(&path).unwrap();
        assert_eq!(cfg.extractor.kind, ExtractorKind::Torchscript);
        // Paths in the file are relative to the repository root, like every example.
        let ts = cfg.extractor.torchscript.as_mut().unwrap();
        ts.path = Path::new(env!("CARGO_MANIFEST_DIR")).join(&ts.path);
        cfg.device = "cpu".into();
        assert_eq!(cfg.check_resources(), []);
        if !cfg.source.idx.as_ref().is_some_and(|i| i.dir.is_dir()) {
            eprintln!("Fashion-MNIST not installed: validation checked, curation skipped");
            return;
        }
        cfg.source.limit = Some(512);
        cfg.trainer.epochs = 1;
        let mut c = crate::pipeline::Curation::start(&cfg, Default::default()).unwrap();
        let mut kept = 0;
        while let Some(msg) = c.output.blocking_recv() {
            if let crate::pipeline::Msg::Data(sub) = msg {
                assert_eq!(sub.images.size()[1..], [1, 28, 28]);
                kept += sub.ids.len();
            }
        }
        let (_, handle) = c.into_parts();
        let (summary, error) = handle.finish();
        assert!(error.is_none(), "{error:?}");
        assert_eq!(summary.selection.samples_in, 512);
        assert_eq!(kept as u64, summary.selection.samples_kept);
        let (size, rho) = (cfg.superbatch.size, cfg.selection.keep_ratio);
        assert_eq!(kept, (512 / size) * (rho * size as f64).round() as usize);
    }
}
