//! A user's TorchScript module as the feature extractor (`extractor.kind: torchscript`).
//!
//! Any model PyTorch can export with `torch.jit.script(model).save(path)` or
//! `torch.jit.trace(model, example).save(path)` (see `docs/extractors.md`) runs here without
//! Python: libtorch loads it straight onto the extractor's device
//! ([`tch::CModule::load_on_device`]), switches it to eval mode, and calls it through the
//! fallible `method_ts` / `method_is`, so a model that rejects its input is an error that
//! names the file, not a panic.
//!
//! Which output becomes the features: the module's `forward` by default, or another method
//! the module exports (`method: features`, a `@torch.jit.export` method), and for a method
//! returning a tuple or list, its element `output_index`. An output of more than two
//! dimensions (`[n, C, 1, 1]` from a pooling layer) is flattened to `[n, C]`.
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{CModule, Device, IValue, Kind, Tensor};

use crate::error::Issues;
use crate::error::{Error, Result};

/// `extractor.torchscript`: the module file and which of its outputs to use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TorchScriptConfig {
    /// The `.pt` file written by `torch.jit.script(...).save(...)` or
    /// `torch.jit.trace(...).save(...)`.
    pub path: PathBuf,
    /// The method to call: `forward` (default) or one the module exports, e.g. `features`.
    #[serde(default = "d_method")]
    pub method: String,
    /// For a method that returns a tuple or list: which element holds the features.
    #[serde(default)]
    pub output_index: Option<usize>,
}

fn d_method() -> String {
    "forward".into()
}

impl TorchScriptConfig {
    /// Adds this section's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        v.check(
            !self.method.is_empty() && !self.method.contains('\0'),
            "extractor.torchscript.method",
            || "must be a method name such as `forward` or `features`".into(),
        );
        v.check(
            !self.path.as_os_str().is_empty(),
            "extractor.torchscript.path",
            || "must name the module's .pt file".into(),
        );
    }

    /// Checks that need the file system: the module file exists.
    pub fn check_resources(&self, v: &mut Issues) {
        v.check(self.path.is_file(), "extractor.torchscript.path", || {
            format!(
                "{}: not found (export a module with torch.jit.script/trace, see docs/extractors.md)",
                self.path.display()
            )
        });
    }
}

/// A loaded TorchScript module, in eval mode, on its device.
pub struct TorchScriptNet {
    module: CModule,
    cfg: TorchScriptConfig,
}

impl std::fmt::Debug for TorchScriptNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchScriptNet")
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl TorchScriptNet {
    /// Loads `cfg.path` onto `device`, in eval mode, with floating-point parameters in
    /// `kind` (`Float`, or `Half` on CUDA). A file that is not a TorchScript module (a
    /// state_dict saved with `torch.save`, a safetensors file) is an [`Error::Model`] naming
    /// it.
    pub fn load(cfg: &TorchScriptConfig, device: Device, kind: Kind) -> Result<TorchScriptNet> {
        let path = &cfg.path;
        if !path.is_file() {
            return Err(model_error(path, "not found".into()));
        }
        let mut module = CModule::load_on_device(path, device).map_err(|e| {
            model_error(
                path,
                format!(
                    "not a TorchScript module (write one with torch.jit.script(model).save(path) \
                     or torch.jit.trace; a state_dict from torch.save is not one): {e}"
                ),
            )
        })?;
        module
            .f_set_eval()
            .map_err(|e| model_error(path, format!("cannot switch to eval mode: {e}")))?;
        if kind != Kind::Float {
            // `CModule::to` has no fallible form; it panics on a libtorch error (out of
            // memory), which is caught here and reported like any other load error.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                module.to(device, kind, false)
            }))
            .map_err(|p| {
                model_error(
                    path,
                    format!(
                        "cannot convert to {kind:?}: {}",
                        crate::stage::panic_message(&*p)
                    ),
                )
            })?;
        }
        Ok(TorchScriptNet {
            module,
            cfg: cfg.clone(),
        })
    }

    /// The configured output of the module on `xs` (`[n, C, H, W]`, the model's kind and
    /// device) -> `[n, d]` (the model's kind). Call under `no_grad`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let n = xs.size()[0];
        let method = self.cfg.method.as_str();
        let out = match self.cfg.output_index {
            None => self
                .module
                .method_ts(method, &[xs])
                .map_err(|e| self.call_error(xs, e.to_string()))?,
            Some(i) => {
                let out = self
                    .module
                    .method_is(method, &[IValue::Tensor(xs.shallow_clone())])
                    .map_err(|e| self.call_error(xs, e.to_string()))?;
                self.element(out, i)?
            }
        };
        let size = out.size();
        if size.len() < 2 || size[0] != n {
            return Err(model_error(
                &self.cfg.path,
                format!(
                    "`{method}` returned shape {size:?} for a batch of {n}; features need the batch \
                     first, [n, d] or [n, C, 1, 1] (pick another method or output_index)"
                ),
            ));
        }
        if !out.is_floating_point() {
            return Err(model_error(
                &self.cfg.path,
                format!(
                    "`{method}` returned {:?} values, not floating point",
                    out.kind()
                ),
            ));
        }
        Ok(if size.len() > 2 {
            out.f_flatten(1, -1)?
        } else {
            out
        })
    }

    fn element(&self, out: IValue, i: usize) -> Result<Tensor> {
        let method = &self.cfg.method;
        let described = describe(&out);
        let picked = match out {
            IValue::Tuple(v) | IValue::GenericList(v) => match v.into_iter().nth(i) {
                Some(IValue::Tensor(t)) => Ok(t),
                Some(other) => Err(format!(
                    "element {i} is not a tensor but {}",
                    describe(&other)
                )),
                None => Err(format!("has no element {i}")),
            },
            IValue::TensorList(v) => v
                .into_iter()
                .nth(i)
                .ok_or_else(|| format!("has no element {i}")),
            _ => Err("is not a tuple or list, so output_index does not apply".to_string()),
        };
        picked.map_err(|m| {
            model_error(
                &self.cfg.path,
                format!("the output of `{method}` {m} (output: {described})"),
            )
        })
    }

    fn call_error(&self, xs: &Tensor, e: String) -> Error {
        let mut e = e;
        // libtorch appends a long C++ backtrace; the first lines say what went wrong.
        if let Some(cut) = e.find("\nException raised from") {
            e.truncate(cut);
        }
        model_error(
            &self.cfg.path,
            format!(
                "`{}` failed on an input of shape {:?} ({:?}): {e}. Set extractor.input \
                 (channels, size) to what the model expects",
                self.cfg.method,
                xs.size(),
                xs.kind()
            ),
        )
    }
}

/// A short description of a TorchScript value: its type, and the shapes of its tensors.
fn describe(v: &IValue) -> String {
    let list = |name: &str, items: Vec<String>| format!("{name}({})", items.join(", "));
    match v {
        IValue::Tensor(t) => format!("Tensor{:?}", t.size()),
        IValue::Tuple(v) => list("Tuple", v.iter().map(describe).collect()),
        IValue::GenericList(v) => list("List", v.iter().map(describe).collect()),
        IValue::TensorList(v) => list(
            "TensorList",
            v.iter().map(|t| format!("Tensor{:?}", t.size())).collect(),
        ),
        IValue::GenericDict(_) => "Dict".into(),
        IValue::None => "None".into(),
        IValue::Double(_) | IValue::Int(_) | IValue::Bool(_) => "a number".into(),
        IValue::String(_) => "a string".into(),
        _ => "another value".into(),
    }
}

fn model_error(path: &Path, message: String) -> Error {
    Error::Model {
        path: path.to_path_buf(),
        message,
    }
}
