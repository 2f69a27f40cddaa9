//! Input adaptation: makes the pipeline's images what a feature model expects.
//!
//! The pipeline's images are `[n, C, H, W]` float32, already through the augment stage's
//! `normalize` ops (Fashion-MNIST: 1 x 28 x 28, `(x - 0.286) / 0.353`). A torchvision ResNet
//! wants 3 x 224 x 224 in ImageNet's normalisation. The adapter bridges the two, in tensor
//! ops on the model's device, one micro-batch at a time (so a super-batch is never resized
//! whole), in this order:
//!
//! 1. **channels**: grey (1 channel) is repeated to the model's channel count;
//! 2. **normalisation** (`normalize`): `none` feeds the pipeline's values as they are;
//!    `imagenet` or `custom` first undoes the pipeline's own `normalize` ops (composed into
//!    one per-channel affine map) and then applies the model's mean and std, so the model
//!    sees `(raw - mean) / std` of the raw `[0, 1]` pixel, as in its training. Both maps are
//!    folded into one `x * scale + shift`;
//! 3. **size** (`size`): bilinear resize with `align_corners = false` and antialiasing,
//!    which is what torchvision's `transforms.Resize(size)` does to a tensor (when
//!    enlarging, antialiasing changes nothing);
//! 4. **precision**: cast to float16 when the extractor runs in half precision.
//!
//! Step 2 commutes with step 3 (bilinear weights sum to 1), so doing it on the smaller image
//! first is only a matter of speed.
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::augment::AugmentOp;
use crate::error::Issues;
use crate::error::{Error, Result};

/// ImageNet's per-channel mean (RGB), the one torchvision's weights were trained with.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How the model wants its inputs normalised. YAML: `none`, `imagenet`, or
/// `{ custom: { mean: [...], std: [...] } }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Normalize {
    /// The model gets the pipeline's values unchanged (after the augment stage's own
    /// `normalize`). Right for a model trained on this pipeline's images.
    #[default]
    None,
    /// Undo the pipeline's `normalize`, then apply ImageNet's mean and std: right for
    /// torchvision's ImageNet weights.
    Imagenet,
    /// Undo the pipeline's `normalize`, then apply this mean and std.
    Custom {
        /// Per-channel mean in raw `[0, 1]` units (one value applies to every channel).
        mean: Vec<f32>,
        /// Per-channel standard deviation, > 0 (one value or one per channel).
        std: Vec<f32>,
    },
}

/// What the model expects as input (`extractor.input`). Only for the `torchscript` and
/// `resnet` kinds: the reference CNN is built for the pipeline's images as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// Channels the model takes. Grey images are repeated to this many. Default: 3 for
    /// `resnet`, the images' own count for `torchscript`.
    #[serde(default)]
    pub channels: Option<usize>,
    /// Height and width to resize to (square), e.g. 224 for ImageNet weights. Default: the
    /// images' own size.
    #[serde(default)]
    pub size: Option<usize>,
    /// Normalisation the model was trained with: `none` (default), `imagenet`, or
    /// `{ custom: { mean: [...], std: [...] } }`.
    #[serde(default)]
    pub normalize: Normalize,
}

impl InputConfig {
    /// Whether every field is at its default (the reference CNN accepts only that).
    pub fn is_default(&self) -> bool {
        *self == InputConfig::default()
    }

    /// Adds this section's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        if let Some(c) = self.channels {
            v.check(c > 0, "extractor.input.channels", || {
                "must be at least 1".into()
            });
        }
        if let Some(s) = self.size {
            v.check(s > 0, "extractor.input.size", || {
                "must be at least 1".into()
            });
        }
        if let Normalize::Custom { mean, std } = &self.normalize {
            if mean.is_empty() || mean.len() != std.len() {
                v.at(
                    "extractor.input.normalize.custom",
                    format!(
                        "needs mean and std of the same, non-zero length (got {} and {})",
                        mean.len(),
                        std.len()
                    ),
                );
            } else if std.iter().any(|s| !(*s > 0.0 && s.is_finite())) {
                v.at(
                    "extractor.input.normalize.custom.std",
                    format!("must be positive, got {std:?}"),
                );
            } else if let Some(c) = self.channels {
                v.check(
                    mean.len() == 1 || mean.len() == c,
                    "extractor.input.normalize.custom",
                    || format!("has {} values for a model of {c} channels", mean.len()),
                );
            }
        }
    }
}

/// The adaptation of one extractor, ready to run on its device.
#[derive(Debug)]
pub struct InputAdapter {
    model: std::path::PathBuf,
    from: (i64, i64, i64),
    to: (i64, i64, i64),
    /// `x * scale + shift`, each `[1, C_model, 1, 1]` float32 on the device.
    affine: Option<(Tensor, Tensor)>,
    kind: Kind,
}

impl InputAdapter {
    /// The adaptation from images of `image` shape `(C, H, W)` (as the pipeline produces
    /// them, after `pipeline_ops`) to a model taking `channels` channels of `size` x `size`
    /// (`None`: the images' own), in `kind` (`Float` or `Half`), on `device`. `model` (the
    /// model's file) names errors.
    ///
    /// Errors ([`Error::ConfigInvalid`] naming the `extractor.input` key) when the images
    /// cannot be made to fit: colour images for a 1-channel model, or normalisation values
    /// whose count matches neither 1 nor the channels.
    pub fn new(
        model: &std::path::Path,
        cfg: &InputConfig,
        channels: Option<usize>,
        image: (usize, usize, usize),
        pipeline_ops: &[AugmentOp],
        kind: Kind,
        device: Device,
    ) -> Result<InputAdapter> {
        let (c, h, w) = (image.0 as i64, image.1 as i64, image.2 as i64);
        let mc = channels.unwrap_or(image.0) as i64;
        let ms = cfg.size.map(|s| s as i64);
        let to = (mc, ms.unwrap_or(h), ms.unwrap_or(w));
        let invalid = |key: &str, message: String| Error::ConfigInvalid {
            path: "<config>".into(),
            issues: vec![crate::error::ConfigIssue {
                key: key.into(),
                message,
                line: None,
                column: None,
            }],
        };
        if c != mc && c != 1 {
            return Err(invalid(
                "extractor.input.channels",
                format!(
                    "the images have {c} channels and the model takes {mc}; only grey (1 channel) \
                     images are adapted, by repetition"
                ),
            ));
        }
        let affine = match &cfg.normalize {
            Normalize::None => None,
            Normalize::Imagenet => {
                if mc != 3 {
                    return Err(invalid(
                        "extractor.input.normalize",
                        format!(
                            "imagenet normalisation is for 3-channel models, this one takes {mc}"
                        ),
                    ));
                }
                Some((IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec()))
            }
            Normalize::Custom { mean, std } => {
                if mean.len() != 1 && mean.len() as i64 != mc {
                    return Err(invalid(
                        "extractor.input.normalize.custom",
                        format!("has {} values for a model of {mc} channels", mean.len()),
                    ));
                }
                Some((mean.clone(), std.clone()))
            }
        };
        let affine = match affine {
            None => None,
            Some((mean, std)) => {
                let (a, b) = pipeline_affine(pipeline_ops, image.0).map_err(|m| {
                    invalid(
                        "augment.ops",
                        format!("cannot undo the pipeline's normalize: {m}"),
                    )
                })?;
                let pick = |v: &[f32], i: usize| if v.len() == 1 { v[0] } else { v[i] };
                let (mut scale, mut shift) = (Vec::new(), Vec::new());
                for i in 0..mc as usize {
                    // Pipeline: x = a * raw + b. Model: (raw - m) / s.
                    let (a, b) = (pick(&a, i), pick(&b, i));
                    let (m, s) = (pick(&mean, i), pick(&std, i));
                    scale.push(1.0 / (a * s));
                    shift.push(-(b / a + m) / s);
                }
                let t = |v: &[f32]| -> Result<Tensor> {
                    Ok(Tensor::f_from_slice(v)?
                        .f_view([1, mc, 1, 1])?
                        .f_to_device(device)?)
                };
                Some((t(&scale)?, t(&shift)?))
            }
        };
        Ok(InputAdapter {
            model: model.to_path_buf(),
            from: (c, h, w),
            to,
            affine,
            kind,
        })
    }

    /// `(C, H, W)` of what the model receives.
    pub fn output_shape(&self) -> (i64, i64, i64) {
        self.to
    }

    /// Adapts `xs`: `[n, C, H, W]` float32 (the image shape given to [`InputAdapter::new`])
    /// -> `[n, C_model, S, S]` in the extractor's kind, on the same device.
    pub fn apply(&self, xs: &Tensor) -> Result<Tensor> {
        let size = xs.size();
        let (c, h, w) = self.from;
        if size.len() != 4 || size[1..] != [c, h, w] {
            return Err(Error::Model {
                path: self.model.clone(),
                message: format!(
                    "the extractor was built for images of shape [n, {c}, {h}, {w}], got {size:?}"
                ),
            });
        }
        let (mc, mh, mw) = self.to;
        let mut x = if c != mc {
            xs.f_expand([size[0], mc, h, w], false)?
        } else {
            xs.shallow_clone()
        };
        if let Some((scale, shift)) = &self.affine {
            x = x.f_mul(scale)?.f_add(shift)?;
        }
        if (mh, mw) != (h, w) {
            // upsample needs real memory, not an expanded view.
            x = x
                .f_contiguous()?
                .f_internal_upsample_bilinear2d_aa([mh, mw], false, None, None)?;
        }
        if self.kind != Kind::Float {
            x = x.f_to_kind(self.kind)?;
        }
        Ok(x.f_contiguous()?)
    }
}

/// The pipeline's `normalize` ops composed into `x = a * raw + b` per channel (`a` and `b`
/// have 1 value or one per image channel). Non-normalize ops are not affine and are ignored:
/// the augment stage documents that `normalize` comes last.
fn pipeline_affine(
    ops: &[AugmentOp],
    channels: usize,
) -> std::result::Result<(Vec<f32>, Vec<f32>), String> {
    let (mut a, mut b) = (vec![1.0f32], vec![0.0f32]);
    for op in ops {
        let AugmentOp::Normalize { mean, std } = op else {
            continue;
        };
        let n = a.len().max(mean.len());
        if n != 1 && n != channels {
            return Err(format!(
                "normalize has {} values for images of {channels} channels",
                mean.len()
            ));
        }
        let pick = |v: &[f32], i: usize| if v.len() == 1 { v[0] } else { v[i] };
        let (na, nb) = (0..n)
            .map(|i| {
                let (m, s) = (pick(mean, i), pick(std, i));
                (pick(&a, i) / s, (pick(&b, i) - m) / s)
            })
            .unzip();
        (a, b) = (na, nb);
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fmnist_ops() -> Vec<AugmentOp> {
        vec![
            AugmentOp::Hflip { p: 0.5 },
            AugmentOp::Normalize {
                mean: vec![0.286],
                std: vec![0.353],
            },
        ]
    }

    fn grey(n: i64, value: f32) -> Tensor {
        // A constant raw grey value, as the pipeline delivers it (normalised).
        Tensor::full(
            [n, 1, 28, 28],
            ((value - 0.286) / 0.353) as f64,
            (Kind::Float, Device::Cpu),
        )
    }

    #[test]
    fn grey_becomes_three_channels_of_the_configured_size() {
        let cfg = InputConfig {
            channels: Some(3),
            size: Some(64),
            normalize: Normalize::None,
        };
        let a = InputAdapter::new(
            Path::new("m.pt"),
            &cfg,
            Some(3),
            (1, 28, 28),
            &fmnist_ops(),
            Kind::Float,
            Device::Cpu,
        )
        .unwrap();
        let x = Tensor::rand([5, 1, 28, 28], (Kind::Float, Device::Cpu));
        let y = a.apply(&x).unwrap();
        assert_eq!(y.size(), [5, 3, 64, 64]);
        assert_eq!(a.output_shape(), (3, 64, 64));
        // Every channel is the same image.
        assert!(y.narrow(1, 0, 1).equal(&y.narrow(1, 2, 1)));
        // Resizing keeps the range (bilinear interpolation is a convex combination).
        assert!(y.max().double_value(&[]) <= x.max().double_value(&[]) + 1e-6);
        assert!(y.min().double_value(&[]) >= x.min().double_value(&[]) - 1e-6);
    }

    #[test]
    fn imagenet_normalisation_undoes_the_pipelines_own() {
        let cfg = InputConfig {
            channels: Some(3),
            size: None,
            normalize: Normalize::Imagenet,
        };
        let a = InputAdapter::new(
            Path::new("m.pt"),
            &cfg,
            Some(3),
            (1, 28, 28),
            &fmnist_ops(),
            Kind::Float,
            Device::Cpu,
        )
        .unwrap();
        let raw = 0.7f32;
        let y = a.apply(&grey(2, raw)).unwrap();
        for c in 0..3 {
            let want = (raw - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            let got = y.get(1).get(c as i64).get(13).get(5).double_value(&[]) as f32;
            assert!((got - want).abs() < 1e-5, "channel {c}: {got} vs {want}");
        }
    }

    #[test]
    fn composed_pipeline_normalisations_are_undone() {
        // Two normalize ops in a row: x = ((raw - 0.5) / 0.5 - 1) / 2.
        let ops = vec![
            AugmentOp::Normalize {
                mean: vec![0.5],
                std: vec![0.5],
            },
            AugmentOp::Normalize {
                mean: vec![1.0],
                std: vec![2.0],
            },
        ];
        let cfg = InputConfig {
            channels: None,
            size: None,
            normalize: Normalize::Custom {
                mean: vec![0.1],
                std: vec![0.2],
            },
        };
        let a = InputAdapter::new(
            Path::new("m.pt"),
            &cfg,
            None,
            (1, 4, 4),
            &ops,
            Kind::Float,
            Device::Cpu,
        )
        .unwrap();
        let raw = 0.3f32;
        let x = ((raw - 0.5) / 0.5 - 1.0) / 2.0;
        let y = a
            .apply(&Tensor::full(
                [1, 1, 4, 4],
                x as f64,
                (Kind::Float, Device::Cpu),
            ))
            .unwrap();
        let got = y.max().double_value(&[]) as f32;
        assert!((got - (raw - 0.1) / 0.2).abs() < 1e-5, "{got}");
    }

    #[test]
    fn colour_images_for_a_grey_model_are_refused_with_the_key() {
        let cfg = InputConfig {
            channels: Some(1),
            ..Default::default()
        };
        let e = InputAdapter::new(
            Path::new("m.pt"),
            &cfg,
            Some(1),
            (3, 8, 8),
            &[],
            Kind::Float,
            Device::Cpu,
        )
        .unwrap_err();
        assert!(e.to_string().contains("extractor.input.channels"), "{e}");
    }

    #[test]
    fn wrong_image_shape_is_an_error_not_a_panic() {
        let a = InputAdapter::new(
            Path::new("m.pt"),
            &InputConfig::default(),
            None,
            (1, 28, 28),
            &[],
            Kind::Float,
            Device::Cpu,
        )
        .unwrap();
        let e = a
            .apply(&Tensor::zeros([2, 3, 28, 28], (Kind::Float, Device::Cpu)))
            .unwrap_err();
        assert!(e.to_string().contains("[n, 1, 28, 28]"), "{e}");
    }

    #[test]
    fn custom_normalisation_values_are_checked() {
        let mut v = Issues::default();
        InputConfig {
            channels: Some(3),
            size: Some(0),
            normalize: Normalize::Custom {
                mean: vec![0.1, 0.2],
                std: vec![0.3, 0.4],
            },
        }
        .validate(&mut v);
        let keys: Vec<_> = v.0.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            ["extractor.input.size", "extractor.input.normalize.custom"]
        );
    }
}
