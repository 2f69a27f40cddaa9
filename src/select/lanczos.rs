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

/// A block after one projection against the basis, waiting to be orthonormalised.
struct Pending {
    /// The projected block, `[n, p]`.
    x: Tensor,
    /// Squared column lengths before the projection.
    before: Vec<f64>,
    /// Squared column lengths after it.
    after: Vec<f64>,
}

/// Orthonormal columns (at most `want`) spanning the new directions of `pending`, which was
/// projected once against `basis` (row-stored, see [`project_out`]).
///
/// The usual case is block classical Gram-Schmidt, twice ("twice is enough"): QR of the
/// once-projected block, a second projection, QR again. When a column lost almost all of
/// its length in the first projection it lay in the span already found; the slow path then
/// takes columns one at a time and replaces such columns by random ones. Fewer than `want`
/// columns come back only when no new direction is left (the basis spans the whole space).
fn orthonormal_block(
    pending: Pending,
    basis: &Tensor,
    want: usize,
    rng: &mut Rng,
) -> Result<Tensor, TchError> {
    /// Kept fraction of a column's length above which one more projection suffices.
    const CLEAR: f64 = 1e-2;
    /// Kept fraction below which a column is taken as already in the span.
    const VANISHED: f64 = 1e-6;
    let Pending { x, before, after } = pending;
    let n = x.size()[0] as usize;
    let kept = |j: usize| (after[j] / before[j]).sqrt();
    let clear =
        (0..before.len()).all(|j| before[j] > 0.0 && kept(j) > CLEAR && kept(j).is_finite());
    if before.len() == want && clear {
        let (q, _) = Tensor::f_linalg_qr(&x, "reduced")?;
        let (q, _) = Tensor::f_linalg_qr(&project_out(&q, &[basis], 1)?, "reduced")?;
        return Ok(q);
    }
    // Slow path: unit columns, one at a time.
    let mut queue: std::collections::VecDeque<Tensor> = std::collections::VecDeque::new();
    for j in 0..before.len() {
        if before[j] > 0.0 && kept(j) > VANISHED && kept(j).is_finite() {
            let c = x.f_select(1, j as i64)?.f_unsqueeze(1)?;
            queue.push_back(c.f_div_scalar(after[j].sqrt())?);
        }
    }
    let mut accepted: Vec<Tensor> = Vec::new();
    let mut random_left = 4 * want + 4;
    while accepted.len() < want {
        let c = match queue.pop_front() {
            Some(c) => c,
            None if random_left > 0 => {
                random_left -= 1;
                let r = randn(rng, n, 1, &x)?;
                let r = r.f_div_scalar(column_norms(&r)?[0])?;
                project_out(&r, &[basis], 1)?
            }
            None => break,
        };
        let mine = if accepted.is_empty() {
            None
        } else {
            Some(Tensor::f_cat(&accepted, 1)?.f_tr()?.f_contiguous()?)
        };
        let mut all: Vec<&Tensor> = vec![basis];
        if let Some(m) = &mine {
            all.push(m);
        }
        let c = project_out(&c, &all, 2)?;
        let len = column_norms(&c)?[0];
        if len > VANISHED && len.is_finite() {
            accepted.push(c.f_div_scalar(len)?);
        }
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
/// Each step costs one product `L Q` for a block `Q`, and a few products with the basis.
/// The projection of `L Q` against the basis gives the new columns of `H` and the next
/// block at once; the block Lanczos relation `L V = V H + R E^T` then gives every Ritz
/// residual from the small matrix `R^T R`, so the explicit residual `|L x - theta x|` is
/// computed only to confirm convergence.
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
    let nz = usize::from(null.is_some());
    let dims = n - nz;
    if dims == 0 {
        return Err(TchError::Kind(
            "lanczos: the operator's complement of its null vector is empty".into(),
        ));
    }
    let m_max = opts.max_basis.max(2).min(dims);
    let p = opts.block.max(1).min(m_max);
    let tol = opts.tolerance * scale;
    let kind = (Kind::Double, device);
    // Rows: the null vector (when given), then the basis V.
    let store = Tensor::f_zeros([(nz + m_max) as i64, n as i64], kind)?;
    let wt = Tensor::f_zeros([m_max as i64, n as i64], kind)?;
    if let Some(z) = null {
        store.f_narrow(0, 0, 1)?.f_copy_(&z.f_tr()?)?;
    }
    let mut h = vec![0.0f64; m_max * m_max];
    let start = randn(&mut rng, n, p, &store)?;
    let mut pending = {
        let x = project_out(&start, &[&store.f_narrow(0, 0, nz as i64)?], 1)?;
        Pending {
            before: column_norms(&start)?.iter().map(|v| v * v).collect(),
            after: column_norms(&x)?.iter().map(|v| v * v).collect(),
            x,
        }
    };
    let mut m = 0usize;
    let mut matvecs = 0usize;
    loop {
        let want = p.min(m_max - m);
        let q = orthonormal_block(
            pending,
            &store.f_narrow(0, 0, (nz + m) as i64)?,
            want,
            &mut rng,
        )?;
        let k = q.size()[1] as usize;
        if k == 0 {
            // No direction left: the basis spans the whole space and the pairs are exact.
            if m == 0 {
                return Err(TchError::Kind(
                    "lanczos: no start vector orthogonal to the null vector".into(),
                ));
            }
            let (theta, y) = ritz_values(&h, m_max, m)?;
            let (pair, _) = ritz_pair(&store, &wt, nz, m, &theta, &y, matvecs, device)?;
            return Ok(LowestPair {
                converged: true,
                ..pair
            });
        }
        let wq = apply(&q)?;
        matvecs += k;
        store
            .f_narrow(0, (nz + m) as i64, k as i64)?
            .f_copy_(&q.f_tr()?)?;
        wt.f_narrow(0, m as i64, k as i64)?.f_copy_(&wq.f_tr()?)?;
        m += k;
        // One projection of L Q against [z; V]: its coefficients are H's new columns, the
        // remainder R is the next block, and R^T R gives the residual estimates.
        let basis = store.f_narrow(0, 0, (nz + m) as i64)?;
        let coef = basis.f_matmul(&wq)?; // [nz + m, k]
        let rest = wq.f_sub(&t_matmul(&basis, &coef)?)?;
        let gram = rest.f_tr()?.f_matmul(&rest)?; // [k, k]
        let before = wq.f_square()?.f_sum_dim_intlist(0, false, Kind::Double)?;
        let small = Tensor::f_cat(&[coef.f_view([-1])?, gram.f_view([-1])?, before], 0)?
            .f_to_device(tch::Device::Cpu)?;
        let small = Vec::<f64>::try_from(&small)?;
        let (coef, rest_small) = small.split_at((nz + m) * k);
        let (gram, before) = rest_small.split_at(k * k);
        for i in 0..m {
            for j in 0..k {
                let col = m - k + j;
                let val = if i < m - k {
                    coef[(nz + i) * k + j]
                } else {
                    // Within the new block: symmetrise rounding.
                    0.5 * (coef[(nz + i) * k + j] + coef[(nz + col) * k + (i - (m - k))])
                };
                h[i * m_max + col] = val;
                h[col * m_max + i] = val;
            }
        }
        let after: Vec<f64> = (0..k).map(|j| gram[j * k + j].max(0.0)).collect();
        pending = Pending {
            x: rest,
            before: before.to_vec(),
            after,
        };
        if m < 2 && m < dims {
            continue;
        }
        let (theta, y) = ritz_values(&h, m_max, m)?;
        let r = m.min(2);
        let yv = Vec::<f64>::try_from(&y.f_contiguous()?.f_view([-1])?)?;
        // |R y_last|^2 = y_last^T (R^T R) y_last, y_last the Ritz vector's last k entries.
        let estimate = |col: usize| -> f64 {
            let yl: Vec<f64> = (m - k..m).map(|i| yv[i * m + col]).collect();
            let mut s = 0.0;
            for a in 0..k {
                for b in 0..k {
                    s += yl[a] * gram[a * k + b] * yl[b];
                }
            }
            s.max(0.0).sqrt()
        };
        let exhausted = m == dims;
        let looks_done = exhausted || (0..r).all(|i| estimate(i) <= tol);
        if !(looks_done || m >= m_max) {
            continue;
        }
        let (mut pair, res) = ritz_pair(&store, &wt, nz, m, &theta, &y, matvecs, device)?;
        pair.converged = exhausted || res.iter().all(|&e| e <= tol && e.is_finite());
        if pair.converged || m >= m_max {
            return Ok(pair);
        }
    }
}

/// Eigenvalues (ascending) and eigenvectors (`[m, m]`, CPU) of the leading `m x m` block of
/// `h` (row-major, `m_max` wide).
fn ritz_values(h: &[f64], m_max: usize, m: usize) -> Result<(Vec<f64>, Tensor), TchError> {
    let hm: Vec<f64> = (0..m)
        .flat_map(|i| h[i * m_max..i * m_max + m].iter().copied())
        .collect();
    let (theta, y) = Tensor::f_from_slice(&hm)?
        .f_view([m as i64, m as i64])?
        .f_linalg_eigh("L")?;
    Ok((Vec::<f64>::try_from(&theta)?, y))
}

/// The two lowest Ritz pairs of the basis in `store` (rows `nz..nz + m`) and their explicit
/// residuals `|L x - theta x| = |W y - theta V y|`. `converged` is left `false`.
#[allow(clippy::too_many_arguments)]
fn ritz_pair(
    store: &Tensor,
    wt: &Tensor,
    nz: usize,
    m: usize,
    theta: &[f64],
    y: &Tensor,
    matvecs: usize,
    device: tch::Device,
) -> Result<(LowestPair, Vec<f64>), TchError> {
    let r = m.min(2);
    let y2 = y.f_narrow(1, 0, r as i64)?.f_to_device(device)?;
    let xr = t_matmul(&store.f_narrow(0, nz as i64, m as i64)?, &y2)?;
    let lx = t_matmul(&wt.f_narrow(0, 0, m as i64)?, &y2)?;
    let th = Tensor::f_from_slice(&theta[..r])?.f_to_device(device)?;
    let res = column_norms(&lx.f_sub(&xr.f_mul(&th)?)?)?;
    let pair = LowestPair {
        lambda: [theta[0], theta[r - 1]],
        vector: xr.f_select(1, 0)?,
        converged: false,
        matvecs,
    };
    Ok((pair, res))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A diagonal operator with a known spectrum: the pairs are its two smallest entries
    /// past the null direction `e_0`.
    #[test]
    fn finds_the_two_smallest_of_a_diagonal_operator() {
        let n = 200;
        let diag: Vec<f64> = (0..n)
            .map(|i| if i == 0 { 0.0 } else { 1.0 + i as f64 })
            .collect();
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
