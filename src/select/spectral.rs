//! SALN's spectral step: cosine graph -> Laplacian -> Fiedler vector.
//!
//! For features `F` (`[n, d]`): `u_i = f_i / |f_i|`, `S_ij = w(cos(u_i, u_j))` for `i != j`,
//! `S_ii = 0`, `L = D - S` with `D = diag(sum_j S_ij)`, and the Fiedler vector is the
//! eigenvector of `L`'s second-smallest eigenvalue `lambda2`.
//!
//! Raw cosine can be negative, which breaks `L`'s positive semi-definiteness; the weight
//! mapping makes every weight non-negative ([`WeightMapping`]).
//!
//! Everything is computed in float64 with tensor ops on the features' device; the dense
//! solver is libtorch's `linalg_eigh` (`O(n^3)`: fine up to n ~ 1024).
//!
//! The sign of an eigenvector is arbitrary; saln makes the entry of largest magnitude
//! positive (ties: the lowest position), so a selection does not depend on the solver.
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How a cosine similarity becomes an edge weight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightMapping {
    /// `max(0, cos)`: dissimilar pairs get no edge.
    #[default]
    Clip,
    /// `(1 + cos) / 2`: every pair keeps an edge, rescaled to [0, 1].
    Shift,
}

/// The Fiedler vector of a super-batch and the two eigenvalues around it.
#[derive(Debug, Clone, PartialEq)]
pub struct Spectrum {
    /// Canonically signed Fiedler vector, one entry per sample, unit norm.
    pub vector: Vec<f64>,
    /// Second-smallest eigenvalue of `L`.
    pub lambda2: f64,
    /// Third-smallest eigenvalue of `L` (equal to `lambda2` when `n = 2`).
    pub lambda3: f64,
}

/// Unit-normalised rows in float64. `features`: `[n, d]` -> `[n, d]` f64. A zero or
/// non-finite row is an error naming its position.
pub fn normalized_rows(features: &Tensor) -> Result<Tensor, String> {
    let t = |e: tch::TchError| e.to_string();
    let size = features.size();
    if size.len() != 2 || size[0] == 0 || size[1] == 0 {
        return Err(format!(
            "features must be [n, d] with n, d > 0, got {size:?}"
        ));
    }
    let x = features.f_to_kind(Kind::Double).map_err(t)?;
    let norms = x
        .f_square()
        .and_then(|s| s.f_sum_dim_intlist(1, false, Kind::Double))
        .and_then(|s| s.f_sqrt())
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
        return Err(format!("feature vector of sample {first} {what}"));
    }
    x.f_div(&norms.f_unsqueeze(1).map_err(t)?).map_err(t)
}

/// Weighted similarity matrix with zero diagonal. `u`: `[n, d]` unit rows -> `[n, n]`.
pub fn similarity(u: &Tensor, mapping: WeightMapping) -> Result<Tensor, tch::TchError> {
    let cos = u.f_matmul(&u.f_tr()?)?;
    let mut s = match mapping {
        WeightMapping::Clip => cos.f_clamp_min(0.0)?,
        WeightMapping::Shift => cos.f_add_scalar(1.0)?.f_mul_scalar(0.5)?,
    };
    let _ = s.f_fill_diagonal_(0.0, false)?;
    Ok(s)
}

/// `L = D - S`. `[n, n]` -> `[n, n]`.
pub fn laplacian(s: &Tensor) -> Result<Tensor, tch::TchError> {
    let deg = s.f_sum_dim_intlist(1, false, Kind::Double)?;
    deg.f_diag_embed(0, -2, -1)?.f_sub(s)
}

/// Makes the entry of largest magnitude positive (ties: lowest position).
pub fn canonical_sign(v: &mut [f64]) {
    let mut best = 0;
    for i in 1..v.len() {
        if v[i].abs() > v[best].abs() {
            best = i;
        }
    }
    if v.get(best).is_some_and(|&x| x < 0.0) {
        v.iter_mut().for_each(|x| *x = -*x);
    }
}

/// The Fiedler vector of the cosine graph of `features` (`[n, d]`), by dense `eigh`.
/// `n = 1` gives `[0.0]` with both eigenvalues 0.
pub fn fiedler(features: &Tensor, mapping: WeightMapping) -> Result<Spectrum, String> {
    let u = normalized_rows(features)?;
    let n = u.size()[0] as usize;
    if n == 1 {
        return Ok(Spectrum {
            vector: vec![0.0],
            lambda2: 0.0,
            lambda3: 0.0,
        });
    }
    let t = |e: tch::TchError| e.to_string();
    let l = similarity(&u, mapping)
        .and_then(|s| laplacian(&s))
        .map_err(t)?;
    let (evals, evecs) = l.f_linalg_eigh("L").map_err(t)?;
    let evals: Vec<f64> =
        Vec::<f64>::try_from(&evals.f_to_device(tch::Device::Cpu).map_err(t)?).map_err(t)?;
    let col = evecs
        .f_select(1, 1)
        .and_then(|c| c.f_contiguous())
        .and_then(|c| c.f_to_device(tch::Device::Cpu))
        .map_err(t)?;
    let mut vector: Vec<f64> = Vec::<f64>::try_from(&col).map_err(t)?;
    canonical_sign(&mut vector);
    Ok(Spectrum {
        vector,
        lambda2: evals[1],
        lambda3: if n > 2 { evals[2] } else { evals[1] },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feats(rows: &[&[f32]]) -> Tensor {
        let d = rows[0].len();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, d as i64])
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
        for mapping in [WeightMapping::Clip, WeightMapping::Shift] {
            let s = fiedler(&f, mapping).unwrap();
            let a = s.vector[..3].iter().all(|&x| x > 0.0);
            let b = s.vector[3..].iter().all(|&x| x < 0.0);
            let a2 = s.vector[..3].iter().all(|&x| x < 0.0);
            let b2 = s.vector[3..].iter().all(|&x| x > 0.0);
            assert!((a && b) || (a2 && b2), "{mapping:?}: {:?}", s.vector);
            assert!(s.lambda2 >= -1e-9 && s.lambda3 >= s.lambda2);
        }
    }

    #[test]
    fn laplacian_rows_sum_to_zero() {
        let f = Tensor::randn([20, 5], (Kind::Float, tch::Device::Cpu));
        let u = normalized_rows(&f).unwrap();
        let l = laplacian(&similarity(&u, WeightMapping::Clip).unwrap()).unwrap();
        let rs: Vec<f64> = Vec::try_from(&l.sum_dim_intlist(1, false, Kind::Double)).unwrap();
        assert!(rs.iter().all(|x| x.abs() < 1e-12));
    }

    #[test]
    fn zero_and_nan_features_name_the_sample() {
        let f = feats(&[&[1.0, 0.0], &[0.0, 0.0], &[0.5, 0.5]]);
        let e = fiedler(&f, WeightMapping::Clip).unwrap_err();
        assert_eq!(e, "feature vector of sample 1 is all zeros");
        let f = feats(&[&[1.0, 0.0], &[0.3, 0.1], &[f32::NAN, 0.5]]);
        let e = fiedler(&f, WeightMapping::Clip).unwrap_err();
        assert!(e.contains("sample 2") && e.contains("non-finite"), "{e}");
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
    fn tiny_inputs_are_defined() {
        let one = fiedler(&feats(&[&[1.0, 2.0]]), WeightMapping::Clip).unwrap();
        assert_eq!(one.vector, vec![0.0]);
        let two = fiedler(&feats(&[&[1.0, 0.0], &[0.0, 1.0]]), WeightMapping::Shift).unwrap();
        assert_eq!(two.vector.len(), 2);
        assert_eq!(two.lambda2, two.lambda3);
    }
}
