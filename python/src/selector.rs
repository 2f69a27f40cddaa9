//! Selection on one super-batch of encoded images, for `saln.ray.Curator`.
//!
//! The loader API runs whole epochs over a data set saln opens and orders itself; an engine
//! such as Ray hands over one batch at a time. This runs, on one such batch, what the
//! loader and extract stages do to one super-batch, with the library's own pieces in the
//! same order: each image is decoded like the `parquet` source decodes it
//! (`source::decode::decode_resized`, to `source.channels`, default 3, resized on decode
//! when the op list starts with `resize`), augmented with the stream of
//! `(seed, epoch, sample id)` (`Augmenter::train_owned`), stacked into `[n, C, H, W]`,
//! turned into features by the reference model (`extract::Extractor`, loaded once, in the
//! constructor) and selected from (`select::Selector`, with the super-batch number that
//! seeds the random policies and the iterative solver). The same images, ids, labels,
//! super-batch number and epoch therefore give the same kept samples and scores as
//! `saln-pipe curate`. With `include_features` (default: the config's
//! `export.include_features`) it also returns each sample's reference-model feature vector,
//! as the export writes it, whatever the policy.
use std::sync::Mutex;

use pyo3::prelude::*;
use saln::augment::Augmenter;
use saln::config::PipelineConfig;
use saln::error::Error;
use saln::extract::Extractor;
use saln::rng::{self, Rng};
use saln::select::Selector;
use saln::source::{OnError, SourceShape};
use tch::{Device, Tensor};

use crate::config::ConfigSource;
use crate::errors::{to_py, to_py_with};

/// What [`PySelector::select_inner`] returns: the input positions that were decoded (all
/// of them unless `on_error: skip` left some out), then for those, in order: kept, score,
/// rank; the keep ratio used, the skipped samples with their errors, and the feature
/// vectors (row-major float32, with their length; empty without `include_features`).
type Selected = (
    Vec<usize>,
    Vec<bool>,
    Vec<f32>,
    Vec<i32>,
    f64,
    Vec<String>,
    (usize, Vec<f32>),
);

/// Selection on one super-batch at a time, with the reference model loaded once.
#[pyclass(module = "saln._saln", name = "SuperBatchSelector")]
pub struct PySelector {
    cfg: PipelineConfig,
    extractor: Option<Mutex<Extractor>>,
    selector: Selector,
    augmenter: Augmenter,
    shape: (usize, usize, usize),
    channels: usize,
    device: Device,
    /// The policy's name, as the export writes it.
    #[pyo3(get)]
    policy: String,
    /// The configured keep ratio.
    #[pyo3(get)]
    keep_ratio: f64,
    /// Whether [`PySelector::select`] returns feature vectors.
    #[pyo3(get)]
    include_features: bool,
}

fn sample_error(id: u64, message: String) -> Error {
    Error::Sample {
        sample: format!("id {id}"),
        message,
    }
}

impl PySelector {
    /// Decodes and augments the image at `bytes` of sample `id` into `[C, H, W]` floats.
    fn prepare(&self, id: u64, bytes: Option<&[u8]>, epoch: usize) -> saln::Result<Vec<f32>> {
        let bytes = bytes.ok_or_else(|| sample_error(id, "null image".into()))?;
        let raw = saln::source::decode::decode_resized(
            bytes,
            self.channels,
            self.augmenter.leading_resize(),
        )
        .map_err(|m| sample_error(id, m))?;
        let mut r = Rng::derive(self.cfg.seed, &[rng::AUGMENT, epoch as u64, id]);
        let img = self
            .augmenter
            .train_owned(raw, &mut r)
            .map_err(|e| match e {
                Error::Sample { message, .. } => sample_error(id, message),
                e => e,
            })?;
        if let Some(m) = saln::augment::shape_mismatch(&img, self.shape) {
            return Err(sample_error(id, m));
        }
        Ok(img.data)
    }

    /// Every image prepared, `workers` at a time, in input order.
    fn prepare_all(
        &self,
        images: &[Option<Vec<u8>>],
        ids: &[u64],
        epoch: usize,
    ) -> Vec<saln::Result<Vec<f32>>> {
        let workers = self.cfg.augment.workers.clamp(1, images.len().max(1));
        let chunk = images.len().div_ceil(workers).max(1);
        std::thread::scope(|s| {
            let parts: Vec<_> = images
                .chunks(chunk)
                .zip(ids.chunks(chunk))
                .map(|(imgs, ids)| {
                    s.spawn(move || {
                        imgs.iter()
                            .zip(ids)
                            .map(|(b, &id)| self.prepare(id, b.as_deref(), epoch))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            parts
                .into_iter()
                .flat_map(|h| {
                    h.join().unwrap_or_else(|p| {
                        vec![Err(Error::Panic {
                            stage: "decode",
                            message: saln::pipeline::panic_message(&*p),
                        })]
                    })
                })
                .collect()
        })
    }

    fn select_inner(
        &self,
        images: &[Option<Vec<u8>>],
        ids: &[u64],
        superbatch: u64,
        epoch: usize,
        progress: f64,
    ) -> saln::Result<Selected> {
        let mut positions = Vec::with_capacity(ids.len());
        let mut pixels = Vec::new();
        let mut skipped = Vec::new();
        for (p, r) in self.prepare_all(images, ids, epoch).into_iter().enumerate() {
            match r {
                Ok(data) => {
                    positions.push(p);
                    pixels.extend_from_slice(&data);
                }
                Err(e) if self.cfg.source.on_error == OnError::Skip => skipped.push(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        let n = positions.len();
        if n == 0 {
            return Ok((positions, vec![], vec![], vec![], 0.0, skipped, (0, vec![])));
        }
        let (c, h, w) = self.shape;
        let tensor = Tensor::f_from_slice(&pixels)?
            .f_view([n as i64, c as i64, h as i64, w as i64])?
            .f_to_device(self.device)?;
        let features = match &self.extractor {
            Some(x) => Some(
                x.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .features(&tensor)?,
            ),
            None => None,
        };
        let sel = self
            .selector
            .select(n, features.as_ref(), superbatch, progress)?;
        let mut kept = vec![false; n];
        sel.kept.iter().for_each(|&i| kept[i] = true);
        let cfg = self.selector.config();
        let ranks = saln::export::ranks(cfg.policy, cfg.rule, &sel.scores)
            .into_iter()
            .map(|r| r as i32)
            .collect();
        // The export's features are the reference model's, whatever the policy scored with.
        let features = match (&features, self.include_features) {
            (Some(f), true) => (
                f.size().get(1).copied().unwrap_or(0) as usize,
                Vec::<f32>::try_from(
                    f.f_to_kind(tch::Kind::Float)?
                        .f_to_device(Device::Cpu)?
                        .f_flatten(0, -1)?,
                )?,
            ),
            _ => (0, Vec::new()),
        };
        Ok((
            positions,
            kept,
            sel.scores,
            ranks,
            sel.keep_ratio,
            skipped,
            features,
        ))
    }
}

#[pymethods]
impl PySelector {
    #[new]
    #[pyo3(signature = (path=None, yaml=None, overrides=None, num_classes=None, include_features=None))]
    fn new(
        py: Python<'_>,
        path: Option<String>,
        yaml: Option<String>,
        overrides: Option<String>,
        num_classes: Option<usize>,
        include_features: Option<bool>,
    ) -> PyResult<Self> {
        let src = ConfigSource::new(path, yaml, overrides.as_deref()).map_err(to_py)?;
        let (text, _) = src.text().map_err(to_py)?;
        let cfg = py
            .allow_threads(|| src.resolve_without_data())
            .map_err(|e| to_py_with(e, &text))?;
        py.allow_threads(|| Self::build(cfg, num_classes, include_features))
            .map_err(to_py)
    }

    /// Selects from one super-batch: `images` are the encoded images (JPEG or PNG bytes,
    /// `None` for a null image), `ids` the samples' stable ids, `superbatch` the number
    /// that seeds the random policies and the iterative solver, `epoch` the epoch of the
    /// augmentation streams, `progress` the training progress for keep-ratio schedules.
    /// Returns the decoded positions, then for those: kept, score, rank; the keep ratio,
    /// the skipped samples' errors, the feature length and the features (float32 bytes,
    /// row-major; empty without `include_features`).
    #[pyo3(signature = (images, ids, superbatch, epoch=0, progress=0.0))]
    #[allow(clippy::type_complexity)]
    fn select<'py>(
        &self,
        py: Python<'py>,
        images: Vec<Option<Vec<u8>>>,
        ids: Vec<u64>,
        superbatch: u64,
        epoch: usize,
        progress: f64,
    ) -> PyResult<(
        Vec<usize>,
        Vec<bool>,
        Vec<f32>,
        Vec<i32>,
        f64,
        Vec<String>,
        usize,
        Bound<'py, pyo3::types::PyBytes>,
    )> {
        if images.len() != ids.len() {
            return Err(crate::errors::SalnError::new_err(format!(
                "{} images but {} ids",
                images.len(),
                ids.len()
            )));
        }
        let (positions, kept, scores, ranks, keep_ratio, skipped, (dim, features)) = py
            .allow_threads(|| self.select_inner(&images, &ids, superbatch, epoch, progress))
            .map_err(|e| to_py(e.in_stage("extract")))?;
        let bytes: Vec<u8> = features.iter().flat_map(|x| x.to_le_bytes()).collect();
        Ok((
            positions,
            kept,
            scores,
            ranks,
            keep_ratio,
            skipped,
            dim,
            pyo3::types::PyBytes::new(py, &bytes),
        ))
    }

    /// The key/value metadata `saln-pipe curate` writes into every file of an export of
    /// this configuration (`saln.version`, `saln.policy`, ..., `saln.config`), in order.
    fn export_metadata(&self) -> Vec<(String, String)> {
        saln::export::metadata(&self.cfg.provenance())
            .into_iter()
            .map(|kv| (kv.key, kv.value.unwrap_or_default()))
            .collect()
    }

    /// The resolved configuration (every default filled in), as JSON.
    fn config_json(&self) -> String {
        serde_json::to_string(&self.cfg).unwrap_or_default()
    }

    /// `(C, H, W)` of the images the model sees.
    #[getter]
    fn shape(&self) -> (usize, usize, usize) {
        self.shape
    }
}

impl PySelector {
    fn build(
        cfg: PipelineConfig,
        num_classes: Option<usize>,
        include_features: Option<bool>,
    ) -> saln::Result<Self> {
        let policy = cfg.selection.policy;
        if policy.needs_learner() {
            return Err(Error::config(
                "selection.policy",
                "this policy scores samples by the learner's losses, which only a training run \
                 or a loader's loop has; use saln, uniform or none to curate on Ray",
            ));
        }
        let include_features = include_features
            .unwrap_or_else(|| cfg.export.as_ref().is_some_and(|e| e.include_features));
        let mut issues = cfg.check_resources();
        issues.retain(|i| i.key != "source");
        if !issues.is_empty() {
            return Err(Error::ConfigInvalid {
                path: "<config>".into(),
                issues,
            });
        }
        saln::pipeline::set_torch_threads(cfg.torch_threads);
        let channels = cfg.source.channels.map(usize::from).unwrap_or(3);
        let augmenter = Augmenter::new(cfg.augment.ops.clone());
        let shape = augmenter.output_shape(SourceShape::variable(channels))?;
        let reference = cfg.extractor.kind == saln::extract::backbone::ExtractorKind::Reference;
        let extractor = if policy.needs_features() || include_features {
            let classes =
                match (num_classes, reference) {
                    (Some(c), _) => c,
                    (None, false) => 1,
                    (None, true) => return Err(Error::config(
                        "extractor",
                        "the reference CNN's weights include its classifier: pass num_classes= \
                         (the number of classes it was pretrained on)",
                    )),
                };
            Some(Mutex::new(Extractor::build(
                &cfg.extractor,
                cfg.device(),
                &cfg.augment.ops,
                shape,
                classes,
            )?))
        } else {
            None
        };
        let policy_name = serde_json::to_value(policy)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        Ok(PySelector {
            device: cfg.device(),
            selector: Selector::new(cfg.selector_config()),
            keep_ratio: cfg.selection.keep_ratio,
            extractor,
            augmenter,
            shape,
            channels,
            policy: policy_name,
            include_features,
            cfg,
        })
    }
}
