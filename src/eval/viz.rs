//! `saln-pipe viz`: one super-batch as the selector sees it, in two pictures (the kind the
//! paper's Figures 7 and 8 show).
//!
//! - `superbatch-N-images.png`: the super-batch's images (augmented, as the extractor
//!   receives them; each image stretched to its own min..max for display), the kept ones in
//!   a red frame.
//! - `superbatch-N-spectrum.png`: every sample at `(v2, v3)`, the eigenvectors of the
//!   second- and third-smallest eigenvalues of `L = D - S` (dense `eigh`, signs made
//!   canonical), coloured by label; the kept ones ringed.
//!
//! The super-batch is rebuilt exactly as the loader stage makes it
//! ([`crate::batch::superbatch_at`]: same order, same augmentation streams), its features
//! come from the pipeline's extractor and the kept set from the pipeline's selection
//! settings, so the picture shows what `saln-pipe run` selects from super-batch `N`.
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use tch::{Kind, Tensor};

use super::plot::{out, write_png};
use crate::augment::Augmenter;
use crate::batch::{superbatch_at, SuperBatch};
use crate::config::PipelineConfig;
use crate::error::{Error, Result};
use crate::extract::Extractor;
use crate::select::spectral::{self, WeightMapping};
use crate::select::{SelectError, Selector};
use crate::source;

/// What [`viz`] wrote.
#[derive(Debug, Clone)]
pub struct VizOutput {
    /// The image grid.
    pub images: PathBuf,
    /// The spectral scatter.
    pub spectrum: PathBuf,
    /// The super-batch's epoch (0-based).
    pub epoch: usize,
    /// Samples in it.
    pub samples: usize,
    /// Samples kept.
    pub kept: usize,
    /// Second-smallest eigenvalue of `L`.
    pub lambda2: f64,
    /// Third-smallest.
    pub lambda3: f64,
}

/// `v2`, `v3` and `lambda2`, `lambda3` of the cosine graph of `features` (`[n, d]`,
/// `n >= 3`) by dense `eigh`, each vector canonically signed.
pub fn embedding(
    features: &Tensor,
    mapping: WeightMapping,
    knn_k: usize,
) -> std::result::Result<(Vec<f64>, Vec<f64>, f64, f64), SelectError> {
    let t = SelectError::from;
    let u = spectral::normalized_rows(features)?;
    let n = u.size()[0];
    if n < 3 {
        return Err(SelectError::Other(format!(
            "a 2-d embedding needs at least 3 samples, got {n}"
        )));
    }
    let l = spectral::similarity(&u, mapping, knn_k)
        .and_then(|s| spectral::laplacian(&s))
        .map_err(t)?;
    let (values, vectors) = l.f_linalg_eigh("L").map_err(t)?;
    let column = |k: i64| -> std::result::Result<Vec<f64>, SelectError> {
        let c = vectors
            .f_select(1, k)
            .and_then(|c| c.f_to_kind(Kind::Double))
            .and_then(|c| c.f_contiguous())
            .map_err(t)?;
        let mut v = Vec::<f64>::try_from(&c).map_err(t)?;
        spectral::canonical_sign(&mut v);
        Ok(v)
    };
    let lambda = |k: i64| values.f_double_value(&[k]).map_err(t);
    Ok((column(1)?, column(2)?, lambda(1)?, lambda(2)?))
}

/// Draws super-batch `seq` of the pipeline `cfg` into `out_dir`.
pub fn viz(cfg: &PipelineConfig, seq: u64, out_dir: &Path) -> Result<VizOutput> {
    let mut issues = cfg.validate();
    issues.extend(cfg.check_resources());
    if !issues.is_empty() {
        return Err(Error::ConfigInvalid {
            path: "<config>".into(),
            issues,
        });
    }
    if cfg.selection.policy.needs_learner() {
        return Err(Error::config(
            "selection.policy",
            "viz shows a selection made without a learner (saln, uniform or none): the \
             loss-based policies need the weights of a training run",
        ));
    }
    crate::stage::set_torch_threads(cfg.torch_threads);
    let data = source::open(&cfg.source)?;
    let split = cfg.split(data.train.len())?;
    let aug = Augmenter::new(cfg.augment.ops.clone());
    let plan = cfg.loader_plan(split.learner, cfg.trainer.epochs)?;
    let Some((sb, _skipped)) = superbatch_at(data.train.as_ref(), &aug, &plan, seq)? else {
        let total = crate::batch::superbatches_per_epoch(&plan) * plan.epochs;
        return Err(Error::config(
            "--superbatch",
            format!("is {seq}, but the run has {total} super-batches (0..{total})"),
        ));
    };
    let n = sb.len();
    let (c, h, w) = sb.shape;
    let device = cfg.device();
    let extractor = Extractor::build(
        &cfg.extractor,
        cfg.device(),
        &cfg.augment.ops,
        sb.shape,
        data.train.num_classes(),
    )?;
    let images = Tensor::f_from_slice(&sb.pixels)?
        .f_view([n as i64, c as i64, h as i64, w as i64])?
        .f_to_device(device)?;
    let features = extractor.features(&images)?;
    let selection =
        Selector::new(cfg.selector_config()).select(n, Some(&features), seq, sb.progress)?;
    let (v2, v3, lambda2, lambda3) =
        embedding(&features, cfg.selection.weights, cfg.selection.knn_k)
            .map_err(|e| e.at(seq).with_sample_ids(&sb.ids))?;
    let mut kept = vec![false; n];
    for &i in &selection.kept {
        kept[i] = true;
    }
    let policy = super::GridPolicy {
        policy: cfg.selection.policy,
        rule: (cfg.selection.policy == crate::select::Policy::Saln).then_some(cfg.selection.rule),
    };
    let images_path = out_dir.join(format!("superbatch-{seq}-images.png"));
    let title = [
        format!("super-batch {seq} (epoch {})", sb.epoch + 1),
        format!(
            "{} of {n} kept by {policy} (red frames)",
            selection.kept.len()
        ),
    ];
    draw_images(&images_path, &sb, &kept, &title)?;
    let spectrum_path = out_dir.join(format!("superbatch-{seq}-spectrum.png"));
    draw_spectrum(
        &spectrum_path,
        &v2,
        &v3,
        &sb.labels,
        &kept,
        &format!(
            "super-batch {seq}: samples on (v2, v3) of L = D - S (lambda2 = {lambda2:.3}, lambda3 = {lambda3:.3}); ringed: kept by {policy}"
        ),
    )?;
    Ok(VizOutput {
        images: images_path,
        spectrum: spectrum_path,
        epoch: sb.epoch,
        samples: n,
        kept: selection.kept.len(),
        lambda2,
        lambda3,
    })
}

const KEPT: RGBColor = RGBColor(215, 38, 39);

/// Ten label colours (Tableau's), repeated beyond ten classes.
fn label_color(label: i64) -> RGBColor {
    const C: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    C[label.rem_euclid(10) as usize]
}

fn draw_images(path: &Path, sb: &SuperBatch, kept: &[bool], title: &[String]) -> Result<()> {
    let n = sb.len();
    let (c, h, w) = sb.shape;
    let scale = (64 / h.max(w)).max(1);
    let (frame, gap) = (3usize, 2usize);
    let cell_w = w * scale + 2 * frame + gap;
    let cell_h = h * scale + 2 * frame + gap;
    let cols = (n as f64).sqrt().ceil().max(1.0) as usize;
    let rows = n.div_ceil(cols);
    let top = 8 + 22 * title.len();
    let size = (
        (cols * cell_w + gap) as u32,
        (top + rows * cell_h + gap) as u32,
    );
    write_png(path, size, |root| {
        for (k, line) in title.iter().enumerate() {
            root.draw(&Text::new(
                line.clone(),
                (8, 6 + 22 * k as i32),
                ("sans-serif", 17),
            ))
            .map_err(|e| out(path, e))?;
        }
        let per = c * h * w;
        for (i, (img, &is_kept)) in sb.pixels.chunks_exact(per).zip(kept).enumerate() {
            let (lo, hi) = img
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, u), &x| {
                    (l.min(x), u.max(x))
                });
            let span = if hi > lo { hi - lo } else { 1.0 };
            let x0 = gap + (i % cols) * cell_w;
            let y0 = top + gap + (i / cols) * cell_h;
            if is_kept {
                root.draw(&Rectangle::new(
                    [
                        (x0 as i32, y0 as i32),
                        (
                            (x0 + w * scale + 2 * frame) as i32,
                            (y0 + h * scale + 2 * frame) as i32,
                        ),
                    ],
                    KEPT.filled(),
                ))
                .map_err(|e| out(path, e))?;
            }
            for y in 0..h * scale {
                for x in 0..w * scale {
                    let at = |ch: usize| {
                        let v = (img[ch * h * w + (y / scale) * w + x / scale] - lo) / span;
                        (v.clamp(0.0, 1.0) * 255.0) as u8
                    };
                    let color = if c >= 3 {
                        RGBColor(at(0), at(1), at(2))
                    } else {
                        let g = at(0);
                        RGBColor(g, g, g)
                    };
                    root.draw_pixel(((x0 + frame + x) as i32, (y0 + frame + y) as i32), &color)
                        .map_err(|e| out(path, e))?;
                }
            }
        }
        Ok(())
    })
}

fn draw_spectrum(
    path: &Path,
    v2: &[f64],
    v3: &[f64],
    labels: &[i64],
    kept: &[bool],
    title: &str,
) -> Result<()> {
    let range = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, u), &x| {
                (l.min(x), u.max(x))
            });
        let pad = ((hi - lo) * 0.05).max(1e-6);
        (lo - pad)..(hi + pad)
    };
    write_png(path, (1000, 860), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 16))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(range(v2), range(v3))
            .map_err(|e| out(path, e))?;
        chart
            .configure_mesh()
            .x_desc("v2 (Fiedler vector)")
            .y_desc("v3")
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(|e| out(path, e))?;
        let mut classes: Vec<i64> = labels.to_vec();
        classes.sort_unstable();
        classes.dedup();
        for &class in &classes {
            let color = label_color(class);
            let pts: Vec<(f64, f64)> = (0..v2.len())
                .filter(|&i| labels[i] == class)
                .map(|i| (v2[i], v3[i]))
                .collect();
            chart
                .draw_series(
                    pts.iter()
                        .map(|&p| Circle::new(p, 4, color.mix(0.8).filled())),
                )
                .map_err(|e| out(path, e))?
                .label(format!("class {class}"))
                .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
        }
        chart
            .draw_series(
                (0..v2.len())
                    .filter(|&i| kept[i])
                    .map(|i| Circle::new((v2[i], v3[i]), 7, BLACK.stroke_width(2))),
            )
            .map_err(|e| out(path, e))?
            .label("kept")
            .legend(|(x, y)| Circle::new((x + 8, y), 6, BLACK.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(|e| out(path, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedding_separates_two_clusters_on_v2() {
        // Two tight clusters of directions: v2 must have one sign per cluster.
        let mut rows = Vec::new();
        for i in 0..12 {
            let e = 0.01 * i as f64;
            if i < 6 {
                rows.extend_from_slice(&[1.0, e, 0.0]);
            } else {
                rows.extend_from_slice(&[e, 1.0, 0.2]);
            }
        }
        let f = Tensor::from_slice(&rows).view([12, 3]);
        let (v2, v3, l2, l3) = embedding(&f, WeightMapping::Clip, 10).unwrap();
        assert_eq!((v2.len(), v3.len()), (12, 12));
        let first = v2[0].signum();
        assert!(v2[..6].iter().all(|x| x.signum() == first));
        assert!(v2[6..].iter().all(|x| x.signum() == -first));
        assert!(l2 <= l3);
        let e = embedding(&f.narrow(0, 0, 2), WeightMapping::Clip, 10).unwrap_err();
        assert!(e.to_string().contains("at least 3"), "{e}");
    }
}
