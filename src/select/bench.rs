//! `saln-pipe bench selection`: the dense and the iterative Fiedler solvers on the same
//! synthetic super-batches, timed in one process, with their agreement.
//!
//! The features are a few Gaussian clusters ([`clustered_features`]) so that the spectrum
//! has a real gap, as the features of a trained extractor do; on structureless noise every
//! Fiedler vector is unstable and agreement means nothing.
//!
//! Each timing is the whole [`spectral::fiedler`] call (normalisation, graph, solver,
//! copying the vector to the host), the median of `repeats` runs after one untimed warm-up
//! on the device. `dense` is skipped above `dense_max` samples (its `O(n^3)` takes minutes);
//! `lanczos` with weights that need the `n x n` matrix (`clip`, `knn`) is skipped above
//! `matrix_max`.
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::spectral::{self, LaplacianKind, Solver, SpectralConfig, Spectrum, WeightMapping};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Where the features live and the solvers run.
    pub device: Device,
    /// Timed runs per cell (the median is reported).
    pub repeats: usize,
    /// Super-batch sizes `B`.
    pub sizes: Vec<usize>,
    /// Feature dimensions `d`.
    pub dims: Vec<usize>,
    /// Weight mappings.
    pub weights: Vec<WeightMapping>,
    /// Neighbours for `knn`.
    pub knn_k: usize,
    /// Laplacian.
    pub laplacian: LaplacianKind,
    /// Largest `B` for the dense solver.
    pub dense_max: usize,
    /// Largest `B` for the iterative solver with matrix-forming weights (`clip`, `knn`).
    pub matrix_max: usize,
    /// Clusters in the synthetic features.
    pub clusters: usize,
    /// Seed of the features and of the iterative solver.
    pub seed: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            device: Device::Cpu,
            repeats: 3,
            sizes: vec![256, 1024, 2048, 4096, 16384],
            dims: vec![128, 2048],
            weights: vec![WeightMapping::Shift, WeightMapping::Clip],
            knn_k: 10,
            laplacian: LaplacianKind::Unnormalized,
            dense_max: 4096,
            matrix_max: 4096,
            clusters: 4,
            seed: 0,
        }
    }
}

/// One cell of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRow {
    /// Super-batch size.
    pub n: usize,
    /// Feature dimension.
    pub d: usize,
    /// Weight mapping.
    pub weights: WeightMapping,
    /// Median milliseconds of the dense solver (`None`: skipped).
    pub dense_ms: Option<f64>,
    /// Median milliseconds of the iterative solver (`None`: skipped).
    pub lanczos_ms: Option<f64>,
    /// Operator products the iterative solver used.
    pub matvecs: usize,
    /// `(lambda3 - lambda2) / c`: the relative gap (from the iterative solver when it ran).
    pub gap: f64,
    /// `|<v, v_dense>|` when both ran.
    pub dot: Option<f64>,
    /// Largest relative error of `lambda2`, `lambda3` against dense, when both ran.
    pub eig_rel_err: Option<f64>,
    /// Either solver called the spectrum degenerate (agreement then means nothing).
    pub degenerate: bool,
}

impl BenchRow {
    /// `dense_ms / lanczos_ms` when both ran.
    pub fn speedup(&self) -> Option<f64> {
        Some(self.dense_ms? / self.lanczos_ms?)
    }
}

/// `n` feature vectors of dimension `d` (`[n, d]` float32 on `device`): `clusters` Gaussian
/// clusters with standard-normal centres and unit noise, sample `i` in cluster
/// `i % clusters`. A function of `seed` alone.
pub fn clustered_features(
    n: usize,
    d: usize,
    clusters: usize,
    seed: u64,
    device: Device,
) -> Result<Tensor> {
    let k = clusters.max(1) as i64;
    let mut rng = Rng::new(seed);
    let mut normal = |len: usize| -> Result<Tensor> {
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            let (u1, u2) = (1.0 - rng.next_f64(), rng.next_f64());
            let r = (-2.0 * u1.ln()).sqrt();
            let a = std::f64::consts::TAU * u2;
            v.push((r * a.cos()) as f32);
            v.push((r * a.sin()) as f32);
        }
        v.truncate(len);
        Ok(Tensor::f_from_slice(&v)?)
    };
    let centres = normal(k as usize * d)?.f_view([k, d as i64])?;
    let labels = Tensor::f_arange(n as i64, (Kind::Int64, Device::Cpu))?.f_remainder(k)?;
    let x = centres
        .f_index_select(0, &labels)?
        .f_add(&normal(n * d)?.f_view([n as i64, d as i64])?)?;
    Ok(x.f_to_device(device)?)
}

fn timed(
    features: &Tensor,
    cfg: &SpectralConfig,
    seed: u64,
    repeats: usize,
) -> Result<(f64, Spectrum)> {
    let mut times = Vec::with_capacity(repeats);
    let mut last = None;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let s = spectral::fiedler(features, cfg, Rng::new(seed)).map_err(|e| e.at(0))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        last = Some(s);
    }
    times.sort_by(f64::total_cmp);
    let spectrum = last.ok_or_else(|| Error::Selection {
        superbatch: 0,
        message: "no run".into(),
    })?;
    Ok((times[times.len() / 2], spectrum))
}

/// `|a - b| / max(|b|, 1e-12 c)`.
fn rel_err(a: f64, b: f64, scale: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12 * scale).max(f64::MIN_POSITIVE)
}

/// Runs every cell of `opts`, calling `on_row` as each finishes.
pub fn run(opts: &BenchOptions, on_row: &mut dyn FnMut(&BenchRow)) -> Result<Vec<BenchRow>> {
    let base = SpectralConfig {
        knn_k: opts.knn_k,
        laplacian: opts.laplacian,
        ..SpectralConfig::default()
    };
    // Warm-up: the first libtorch call on a device pays for its initialisation.
    let warm = clustered_features(256, 64, opts.clusters, opts.seed, opts.device)?;
    for solver in [Solver::Dense, Solver::Lanczos] {
        let cfg = SpectralConfig { solver, ..base };
        timed(&warm, &cfg, opts.seed, 1)?;
    }
    let mut rows = Vec::new();
    for &d in &opts.dims {
        for &n in &opts.sizes {
            let features = clustered_features(n, d, opts.clusters, opts.seed, opts.device)?;
            for &weights in &opts.weights {
                let cfg = SpectralConfig { weights, ..base };
                let dense = if n <= opts.dense_max {
                    let c = SpectralConfig {
                        solver: Solver::Dense,
                        ..cfg
                    };
                    Some(timed(&features, &c, opts.seed, opts.repeats)?)
                } else {
                    None
                };
                let matrix_free = weights == WeightMapping::Shift;
                let iterative = if matrix_free || n <= opts.matrix_max {
                    let c = SpectralConfig {
                        solver: Solver::Lanczos,
                        ..cfg
                    };
                    Some(timed(&features, &c, opts.seed, opts.repeats)?)
                } else {
                    None
                };
                let reference = iterative.as_ref().or(dense.as_ref()).map(|x| &x.1);
                let mut row = BenchRow {
                    n,
                    d,
                    weights,
                    dense_ms: dense.as_ref().map(|x| x.0),
                    lanczos_ms: iterative.as_ref().map(|x| x.0),
                    matvecs: iterative.as_ref().map_or(0, |x| x.1.matvecs),
                    gap: reference.map_or(0.0, |s| {
                        (s.lambda3 - s.lambda2) / s.scale.max(f64::MIN_POSITIVE)
                    }),
                    dot: None,
                    eig_rel_err: None,
                    degenerate: dense.iter().chain(&iterative).any(|x| x.1.degenerate),
                };
                if let (Some((_, a)), Some((_, b))) = (&iterative, &dense) {
                    let dot: f64 = a.vector.iter().zip(&b.vector).map(|(x, y)| x * y).sum();
                    row.dot = Some(dot.abs());
                    row.eig_rel_err = Some(
                        rel_err(a.lambda2, b.lambda2, b.scale)
                            .max(rel_err(a.lambda3, b.lambda3, b.scale)),
                    );
                }
                on_row(&row);
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

fn weights_name(w: WeightMapping) -> &'static str {
    match w {
        WeightMapping::Clip => "clip",
        WeightMapping::Shift => "shift",
        WeightMapping::Knn => "knn",
    }
}

/// The table header printed by [`format_row`].
pub fn header() -> String {
    format!(
        "{:>6} {:>5} {:>6} {:>11} {:>11} {:>8} {:>8} {:>9} {:>10} {:>10}",
        "B",
        "d",
        "w",
        "dense ms",
        "lanczos ms",
        "speedup",
        "matvecs",
        "gap/c",
        "|<v,v*>|",
        "eig relerr"
    )
}

/// One line of the table (`-` where a cell was skipped).
pub fn format_row(r: &BenchRow) -> String {
    let opt =
        |x: Option<f64>, prec: usize| x.map_or_else(|| "-".to_string(), |v| format!("{v:.prec$}"));
    let sci = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| format!("{v:.1e}"));
    format!(
        "{:>6} {:>5} {:>6} {:>11} {:>11} {:>8} {:>8} {:>9.1e} {:>10} {:>10}{}",
        r.n,
        r.d,
        weights_name(r.weights),
        opt(r.dense_ms, 1),
        opt(r.lanczos_ms, 1),
        r.speedup()
            .map_or_else(|| "-".into(), |s| format!("{s:.1}x")),
        r.matvecs,
        r.gap,
        opt(r.dot, 6),
        sci(r.eig_rel_err),
        if r.degenerate { "  (degenerate)" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_run_agrees_and_fills_every_cell() {
        let opts = BenchOptions {
            repeats: 1,
            sizes: vec![64, 200],
            dims: vec![16],
            weights: vec![WeightMapping::Shift, WeightMapping::Clip],
            dense_max: 100,
            ..BenchOptions::default()
        };
        let mut seen = 0;
        let rows = run(&opts, &mut |_| seen += 1).unwrap();
        assert_eq!(seen, 4);
        assert_eq!(rows.len(), 4);
        for r in &rows {
            assert!(r.lanczos_ms.is_some());
            assert!(!r.degenerate, "{r:?}");
            if r.n <= 100 {
                assert!(r.dot.unwrap() >= 0.999, "{r:?}");
                assert!(r.eig_rel_err.unwrap() <= 1e-4, "{r:?}");
            } else {
                assert!(r.dense_ms.is_none() && r.dot.is_none());
            }
            assert!(format_row(r).contains(&r.n.to_string()));
        }
    }

    #[test]
    fn features_depend_on_the_seed_only() {
        let a = clustered_features(10, 4, 3, 7, Device::Cpu).unwrap();
        let b = clustered_features(10, 4, 3, 7, Device::Cpu).unwrap();
        let c = clustered_features(10, 4, 3, 8, Device::Cpu).unwrap();
        assert!(a.equal(&b));
        assert!(!a.equal(&c));
    }
}
