//! SALN's spectral step: cosine graph -> Laplacian -> Fiedler vector.
//!
//! For features `F` (`[n, d]`): `u_i = f_i / |f_i|`, `S_ij = w(cos(u_i, u_j))` for `i != j`,
//! `S_ii = 0`, degrees `D = diag(sum_j S_ij)`, and a Laplacian: the paper's `L = D - S`
//! (null vector `1`) or the symmetric normalised `L_sym = I - D^-1/2 S D^-1/2` (null vector
//! `D^1/2 1`) ([`LaplacianKind`]). The Fiedler vector is the eigenvector of the
//! second-smallest eigenvalue `lambda2`.
//!
//! Raw cosine can be negative, which breaks the Laplacian's positive semi-definiteness; the
//! weight mapping makes every weight non-negative ([`WeightMapping`]).
//!
//! Two solvers ([`Solver`]), both in float64 tensor ops on the features' device:
//! - `dense`: libtorch's `linalg_eigh` of the `n x n` Laplacian, `O(n^3)`: every eigenpair,
//!   exact to rounding; fine up to n ~ 1024.
//! - `lanczos`: block Lanczos ([`super::lanczos`]) for the two pairs needed, tens of
//!   products `L X`. With `shift` weights `S = (11^T + UU^T)/2 - I`, so a product costs
//!   `O(n d)` and the `n x n` matrix is never formed.
//!
//! The sign of an eigenvector is arbitrary; saln makes the entry of largest magnitude
//! positive (ties: the lowest position), so a selection does not depend on the solver.
//!
//! Degenerate inputs have defined results (see [`fiedler`]): when `lambda3 - lambda2` is
//! below [`DEGENERATE_GAP`] times the spectrum's scale the Fiedler vector is not determined
//! by the data, and the scores are all zero.
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::lanczos::{lowest_pair, t_matmul, LanczosOptions};
use super::SelectError;
use crate::error::SampleFault;
use crate::rng::Rng;

/// How a cosine similarity becomes an edge weight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightMapping {
    /// `max(0, cos)`: dissimilar pairs get no edge.
    #[default]
    Clip,
    /// `(1 + cos) / 2`: every pair keeps an edge, rescaled to [0, 1]. The only mapping whose
    /// `lanczos` solver never forms the `n x n` matrix (products cost `O(n d)`).
    Shift,
    /// `max(0, cos)` kept only between each sample and its `k` most similar others, then
    /// symmetrised (an edge exists when either end chose the other): a sparse graph that
    /// follows local structure.
    Knn,
}

/// Which Laplacian of the similarity graph.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LaplacianKind {
    /// `L = D - S`, the paper's. Its Fiedler vector cuts the graph with few, light edges.
    #[default]
    Unnormalized,
    /// `L_sym = I - D^-1/2 S D^-1/2` (null vector `D^1/2 1`): the normalised cut, which
    /// prefers two sides of similar total degree. An isolated sample (degree 0) gets a zero
    /// row, which makes it a component of its own, as in `L`.
    Symmetric,
}

/// How the Fiedler vector is computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Solver {
    /// `dense` for super-batches of at most [`AUTO_DENSE_MAX`] samples, `lanczos` above.
    /// If `lanczos` does not converge and `n <= FALLBACK_DENSE_MAX`, `dense` recomputes it.
    #[default]
    Auto,
    /// Every eigenpair by `linalg_eigh`, `O(n^3)`.
    Dense,
    /// Block Lanczos for the two smallest pairs past the null vector.
    Lanczos,
}

impl Solver {
    /// The name used in the config and the report.
    pub fn name(self) -> &'static str {
        match self {
            Solver::Auto => "auto",
            Solver::Dense => "dense",
            Solver::Lanczos => "lanczos",
        }
    }
}

/// Largest super-batch `auto` gives to `dense` (measured with `saln-pipe bench selection`:
/// below this `lanczos` is not faster).
pub const AUTO_DENSE_MAX: usize = 128;
/// Largest super-batch `auto` recomputes with `dense` when `lanczos` did not converge.
pub const FALLBACK_DENSE_MAX: usize = 4096;
/// `lambda3 - lambda2 <= DEGENERATE_GAP * c` (`c` the spectrum's upper bound: `2 max degree`
/// for `L`, 2 for `L_sym`) means a repeated `lambda2`: the Fiedler vector is not determined
/// by the data.
pub const DEGENERATE_GAP: f64 = 1e-6;

/// The iterative solver's tolerance is at least this when its products run in float32
/// (`shift` weights on float32 features): float32 rounding, accumulated over `d` terms,
/// bounds how small a residual can get. It still gives `|<v, v_dense>| >= 0.9999` wherever
/// `lambda3 - lambda2 >= 1e-4 c`.
pub const FLOAT32_TOLERANCE: f64 = 1e-6;

/// Everything that defines the spectral step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpectralConfig {
    /// Similarity weights.
    pub weights: WeightMapping,
    /// Neighbours per sample for [`WeightMapping::Knn`] (capped at `n - 1`).
    pub knn_k: usize,
    /// Which Laplacian.
    pub laplacian: LaplacianKind,
    /// Which solver.
    pub solver: Solver,
    /// The iterative solver's settings.
    pub lanczos: LanczosOptions,
}

impl Default for SpectralConfig {
    fn default() -> Self {
        SpectralConfig {
            weights: WeightMapping::default(),
            knn_k: 10,
            laplacian: LaplacianKind::default(),
            solver: Solver::default(),
            lanczos: LanczosOptions::default(),
        }
    }
}

/// The Fiedler vector of a super-batch and the two eigenvalues around it.
#[derive(Debug, Clone, PartialEq)]
pub struct Spectrum {
    /// Canonically signed Fiedler vector, one entry per sample, unit norm; all zeros when
    /// `degenerate`.
    pub vector: Vec<f64>,
    /// Second-smallest eigenvalue of the Laplacian.
    pub lambda2: f64,
    /// Third-smallest eigenvalue (equal to `lambda2` when `n = 2`).
    pub lambda3: f64,
    /// The solver that produced it (`dense` or `lanczos`, never `auto`).
    pub solver: Solver,
    /// `lambda2` is repeated (or the graph has no edge): the Fiedler vector is not unique.
    pub degenerate: bool,
    /// `false` only when `lanczos` ran out of basis before meeting its tolerance (and no
    /// dense recomputation was allowed).
    pub converged: bool,
    /// Operator products the iterative solver used (0 for `dense`).
    pub matvecs: usize,
    /// The spectrum's upper bound `c` used for the tolerances.
    pub scale: f64,
}

/// Unit-normalised rows, `[n, d]` -> `[n, d]`, in float64 for float64 features and in
/// float32 otherwise (the extractor's features are float32; converting a super-batch of
/// 16384 x 2048 to float64 costs more than the whole iterative solve). A zero or
/// non-finite row is an error naming its position.
pub fn normalized_rows(features: &Tensor) -> Result<Tensor, SelectError> {
    let t = SelectError::from;
    let size = features.size();
    if size.len() != 2 || size[0] == 0 || size[1] == 0 {
        return Err(SelectError::Other(format!(
            "features must be [n, d] with n, d > 0, got {size:?}"
        )));
    }
    let kind = match features.kind() {
        Kind::Double => Kind::Double,
        _ => Kind::Float,
    };
    let x = features.f_to_kind(kind).map_err(t)?;
    let norms = x
        .f_linalg_norm(2.0, [1i64].as_slice(), false, None::<Kind>)
        .map_err(t)?;
    // A non-finite entry makes the norm non-finite; a zero vector has norm 0.
    let bad = norms
        .f_isfinite()
        .and_then(|f| f.f_logical_not())
        .and_then(|nf| nf.f_logical_or(&norms.f_eq(0.0)?))
        .map_err(t)?;
    if bad.f_any().and_then(|a| a.f_int64_value(&[])).map_err(t)? != 0 {
        let first = bad
            .f_nonzero()
            .and_then(|nz| nz.f_int64_value(&[0, 0]))
            .map_err(t)?;
        let norm = norms.f_double_value(&[first]).map_err(t)?;
        let what = if norm == 0.0 {
            "is all zeros"
        } else {
            "has a non-finite value (NaN or infinity)"
        };
        return Err(SelectError::Sample(SampleFault {
            position: first as usize,
            what: "feature vector",
            problem: what.into(),
        }));
    }
    x.f_div(&norms.f_unsqueeze(1).map_err(t)?).map_err(t)
}

/// Weighted similarity matrix with zero diagonal. `u`: `[n, d]` unit rows (float32 or
/// float64) -> `[n, n]` float64; the cosines are computed in `u`'s precision.
/// `knn_k` is used by [`WeightMapping::Knn`] only.
pub fn similarity(
    u: &Tensor,
    mapping: WeightMapping,
    knn_k: usize,
) -> Result<Tensor, tch::TchError> {
    let cos = u.f_matmul(&u.f_tr()?)?;
    // BLAS does not promise a symmetric U U^T (the two triangles are summed in different
    // orders); the Laplacian's rows must sum to exactly what its transpose's do.
    let mut cos = cos.f_add(&cos.f_tr()?)?;
    let _ = cos.f_mul_scalar_(0.5)?;
    let mut s = match mapping {
        WeightMapping::Clip => cos.f_clamp_min_(0.0)?,
        WeightMapping::Shift => cos.f_add_scalar_(1.0)?.f_mul_scalar_(0.5)?,
        WeightMapping::Knn => return knn_weights(&cos, knn_k)?.f_to_kind(Kind::Double),
    };
    let _ = s.f_fill_diagonal_(0.0, false)?;
    s.f_to_kind(Kind::Double)
}

/// k-nearest-neighbour weights from a cosine matrix (`[n, n]`): row `i` keeps
/// `max(0, cos_ij)` for every `j != i` at least as similar as its `k`-th most similar other
/// (`k` capped at `n - 1`; equal similarities are all kept, so the graph does not depend on
/// the order of the samples), and `S = max(A, A^T)`.
pub fn knn_weights(cos: &Tensor, k: usize) -> Result<Tensor, tch::TchError> {
    let n = cos.size()[0];
    let k = (k as i64).clamp(1, (n - 1).max(1));
    let mut c = cos.f_zeros_like()?;
    c.f_copy_(cos)?;
    // Below any cosine: a sample is never its own neighbour.
    let _ = c.f_fill_diagonal_(-3.0, false)?;
    let (vals, _) = c.f_topk(k, 1, true, false)?;
    let kth = vals.f_narrow(1, k - 1, 1)?; // [n, 1]
    let a = c
        .f_ge_tensor(&kth)?
        .f_to_kind(Kind::Double)?
        .f_mul(&c.f_clamp_min(0.0)?)?;
    a.f_maximum(&a.f_tr()?)
}

/// `L = D - S`. `[n, n]` -> `[n, n]`.
pub fn laplacian(s: &Tensor) -> Result<Tensor, tch::TchError> {
    let deg = s.f_sum_dim_intlist(1, false, Kind::Double)?;
    deg.f_diag_embed(0, -2, -1)?.f_sub(s)
}

/// Degree below which a sample counts as isolated (weights are in `[0, 1]`).
const ISOLATED: f64 = 1e-12;

/// `1 / sqrt(deg)` where `deg > 0`, else 0; and the mask `deg > 0`. `deg`: `[n]`.
fn inv_sqrt_degrees(deg: &Tensor) -> Result<(Tensor, Tensor), tch::TchError> {
    let mask = deg.f_gt(ISOLATED)?.f_to_kind(Kind::Double)?;
    let safe = deg.f_clamp_min(ISOLATED)?;
    Ok((safe.f_rsqrt()?.f_mul(&mask)?, mask))
}

/// `L_sym = I - D^-1/2 S D^-1/2`, with a zero row and column for an isolated sample
/// (degree 0). `[n, n]` -> `[n, n]`.
pub fn normalized_laplacian(s: &Tensor) -> Result<Tensor, tch::TchError> {
    let deg = s.f_sum_dim_intlist(1, false, Kind::Double)?;
    let (dinv, mask) = inv_sqrt_degrees(&deg)?;
    let scaled = s
        .f_mul(&dinv.f_unsqueeze(1)?)?
        .f_mul(&dinv.f_unsqueeze(0)?)?;
    mask.f_diag_embed(0, -2, -1)?.f_sub(&scaled)
}

/// Two magnitudes closer than this count as equal in [`canonical_sign`] (entries of a unit
/// vector; rounding, float32 products included, makes exact ties differ by up to ~1e-7).
pub const SIGN_TIE: f64 = 1e-6;

/// Makes the entry of largest magnitude positive; magnitudes within [`SIGN_TIE`] of the
/// largest count as tied, and the lowest position among them decides.
///
/// ```
/// let mut v = vec![0.1, -0.7, 0.3];
/// saln::select::spectral::canonical_sign(&mut v);
/// assert_eq!(v, vec![-0.1, 0.7, -0.3]);
/// let mut w = vec![-0.5, 0.5 + 1e-15];
/// saln::select::spectral::canonical_sign(&mut w);
/// assert_eq!(w, vec![0.5, -0.5 - 1e-15]);
/// ```
pub fn canonical_sign(v: &mut [f64]) {
    let max = v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let first = v.iter().position(|x| x.abs() >= max - SIGN_TIE);
    if first.is_some_and(|i| v[i] < 0.0) {
        v.iter_mut().for_each(|x| *x = -*x);
    }
}

/// The Laplacian of `cfg` in two parts, `L = diag(diag) - off`, and the degrees.
/// `u`: `[n, d]` unit rows -> (`off` `[n, n]`, `diag` `[n, 1]`, degrees `[n]`), float64.
/// For `L`, `off = S` and `diag` the degrees; for `L_sym`, `off = D^-1/2 S D^-1/2` and
/// `diag` 1 (0 for an isolated sample). Kept apart so a product needs no `n x n` `L`.
fn laplacian_parts(
    u: &Tensor,
    cfg: &SpectralConfig,
) -> Result<(Tensor, Tensor, Tensor), tch::TchError> {
    let mut s = similarity(u, cfg.weights, cfg.knn_k)?;
    let deg = s.f_sum_dim_intlist(1, false, Kind::Double)?;
    let (off, diag) = match cfg.laplacian {
        LaplacianKind::Unnormalized => (s, deg.f_unsqueeze(1)?),
        LaplacianKind::Symmetric => {
            let (dinv, mask) = inv_sqrt_degrees(&deg)?;
            let _ = s
                .f_mul_(&dinv.f_unsqueeze(1)?)?
                .f_mul_(&dinv.f_unsqueeze(0)?)?;
            (s, mask.f_unsqueeze(1)?)
        }
    };
    Ok((off, diag, deg))
}

/// The Laplacian of `cfg` as one `[n, n]` float64 matrix.
fn laplacian_matrix(u: &Tensor, cfg: &SpectralConfig) -> Result<Tensor, tch::TchError> {
    let (mut off, diag, _) = laplacian_parts(u, cfg)?;
    let l = off.f_neg_()?;
    let _ = l.f_diagonal(0, 0, 1)?.f_add_(&diag.f_squeeze_dim(1)?)?;
    Ok(l)
}

/// How the Laplacian is applied.
enum Op {
    /// `L = diag(diag) - off` (see [`laplacian_parts`]).
    Matrix { off: Tensor, diag: Tensor },
    /// `shift` weights without the matrix: `u` `[n, d]`, `deg` `[n, 1]`; for `L_sym` also
    /// `D^-1/2` and the non-isolated mask, both `[n, 1]`.
    Shift {
        u: Tensor,
        deg: Tensor,
        sym: Option<(Tensor, Tensor)>,
    },
}

/// A super-batch's graph, ready for a solver.
struct Graph {
    op: Op,
    /// Unit null vector `[n, 1]`.
    null: Tensor,
    /// Upper bound of the spectrum.
    scale: f64,
    /// Every weight is zero.
    no_edges: bool,
}

impl Graph {
    /// `matrix_free`: build the `shift` operator without the `n x n` matrix.
    fn build(u: &Tensor, cfg: &SpectralConfig, matrix_free: bool) -> Result<Graph, tch::TchError> {
        let n = u.size()[0];
        let (op, deg) = if matrix_free && cfg.weights == WeightMapping::Shift {
            // S = (11^T + UU^T)/2 - I, so deg = (n + U (U^T 1))/2 - 1.
            let s1 = u.f_sum_dim_intlist(0, true, u.kind())?; // [1, d]
            let deg = u
                .f_matmul(&s1.f_tr()?)?
                .f_to_kind(Kind::Double)?
                .f_add_scalar(n as f64)?
                .f_mul_scalar(0.5)?
                .f_sub_scalar(1.0)?
                .f_clamp_min(0.0)?; // [n, 1]
            let sym = match cfg.laplacian {
                LaplacianKind::Unnormalized => None,
                LaplacianKind::Symmetric => {
                    let (dinv, mask) = inv_sqrt_degrees(&deg)?;
                    Some((dinv, mask))
                }
            };
            let op = Op::Shift {
                u: u.shallow_clone(),
                deg: deg.shallow_clone(),
                sym,
            };
            (op, deg.f_squeeze_dim(1)?)
        } else {
            let (off, diag, deg) = laplacian_parts(u, cfg)?;
            (Op::Matrix { off, diag }, deg)
        };
        let max_deg = deg.f_max()?.f_double_value(&[])?;
        let (null, scale) = match cfg.laplacian {
            LaplacianKind::Unnormalized => (
                Tensor::f_ones([n, 1], (Kind::Double, u.device()))?
                    .f_div_scalar((n as f64).sqrt())?,
                2.0 * max_deg,
            ),
            LaplacianKind::Symmetric => {
                let h = deg.f_clamp_min(0.0)?.f_sqrt()?.f_unsqueeze(1)?;
                let norm = h.f_norm()?.f_double_value(&[])?;
                (h.f_div_scalar(norm.max(f64::MIN_POSITIVE))?, 2.0)
            }
        };
        Ok(Graph {
            op,
            null,
            scale,
            no_edges: max_deg <= ISOLATED,
        })
    }

    /// Whether products run in float32 (`shift` without the matrix, float32 features).
    fn single_precision(&self) -> bool {
        matches!(&self.op, Op::Shift { u, .. } if u.kind() == Kind::Float)
    }

    /// `L X`. `x`: `[n, k]` f64 -> `[n, k]` f64.
    fn apply(&self, x: &Tensor) -> Result<Tensor, tch::TchError> {
        match &self.op {
            Op::Matrix { off, diag } => x.f_mul(diag)?.f_sub(&off.f_matmul(x)?),
            Op::Shift { u, deg, sym: None } => {
                // L X = (deg + 1) X - (1 1^T X + U U^T X) / 2
                let low = x
                    .f_sum_dim_intlist(0, true, Kind::Double)?
                    .f_add(&uut(u, x)?)?
                    .f_mul_scalar(0.5)?;
                x.f_mul(&deg.f_add_scalar(1.0)?)?.f_sub(&low)
            }
            Op::Shift {
                u,
                sym: Some((dinv, mask)),
                ..
            } => {
                // L_sym X = mask X - D^-1/2 S D^-1/2 X, S Y = (1 1^T Y + U U^T Y)/2 - Y
                let y = x.f_mul(dinv)?;
                let sy = y
                    .f_sum_dim_intlist(0, true, Kind::Double)?
                    .f_add(&uut(u, &y)?)?
                    .f_mul_scalar(0.5)?
                    .f_sub(&y)?;
                x.f_mul(mask)?.f_sub(&sy.f_mul(dinv)?)
            }
        }
    }
}

/// `U U^T X` in `u`'s precision (float32 for the extractor's features: half the memory
/// traffic of float64, which is what bounds this product), returned as float64.
/// `u`: `[n, d]`, `x`: `[n, k]` float64 -> `[n, k]` float64.
fn uut(u: &Tensor, x: &Tensor) -> Result<Tensor, tch::TchError> {
    let xk = x.f_to_kind(u.kind())?;
    u.f_matmul(&t_matmul(u, &xk)?)?.f_to_kind(Kind::Double)
}

/// The solver that runs: `auto` by size, and `dense` for `n <= 2` whatever was asked
/// (there is nothing to iterate on).
fn resolve(solver: Solver, n: usize) -> Solver {
    match solver {
        _ if n <= 2 => Solver::Dense,
        Solver::Auto if n <= AUTO_DENSE_MAX => Solver::Dense,
        Solver::Auto => Solver::Lanczos,
        s => s,
    }
}

/// `(lambda2, lambda3, vector [n] on the device)` by `linalg_eigh` on the complement of
/// the null vector `z`, like the iterative solver.
///
/// Restricting to `z`'s complement matters when the null space has more than one dimension
/// (an isolated sample, two components): `eigh` of `L` itself may return any vector of that
/// space, while the Fiedler vector is the one orthogonal to `z`. The Householder reflection
/// `H = I - 2 w w^T` maps `e_1` to `+-z`, so the columns `2..n` of `H` are an orthonormal
/// basis of the complement, and `H L H` (a rank-2 update of `L`, `O(n^2)`) without its first
/// row and column is `L` in that basis.
fn dense(
    graph: &Graph,
    u: &Tensor,
    cfg: &SpectralConfig,
) -> Result<(f64, f64, Tensor), tch::TchError> {
    let l = match &graph.op {
        Op::Matrix { off, diag } => {
            let l = off.f_neg()?;
            let _ = l.f_diagonal(0, 0, 1)?.f_add_(&diag.f_squeeze_dim(1)?)?;
            l
        }
        Op::Shift { .. } => laplacian_matrix(u, cfg)?,
    };
    let n = l.size()[0];
    let z = graph.null.f_squeeze_dim(1)?; // [n]
    let z0 = z.f_double_value(&[0])?;
    let e1 = Tensor::f_zeros([n], (Kind::Double, l.device()))?;
    let _ = e1.f_get(0)?.f_fill_(if z0 < 0.0 { -1.0 } else { 1.0 })?;
    let w = z.f_add(&e1)?;
    let w = w.f_div_scalar(w.f_norm()?.f_double_value(&[])?)?;
    // H L H = L - 2 w (L w)^T - 2 (L w) w^T + 4 (w^T L w) w w^T
    let lw = l.f_mv(&w)?;
    let wlw = w.f_dot(&lw)?.f_double_value(&[])?;
    let outer = |a: &Tensor, b: &Tensor| a.f_unsqueeze(1)?.f_matmul(&b.f_unsqueeze(0)?);
    let hlh = l
        .f_sub(&outer(&w, &lw)?.f_mul_scalar(2.0)?)?
        .f_sub(&outer(&lw, &w)?.f_mul_scalar(2.0)?)?
        .f_add(&outer(&w, &w)?.f_mul_scalar(4.0 * wlw)?)?;
    let m = hlh.f_narrow(0, 1, n - 1)?.f_narrow(1, 1, n - 1)?;
    let (evals, evecs) = m.f_linalg_eigh("L")?;
    let evals = Vec::<f64>::try_from(&evals.f_to_device(tch::Device::Cpu)?)?;
    // Back to R^n: x = H [0; y] = y' - 2 w (w^T y'), y' = [0; y].
    let y = Tensor::f_cat(
        &[
            &Tensor::f_zeros([1], (Kind::Double, l.device()))?,
            &evecs.f_select(1, 0)?,
        ],
        0,
    )?;
    let x = y.f_sub(&w.f_mul_scalar(2.0 * w.f_dot(&y)?.f_double_value(&[])?)?)?;
    let lambda3 = if n > 2 { evals[1] } else { evals[0] };
    Ok((evals[0], lambda3, x))
}

/// The Fiedler vector of the similarity graph of `features` (`[n, d]`, any float dtype, any
/// device); `rng` seeds the iterative solver's start vectors.
///
/// Defined results for degenerate inputs:
/// - `n = 1`: vector `[0]`, both eigenvalues 0.
/// - `n = 2`: the space orthogonal to the null vector has one dimension, so the vector is
///   `(1, -1)/sqrt 2` up to sign (canonical: `[0.707, -0.707]`) and `lambda3 = lambda2`.
/// - no edge at all (every weight 0): `degenerate`, vector all zeros, eigenvalues 0.
/// - `lambda3 - lambda2 <= DEGENERATE_GAP * c` for `n >= 3` (all features equal, three or
///   more connected components, any repeated `lambda2`): `degenerate`, vector all zeros.
///   The selection rules then keep by position, which in a shuffled super-batch is a
///   uniform draw.
/// - two components: `lambda2 = 0` and the vector separates them (not degenerate).
///
/// A zero or non-finite feature row is an error naming the sample's position.
pub fn fiedler(features: &Tensor, cfg: &SpectralConfig, rng: Rng) -> Result<Spectrum, SelectError> {
    let u = normalized_rows(features)?;
    let n = u.size()[0] as usize;
    let solver = resolve(cfg.solver, n);
    if n == 1 {
        return Ok(Spectrum {
            vector: vec![0.0],
            lambda2: 0.0,
            lambda3: 0.0,
            solver,
            degenerate: false,
            converged: true,
            matvecs: 0,
            scale: 0.0,
        });
    }
    let t = SelectError::from;
    let graph = Graph::build(&u, cfg, solver == Solver::Lanczos).map_err(t)?;
    let mut out = Spectrum {
        vector: vec![0.0; n],
        lambda2: 0.0,
        lambda3: 0.0,
        solver,
        degenerate: true,
        converged: true,
        matvecs: 0,
        scale: graph.scale,
    };
    if graph.no_edges {
        return Ok(out);
    }
    let (lambda2, lambda3, vector) = match solver {
        Solver::Lanczos => {
            let mut opts = cfg.lanczos;
            if graph.single_precision() {
                opts.tolerance = opts.tolerance.max(FLOAT32_TOLERANCE);
            }
            let r = lowest_pair(
                &mut |x| graph.apply(x),
                n,
                Some(&graph.null),
                graph.scale,
                &opts,
                rng,
                u.device(),
            )
            .map_err(t)?;
            out.matvecs = r.matvecs;
            if !r.converged && cfg.solver == Solver::Auto && n <= FALLBACK_DENSE_MAX {
                out.solver = Solver::Dense;
                dense(&graph, &u, cfg).map_err(t)?
            } else {
                out.converged = r.converged;
                (r.lambda[0], r.lambda[1], r.vector)
            }
        }
        _ => dense(&graph, &u, cfg).map_err(t)?,
    };
    out.lambda2 = lambda2;
    out.lambda3 = lambda3;
    out.degenerate = n >= 3 && lambda3 - lambda2 <= DEGENERATE_GAP * graph.scale;
    if !out.degenerate {
        let v = vector
            .f_to_kind(Kind::Double)
            .and_then(|v| v.f_contiguous())
            .and_then(|v| v.f_to_device(tch::Device::Cpu))
            .map_err(t)?;
        out.vector = Vec::<f64>::try_from(&v).map_err(t)?;
        canonical_sign(&mut out.vector);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::select::bench::clustered_features;
    use proptest::prelude::*;

    fn feats(rows: &[&[f32]]) -> Tensor {
        let d = rows[0].len();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, d as i64])
    }

    const WEIGHTS: [WeightMapping; 3] = [
        WeightMapping::Clip,
        WeightMapping::Shift,
        WeightMapping::Knn,
    ];
    const LAPLACIANS: [LaplacianKind; 2] = [LaplacianKind::Unnormalized, LaplacianKind::Symmetric];
    const SOLVERS: [Solver; 2] = [Solver::Dense, Solver::Lanczos];

    fn cfg(weights: WeightMapping, laplacian: LaplacianKind, solver: Solver) -> SpectralConfig {
        SpectralConfig {
            weights,
            knn_k: 3,
            laplacian,
            solver,
            ..SpectralConfig::default()
        }
    }

    fn every_cfg() -> Vec<SpectralConfig> {
        let mut v = Vec::new();
        for w in WEIGHTS {
            for l in LAPLACIANS {
                for s in SOLVERS {
                    v.push(cfg(w, l, s));
                }
            }
        }
        v
    }

    fn run(f: &Tensor, c: &SpectralConfig) -> Spectrum {
        fiedler(f, c, Rng::new(1)).unwrap()
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn as_vec(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(&t.to_kind(Kind::Double).contiguous().view([-1])).unwrap()
    }

    #[test]
    fn two_clusters_are_split_by_the_sign() {
        // Two tight groups pointing different ways, with a weak link between them.
        let f = feats(&[
            &[1.0, 0.05, 0.0],
            &[1.0, 0.0, 0.05],
            &[0.95, 0.1, 0.0],
            &[0.1, 1.0, 0.0],
            &[0.0, 1.0, 0.05],
            &[0.05, 0.95, 0.1],
        ]);
        for c in every_cfg() {
            let s = run(&f, &c);
            assert!(!s.degenerate, "{c:?}");
            let first = s.vector[0] > 0.0;
            assert!(
                s.vector[..3].iter().all(|&x| (x > 0.0) == first),
                "{c:?}: {:?}",
                s.vector
            );
            assert!(
                s.vector[3..].iter().all(|&x| (x > 0.0) != first),
                "{c:?}: {:?}",
                s.vector
            );
            assert!(
                s.lambda2 >= -1e-9 && s.lambda3 >= s.lambda2 - 1e-9,
                "{c:?}: {s:?}"
            );
        }
    }

    #[test]
    fn well_separated_clusters_of_a_larger_batch_are_split() {
        // 2 clusters, alternating positions: the sign of v must equal position parity.
        let f = clustered_features(300, 32, 2, 3, tch::Device::Cpu).unwrap();
        for mut c in every_cfg() {
            // A few neighbours leave a cluster in pieces; 15 keep each one connected.
            c.knn_k = 15;
            let s = run(&f, &c);
            assert!(!s.degenerate, "{c:?}");
            let side0 = s.vector[0] > 0.0;
            for (i, &x) in s.vector.iter().enumerate() {
                assert_eq!((x > 0.0) == side0, i % 2 == 0, "{c:?}: sample {i}");
            }
        }
    }

    #[test]
    fn laplacian_rows_sum_to_zero() {
        let f = Tensor::randn([20, 5], (Kind::Float, tch::Device::Cpu));
        let u = normalized_rows(&f).unwrap();
        let l = laplacian(&similarity(&u, WeightMapping::Clip, 3).unwrap()).unwrap();
        let rs = as_vec(&l.sum_dim_intlist(1, false, Kind::Double));
        assert!(rs.iter().all(|x| x.abs() < 1e-12));
    }

    #[test]
    fn zero_and_nan_features_name_the_sample() {
        for c in every_cfg() {
            let f = feats(&[&[1.0, 0.0], &[0.0, 0.0], &[0.5, 0.5]]);
            let e = fiedler(&f, &c, Rng::new(0)).unwrap_err();
            assert_eq!(e.to_string(), "feature vector of sample 1 is all zeros");
            let f = feats(&[&[1.0, 0.0], &[0.3, 0.1], &[f32::NAN, 0.5]]);
            let e = fiedler(&f, &c, Rng::new(0)).unwrap_err();
            let e = e.to_string();
            assert!(e.contains("sample 2") && e.contains("non-finite"), "{e}");
            let f = feats(&[&[1.0, 0.0], &[f32::INFINITY, 0.1], &[0.2, 0.5]]);
            let e = fiedler(&f, &c, Rng::new(0)).unwrap_err();
            let e = e.to_string();
            assert!(e.contains("sample 1") && e.contains("non-finite"), "{e}");
        }
    }

    #[test]
    fn sign_is_canonical() {
        let mut v = vec![0.1, -0.7, 0.3];
        canonical_sign(&mut v);
        assert_eq!(v, vec![-0.1, 0.7, -0.3]);
        let mut w = vec![-0.5, 0.5];
        canonical_sign(&mut w);
        assert_eq!(w, vec![0.5, -0.5]);
    }

    #[test]
    fn one_and_two_samples_are_defined() {
        for c in every_cfg() {
            let one = run(&feats(&[&[1.0, 2.0]]), &c);
            assert_eq!(one.vector, vec![0.0]);
            let two = run(&feats(&[&[1.0, 0.2], &[0.3, 1.0]]), &c);
            assert!(!two.degenerate, "{c:?}");
            assert_eq!(two.lambda2, two.lambda3);
            let h = std::f64::consts::FRAC_1_SQRT_2;
            assert!(
                (two.vector[0] - h).abs() < 1e-9 && (two.vector[1] + h).abs() < 1e-9,
                "{c:?}: {two:?}"
            );
        }
    }

    #[test]
    fn all_equal_features_are_degenerate_with_zero_scores() {
        let row: &[f32] = &[0.3, -1.0, 2.0];
        let f = feats(&[row; 12]);
        for c in every_cfg() {
            let s = run(&f, &c);
            assert!(s.degenerate, "{c:?}: {s:?}");
            assert!(s.vector.iter().all(|&x| x == 0.0));
            assert!(
                (s.lambda3 - s.lambda2).abs() <= 1e-6 * s.scale,
                "{c:?}: {s:?}"
            );
            assert!(s.lambda2 > 0.0, "a complete graph is connected: {s:?}");
        }
    }

    #[test]
    fn components_two_split_three_are_degenerate_none_is_degenerate() {
        // clip: groups in orthogonal planes share no edge.
        let a: &[f32] = &[1.0, 0.2, 0.0, 0.0, 0.0, 0.0];
        let a2: &[f32] = &[0.3, 1.0, 0.0, 0.0, 0.0, 0.0];
        let b: &[f32] = &[0.0, 0.0, 1.0, 0.1, 0.0, 0.0];
        let b2: &[f32] = &[0.0, 0.0, 0.4, 1.0, 0.0, 0.0];
        let c: &[f32] = &[0.0, 0.0, 0.0, 0.0, 1.0, 0.5];
        let c2: &[f32] = &[0.0, 0.0, 0.0, 0.0, 0.2, 1.0];
        let two = feats(&[a, a2, a, b, b2, b]);
        let three = feats(&[a, a2, b, b2, c, c2]);
        let none = feats(&[a, b, c]);
        // One isolated sample: it is the component the Fiedler vector singles out.
        let isolated = feats(&[a, a2, a, a2, c]);
        for l in LAPLACIANS {
            for s in SOLVERS {
                let c = cfg(WeightMapping::Clip, l, s);
                let r = run(&two, &c);
                assert!(!r.degenerate && r.lambda2.abs() < 1e-9, "{c:?}: {r:?}");
                let side = r.vector[0] > 0.0;
                assert!(r.vector[..3].iter().all(|&x| (x > 0.0) == side), "{r:?}");
                assert!(r.vector[3..].iter().all(|&x| (x > 0.0) != side), "{r:?}");
                let r = run(&three, &c);
                assert!(
                    r.degenerate && r.lambda2.abs() < 1e-9 && r.lambda3.abs() < 1e-6,
                    "{c:?}: {r:?}"
                );
                let r = run(&none, &c);
                assert!(r.degenerate && r.vector == vec![0.0; 3], "{c:?}: {r:?}");
                let r = run(&isolated, &c);
                assert!(!r.degenerate && r.lambda2.abs() < 1e-9, "{c:?}: {r:?}");
                let top = (0..5).max_by(|&i, &j| r.vector[i].abs().total_cmp(&r.vector[j].abs()));
                assert_eq!(top, Some(4), "{c:?}: {r:?}");
            }
        }
    }

    #[test]
    fn knn_matches_a_direct_construction() {
        // float64 features: every cosine exact, so the comparison can be tight.
        let f = clustered_features(40, 6, 3, 9, tch::Device::Cpu)
            .unwrap()
            .to_kind(Kind::Double);
        let u = normalized_rows(&f).unwrap();
        let n = 40;
        let uv = as_vec(&u);
        let cos = |i: usize, j: usize| (0..6).map(|t| uv[i * 6 + t] * uv[j * 6 + t]).sum::<f64>();
        for k in [1, 4, 39, 100] {
            // Row i's k most similar others (no ties in random data), then A or A^T.
            let mut a = vec![vec![0.0f64; n]; n];
            for (i, row) in a.iter_mut().enumerate() {
                let mut others: Vec<usize> = (0..n).filter(|&j| j != i).collect();
                others.sort_by(|&x, &y| cos(i, y).total_cmp(&cos(i, x)));
                for &j in others.iter().take(k.min(n - 1)) {
                    row[j] = cos(i, j).max(0.0);
                }
            }
            let s = as_vec(&similarity(&u, WeightMapping::Knn, k).unwrap());
            for i in 0..n {
                for j in 0..n {
                    let want = a[i][j].max(a[j][i]);
                    assert!((s[i * n + j] - want).abs() < 1e-12, "k={k} ({i},{j})");
                }
            }
        }
        // k >= n - 1 is the clip graph.
        let clip = similarity(&u, WeightMapping::Clip, 0).unwrap();
        assert!(similarity(&u, WeightMapping::Knn, 39)
            .unwrap()
            .allclose(&clip, 0.0, 1e-12, false));
    }

    #[test]
    fn normalized_laplacian_matches_a_direct_construction() {
        // Sample 4 is orthogonal to every other: isolated under clip.
        let f = feats(&[
            &[1.0, 0.2, 0.0, 0.0],
            &[0.5, 1.0, 0.0, 0.0],
            &[0.9, 0.1, 0.3, 0.0],
            &[0.2, 0.3, 1.0, 0.0],
            &[0.0, 0.0, 0.0, 1.0],
        ]);
        let u = normalized_rows(&f).unwrap();
        let s = similarity(&u, WeightMapping::Clip, 0).unwrap();
        let sv = as_vec(&s);
        let n = 5;
        let deg: Vec<f64> = (0..n)
            .map(|i| (0..n).map(|j| sv[i * n + j]).sum())
            .collect();
        assert_eq!(deg[4], 0.0);
        let l = as_vec(&normalized_laplacian(&s).unwrap());
        for i in 0..n {
            for j in 0..n {
                let want = if deg[i] == 0.0 || deg[j] == 0.0 {
                    0.0
                } else {
                    f64::from(u8::from(i == j)) - sv[i * n + j] / (deg[i] * deg[j]).sqrt()
                };
                assert!(
                    (l[i * n + j] - want).abs() < 1e-12,
                    "({i},{j}): {} vs {want}",
                    l[i * n + j]
                );
            }
        }
        // D^1/2 1 is in its null space.
        let h: Vec<f64> = deg.iter().map(|d| d.sqrt()).collect();
        for i in 0..n {
            let row: f64 = (0..n).map(|j| l[i * n + j] * h[j]).sum();
            assert!(row.abs() < 1e-12);
        }
    }

    #[test]
    fn the_matrix_free_shift_operator_equals_the_matrix() {
        let f = clustered_features(50, 7, 3, 4, tch::Device::Cpu).unwrap();
        let x = Tensor::randn([50, 3], (Kind::Double, tch::Device::Cpu));
        // float64 features: products in float64, equal to rounding; float32: to float32's.
        for (kind, tol) in [(Kind::Double, 1e-10), (Kind::Float, 1e-5)] {
            let u = normalized_rows(&f.to_kind(kind)).unwrap();
            assert_eq!(u.kind(), kind);
            for l in LAPLACIANS {
                let c = cfg(WeightMapping::Shift, l, Solver::Lanczos);
                let free = Graph::build(&u, &c, true).unwrap();
                assert!(matches!(free.op, Op::Shift { .. }));
                assert_eq!(free.single_precision(), kind == Kind::Float);
                let mat = laplacian_matrix(&u, &c).unwrap();
                let want = mat.matmul(&x);
                let got = free.apply(&x).unwrap();
                assert!(
                    got.allclose(&want, tol, tol * 50.0, false),
                    "{kind:?} {l:?}"
                );
            }
        }
    }

    #[test]
    fn auto_picks_dense_for_small_and_lanczos_for_large() {
        let c = SpectralConfig::default();
        let small = clustered_features(AUTO_DENSE_MAX, 8, 3, 1, tch::Device::Cpu).unwrap();
        let large = clustered_features(AUTO_DENSE_MAX + 1, 8, 3, 1, tch::Device::Cpu).unwrap();
        assert_eq!(run(&small, &c).solver, Solver::Dense);
        let r = run(&large, &c);
        assert_eq!(r.solver, Solver::Lanczos);
        assert!(r.converged && r.matvecs > 0);
    }

    #[test]
    fn same_input_and_seed_give_the_same_output() {
        let f = clustered_features(150, 10, 3, 5, tch::Device::Cpu).unwrap();
        for c in every_cfg() {
            let a = fiedler(&f, &c, Rng::new(11)).unwrap();
            let b = fiedler(&f, &c, Rng::new(11)).unwrap();
            assert_eq!(a, b, "{c:?}");
        }
    }

    /// The agreement the iterative solver promises, checked against dense `eigh`.
    fn agrees(
        f: &Tensor,
        weights: WeightMapping,
        laplacian: LaplacianKind,
        seed: u64,
    ) -> Result<(), TestCaseError> {
        let base = SpectralConfig {
            weights,
            knn_k: 5,
            laplacian,
            ..SpectralConfig::default()
        };
        let d = fiedler(
            f,
            &SpectralConfig {
                solver: Solver::Dense,
                ..base
            },
            Rng::new(seed),
        )
        .unwrap();
        let i = fiedler(
            f,
            &SpectralConfig {
                solver: Solver::Lanczos,
                ..base
            },
            Rng::new(seed),
        )
        .unwrap();
        prop_assert!(i.converged);
        if d.degenerate != i.degenerate {
            // Only a gap at the threshold may be judged differently.
            prop_assert!(d.lambda3 - d.lambda2 <= 10.0 * DEGENERATE_GAP * d.scale);
        }
        // Relative error, with the degenerate-gap resolution as the floor for eigenvalues
        // near 0 (two components).
        let tiny = (DEGENERATE_GAP * d.scale).max(f64::MIN_POSITIVE);
        let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(tiny);
        prop_assert!(
            rel(i.lambda2, d.lambda2) <= 1e-4,
            "lambda2 {} vs {}",
            i.lambda2,
            d.lambda2
        );
        prop_assert!(
            rel(i.lambda3, d.lambda3) <= 1e-4,
            "lambda3 {} vs {}",
            i.lambda3,
            d.lambda3
        );
        // The vector is determined only where the gap is not tiny.
        if d.lambda3 - d.lambda2 > 1e-4 * d.scale {
            let c = dot(&i.vector, &d.vector);
            prop_assert!(
                c >= 0.999,
                "<v, v_ref> = {} (canonical signs must agree)",
                c
            );
        }
        Ok(())
    }

    fn weights_strategy() -> impl Strategy<Value = WeightMapping> {
        prop::sample::select(WEIGHTS.to_vec())
    }
    fn laplacian_strategy() -> impl Strategy<Value = LaplacianKind> {
        prop::sample::select(LAPLACIANS.to_vec())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        #[test]
        fn lanczos_agrees_with_dense_on_clustered_inputs(
            n in 3usize..300, d in 2usize..64, k in 2usize..6, seed in 0u64..1000,
            w in weights_strategy(), l in laplacian_strategy(),
        ) {
            let f = clustered_features(n, d, k, seed, tch::Device::Cpu).unwrap();
            agrees(&f, w, l, seed)?;
        }

        #[test]
        fn lanczos_agrees_with_dense_on_random_inputs(
            n in 3usize..300, d in 2usize..64, seed in 0u64..1000,
            w in weights_strategy(), l in laplacian_strategy(),
        ) {
            let f = clustered_features(n, d, 1, seed, tch::Device::Cpu).unwrap();
            // One cluster with its centre removed: isotropic noise.
            let f = f.f_sub(&f.mean_dim(0, true, Kind::Float)).unwrap();
            agrees(&f, w, l, seed)?;
        }
    }
}
