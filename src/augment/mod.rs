//! Augmentation: an ordered list of per-sample ops, as in the paper (flip, rotation,
//! brightness, normalisation).
//!
//! Ops work on a float image in CHW order with values in `[0, 1]` (raw `u8 / 255`);
//! `normalize` maps to `(x - mean) / std` per channel and should come last. Random ops take
//! their randomness from the [`Rng`] handed in, which the loader derives from
//! `(seed, epoch, sample id)`: the same sample in the same epoch is always augmented the same
//! way, whichever worker thread does it.
//!
//! Random ops are for training only. [`Augmenter::eval`] applies just the deterministic
//! ones (`normalize`), which is what test images and the reference model's pretraining
//! evaluation get.
use crate::config::Issues;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::source::RawImage;

/// One augmentation op, written in YAML as a one-key map: `- hflip: { p: 0.5 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AugmentOp {
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
    /// Multiply by a factor uniform in `[1 - max_delta, 1 + max_delta]`, then clamp to [0, 1].
    Brightness {
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
            AugmentOp::Hflip { p } if !(0.0..=1.0).contains(p) => {
                Err(format!("hflip.p must be in [0, 1], got {p}"))
            }
            AugmentOp::Rotate { max_degrees } if !(0.0..=180.0).contains(max_degrees) => Err(
                format!("rotate.max_degrees must be in [0, 180], got {max_degrees}"),
            ),
            AugmentOp::Brightness { max_delta } if !(0.0..=1.0).contains(max_delta) => Err(
                format!("brightness.max_delta must be in [0, 1], got {max_delta}"),
            ),
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

    fn is_random(&self) -> bool {
        !matches!(self, AugmentOp::Normalize { .. })
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

/// The configured op list, ready to run.
#[derive(Debug, Clone)]
pub struct Augmenter {
    ops: Vec<AugmentOp>,
}

impl Augmenter {
    /// Builds from the config's op list (validated by the config).
    pub fn new(ops: Vec<AugmentOp>) -> Self {
        Augmenter { ops }
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
        self.run(raw, Some(rng))
    }

    /// Applies only the deterministic ops (evaluation, features of test images).
    pub fn eval(&self, raw: &RawImage) -> Result<Image> {
        self.run(raw, None)
    }

    fn run(&self, raw: &RawImage, mut rng: Option<&mut Rng>) -> Result<Image> {
        if raw.data.len() != raw.channels * raw.height * raw.width {
            return Err(Error::Sample {
                sample: String::new(),
                message: format!(
                    "image has {} bytes, expected {}x{}x{}",
                    raw.data.len(),
                    raw.channels,
                    raw.height,
                    raw.width
                ),
            });
        }
        let mut img = Image::from_raw(raw);
        for op in &self.ops {
            match (op.is_random(), rng.as_deref_mut()) {
                (true, Some(r)) => apply_random(op, &mut img, r),
                (true, None) => {}
                (false, _) => apply_normalize(op, &mut img)?,
            }
        }
        Ok(img)
    }
}

fn apply_random(op: &AugmentOp, img: &mut Image, rng: &mut Rng) {
    match *op {
        AugmentOp::Hflip { p } => {
            if rng.next_f64() < p {
                hflip(img)
            }
        }
        AugmentOp::Shift { max_px } => {
            let m = max_px as i64;
            let dx = rng.below(2 * max_px as u64 + 1) as i64 - m;
            let dy = rng.below(2 * max_px as u64 + 1) as i64 - m;
            shift(img, dx, dy)
        }
        AugmentOp::Rotate { max_degrees } => {
            let deg = rng.uniform(-max_degrees, max_degrees);
            rotate(img, deg.to_radians())
        }
        AugmentOp::Brightness { max_delta } => {
            let f = rng.uniform(1.0 - max_delta, 1.0 + max_delta) as f32;
            for v in &mut img.data {
                *v = (*v * f).clamp(0.0, 1.0);
            }
        }
        AugmentOp::Normalize { .. } => {}
    }
}

fn apply_normalize(op: &AugmentOp, img: &mut Image) -> Result<()> {
    let AugmentOp::Normalize { mean, std } = op else {
        return Ok(());
    };
    if mean.len() != 1 && mean.len() != img.channels {
        return Err(Error::Sample {
            sample: String::new(),
            message: format!(
                "normalize has {} means for an image of {} channels",
                mean.len(),
                img.channels
            ),
        });
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

fn hflip(img: &mut Image) {
    let w = img.width;
    for row in img.data.chunks_mut(w) {
        row.reverse();
    }
}

fn shift(img: &mut Image, dx: i64, dy: i64) {
    if dx == 0 && dy == 0 {
        return;
    }
    let (h, w) = (img.height as i64, img.width as i64);
    let mut out = vec![0.0f32; img.data.len()];
    let plane = (h * w) as usize;
    for c in 0..img.channels {
        let src = &img.data[c * plane..(c + 1) * plane];
        let dst = &mut out[c * plane..(c + 1) * plane];
        for y in 0..h {
            let sy = y - dy;
            if !(0..h).contains(&sy) {
                continue;
            }
            for x in 0..w {
                let sx = x - dx;
                if (0..w).contains(&sx) {
                    dst[(y * w + x) as usize] = src[(sy * w + sx) as usize];
                }
            }
        }
    }
    img.data = out;
}

fn rotate(img: &mut Image, radians: f64) {
    let (h, w) = (img.height, img.width);
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let (s, c) = radians.sin_cos();
    let plane = h * w;
    let mut out = vec![0.0f32; img.data.len()];
    for y in 0..h {
        for x in 0..w {
            // Inverse mapping: where in the source does output pixel (x, y) come from.
            let (ox, oy) = (x as f64 - cx, y as f64 - cy);
            let sx = c * ox + s * oy + cx;
            let sy = -s * ox + c * oy + cy;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = ((sx - x0) as f32, (sy - y0) as f32);
            let (x0, y0) = (x0 as i64, y0 as i64);
            for ch in 0..img.channels {
                let src = &img.data[ch * plane..(ch + 1) * plane];
                let at = |yy: i64, xx: i64| -> f32 {
                    if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w {
                        src[yy as usize * w + xx as usize]
                    } else {
                        0.0
                    }
                };
                let v = at(y0, x0) * (1.0 - fx) * (1.0 - fy)
                    + at(y0, x0 + 1) * fx * (1.0 - fy)
                    + at(y0 + 1, x0) * (1.0 - fx) * fy
                    + at(y0 + 1, x0 + 1) * fx * fy;
                out[ch * plane + y * w + x] = v;
            }
        }
    }
    img.data = out;
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
    /// only; `normalize` also applies to test images and to the reference model's inputs.
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
        for (i, op) in self.ops.iter().enumerate() {
            if let Err(e) = op.validate() {
                v.at(&format!("augment.ops[{i}]"), e);
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
        hflip(&mut img);
        assert_ne!(img, base);
        hflip(&mut img);
        assert_eq!(img, base);
        let mut r = base.clone();
        rotate(&mut r, 0.0);
        for (a, b) in r.data.iter().zip(&base.data) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn rotate_180_flips_both_axes() {
        let raw = ramp(4, 4);
        let mut img = Image::from_raw(&raw);
        rotate(&mut img, std::f64::consts::PI);
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
        shift(&mut img, 1, 0);
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
}
