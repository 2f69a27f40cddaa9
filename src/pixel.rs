//! Pixel types and resize kernels, shared by the sources (which decode and may pre-shrink
//! images) and the augmentation ops (which crop and resize them).
//!
//! - [`RawImage`]: an image as stored, `u8` CHW; [`SourceShape`]: what a source knows of its
//!   images' shape before decoding; [`Size`]: an output size as written in the YAML.
//! - [`resize`] (planar, `u8` or `f32`) and [`resize_interleaved`] (HWC `u8`, as decoders
//!   produce): fast_image_resize's SIMD convolution with a bilinear filter whose support grows
//!   with the scale factor (antialiased, as PIL's and torchvision's `antialias=True`).
use std::cell::RefCell;

use fast_image_resize as fr;
use serde::{Deserialize, Serialize};

/// An image as stored: `u8` pixels in CHW order (`channels x height x width`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawImage {
    /// Number of channels (1 for grey).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `channels * height * width` bytes, CHW.
    pub data: Vec<u8>,
}

impl RawImage {
    /// Converts to `channels` channels (1 or 3): grey to RGB repeats the plane, RGB to grey
    /// takes the luma `0.299 R + 0.587 G + 0.114 B` (ITU-R 601, as PIL's `convert("L")`),
    /// a fourth (alpha) or second (grey + alpha) channel is dropped. Returns the image
    /// unchanged when it already has `channels`; an error for other combinations.
    ///
    /// ```
    /// use saln::source::RawImage;
    /// let grey = RawImage { channels: 1, height: 1, width: 2, data: vec![10, 200] };
    /// let rgb = grey.clone().to_channels(3).unwrap();
    /// assert_eq!(rgb.data, vec![10, 200, 10, 200, 10, 200]);
    /// assert_eq!(rgb.to_channels(1).unwrap(), grey);
    /// ```
    pub fn to_channels(self, channels: usize) -> std::result::Result<RawImage, String> {
        if self.channels == channels {
            return Ok(self);
        }
        let plane = self.height * self.width;
        if self.data.len() != self.channels * plane {
            return Err(format!(
                "image has {} bytes, expected {}x{}x{}",
                self.data.len(),
                self.channels,
                self.height,
                self.width
            ));
        }
        let data = match (self.channels, channels) {
            (1 | 2, 1) => self.data[..plane].to_vec(),
            (1 | 2, 3) => self.data[..plane].repeat(3),
            (3 | 4, 3) => self.data[..3 * plane].to_vec(),
            (3 | 4, 1) => {
                let (r, rest) = self.data.split_at(plane);
                let (g, b) = rest.split_at(plane);
                r.iter()
                    .zip(g)
                    .zip(&b[..plane])
                    .map(|((&r, &g), &b)| {
                        ((r as u32 * 299 + g as u32 * 587 + b as u32 * 114 + 500) / 1000) as u8
                    })
                    .collect()
            }
            (from, to) => {
                return Err(format!(
                    "cannot convert an image of {from} channels to {to} channels"
                ))
            }
        };
        Ok(RawImage {
            channels,
            height: self.height,
            width: self.width,
            data,
        })
    }
}

/// The shape of a source's images as stored, before augmentation: the channel count is
/// always known; the size only when every image has the same one (IDX, CIFAR-10). Image
/// files come in any size, and the augmentation op list decides the output size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SourceShape {
    /// Channels of every image (1 grey, 3 RGB).
    pub channels: usize,
    /// `(height, width)` when every image has it; `None` for image files of any size.
    pub size: Option<(usize, usize)>,
}

impl SourceShape {
    /// Images of one size, `channels x height x width`.
    pub fn fixed(channels: usize, height: usize, width: usize) -> Self {
        SourceShape {
            channels,
            size: Some((height, width)),
        }
    }
    /// Images of `channels` channels and any size.
    pub fn variable(channels: usize) -> Self {
        SourceShape {
            channels,
            size: None,
        }
    }
}

/// An output size: one number or `[height, width]`. For `resize`, one number is the length
/// of the *shorter* side (aspect ratio kept, as torchvision's `Resize(N)`); for the crops, one
/// number is a square.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Size {
    /// One number.
    Side(usize),
    /// `[height, width]`.
    Exact([usize; 2]),
}

impl Size {
    /// `(height, width)` of a crop of this size (one number is a square).
    pub fn square(self) -> (usize, usize) {
        match self {
            Size::Side(n) => (n, n),
            Size::Exact([h, w]) => (h, w),
        }
    }

    /// `(height, width)` after resizing an `h x w` image to this size.
    pub fn resized(self, h: usize, w: usize) -> (usize, usize) {
        match self {
            Size::Exact([h, w]) => (h, w),
            Size::Side(n) => {
                // torchvision: the shorter side becomes n, the longer int(n * long / short).
                let long = |a: usize, b: usize| ((n as f64 * a as f64 / b as f64) as usize).max(1);
                if h <= w {
                    (n, long(w, h))
                } else {
                    (long(h, w), n)
                }
            }
        }
    }

    pub(crate) fn is_valid(self) -> bool {
        match self {
            Size::Side(n) => n > 0,
            Size::Exact([h, w]) => h > 0 && w > 0,
        }
    }
}

/// A rectangle of the source image, in pixels: `(top, left, height, width)`.
pub(crate) type Region = (f64, f64, f64, f64);

thread_local! {
    // One resizer per worker thread: it keeps its scratch buffers between images.
    static RESIZER: RefCell<fr::Resizer> = RefCell::new(fr::Resizer::new());
}

/// Pixel types the resizer runs on.
pub(crate) trait Resizable: bytemuck::Pod + Default {
    /// fast_image_resize's name for one plane of this type.
    const PIXEL: fr::PixelType;
}
impl Resizable for u8 {
    const PIXEL: fr::PixelType = fr::PixelType::U8;
}
impl Resizable for f32 {
    const PIXEL: fr::PixelType = fr::PixelType::F32;
}

/// Resizes `region` of every plane of a `c x h x w` image to `oh x ow` (bilinear,
/// antialiased). Returns the new planes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn resize<T: Resizable>(
    c: usize,
    h: usize,
    w: usize,
    data: &[T],
    region: Region,
    oh: usize,
    ow: usize,
) -> Result<Vec<T>, String> {
    let (top, left, rh, rw) = region;
    if (top, left, rh, rw) == (0.0, 0.0, h as f64, w as f64) && (oh, ow) == (h, w) {
        return Ok(data.to_vec());
    }
    let mut out = vec![T::default(); c * oh * ow];
    let options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear))
        .crop(left, top, rw, rh);
    RESIZER.with(|r| {
        let mut resizer = r.borrow_mut();
        for ch in 0..c {
            let src_plane: &[u8] = bytemuck::cast_slice(&data[ch * h * w..(ch + 1) * h * w]);
            let dst_plane: &mut [u8] =
                bytemuck::cast_slice_mut(&mut out[ch * oh * ow..(ch + 1) * oh * ow]);
            let src = fr::images::ImageRef::new(w as u32, h as u32, src_plane, T::PIXEL)
                .map_err(|e| format!("resize: {e}"))?;
            let mut dst =
                fr::images::Image::from_slice_u8(ow as u32, oh as u32, dst_plane, T::PIXEL)
                    .map_err(|e| format!("resize: {e}"))?;
            resizer
                .resize(&src, &mut dst, &options)
                .map_err(|e| format!("resize: {e}"))?;
        }
        Ok(out)
    })
}

/// Resizes a `c`-channel interleaved (HWC) `u8` image, `c` 1 to 4, to `oh x ow` with the
/// same filter as [`resize`]: per channel the same values as resizing each plane.
pub(crate) fn resize_interleaved(
    c: usize,
    h: usize,
    w: usize,
    data: &[u8],
    oh: usize,
    ow: usize,
) -> Result<Vec<u8>, String> {
    let pixel = match c {
        1 => fr::PixelType::U8,
        2 => fr::PixelType::U8x2,
        3 => fr::PixelType::U8x3,
        4 => fr::PixelType::U8x4,
        _ => return Err(format!("cannot resize {c} interleaved channels")),
    };
    let mut out = vec![0u8; c * oh * ow];
    let options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear))
        .use_alpha(false);
    let src = fr::images::ImageRef::new(w as u32, h as u32, data, pixel)
        .map_err(|e| format!("resize: {e}"))?;
    let mut dst = fr::images::Image::from_slice_u8(ow as u32, oh as u32, &mut out, pixel)
        .map_err(|e| format!("resize: {e}"))?;
    RESIZER
        .with(|r| r.borrow_mut().resize(&src, &mut dst, &options))
        .map_err(|e| format!("resize: {e}"))?;
    Ok(out)
}
