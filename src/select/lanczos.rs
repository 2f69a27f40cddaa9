//! Block Lanczos with full re-orthogonalisation: the two smallest eigenpairs of a graph
//! Laplacian on the complement of its known null vector, in tensor ops on any device.
//!
//! SALN needs only `lambda2`, `lambda3` and the Fiedler vector, not all `n` eigenpairs that a
//! dense `eigh` computes in `O(n^3)`. A Krylov method needs only products `L X`; for `shift`
//! weights such a product costs `O(n d)` without the `n x n` matrix ever existing.
//!
//! How it works:
//! - The Laplacian's null vector `z` (`1/sqrt(n)` for `L`, `D^1/2 1` normalised for `L_sym`)
//!   is known, so every basis vector is kept orthogonal to it (deflation): the two smallest
//!   eigenvalues left are `lambda2` and `lambda3`.
//! - Blocks of `p` vectors (default 4) grow an orthonormal basis `V` of the block Krylov space
//!   of `L`; `W = L V` is kept, so the Rayleigh quotient `H = V^T L V` is exact and the
//!   residual of every Ritz pair is computed, not estimated. A block of `p >= 2` vectors sees
//!   a repeated `lambda2` (a single-vector Krylov space sees only one copy of each
//!   eigenvalue), and it reads the features once per `p` products, which matters when the
//!   product is memory-bound.
//! - Every new block is orthogonalised twice against `z` and `V` (classical Gram-Schmidt,
//!   twice is enough), then within itself. A column that vanishes (an invariant subspace was
//!   found, as for a graph whose weights are all equal) is replaced by a fresh random vector;
//!   when no new direction is left the basis spans the whole space and the result is exact.
//! - It stops when both Ritz residuals are at most `tolerance * c`, `c` an upper bound of the
//!   spectrum (Gershgorin: `2 max degree` for `L`, `2` for `L_sym`).
//!
//! Krylov spaces are shift-invariant: the space built from `L` is the one built from
//! `M = c I - L`, whose largest eigenvalues are `c - lambda2` and `c - lambda3`. Working on
//! `L` and taking the smallest Ritz values is the same method without the shift's rounding.
//!
//! The random start vectors come from saln's counter-based generator, so the result is a
//! function of the input and the seed.
use tch::{Kind, TchError, Tensor};

use crate::rng::Rng;

/// Settings of the iterative solver.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LanczosOptions {
    /// Vectors per block (`p`).
    pub block: usize,
    /// Convergence: each of the two Ritz residuals `|L x - theta x|` at most
    /// `tolerance * c`, `c` the spectrum's upper bound.
    pub tolerance: f64,
    /// Largest basis (columns of `V`) before giving up; memory is `2 * n * max_basis` f64.
    pub max_basis: usize,
}

impl Default for LanczosOptions {
    fn default() -> Self {
        LanczosOptions {
            block: 4,
            tolerance: 1e-8,
            max_basis: 320,
        }
    }
}

/// The two smallest eigenpairs found on the complement of the null vector.
#[derive(Debug)]
pub struct LowestPair {
    /// `lambda2`, `lambda3` (equal when the space left has one dimension).
    pub lambda: [f64; 2],
    /// Unit eigenvector of `lambda[0]`, `[n]` float64 on the operator's device.
    pub vector: Tensor,
    /// Whether both residuals met the tolerance (or the basis spans the whole space).
    pub converged: bool,
    /// Number of vectors the operator was applied to.
    pub matvecs: usize,
}

/// `n x cols` standard normal float64 on `like`'s device, from `rng` (Box-Muller).
fn randn(rng: &mut Rng, n: usize, cols: usize, like: &Tensor) -> Result<Tensor, TchError> {
    let mut v = Vec::with_capacity(n * cols);
    while v.len() < n * cols {
        let (u1, u2) = (1.0 - rng.next_f64(), rng.next_f64());
        let r = (-2.0 * u1.ln()).sqrt();
        let a = std::f64::consts::TAU * u2;
        v.push(r * a.cos());
        v.push(r * a.sin());
    }
    v.truncate(n * cols);
    // Row-major [cols, n], transposed: each column is one consecutive run of the stream.
    Tensor::f_from_slice(&v)?
        .f_view([cols as i64, n as i64])?
        .f_tr()?
        .f_contiguous()?
        .f_to_device(like.device())
}

/// `a^T b` for a large `a` (`[j, n]`) and a skinny `b` (`[j, k]`), as `(b^T a)^T`.
///
/// CPU BLAS (MKL) is several times slower on a product whose *large* operand is the
/// transposed one than on the same product arranged so that the skinny operand is; on CUDA
/// both are the same.
pub(crate) fn t_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor, TchError> {
    b.f_tr()?.f_matmul(a)?.f_tr()
}

/// Removes from `x` (`[n, k]`) its components along the basis vectors, `passes` times.
/// Each basis is stored by rows (`[j, n]`, orthonormal rows), so that the first `j` rows
/// of a preallocated store are one contiguous block.
fn project_out(x: &Tensor, bases: &[&Tensor], passes: usize) -> Result<Tensor, TchError> {
    let mut x = x.shallow_clone();
    for _ in 0..passes {
        for b in bases {
            if b.size()[0] > 0 {
                let c = b.f_matmul(&x)?; // [j, k]
                x = x.f_sub(&t_matmul(b, &c)?)?;
            }
        }
    }
    Ok(x)
}

fn column_norms(x: &Tensor) -> Result<Vec<f64>, TchError> {
    let norms = x
        .f_square()?
        .f_sum_dim_intlist(0, false, Kind::Double)?
        .f_sqrt()?
        .f_to_device(tch::Device::Cpu)?;
    Vec::<f64>::try_from(&norms)
}

/// Up to `want` new orthonormal columns from `x` (`[n, p]`), orthogonal to `bases`
/// (row-stored, see [`project_out`]).
///
/// The usual case is block classical Gram-Schmidt, twice ("twice is enough"): project the
/// block, QR, project again, QR. When a column nearly vanishes in the first pass it lay in
/// the span already found; the slow path then takes columns one at a time and replaces such
/// columns by random ones. Fewer than `want` columns come back only when no new direction is
/// left (the basis spans the whole space).
fn orthonormal_block(
    x: &Tensor,
    bases: &[&Tensor],
    want: usize,
    rng: &mut Rng,
) -> Result<Tensor, TchError> {
    /// A column keeps less than this fraction of its length: it was in the span already.
    const VANISHED: f64 = 1e-6;
    let n = x.size()[0] as usize;
    // Unit columns first, so "vanished" is relative to each column's own size.
    let norms = x
        .f_square()?
        .f_sum_dim_intlist(0, true, Kind::Double)?
        .f_sqrt()?;
    let inv = norms.f_reciprocal()?.f_nan_to_num(0.0, 0.0, 0.0)?;
    let x = project_out(&x.f_mul(&inv)?, bases, 1)?;
    if x.size()[1] as usize == want {
        let (q, r) = Tensor::f_linalg_qr(&x, "reduced")?;
        let diag = Vec::<f64>::try_from(
            &r.f_diagonal(0, 0, 1)?
                .f_abs()?
                .f_to_device(tch::Device::Cpu)?,
        )?;
        if diag.iter().all(|&d| d > 1e-2 && d.is_finite()) {
            let (q, _) = Tensor::f_linalg_qr(&project_out(&q, bases, 1)?, "reduced")?;
            return Ok(q);
        }
    }
    let x = project_out(&x, bases, 1)?;
    let mut queue: std::collections::VecDeque<Tensor> = (0..x.size()[1])
        .map(|j| x.f_select(1, j).and_then(|c| c.f_unsqueeze(1)))
        .collect::<Result<_, _>>()?;
    let mut accepted: Vec<Tensor> = Vec::new();
    let mut random_left = 4 * want + 4;
    while accepted.len() < want {
        let c = match queue.pop_front() {
            Some(c) => c,
            None if random_left > 0 => {
                random_left -= 1;
                let r = randn(rng, n, 1, &x)?;
                let r = r.f_div_scalar(column_norms(&r)?[0])?;
                project_out(&r, bases, 2)?
            }
            None => break,
        };
        let mine = if accepted.is_empty() {
            None
        } else {
            Some(Tensor::f_cat(&accepted, 1)?.f_tr()?.f_contiguous()?)
        };
        let mut c = match &mine {
            Some(m) => project_out(&c, &[m], 2)?,
            None => c,
        };
        let mut len = column_norms(&c)?[0];
        if !(len > VANISHED && len.is_finite()) {
            continue;
        }
        if len < 0.1 {
            // Heavy cancellation: one more pass against everything keeps V orthonormal.
            let mut all: Vec<&Tensor> = bases.to_vec();
            if let Some(m) = &mine {
                all.push(m);
            }
            c = project_out(&c.f_div_scalar(len)?, &all, 1)?;
            len = column_norms(&c)?[0];
        }
        accepted.push(c.f_div_scalar(len)?);
    }
    if accepted.is_empty() {
        return Tensor::f_zeros([n as i64, 0], (Kind::Double, x.device()));
    }
    Tensor::f_cat(&accepted, 1)
}

/// The two smallest eigenpairs of the symmetric operator `apply` on the orthogonal
/// complement of `null`.
///
/// - `apply`: `X` (`[n, k]` float64) -> `L X` (`[n, k]` float64), on `device`.
/// - `null`: the operator's known null vector, `[n, 1]` float64 of unit norm, or `None`.
/// - `scale`: an upper bound `c` of the spectrum; the tolerance is relative to it (`> 0`).
/// - `rng`: the stream the start block and any replacement vectors are drawn from.
///
/// Needs `n >= 2` (and `n >= 3` with a null vector, for a second eigenvalue to exist; with
/// a one-dimensional complement both eigenvalues returned are the same).
///
/// Memory: `V` and `L V` are kept, `2 n max_basis` float64, transposed (`[max_basis, n]`)
/// so that the part in use is one contiguous block for the matrix products.
pub fn lowest_pair(
    apply: &mut dyn FnMut(&Tensor) -> Result<Tensor, TchError>,
    n: usize,
    null: Option<&Tensor>,
    scale: f64,
    opts: &LanczosOptions,
    mut rng: Rng,
    device: tch::Device,
) -> Result<LowestPair, TchError> {
    let dims = n - usize::from(null.is_some());
    if dims == 0 {
        return Err(TchError::Kind(
            "lanczos: the operator's complement of its null vector is empty".into(),
        ));
    }
    let m_max = opts.max_basis.max(2).min(dims);
    let p = opts.block.max(1).min(m_max);
    let kind = (Kind::Double, device);
    let vt = Tensor::f_zeros([m_max as i64, n as i64], kind)?;
    let wt = Tensor::f_zeros([m_max as i64, n as i64], kind)?;
    let mut h = vec![0.0f64; m_max * m_max];
    let null = match null {
        Some(z) => z.f_tr()?.f_contiguous()?,
        None => Tensor::f_zeros([0, n as i64], kind)?,
    };
    let mut x = randn(&mut rng, n, p, &null)?;
    let mut m = 0usize;
    let mut matvecs = 0usize;
    let mut last: Option<LowestPair> = None;
    loop {
        let want = p.min(m_max - m);
        let q = orthonormal_block(&x, &[&null, &vt.f_narrow(0, 0, m as i64)?], want, &mut rng)?;
        let k = q.size()[1] as usize;
        if k == 0 {
            // No direction left: the basis spans the whole space and the pairs are exact.
            return match last {
                Some(mut r) => {
                    r.converged = true;
                    Ok(r)
                }
                None => Err(TchError::Kind(
                    "lanczos: no start vector orthogonal to the null vector".into(),
                )),
            };
        }
        let wq = apply(&q)?;
        matvecs += k;
        vt.f_narrow(0, m as i64, k as i64)?.f_copy_(&q.f_tr()?)?;
        wt.f_narrow(0, m as i64, k as i64)?.f_copy_(&wq.f_tr()?)?;
        // New columns of H = V^T L V (and, by symmetry, new rows).
        let hv = vt
            .f_narrow(0, 0, (m + k) as i64)?
            .f_matmul(&wq)?
            .f_to_device(tch::Device::Cpu)?
            .f_contiguous()?;
        let hv = Vec::<f64>::try_from(&hv.f_view([-1])?)?;
        for i in 0..m + k {
            for j in 0..k {
                let col = m + j;
                let val = if i < m {
                    hv[i * k + j]
                } else {
                    0.5 * (hv[i * k + j] + hv[(m + j) * k + (i - m)])
                };
                h[i * m_max + col] = val;
                h[col * m_max + i] = val;
            }
        }
        m += k;
        if m >= 2 || m == dims {
            let ht = Tensor::f_from_slice(&h)?
                .f_view([m_max as i64, m_max as i64])?
                .f_narrow(0, 0, m as i64)?
                .f_narrow(1, 0, m as i64)?;
            let (theta, y) = ht.f_linalg_eigh("L")?;
            let theta = Vec::<f64>::try_from(&theta)?;
            let r = m.min(2);
            // Ritz vectors X = V Y and their residuals L X - X theta = W Y - X theta.
            let y2 = y.f_narrow(1, 0, r as i64)?.f_to_device(device)?;
            let xr = t_matmul(&vt.f_narrow(0, 0, m as i64)?, &y2)?;
            let lx = t_matmul(&wt.f_narrow(0, 0, m as i64)?, &y2)?;
            let th = Tensor::f_from_slice(&theta[..r])?.f_to_device(device)?;
            let res = column_norms(&lx.f_sub(&xr.f_mul(&th)?)?)?;
            let converged = m == dims
                || res
                    .iter()
                    .all(|&e| e <= opts.tolerance * scale && e.is_finite());
            let pair = LowestPair {
                lambda: [theta[0], theta[r - 1]],
                vector: xr.f_select(1, 0)?,
                converged,
                matvecs,
            };
            if converged || m >= m_max {
                return Ok(pair);
            }
            last = Some(pair);
        }
        x = wq;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A diagonal operator with a known spectrum: the pairs are its two smallest entries
    /// past the null direction `e_0`.
    #[test]
    fn finds_the_two_smallest_of_a_diagonal_operator() {
        let n = 200;
        let diag: Vec<f64> = (0..n).map(|i| if i == 0 { 0.0 } else { 1.0 + i as f64 }).collect();
        let d = Tensor::from_slice(&diag).unsqueeze(1);
        let mut apply = |x: &Tensor| x.f_mul(&d);
        let mut e0 = vec![0.0; n];
        e0[0] = 1.0;
        let z = Tensor::from_slice(&e0).unsqueeze(1);
        let r = lowest_pair(
            &mut apply,
            n,
            Some(&z),
            2.0 * n as f64,
            &LanczosOptions::default(),
            Rng::new(1),
            tch::Device::Cpu,
        )
        .unwrap();
        assert!(r.converged);
        assert!((r.lambda[0] - 2.0).abs() < 1e-9, "{:?}", r.lambda);
        assert!((r.lambda[1] - 3.0).abs() < 1e-9, "{:?}", r.lambda);
        let v = Vec::<f64>::try_from(&r.vector).unwrap();
        assert!(v[1].abs() > 1.0 - 1e-9, "{:?}", &v[..4]);
    }

    /// A multiple of the identity: every block is invariant, so vectors are replaced by
    /// random ones and both eigenvalues come out equal.
    #[test]
    fn an_invariant_block_does_not_stall() {
        let n = 50;
        let mut apply = |x: &Tensor| x.f_mul_scalar(7.0);
        let r = lowest_pair(
            &mut apply,
            n,
            None,
            14.0,
            &LanczosOptions::default(),
            Rng::new(2),
            tch::Device::Cpu,
        )
        .unwrap();
        assert!(r.converged);
        assert!((r.lambda[0] - 7.0).abs() < 1e-12 && (r.lambda[1] - 7.0).abs() < 1e-12);
    }

    /// A space smaller than the block: the basis spans it and the answer is exact.
    #[test]
    fn a_tiny_space_is_solved_exactly() {
        let diag = [0.0, 5.0, 2.0];
        let d = Tensor::from_slice(&diag).unsqueeze(1);
        let mut apply = |x: &Tensor| x.f_mul(&d);
        let z = Tensor::from_slice(&[1.0f64, 0.0, 0.0]).unsqueeze(1);
        let r = lowest_pair(
            &mut apply,
            3,
            Some(&z),
            10.0,
            &LanczosOptions::default(),
            Rng::new(3),
            tch::Device::Cpu,
        )
        .unwrap();
        assert!(r.converged);
        assert!((r.lambda[0] - 2.0).abs() < 1e-12 && (r.lambda[1] - 5.0).abs() < 1e-12);
    }
}
