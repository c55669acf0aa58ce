//! Thin, safe wrappers over the `gemm` crate for ndarray views, plus row helpers.

use gemm::Parallelism;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use crate::error::{invalid, Result};

/// `c = a @ b`, or `c += a @ b` when `accumulate`, on the whole rayon pool.
///
/// `a`: (m, k), `b`: (k, n), `c`: (m, n); any strides (no copies are made).
pub(crate) fn matmul_into(a: ArrayView2<f32>, b: ArrayView2<f32>, mut c: ArrayViewMut2<f32>, accumulate: bool) {
    let (m, k) = a.dim();
    let n = b.ncols();
    debug_assert_eq!(b.nrows(), k);
    debug_assert_eq!(c.dim(), (m, n));
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    let parallelism = Parallelism::Rayon(rayon::current_num_threads());
    let (a_rs, a_cs) = (a.strides()[0], a.strides()[1]);
    let (b_rs, b_cs) = (b.strides()[0], b.strides()[1]);
    let (c_rs, c_cs) = (c.strides()[0], c.strides()[1]);
    // SAFETY: the pointers and strides come from live ndarray views whose shapes were
    // checked above to be (m, k), (k, n) and (m, n); `c` is borrowed mutably, so it
    // cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs,
            c_rs,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `a @ b` into a new array, using all threads.
pub(crate) fn matmul(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
    let mut c = Array2::<f32>::zeros((a.nrows(), b.ncols()));
    matmul_into(a, b, c.view_mut(), false);
    c
}

/// Rows scaled to unit L2 norm. Fails on a row of zero norm, naming it.
pub(crate) fn normalize_rows(x: ArrayView2<f32>, what: &str) -> Result<Array2<f32>> {
    let mut out = x.to_owned();
    let bad = out
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .filter_map(|(i, mut row)| {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm > 0.0 && norm.is_finite() {
                row.mapv_inplace(|v| v / norm);
                None
            } else {
                Some(i)
            }
        })
        .min();
    match bad {
        Some(i) => invalid(format!("{what} row {i} has zero norm; cosine is undefined")),
        None => Ok(out),
    }
}

/// Check a query batch: non-empty, `dim` columns, all values finite.
pub(crate) fn check_batch(x: ArrayView2<f32>, dim: usize, what: &str) -> Result<()> {
    let (b, d) = x.dim();
    if b == 0 {
        return invalid(format!("{what} is an empty batch (0 rows)"));
    }
    if d != dim {
        return invalid(format!("{what} has {d} columns, expected {dim}"));
    }
    let finite = x
        .axis_iter(Axis(0))
        .into_par_iter()
        .all(|row| row.iter().all(|v| v.is_finite()));
    if !finite {
        return invalid(format!("{what} contains NaN or infinite values"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn matmul_matches_ndarray_dot_for_strided_views() {
        let a = Array2::from_shape_fn((7, 5), |(i, j)| (i * 5 + j) as f32 * 0.1 - 1.0);
        let b = Array2::from_shape_fn((4, 5), |(i, j)| (i as f32 - j as f32) * 0.3);
        // b.t() is a column-major view: exercise non-unit strides.
        let c = matmul(a.view(), b.t());
        let expected = a.dot(&b.t());
        for (x, y) in c.iter().zip(expected.iter()) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }

    #[test]
    fn accumulate_adds_to_destination() {
        let a = array![[1.0f32, 2.0]];
        let b = array![[3.0f32], [4.0]];
        let mut c = array![[10.0f32]];
        matmul_into(a.view(), b.view(), c.view_mut(), true);
        assert_eq!(c[[0, 0]], 21.0);
    }

    #[test]
    fn normalize_rejects_zero_rows() {
        let x = array![[3.0f32, 4.0], [0.0, 0.0]];
        let err = normalize_rows(x.view(), "queries").unwrap_err().to_string();
        assert!(err.contains("row 1"), "{err}");
        let y = normalize_rows(x.slice(ndarray::s![..1, ..]), "queries").unwrap();
        assert!((y[[0, 0]] - 0.6).abs() < 1e-6);
    }

    #[test]
    fn check_batch_rejects_bad_batches() {
        let empty = Array2::<f32>::zeros((0, 3));
        assert!(check_batch(empty.view(), 3, "q").is_err());
        let x = array![[1.0f32, f32::NAN]];
        assert!(check_batch(x.view(), 2, "q").unwrap_err().to_string().contains("NaN"));
        assert!(check_batch(x.view(), 3, "q").unwrap_err().to_string().contains("columns"));
    }
}
