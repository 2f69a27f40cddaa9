//! Pixel kernels behind the augmentation ops, on planar (CHW) images.
//!
//! Geometric kernels (crop, flip, shift, resize) are generic over the pixel type, so the
//! augmenter can run them on the decoded `u8` planes and convert to `f32` only when an op
//! needs floats (rotation, brightness, contrast, normalisation): resizing a 500 x 375 photo
//! to 224 x 224 before the conversion touches a quarter of the memory. Resizing is
//! fast_image_resize's SIMD convolution with a bilinear filter whose support grows with the
//! scale factor (antialiased, as PIL's and torchvision's `antialias=True` bilinear resize).
use super::Image;
pub(crate) use crate::pixel::{resize, Region};

/// The `oh x ow` window of a `c x h x w` planar image whose top-left corner is at
/// `(top, left)` (which may be negative or reach past the edges); pixels outside the image
/// are `T::default()` (0).
#[allow(clippy::too_many_arguments)]
pub(crate) fn crop<T: Copy + Default>(
    c: usize,
    h: usize,
    w: usize,
    data: &[T],
    top: i64,
    left: i64,
    oh: usize,
    ow: usize,
) -> Vec<T> {
    let mut out = vec![T::default(); c * oh * ow];
    // Output columns that map inside the source, and their source columns.
    let x0 = (-left).clamp(0, ow as i64) as usize;
    let x1 = (w as i64 - left).clamp(0, ow as i64) as usize;
    if x0 >= x1 {
        return out;
    }
    let sx0 = (x0 as i64 + left) as usize;
    for ch in 0..c {
        let src = &data[ch * h * w..(ch + 1) * h * w];
        let dst = &mut out[ch * oh * ow..(ch + 1) * oh * ow];
        for y in 0..oh {
            let sy = y as i64 + top;
            if sy < 0 || sy >= h as i64 {
                continue;
            }
            let s = sy as usize * w + sx0;
            dst[y * ow + x0..y * ow + x1].copy_from_slice(&src[s..s + (x1 - x0)]);
        }
    }
    out
}

/// Mirrors every row in place.
pub(crate) fn hflip<T>(w: usize, data: &mut [T]) {
    for row in data.chunks_mut(w.max(1)) {
        row.reverse();
    }
}

/// Translates by `(dx, dy)` pixels (right, down); uncovered pixels become 0.
pub(crate) fn shift<T: Copy + Default>(
    c: usize,
    h: usize,
    w: usize,
    data: &[T],
    dx: i64,
    dy: i64,
) -> Vec<T> {
    crop(c, h, w, data, -dy, -dx, h, w)
}

/// Rotates about the centre by `radians` (counter-clockwise on screen for positive angles),
/// bilinear; pixels that come from outside the image are 0.
///
/// Each output pixel maps back to a source point, computed once for all channels. Points
/// whose four neighbours are all inside the image (almost all of them for the small angles of
/// augmentation) take a path without per-neighbour tests; points within one pixel of the
/// border weigh only the neighbours inside; points farther out stay 0.
pub(crate) fn rotate(img: &mut Image, radians: f64) {
    let (c, h, w) = (img.channels, img.height, img.width);
    if h == 0 || w == 0 {
        return;
    }
    let (s, co) = (radians.sin() as f32, radians.cos() as f32);
    let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
    let plane = h * w;
    let planes: Vec<&[f32]> = img.data.chunks_exact(plane).collect();
    let mut out = vec![0.0f32; c * plane];
    let (wf, hf) = (w as f32, h as f32);
    let (wi, hi) = (w as isize, h as isize);
    for y in 0..h {
        let oy = y as f32 - cy;
        // Source point of (x, y): affine in x.
        let bx = s * oy + cx;
        let by = co * oy + cy;
        for x in 0..w {
            let ox = x as f32 - cx;
            let sx = co * ox + bx;
            let sy = -s * ox + by;
            if !(sx > -1.0 && sy > -1.0 && sx < wf && sy < hf) {
                continue;
            }
            // sx + 1 > 0, so truncation is floor.
            let x0 = (sx + 1.0) as isize - 1;
            let y0 = (sy + 1.0) as isize - 1;
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            let k = [
                (1.0 - fx) * (1.0 - fy),
                fx * (1.0 - fy),
                (1.0 - fx) * fy,
                fx * fy,
            ];
            let o = y * w + x;
            if x0 >= 0 && y0 >= 0 && x0 + 1 < wi && y0 + 1 < hi {
                let i = y0 as usize * w + x0 as usize;
                for (ch, p) in planes.iter().enumerate() {
                    if let (Some(r0), Some(r1)) = (p.get(i..i + 2), p.get(i + w..i + w + 2)) {
                        out[ch * plane + o] =
                            r0[0] * k[0] + r0[1] * k[1] + r1[0] * k[2] + r1[1] * k[3];
                    }
                }
            } else {
                let corners = [(y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)];
                for (ch, p) in planes.iter().enumerate() {
                    let mut v = 0.0;
                    for (&(yy, xx), &kk) in corners.iter().zip(&k) {
                        if yy >= 0 && xx >= 0 && yy < hi && xx < wi {
                            v += p[yy as usize * w + xx as usize] * kk;
                        }
                    }
                    out[ch * plane + o] = v;
                }
            }
        }
    }
    img.data = out;
}

/// torchvision's `RandomResizedCrop.get_params`: up to 10 tries at a region of
/// `area * U(scale)` pixels and aspect ratio `exp(U(log ratio))` that fits, placed uniformly;
/// otherwise the central crop clamped to the ratio range. Integer pixel regions.
pub(crate) fn random_region(
    h: usize,
    w: usize,
    scale: [f64; 2],
    ratio: [f64; 2],
    rng: &mut crate::rng::Rng,
) -> Region {
    let area = (h * w) as f64;
    let (lr0, lr1) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target = area * rng.uniform(scale[0], scale[1]);
        let aspect = rng.uniform(lr0, lr1).exp();
        let cw = (target * aspect).sqrt().round() as usize;
        let ch = (target / aspect).sqrt().round() as usize;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            let top = rng.below((h - ch + 1) as u64) as f64;
            let left = rng.below((w - cw + 1) as u64) as f64;
            return (top, left, ch as f64, cw as f64);
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < ratio[0] {
        (((w as f64) / ratio[0]).round().max(1.0) as usize, w)
    } else if in_ratio > ratio[1] {
        (h, ((h as f64) * ratio[1]).round().max(1.0) as usize)
    } else {
        (h, w)
    };
    central_region(h, w, ch.min(h), cw.min(w))
}

/// The `ch x cw` region centred in an `h x w` image (the extra pixel of an odd difference
/// goes to the bottom / right).
pub(crate) fn central_region(h: usize, w: usize, ch: usize, cw: usize) -> Region {
    (
        ((h - ch) / 2) as f64,
        ((w - cw) / 2) as f64,
        ch as f64,
        cw as f64,
    )
}

/// The largest centred region of an `h x w` image with the aspect ratio of `oh x ow`:
/// `random_resized_crop`'s deterministic (evaluation) form.
pub(crate) fn aspect_region(h: usize, w: usize, oh: usize, ow: usize) -> Region {
    let target = ow as f64 / oh as f64;
    let (ch, cw) = if (w as f64 / h as f64) > target {
        (h, ((h as f64 * target).round() as usize).clamp(1, w))
    } else {
        (((w as f64 / target).round() as usize).clamp(1, h), w)
    };
    central_region(h, w, ch, cw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_pads_outside_and_copies_inside() {
        // 1 x 2 x 3 image 1..6
        let d = [1u8, 2, 3, 4, 5, 6];
        assert_eq!(crop(1, 2, 3, &d, 0, 1, 2, 2), vec![2, 3, 5, 6]);
        assert_eq!(crop(1, 2, 3, &d, -1, -1, 2, 2), vec![0, 0, 0, 1]);
        assert_eq!(crop(1, 2, 3, &d, 5, 5, 1, 1), vec![0]);
        assert_eq!(shift(1, 2, 3, &d, 1, 0), vec![0, 1, 2, 0, 4, 5]);
    }

    #[test]
    fn resize_of_a_constant_image_is_constant_and_identity_is_exact() {
        let d = vec![77u8; 3 * 30 * 40];
        let r = resize(3, 30, 40, &d, (0.0, 0.0, 30.0, 40.0), 7, 9).unwrap();
        assert_eq!(r.len(), 3 * 7 * 9);
        assert!(r.iter().all(|&v| v == 77), "{r:?}");
        let f: Vec<f32> = (0..2 * 5 * 6).map(|i| i as f32 / 60.0).collect();
        let same = resize(2, 5, 6, &f, (0.0, 0.0, 5.0, 6.0), 5, 6).unwrap();
        assert_eq!(same, f);
        let up = resize(2, 5, 6, &f, (1.0, 1.0, 3.0, 3.0), 12, 12).unwrap();
        assert_eq!(up.len(), 2 * 144);
        assert!(up.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn regions_stay_inside_the_image() {
        let mut rng = crate::rng::Rng::new(5);
        for (h, w) in [(375, 500), (10, 1000), (1000, 10), (1, 1)] {
            for _ in 0..200 {
                let (t, l, rh, rw) = random_region(h, w, [0.08, 1.0], [0.75, 4.0 / 3.0], &mut rng);
                assert!(t >= 0.0 && l >= 0.0 && rh >= 1.0 && rw >= 1.0);
                assert!(
                    t + rh <= h as f64 && l + rw <= w as f64,
                    "{h}x{w}: {t} {l} {rh} {rw}"
                );
            }
            let (t, l, rh, rw) = aspect_region(h, w, 224, 224);
            assert!(t + rh <= h as f64 && l + rw <= w as f64);
        }
        assert_eq!(aspect_region(375, 500, 224, 224), (0.0, 62.0, 375.0, 375.0));
    }
}
