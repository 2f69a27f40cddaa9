//! Decoding of JPEG and PNG bytes into a [`RawImage`] of a chosen channel count.
//!
//! JPEG goes through zune-jpeg and PNG through the `png` crate, both via `image` 0.25 (no
//! other format is compiled in). Any pixel layout those decoders produce (grey, grey + alpha,
//! RGB, RGBA, 8 or 16 bits per channel) is converted to `channels` (1 or 3): 16-bit values are
//! scaled to 8 bits, alpha is dropped (not composited), grey becomes RGB by repetition and RGB
//! becomes grey by the ITU-R 601 luma, as `image`'s `into_luma8` computes it.
//!
//! Hostile input: a decoder that panics on a malformed file must not take the run down, so
//! every decode runs under `catch_unwind` and a panic becomes an ordinary error message. The
//! `image` crate's default limits (512 MiB per decode) stop a tiny file that announces a
//! gigantic image.
use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader};

use super::RawImage;
use crate::pixel::Size;

/// Decodes `bytes` (a whole JPEG or PNG file) into `channels` (1 or 3) channels, CHW.
/// The error is a message without the file name; the caller adds it.
///
/// ```
/// // A 2x1 RGB PNG written with the `image` crate, decoded to grey.
/// let mut png = Vec::new();
/// image::RgbImage::from_raw(2, 1, vec![255, 0, 0, 0, 0, 255])
///     .unwrap()
///     .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
///     .unwrap();
/// let rgb = saln::source::decode::decode(&png, 3).unwrap();
/// assert_eq!((rgb.channels, rgb.height, rgb.width), (3, 1, 2));
/// assert_eq!(rgb.data, vec![255, 0, 0, 0, 0, 255]); // planes R, G, B
/// let grey = saln::source::decode::decode(&png, 1).unwrap();
/// assert_eq!(grey.data.len(), 2);
/// assert!(saln::source::decode::decode(b"", 3).unwrap_err().contains("empty"));
/// ```
pub fn decode(bytes: &[u8], channels: usize) -> Result<RawImage, String> {
    decode_resized(bytes, channels, None)
}

/// [`decode`], then resize to `size` (when given) before the channels are split into planes:
/// the result equals `decode` followed by the augmentation op `resize: { size }`, computed on
/// the decoder's interleaved pixels, which spares a full-size copy.
pub fn decode_resized(
    bytes: &[u8],
    channels: usize,
    size: Option<Size>,
) -> Result<RawImage, String> {
    decode_limited(bytes, channels, size, super::Limits::default().max_pixels)
}

/// [`decode_resized`], refusing (before decoding, on the header's dimensions) an image of
/// more than `max_pixels` pixels (`source.limits.max_pixels`).
///
/// ```
/// // A PNG header claiming 60000 x 60000: refused without allocating 3.6 G pixels.
/// fn crc32(bytes: &[u8]) -> u32 {
///     let mut c = !0u32;
///     for &b in bytes {
///         c ^= b as u32;
///         for _ in 0..8 {
///             c = if c & 1 != 0 { (c >> 1) ^ 0xedb8_8320 } else { c >> 1 };
///         }
///     }
///     !c
/// }
/// let mut png = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
/// let mut chunk = |kind: &[u8], data: &[u8]| {
///     let body = [kind, data].concat();
///     png.extend_from_slice(&(data.len() as u32).to_be_bytes());
///     png.extend_from_slice(&body);
///     png.extend_from_slice(&crc32(&body).to_be_bytes());
/// };
/// let side = 60000u32.to_be_bytes();
/// chunk(b"IHDR", &[&side[..], &side[..], &[8, 0, 0, 0, 0]].concat());
/// chunk(b"IDAT", &[]);
/// chunk(b"IEND", &[]);
/// let e = saln::source::decode::decode_limited(&png, 1, None, 100_000_000).unwrap_err();
/// assert!(e.contains("source.limits.max_pixels") && e.contains("60000 x 60000"), "{e}");
/// ```
pub fn decode_limited(
    bytes: &[u8],
    channels: usize,
    size: Option<Size>,
    max_pixels: u64,
) -> Result<RawImage, String> {
    if bytes.is_empty() {
        return Err("empty file (0 bytes)".into());
    }
    if channels != 1 && channels != 3 {
        return Err(format!("cannot decode to {channels} channels (1 or 3)"));
    }
    let format = match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Jpeg | ImageFormat::Png)) => f,
        Ok(f) => return Err(format!("{f:?} images are not supported (JPEG and PNG are)")),
        Err(_) => return Err("not a JPEG or PNG file (unknown signature)".into()),
    };
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // zune-jpeg (as browsers) fills a cut-off scan with grey and reports success; a
        // truncated file is bad input and must be counted, not trained on.
        return Err("truncated JPEG (no end-of-image marker after the last scan)".into());
    }
    // The header first: its dimensions decide whether the pixels may be allocated at all.
    let dims = std::panic::catch_unwind(|| {
        ImageReader::with_format(Cursor::new(bytes), format).into_dimensions()
    });
    match dims {
        Ok(Ok((w, h))) => {
            super::Limits {
                max_pixels,
                ..Default::default()
            }
            .check_pixels(w as u64, h as u64)?;
        }
        Ok(Err(e)) => return Err(format!("corrupt or truncated {format:?}: {e}")),
        Err(p) => {
            return Err(format!(
                "{format:?} decoder panicked: {}",
                crate::stage::panic_message(&p)
            ))
        }
    }
    let decoded = std::panic::catch_unwind(|| {
        let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
        // Belt and braces: the decoder's own allocation cap, 8 bytes per allowed pixel
        // (16-bit RGBA), at least `image`'s default of 512 MiB.
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(max_pixels.saturating_mul(8).max(512 << 20));
        reader.limits(limits);
        reader.decode()
    });
    let img = match decoded {
        Ok(Ok(img)) => img,
        Ok(Err(e)) => return Err(format!("corrupt or truncated {format:?}: {e}")),
        Err(p) => {
            return Err(format!(
                "{format:?} decoder panicked: {}",
                crate::stage::panic_message(&p)
            ))
        }
    };
    if img.width() == 0 || img.height() == 0 {
        return Err(format!("image is {}x{}", img.width(), img.height()));
    }
    to_planes(img, channels, size)
}

/// Whether a JPEG stream has an end-of-image marker (`FF D9`) after its last start-of-scan
/// marker (`FF DA`). Entropy-coded data never holds a bare `FF D9` or `FF DA` (an `FF` byte in
/// it is always followed by `00` or a restart marker), so a file cut anywhere inside its scans
/// fails this check, while a file with bytes appended after the end marker passes.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xff, 0xda]);
    match last_sos {
        Some(p) => bytes[p + 2..].windows(2).any(|w| w == [0xff, 0xd9]),
        None => false,
    }
}

/// Converts a decoded image to `channels` 8-bit planes (CHW), resized to `size` first.
fn to_planes(img: DynamicImage, channels: usize, size: Option<Size>) -> Result<RawImage, String> {
    let (w0, h0) = (img.width() as usize, img.height() as usize);
    let (height, width) = size.map_or((h0, w0), |s| s.resized(h0, w0));
    let plane = width * height;
    let interleaved = if channels == 1 {
        img.into_luma8().into_raw()
    } else {
        img.into_rgb8().into_raw()
    };
    let interleaved = if (height, width) == (h0, w0) {
        interleaved
    } else {
        crate::pixel::resize_interleaved(channels, h0, w0, &interleaved, height, width)?
    };
    let data = if channels == 1 {
        // Grey is already planar: one plane, no transposition.
        interleaved
    } else {
        let hwc = interleaved;
        let mut chw = vec![0u8; 3 * plane];
        let (r, rest) = chw.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        // Blocks of 16 pixels, so that the inner loop has constant bounds.
        const B: usize = 16;
        let blocks = hwc
            .chunks_exact(3 * B)
            .zip(r.chunks_exact_mut(B))
            .zip(g.chunks_exact_mut(B))
            .zip(b.chunks_exact_mut(B));
        for (((px, rb), gb), bb) in blocks {
            for j in 0..B {
                rb[j] = px[3 * j];
                gb[j] = px[3 * j + 1];
                bb[j] = px[3 * j + 2];
            }
        }
        for i in plane / B * B..plane {
            r[i] = hwc[3 * i];
            g[i] = hwc[3 * i + 1];
            b[i] = hwc[3 * i + 2];
        }
        chw
    };
    Ok(RawImage {
        channels,
        height,
        width,
        data,
    })
}

/// Encodes `img` (CHW, 1 or 3 channels) as PNG or JPEG (quality 90): used by tests and
/// fixtures to write image files.
pub fn encode(img: &RawImage, format: ImageFormat) -> Result<Vec<u8>, String> {
    let plane = img.height * img.width;
    let (w, h) = (img.width as u32, img.height as u32);
    let dynamic = match img.channels {
        1 => image::GrayImage::from_raw(w, h, img.data[..plane].to_vec()).map(DynamicImage::from),
        3 => {
            let mut hwc = Vec::with_capacity(3 * plane);
            for i in 0..plane {
                hwc.extend_from_slice(&[img.data[i], img.data[plane + i], img.data[2 * plane + i]]);
            }
            image::RgbImage::from_raw(w, h, hwc).map(DynamicImage::from)
        }
        c => return Err(format!("cannot encode {c} channels")),
    }
    .ok_or("image buffer does not match its size")?;
    let mut out = Vec::new();
    match format {
        ImageFormat::Jpeg => {
            let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90);
            dynamic.write_with_encoder(enc).map_err(|e| e.to_string())?;
        }
        f => dynamic
            .write_to(&mut Cursor::new(&mut out), f)
            .map_err(|e| e.to_string())?,
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rgb(h: usize, w: usize) -> RawImage {
        RawImage {
            channels: 3,
            height: h,
            width: w,
            data: (0..3 * h * w).map(|i| (i * 37 % 251) as u8).collect(),
        }
    }

    fn png_of(img: DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn png_round_trip_is_exact_and_jpeg_is_close() {
        let img = rgb(7, 5);
        let png = encode(&img, ImageFormat::Png).unwrap();
        assert_eq!(decode(&png, 3).unwrap(), img);
        let smooth = RawImage {
            channels: 3,
            height: 16,
            width: 16,
            data: (0..768).map(|i| ((i % 256) / 2 + 40) as u8).collect(),
        };
        let jpg = encode(&smooth, ImageFormat::Jpeg).unwrap();
        let back = decode(&jpg, 3).unwrap();
        assert_eq!((back.channels, back.height, back.width), (3, 16, 16));
        let err: f64 = back
            .data
            .iter()
            .zip(&smooth.data)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / 768.0;
        assert!(err < 12.0, "mean abs error {err}");
    }

    #[test]
    fn every_pixel_layout_converts_to_the_configured_channels() {
        let (w, h) = (4u32, 3u32);
        let n = (w * h) as usize;
        let layouts: Vec<(&str, DynamicImage)> = vec![
            (
                "L8",
                image::GrayImage::from_raw(w, h, vec![100; n])
                    .unwrap()
                    .into(),
            ),
            (
                "LA8",
                image::GrayAlphaImage::from_raw(w, h, vec![100; 2 * n])
                    .unwrap()
                    .into(),
            ),
            (
                "RGB8",
                image::RgbImage::from_raw(w, h, vec![100; 3 * n])
                    .unwrap()
                    .into(),
            ),
            (
                "RGBA8",
                image::RgbaImage::from_raw(w, h, vec![100; 4 * n])
                    .unwrap()
                    .into(),
            ),
            (
                "L16",
                image::ImageBuffer::<image::Luma<u16>, _>::from_raw(w, h, vec![100 * 257; n])
                    .unwrap()
                    .into(),
            ),
            (
                "RGBA16",
                image::ImageBuffer::<image::Rgba<u16>, _>::from_raw(w, h, vec![100 * 257; 4 * n])
                    .unwrap()
                    .into(),
            ),
        ];
        for (name, img) in layouts {
            let png = png_of(img);
            for c in [1, 3] {
                let out = decode(&png, c).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!((out.channels, out.height, out.width), (c, 3, 4), "{name}");
                // Grey 100 stays 100 in every channel; 16-bit 100*257 scales to 100.
                assert!(
                    out.data.iter().all(|&v| v == 100),
                    "{name} -> {c}: {:?}",
                    out.data
                );
            }
        }
    }

    #[test]
    fn huge_headers_are_refused_before_decoding() {
        // JPEG: SOI, a baseline SOF0 claiming 60000 x 60000 grey, a scan, EOI.
        let mut jpeg = vec![0xff, 0xd8, 0xff, 0xc0, 0x00, 0x0b, 8];
        jpeg.extend_from_slice(&60000u16.to_be_bytes());
        jpeg.extend_from_slice(&60000u16.to_be_bytes());
        jpeg.extend_from_slice(&[1, 1, 0x11, 0]);
        jpeg.extend_from_slice(&[0xff, 0xda, 0x00, 0x08, 1, 1, 0, 0, 0x3f, 0, 0xff, 0xd9]);
        let e = decode_limited(&jpeg, 1, None, 100_000_000).unwrap_err();
        assert!(e.contains("source.limits.max_pixels"), "{e}");
        // A small limit refuses an ordinary image, naming the key.
        let png = png_of(DynamicImage::from(image::GrayImage::new(20, 10)));
        assert!(decode_limited(&png, 1, None, 200).is_ok());
        let e = decode_limited(&png, 1, None, 199).unwrap_err();
        assert!(e.contains("20 x 10 = 200 pixels"), "{e}");
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        let png = encode(&rgb(20, 20), ImageFormat::Png).unwrap();
        let jpg = encode(&rgb(20, 20), ImageFormat::Jpeg).unwrap();
        assert!(decode(&png[..png.len() / 2], 3)
            .unwrap_err()
            .contains("Png"));
        assert!(decode(&jpg[..40], 3).is_err());
        assert!(decode(b"GIF89a....", 3)
            .unwrap_err()
            .contains("not supported"));
        assert!(decode(b"hello world", 3)
            .unwrap_err()
            .contains("not a JPEG or PNG"));
        assert!(decode(&[], 3).unwrap_err().contains("empty"));
        // JPEG magic followed by garbage, and a PNG with a corrupted chunk.
        let mut garbage = vec![0xff, 0xd8, 0xff, 0xe0];
        garbage.extend((0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        assert!(decode(&garbage, 3).is_err());
        let mut broken = png.clone();
        let mid = broken.len() / 2;
        for b in &mut broken[mid..mid + 16] {
            *b ^= 0x5a;
        }
        assert!(decode(&broken, 3).is_err());
    }

    #[test]
    fn decoding_at_a_size_equals_decoding_then_the_resize_op() {
        use crate::augment::{AugmentOp, Augmenter, Size};
        let img = RawImage {
            channels: 3,
            height: 75,
            width: 100,
            data: (0..3 * 75 * 100)
                .map(|i| ((i * 7919) % 253) as u8)
                .collect(),
        };
        for fmt in [ImageFormat::Png, ImageFormat::Jpeg] {
            let bytes = encode(&img, fmt).unwrap();
            for size in [
                Size::Exact([32, 40]),
                Size::Side(30),
                Size::Exact([120, 90]),
            ] {
                for c in [1, 3] {
                    let fused = decode_resized(&bytes, c, Some(size)).unwrap();
                    let op = Augmenter::new(vec![AugmentOp::Resize { size }]);
                    let full = decode(&bytes, c).unwrap();
                    let via_op = op.eval(&full).unwrap();
                    assert_eq!(
                        (fused.channels, fused.height, fused.width),
                        (via_op.channels, via_op.height, via_op.width)
                    );
                    let as_float = crate::augment::Image::from_raw(&fused);
                    assert_eq!(as_float.data, via_op.data, "{fmt:?} {size:?} {c} channels");
                }
            }
        }
    }
}
