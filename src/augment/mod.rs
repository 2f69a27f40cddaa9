//! Augmentation: an ordered list of per-sample ops, as in the paper (flip, rotation,
//! brightness, normalisation), plus the resizing and cropping that image files need.
//!
//! | op | parameters | random | output size | values |
//! |---|---|---|---|---|
//! | `resize` | `size: N` (shorter side) or `[H, W]` | no | `[H, W]`, or shorter side `N` | kept |
//! | `center_crop` | `size: N` or `[H, W]` | no | `[H, W]` (zero-padded if larger) | kept |
//! | `random_resized_crop` | `size`, `scale: [0.08, 1]`, `ratio: [3/4, 4/3]` | train | `[H, W]` | kept |
//! | `hflip` | `p` | train | kept | kept |
//! | `shift` | `max_px` | train | kept | kept, 0 fill |
//! | `rotate` | `max_degrees` | train | kept | kept, 0 fill |
//! | `brightness` | `max_delta` | train | kept | clamped to [0, 1] |
//! | `contrast` | `max_delta` | train | kept | clamped to [0, 1] |
//! | `normalize` | `mean`, `std` (1 or C values) | no | kept | `(x - mean) / std` |
//!
//! Values start as `u8 / 255` in `[0, 1]`, CHW. Geometric ops run on the decoded `u8` planes
//! as long as no float op came before them (see [`ops`]); the image becomes `f32` at the
//! first float op and at the end. Random ops take their randomness from the [`Rng`] handed
//! in, which the loader derives from `(seed, epoch, sample id)`: the same sample in the same
//! epoch is always augmented the same way, whichever worker thread does it.
//!
//! [`Augmenter::eval`] (test images, the reference model's evaluation) applies only the
//! deterministic ops: `resize`, `center_crop`, `normalize`, and `random_resized_crop` in its
//! deterministic form (the largest centred region of the output's aspect ratio, resized), so
//! training and test images have one shape.
//!
//! Image files come in any size; [`Augmenter::output_shape`] computes, from a source's
//! [`SourceShape`], the one shape the op list produces, and fails (naming the op,
//! `augment.ops[i]`, and its kind) when the list does not bring variable-size images to one
//! size.
use crate::error::Issues;
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigIssue, Error, Result};
pub use crate::pixel::Size;
use crate::pixel::{RawImage, SourceShape};
use crate::rng::Rng;

pub mod ops;

fn d_scale() -> [f64; 2] {
    [0.08, 1.0]
}
fn d_ratio() -> [f64; 2] {
    [3.0 / 4.0, 4.0 / 3.0]
}

/// One augmentation op, written in YAML as a one-key map: `- hflip: { p: 0.5 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AugmentOp {
    /// Resize (bilinear, antialiased) to `size`: `[H, W]`, or one number for the shorter side
    /// with the aspect ratio kept.
    Resize {
        /// Target size.
        size: Size,
    },
    /// Cut the centred `size` window; a window larger than the image is padded with 0.
    #[serde(alias = "centre_crop")]
    CenterCrop {
        /// Window size (`N` is `N x N`).
        size: Size,
    },
    /// Training: a random region of `U(scale)` of the area and aspect ratio in `ratio`
    /// (log-uniform), resized to `size` (torchvision's `RandomResizedCrop`). Evaluation: the
    /// largest centred region of `size`'s aspect ratio, resized to `size`.
    RandomResizedCrop {
        /// Output size (`N` is `N x N`).
        size: Size,
        /// Range of the region's share of the image area, within (0, 1].
        #[serde(default = "d_scale")]
        scale: [f64; 2],
        /// Range of the region's aspect ratio (width / height).
        #[serde(default = "d_ratio")]
        ratio: [f64; 2],
    },
    /// Mirror left-right with probability `p`.
    Hflip {
        /// Probability in [0, 1].
        p: f64,
    },
    /// Translate by a whole number of pixels, uniform in `[-max_px, max_px]` on each axis;
    /// uncovered pixels become 0 (black).
    Shift {
        /// Largest shift in pixels.
        max_px: usize,
    },
    /// Rotate about the centre by an angle uniform in `[-max_degrees, max_degrees]`, bilinear;
    /// uncovered pixels become 0.
    Rotate {
        /// Largest angle in degrees, in [0, 180].
        max_degrees: f64,
    },
    /// Multiply by a factor uniform in `[1 - max_delta, 1 + max_delta]`, then clamp to [0, 1]
    /// (torchvision's `ColorJitter(brightness=max_delta)`).
    Brightness {
        /// Largest relative change, in [0, 1].
        max_delta: f64,
    },
    /// Blend with the image's mean grey level: `m + f (x - m)`, `f` uniform in
    /// `[1 - max_delta, 1 + max_delta]`, clamped to [0, 1] (`ColorJitter(contrast=...)`).
    Contrast {
        /// Largest relative change, in [0, 1].
        max_delta: f64,
    },
    /// `(x - mean[c]) / std[c]`; one value applies to every channel.
    Normalize {
        /// Per-channel mean (in [0, 1] units).
        mean: Vec<f32>,
        /// Per-channel standard deviation, > 0.
        std: Vec<f32>,
    },
}

impl AugmentOp {
    /// Checks the op's parameters; the message says which one is wrong.
    pub fn validate(&self) -> std::result::Result<(), String> {
        match self {
            AugmentOp::Resize { size } | AugmentOp::CenterCrop { size } if !size.is_valid() => {
                Err(format!("size must be positive, got {size:?}"))
            }
            AugmentOp::RandomResizedCrop { size, scale, ratio } => {
                if !size.is_valid() {
                    Err(format!("size must be positive, got {size:?}"))
                } else if !(scale[0] > 0.0 && scale[0] <= scale[1] && scale[1] <= 1.0) {
                    Err(format!(
                        "random_resized_crop.scale must satisfy 0 < min <= max <= 1, got {scale:?}"
                    ))
                } else if !(ratio[0] > 0.0 && ratio[0] <= ratio[1] && ratio[1].is_finite()) {
                    Err(format!(
                        "random_resized_crop.ratio must satisfy 0 < min <= max, got {ratio:?}"
                    ))
                } else {
                    Ok(())
                }
            }
            AugmentOp::Hflip { p } if !(0.0..=1.0).contains(p) => {
                Err(format!("hflip.p must be in [0, 1], got {p}"))
            }
            AugmentOp::Rotate { max_degrees } if !(0.0..=180.0).contains(max_degrees) => Err(
                format!("rotate.max_degrees must be in [0, 180], got {max_degrees}"),
            ),
            AugmentOp::Brightness { max_delta } if !(0.0..=1.0).contains(max_delta) => Err(
                format!("brightness.max_delta must be in [0, 1], got {max_delta}"),
            ),
            AugmentOp::Contrast { max_delta } if !(0.0..=1.0).contains(max_delta) => Err(format!(
                "contrast.max_delta must be in [0, 1], got {max_delta}"
            )),
            AugmentOp::Normalize { mean, std } => {
                if mean.is_empty() || mean.len() != std.len() {
                    Err(format!(
                        "normalize needs mean and std of the same, non-zero length (got {} and {})",
                        mean.len(),
                        std.len()
                    ))
                } else if std.iter().any(|s| !(*s > 0.0 && s.is_finite())) {
                    Err(format!("normalize.std must be positive, got {std:?}"))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// The op's name as written in YAML.
    pub fn name(&self) -> &'static str {
        match self {
            AugmentOp::Resize { .. } => "resize",
            AugmentOp::CenterCrop { .. } => "center_crop",
            AugmentOp::RandomResizedCrop { .. } => "random_resized_crop",
            AugmentOp::Hflip { .. } => "hflip",
            AugmentOp::Shift { .. } => "shift",
            AugmentOp::Rotate { .. } => "rotate",
            AugmentOp::Brightness { .. } => "brightness",
            AugmentOp::Contrast { .. } => "contrast",
            AugmentOp::Normalize { .. } => "normalize",
        }
    }
}

/// A float image, CHW, as the ops see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Channels.
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `channels * height * width` values, CHW.
    pub data: Vec<f32>,
}

impl Image {
    /// `u8 / 255`, same layout.
    pub fn from_raw(raw: &RawImage) -> Image {
        Image {
            channels: raw.channels,
            height: raw.height,
            width: raw.width,
            data: raw.data.iter().map(|&v| v as f32 * (1.0 / 255.0)).collect(),
        }
    }
}

/// The image between ops: the source's `u8` planes until a float op, then `f32`.
enum Buf<'a> {
    U8(Cow<'a, RawImage>),
    F32(Image),
}

impl Buf<'_> {
    fn dims(&self) -> (usize, usize, usize) {
        match self {
            Buf::U8(r) => (r.channels, r.height, r.width),
            Buf::F32(i) => (i.channels, i.height, i.width),
        }
    }

    fn into_f32(self) -> Image {
        match self {
            Buf::U8(r) => Image::from_raw(&r),
            Buf::F32(i) => i,
        }
    }

    /// Replaces the pixels by `f(c, h, w, data)` of the same type, new size `(nh, nw)`.
    fn map_geometry(
        self,
        nh: usize,
        nw: usize,
        f_u8: impl FnOnce(usize, usize, usize, &[u8]) -> std::result::Result<Vec<u8>, String>,
        f_f32: impl FnOnce(usize, usize, usize, &[f32]) -> std::result::Result<Vec<f32>, String>,
    ) -> std::result::Result<Buf<'static>, String> {
        Ok(match self {
            Buf::U8(r) => Buf::U8(Cow::Owned(RawImage {
                channels: r.channels,
                height: nh,
                width: nw,
                data: f_u8(r.channels, r.height, r.width, &r.data)?,
            })),
            Buf::F32(i) => Buf::F32(Image {
                channels: i.channels,
                height: nh,
                width: nw,
                data: f_f32(i.channels, i.height, i.width, &i.data)?,
            }),
        })
    }
}

/// The configured op list, ready to run.
#[derive(Debug, Clone)]
pub struct Augmenter {
    ops: Vec<AugmentOp>,
}

fn sample_err(message: impl Into<String>) -> Error {
    Error::Sample {
        sample: String::new(),
        message: message.into(),
    }
}

/// The message for an image that leaves the op list as another shape than `(c, h, w)`, the
/// one every image must have (`None` when it has it).
pub fn shape_mismatch(img: &Image, (c, h, w): (usize, usize, usize)) -> Option<String> {
    ((img.channels, img.height, img.width) != (c, h, w)).then(|| {
        format!(
            "image comes out of the augmentation ops as {}x{}x{}, not {c}x{h}x{w} like the others",
            img.channels, img.height, img.width
        )
    })
}

impl Augmenter {
    /// Builds from the config's op list (validated by the config).
    pub fn new(ops: Vec<AugmentOp>) -> Self {
        Augmenter { ops }
    }

    /// The ops, in order.
    pub fn ops(&self) -> &[AugmentOp] {
        &self.ops
    }

    /// The size of the first op when it is `resize`: the loader then asks the source for
    /// images already at that size ([`crate::source::Source::get_resized`]), and the op finds
    /// nothing left to do.
    pub fn leading_resize(&self) -> Option<Size> {
        match self.ops.first() {
            Some(AugmentOp::Resize { size }) => Some(*size),
            _ => None,
        }
    }

    /// The `(channels, height, width)` every image of a source of `input` shape has after the
    /// op list, in training and in evaluation alike. An error (a config problem at
    /// `augment.ops`) when the images keep varying sizes (image files need `resize` to
    /// `[H, W]`, `center_crop` or `random_resized_crop`) or `normalize` has a number of
    /// values that is neither 1 nor the channel count.
    ///
    /// ```
    /// use saln::augment::{AugmentOp, Augmenter, Size};
    /// use saln::source::SourceShape;
    /// let aug = Augmenter::new(vec![
    ///     AugmentOp::Resize { size: Size::Side(256) },
    ///     AugmentOp::CenterCrop { size: Size::Side(224) },
    /// ]);
    /// assert_eq!(aug.output_shape(SourceShape::variable(3)).unwrap(), (3, 224, 224));
    /// let no_crop = Augmenter::new(vec![AugmentOp::Resize { size: Size::Side(256) }]);
    /// assert!(no_crop.output_shape(SourceShape::variable(3)).is_err());
    /// assert_eq!(no_crop.output_shape(SourceShape::fixed(1, 28, 56)).unwrap(), (1, 256, 512));
    /// ```
    pub fn output_shape(&self, input: SourceShape) -> Result<(usize, usize, usize)> {
        let c = input.channels;
        let mut size = input.size;
        let issue = |message: String| Error::ConfigInvalid {
            path: "<config>".into(),
            issues: vec![ConfigIssue {
                line: None,
                column: None,
                key: "augment.ops".into(),
                message,
            }],
        };
        for (i, op) in self.ops.iter().enumerate() {
            match op {
                AugmentOp::Resize {
                    size: s @ Size::Side(_),
                } => size = size.map(|(h, w)| s.resized(h, w)),
                AugmentOp::Resize { size: s } => size = Some(s.square()),
                AugmentOp::CenterCrop { size: s }
                | AugmentOp::RandomResizedCrop { size: s, .. } => size = Some(s.square()),
                AugmentOp::Normalize { mean, .. } if mean.len() != 1 && mean.len() != c => {
                    return Err(issue(format!(
                        "[{i}] normalize has {} values for images of {c} channels (give 1 or {c})",
                        mean.len()
                    )))
                }
                _ => {}
            }
        }
        let fix = "add `resize: { size: [H, W] }`, `center_crop` or `random_resized_crop`";
        match size {
            Some((h, w)) => Ok((c, h, w)),
            None => {
                // Name the op where the sizes stay uneven: a one-side `resize` (it keeps each
                // image's aspect ratio), else the last op the images leave.
                let side_resize = self.ops.iter().rposition(|op| {
                    matches!(
                        op,
                        AugmentOp::Resize {
                            size: Size::Side(_)
                        }
                    )
                });
                let (at, why) = match (side_resize, self.ops.len()) {
                    (Some(i), _) => (
                        i,
                        "resizes the shorter side and keeps each image's aspect ratio, so",
                    ),
                    (None, 0) => {
                        return Err(issue(format!(
                            "the op list is empty and the images of this source vary in size: {fix}"
                        )))
                    }
                    (None, n) => (n - 1, "is the last op, and"),
                };
                let mut e = issue(format!(
                    "{} {why} the images of this source leave it in several sizes: {fix}",
                    self.ops[at].name()
                ));
                if let Error::ConfigInvalid { issues, .. } = &mut e {
                    issues[0].key = format!("augment.ops[{at}]");
                }
                Err(e)
            }
        }
    }

    /// Applies every op in order (training).
    ///
    /// ```
    /// use saln::augment::{AugmentOp, Augmenter};
    /// use saln::rng::Rng;
    /// use saln::source::RawImage;
    /// let aug = Augmenter::new(vec![
    ///     AugmentOp::Hflip { p: 1.0 },
    ///     AugmentOp::Normalize { mean: vec![0.5], std: vec![0.5] },
    /// ]);
    /// let raw = RawImage { channels: 1, height: 1, width: 2, data: vec![0, 255] };
    /// let img = aug.train(&raw, &mut Rng::new(0)).unwrap();
    /// assert_eq!(img.data, vec![1.0, -1.0]);
    /// ```
    pub fn train(&self, raw: &RawImage, rng: &mut Rng) -> Result<Image> {
        self.run(Cow::Borrowed(raw), Some(rng))
    }

    /// [`Augmenter::train`] on an image the caller gives away (saves a copy).
    pub fn train_owned(&self, raw: RawImage, rng: &mut Rng) -> Result<Image> {
        self.run(Cow::Owned(raw), Some(rng))
    }

    /// Applies only the deterministic ops (evaluation, features of test images).
    pub fn eval(&self, raw: &RawImage) -> Result<Image> {
        self.run(Cow::Borrowed(raw), None)
    }

    fn run(&self, raw: Cow<'_, RawImage>, mut rng: Option<&mut Rng>) -> Result<Image> {
        if raw.data.len() != raw.channels * raw.height * raw.width {
            return Err(sample_err(format!(
                "image has {} bytes, expected {}x{}x{}",
                raw.data.len(),
                raw.channels,
                raw.height,
                raw.width
            )));
        }
        if raw.height == 0 || raw.width == 0 {
            return Err(sample_err(format!("image is {}x{}", raw.height, raw.width)));
        }
        let mut buf = Buf::U8(raw);
        for op in &self.ops {
            buf = apply(op, buf, rng.as_deref_mut()).map_err(sample_err)?;
        }
        Ok(buf.into_f32())
    }
}

/// Resizes `region` of the image to `(oh, ow)`.
fn resize_region(
    buf: Buf<'_>,
    region: ops::Region,
    oh: usize,
    ow: usize,
) -> std::result::Result<Buf<'static>, String> {
    buf.map_geometry(
        oh,
        ow,
        |c, h, w, d| ops::resize(c, h, w, d, region, oh, ow),
        |c, h, w, d| ops::resize(c, h, w, d, region, oh, ow),
    )
}

fn apply<'a>(
    op: &AugmentOp,
    buf: Buf<'a>,
    rng: Option<&mut Rng>,
) -> std::result::Result<Buf<'a>, String> {
    let (_, h, w) = buf.dims();
    let full = (0.0, 0.0, h as f64, w as f64);
    Ok(match (op, rng) {
        (AugmentOp::Resize { size }, _) => {
            let (oh, ow) = size.resized(h, w);
            if (oh, ow) == (h, w) {
                buf
            } else {
                resize_region(buf, full, oh, ow)?
            }
        }
        (AugmentOp::CenterCrop { size }, _) => {
            let (oh, ow) = size.square();
            let top = (h as i64 - oh as i64).div_euclid(2);
            let left = (w as i64 - ow as i64).div_euclid(2);
            buf.map_geometry(
                oh,
                ow,
                |c, h, w, d| Ok(ops::crop(c, h, w, d, top, left, oh, ow)),
                |c, h, w, d| Ok(ops::crop(c, h, w, d, top, left, oh, ow)),
            )?
        }
        (AugmentOp::RandomResizedCrop { size, scale, ratio }, rng) => {
            let (oh, ow) = size.square();
            let region = match rng {
                Some(r) => ops::random_region(h, w, *scale, *ratio, r),
                None => ops::aspect_region(h, w, oh, ow),
            };
            resize_region(buf, region, oh, ow)?
        }
        (AugmentOp::Hflip { p }, Some(r)) => {
            if r.next_f64() < *p {
                match buf {
                    Buf::U8(raw) => {
                        let mut raw = raw.into_owned();
                        ops::hflip(w, &mut raw.data);
                        Buf::U8(Cow::Owned(raw))
                    }
                    Buf::F32(mut img) => {
                        ops::hflip(w, &mut img.data);
                        Buf::F32(img)
                    }
                }
            } else {
                buf
            }
        }
        (AugmentOp::Shift { max_px }, Some(r)) => {
            let m = *max_px as i64;
            let dx = r.below(2 * *max_px as u64 + 1) as i64 - m;
            let dy = r.below(2 * *max_px as u64 + 1) as i64 - m;
            if dx == 0 && dy == 0 {
                buf
            } else {
                buf.map_geometry(
                    h,
                    w,
                    |c, h, w, d| Ok(ops::shift(c, h, w, d, dx, dy)),
                    |c, h, w, d| Ok(ops::shift(c, h, w, d, dx, dy)),
                )?
            }
        }
        (AugmentOp::Rotate { max_degrees }, Some(r)) => {
            let deg = r.uniform(-max_degrees, *max_degrees);
            let mut img = buf.into_f32();
            ops::rotate(&mut img, deg.to_radians());
            Buf::F32(img)
        }
        (AugmentOp::Brightness { max_delta }, Some(r)) => {
            let f = r.uniform(1.0 - max_delta, 1.0 + max_delta) as f32;
            let mut img = buf.into_f32();
            for v in &mut img.data {
                *v = (*v * f).clamp(0.0, 1.0);
            }
            Buf::F32(img)
        }
        (AugmentOp::Contrast { max_delta }, Some(r)) => {
            let f = r.uniform(1.0 - max_delta, 1.0 + max_delta) as f32;
            let mut img = buf.into_f32();
            let m = grey_mean(&img);
            for v in &mut img.data {
                *v = (m + f * (*v - m)).clamp(0.0, 1.0);
            }
            Buf::F32(img)
        }
        (AugmentOp::Normalize { mean, std }, _) => {
            let mut img = buf.into_f32();
            normalize(&mut img, mean, std)?;
            Buf::F32(img)
        }
        // Random ops without a random stream: evaluation leaves the image alone.
        (_, None) => buf,
    })
}

/// Mean of the grey image (ITU-R 601 luma for RGB, as torchvision's `adjust_contrast`).
fn grey_mean(img: &Image) -> f32 {
    let plane = img.height * img.width;
    let sum = |c: usize| {
        img.data[c * plane..(c + 1) * plane]
            .iter()
            .map(|&v| v as f64)
            .sum::<f64>()
    };
    let mean = if img.channels == 3 {
        0.299 * sum(0) + 0.587 * sum(1) + 0.114 * sum(2)
    } else {
        (0..img.channels).map(sum).sum::<f64>() / img.channels as f64
    };
    (mean / plane.max(1) as f64) as f32
}

fn normalize(img: &mut Image, mean: &[f32], std: &[f32]) -> std::result::Result<(), String> {
    if mean.len() != 1 && mean.len() != img.channels {
        return Err(format!(
            "normalize has {} means for an image of {} channels",
            mean.len(),
            img.channels
        ));
    }
    let plane = img.height * img.width;
    for c in 0..img.channels {
        let (m, s) = if mean.len() == 1 {
            (mean[0], std[0])
        } else {
            (mean[c], std[c])
        };
        let inv = 1.0 / s;
        for v in &mut img.data[c * plane..(c + 1) * plane] {
            *v = (*v - m) * inv;
        }
    }
    Ok(())
}

// ---- configuration ----

/// Augmentation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Decode/augment worker threads. The output does not depend on this number.
    #[serde(default = "d_workers")]
    pub workers: usize,
    /// Ordered list of ops, e.g. `- hflip: { p: 0.5 }`. Random ops apply to training images
    /// only; `resize`, `center_crop`, `random_resized_crop` (deterministic form) and
    /// `normalize` also apply to test images and to the reference model's inputs.
    #[serde(default = "d_ops")]
    pub ops: Vec<AugmentOp>,
}

pub(crate) fn d_ops() -> Vec<AugmentOp> {
    vec![AugmentOp::Normalize {
        mean: vec![0.5],
        std: vec![0.5],
    }]
}
pub(crate) fn d_workers() -> usize {
    2
}

impl AugmentConfig {
    /// Adds this section's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        v.check(self.workers > 0, "augment.workers", || {
            "must be at least 1".into()
        });
        let mut normalized = false;
        for (i, op) in self.ops.iter().enumerate() {
            if let Err(e) = op.validate() {
                v.at(&format!("augment.ops[{i}]"), e);
            }
            match op {
                AugmentOp::Normalize { .. } => normalized = true,
                AugmentOp::Brightness { .. } | AugmentOp::Contrast { .. } if normalized => v.at(
                    &format!("augment.ops[{i}]"),
                    format!(
                        "{} works on [0, 1] values and must come before normalize",
                        op.name()
                    ),
                ),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(h: usize, w: usize) -> RawImage {
        RawImage {
            channels: 1,
            height: h,
            width: w,
            data: (0..h * w).map(|i| (i * 255 / (h * w - 1)) as u8).collect(),
        }
    }

    #[test]
    fn each_op_keeps_shape_and_range() {
        let raw = ramp(8, 6);
        for op in [
            AugmentOp::Hflip { p: 1.0 },
            AugmentOp::Shift { max_px: 2 },
            AugmentOp::Rotate { max_degrees: 30.0 },
            AugmentOp::Brightness { max_delta: 0.5 },
            AugmentOp::Contrast { max_delta: 0.5 },
        ] {
            let aug = Augmenter::new(vec![op.clone()]);
            for seed in 0..20 {
                let img = aug.train(&raw, &mut Rng::new(seed)).unwrap();
                assert_eq!((img.channels, img.height, img.width), (1, 8, 6), "{op:?}");
                assert!(
                    img.data.iter().all(|v| (0.0..=1.0 + 1e-6).contains(v)),
                    "{op:?} left [0, 1]"
                );
            }
        }
    }

    #[test]
    fn same_stream_same_output_and_streams_differ() {
        let raw = ramp(10, 10);
        let aug = Augmenter::new(vec![
            AugmentOp::Hflip { p: 0.5 },
            AugmentOp::Shift { max_px: 2 },
            AugmentOp::Rotate { max_degrees: 15.0 },
        ]);
        let a = aug.train(&raw, &mut Rng::derive(1, &[2, 3])).unwrap();
        let b = aug.train(&raw, &mut Rng::derive(1, &[2, 3])).unwrap();
        assert_eq!(a, b);
        let distinct = (0..10)
            .map(|i| aug.train(&raw, &mut Rng::derive(1, &[2, i])).unwrap().data)
            .collect::<Vec<_>>();
        assert!(distinct.windows(2).any(|p| p[0] != p[1]));
    }

    #[test]
    fn hflip_twice_is_identity_and_rotate_zero_is_identity() {
        let raw = ramp(5, 7);
        let base = Image::from_raw(&raw);
        let mut img = base.clone();
        ops::hflip(img.width, &mut img.data);
        assert_ne!(img, base);
        ops::hflip(img.width, &mut img.data);
        assert_eq!(img, base);
        let mut r = base.clone();
        ops::rotate(&mut r, 0.0);
        for (a, b) in r.data.iter().zip(&base.data) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn rotate_180_flips_both_axes() {
        let raw = ramp(4, 4);
        let mut img = Image::from_raw(&raw);
        ops::rotate(&mut img, std::f64::consts::PI);
        let base = Image::from_raw(&raw);
        for (i, v) in img.data.iter().enumerate() {
            assert!((v - base.data[15 - i]).abs() < 1e-4, "pixel {i}");
        }
    }

    #[test]
    fn shift_moves_content_and_fills_with_zero() {
        let raw = RawImage {
            channels: 1,
            height: 3,
            width: 3,
            data: vec![255; 9],
        };
        let mut img = Image::from_raw(&raw);
        img.data = ops::shift(1, 3, 3, &img.data, 1, 0);
        assert_eq!(img.data, vec![0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]);
    }

    #[test]
    fn eval_applies_only_normalize() {
        let raw = ramp(4, 4);
        let aug = Augmenter::new(vec![
            AugmentOp::Hflip { p: 1.0 },
            AugmentOp::Normalize {
                mean: vec![0.5],
                std: vec![0.25],
            },
        ]);
        let img = aug.eval(&raw).unwrap();
        let base = Image::from_raw(&raw);
        for (a, b) in img.data.iter().zip(&base.data) {
            assert!((a - (b - 0.5) / 0.25).abs() < 1e-6);
        }
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        assert!(AugmentOp::Hflip { p: 1.5 }.validate().is_err());
        assert!(AugmentOp::Rotate { max_degrees: 200.0 }.validate().is_err());
        assert!(AugmentOp::Normalize {
            mean: vec![0.5],
            std: vec![0.0]
        }
        .validate()
        .is_err());
        assert!(AugmentOp::Normalize {
            mean: vec![0.5, 0.5],
            std: vec![0.5]
        }
        .validate()
        .is_err());
    }

    fn photo(h: usize, w: usize) -> RawImage {
        RawImage {
            channels: 3,
            height: h,
            width: w,
            data: (0..3 * h * w)
                .map(|i| ((i % w) * 255 / w.max(2) + (i / (h * w)) * 40) as u8)
                .collect(),
        }
    }

    /// Every op: the shape `output_shape` predicts, values in range, the same stream gives
    /// the same image and different streams different images (for the random ops).
    #[test]
    fn every_op_has_its_predicted_shape_range_and_determinism() {
        let raw = photo(37, 53);
        let cases: Vec<(AugmentOp, (usize, usize), bool)> = vec![
            (
                AugmentOp::Resize {
                    size: Size::Exact([20, 30]),
                },
                (20, 30),
                false,
            ),
            (
                AugmentOp::Resize {
                    size: Size::Side(18),
                },
                (18, 25),
                false,
            ),
            (
                AugmentOp::CenterCrop {
                    size: Size::Side(16),
                },
                (16, 16),
                false,
            ),
            (
                AugmentOp::CenterCrop {
                    size: Size::Exact([40, 60]),
                },
                (40, 60),
                false,
            ),
            (
                AugmentOp::RandomResizedCrop {
                    size: Size::Exact([24, 32]),
                    scale: d_scale(),
                    ratio: d_ratio(),
                },
                (24, 32),
                true,
            ),
            (AugmentOp::Hflip { p: 0.5 }, (37, 53), true),
            (AugmentOp::Shift { max_px: 3 }, (37, 53), true),
            (AugmentOp::Rotate { max_degrees: 15.0 }, (37, 53), true),
            (AugmentOp::Brightness { max_delta: 0.2 }, (37, 53), true),
            (AugmentOp::Contrast { max_delta: 0.4 }, (37, 53), true),
        ];
        for (op, (h, w), random) in cases {
            let aug = Augmenter::new(vec![op.clone()]);
            assert_eq!(
                aug.output_shape(SourceShape::fixed(3, 37, 53)).unwrap(),
                (3, h, w),
                "{op:?}"
            );
            let mut outs = Vec::new();
            for seed in 0..12 {
                let img = aug.train(&raw, &mut Rng::derive(9, &[seed])).unwrap();
                assert_eq!((img.channels, img.height, img.width), (3, h, w), "{op:?}");
                assert!(
                    img.data.iter().all(|v| (0.0..=1.0 + 1e-6).contains(v)),
                    "{op:?} left [0, 1]"
                );
                let again = aug.train(&raw, &mut Rng::derive(9, &[seed])).unwrap();
                assert_eq!(img, again, "{op:?} is not deterministic");
                outs.push(img.data);
            }
            let varied = outs.windows(2).any(|p| p[0] != p[1]);
            assert_eq!(varied, random, "{op:?}");
            // Evaluation: the same shape, and no randomness.
            let e = aug.eval(&raw).unwrap();
            assert_eq!((e.height, e.width), (h, w), "{op:?}");
            assert_eq!(e, aug.eval(&raw).unwrap());
        }
    }

    #[test]
    fn normalize_maps_the_range_and_checks_channels() {
        let raw = photo(4, 5);
        let aug = Augmenter::new(vec![AugmentOp::Normalize {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        }]);
        let img = aug.train(&raw, &mut Rng::new(0)).unwrap();
        let base = Image::from_raw(&raw);
        for (i, (a, b)) in img.data.iter().zip(&base.data).enumerate() {
            let (m, s) = [(0.485, 0.229), (0.456, 0.224), (0.406, 0.225)][i / 20];
            assert!((a - (b - m) / s).abs() < 1e-5);
        }
        assert!(aug.output_shape(SourceShape::fixed(1, 4, 5)).is_err());
        let grey = RawImage {
            channels: 1,
            height: 2,
            width: 2,
            data: vec![0; 4],
        };
        assert!(aug.train(&grey, &mut Rng::new(0)).is_err());
    }

    #[test]
    fn resize_keeps_a_constant_image_constant_and_works_after_float_ops() {
        let raw = RawImage {
            channels: 3,
            height: 50,
            width: 70,
            data: vec![128; 3 * 3500],
        };
        let aug = Augmenter::new(vec![
            AugmentOp::Brightness { max_delta: 0.0 },
            AugmentOp::Resize {
                size: Size::Exact([9, 11]),
            },
        ]);
        let img = aug.train(&raw, &mut Rng::new(1)).unwrap();
        assert_eq!((img.height, img.width), (9, 11));
        assert!(img.data.iter().all(|v| (v - 128.0 / 255.0).abs() < 1e-5));
        // u8 path: same result within rounding.
        let u8_path = Augmenter::new(vec![AugmentOp::Resize {
            size: Size::Exact([9, 11]),
        }]);
        let img2 = u8_path.train(&raw, &mut Rng::new(1)).unwrap();
        assert_eq!(img2.data, vec![128.0 / 255.0; 3 * 99]);
    }

    #[test]
    fn center_crop_takes_the_middle_and_pads_when_larger() {
        let raw = RawImage {
            channels: 1,
            height: 3,
            width: 3,
            data: (1..=9).collect(),
        };
        let crop = Augmenter::new(vec![AugmentOp::CenterCrop {
            size: Size::Side(1),
        }]);
        assert_eq!(crop.eval(&raw).unwrap().data, vec![5.0 / 255.0]);
        let pad = Augmenter::new(vec![AugmentOp::CenterCrop {
            size: Size::Exact([3, 5]),
        }]);
        let d = pad.eval(&raw).unwrap().data;
        assert_eq!(d[0], 0.0);
        assert_eq!(d[1], 1.0 / 255.0);
        assert_eq!(d[4], 0.0);
    }

    #[test]
    fn contrast_pulls_towards_the_mean() {
        let raw = RawImage {
            channels: 1,
            height: 1,
            width: 2,
            data: vec![51, 153],
        };
        let aug = Augmenter::new(vec![AugmentOp::Contrast { max_delta: 1.0 }]);
        for seed in 0..20 {
            let d = aug.train(&raw, &mut Rng::new(seed)).unwrap().data;
            // The mean 0.4 is kept and the two pixels stay symmetric about it.
            assert!(((d[0] + d[1]) / 2.0 - 0.4).abs() < 1e-5, "{d:?}");
        }
    }

    #[test]
    fn variable_size_images_need_an_op_that_fixes_the_size() {
        let var = SourceShape::variable(3);
        let e = Augmenter::new(vec![AugmentOp::Hflip { p: 0.5 }])
            .output_shape(var)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("augment.ops[0]: hflip is the last op") && e.contains("several sizes"),
            "{e}"
        );
        let e = Augmenter::new(vec![
            AugmentOp::Resize {
                size: Size::Side(64),
            },
            AugmentOp::Hflip { p: 0.5 },
        ])
        .output_shape(var)
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("augment.ops[0]: resize resizes the shorter side"),
            "{e}"
        );
        let ok = Augmenter::new(vec![
            AugmentOp::RandomResizedCrop {
                size: Size::Side(8),
                scale: d_scale(),
                ratio: d_ratio(),
            },
            AugmentOp::Rotate { max_degrees: 10.0 },
        ]);
        assert_eq!(ok.output_shape(var).unwrap(), (3, 8, 8));
    }

    #[test]
    fn config_rejects_bad_sizes_and_jitter_after_normalize() {
        let mut v = Issues::default();
        AugmentConfig {
            workers: 1,
            ops: vec![
                AugmentOp::Resize {
                    size: Size::Exact([0, 3]),
                },
                AugmentOp::RandomResizedCrop {
                    size: Size::Side(4),
                    scale: [0.5, 0.2],
                    ratio: d_ratio(),
                },
                AugmentOp::Normalize {
                    mean: vec![0.5],
                    std: vec![0.5],
                },
                AugmentOp::Brightness { max_delta: 0.2 },
            ],
        }
        .validate(&mut v);
        let keys: Vec<&str> = v.0.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            ["augment.ops[0]", "augment.ops[1]", "augment.ops[3]"],
            "{:?}",
            v.0
        );
    }

    #[test]
    fn ops_parse_from_yaml_in_order() {
        let yaml = "ops:\n  - resize: { size: 256 }\n  - centre_crop: { size: [224, 200] }\n  - random_resized_crop: { size: 64, scale: [0.5, 1.0] }\n  - contrast: { max_delta: 0.1 }\n";
        let c: AugmentConfig = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(
            c.ops[0],
            AugmentOp::Resize {
                size: Size::Side(256)
            }
        );
        assert_eq!(
            c.ops[1],
            AugmentOp::CenterCrop {
                size: Size::Exact([224, 200])
            }
        );
        assert!(matches!(
            c.ops[2],
            AugmentOp::RandomResizedCrop { size: Size::Side(64), scale, ratio } if scale == [0.5, 1.0] && ratio == d_ratio()
        ));
        assert!(serde_saphyr::from_str::<AugmentConfig>(
            "ops:\n  - resize: { size: 3, typo: 1 }\n"
        )
        .is_err());
    }
}
