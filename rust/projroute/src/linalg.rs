//! Row helpers: normalisation and batch checks.

use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut1, Axis};
use rayon::prelude::*;

use crate::error::{invalid, Result};
use crate::packed::on_this_thread_now;

/// Rows scaled to unit L2 norm. Fails on a row of zero norm, naming it.
pub(crate) fn normalize_rows(x: ArrayView2<f32>, what: &str) -> Result<Array2<f32>> {
    let mut out = x.to_owned();
    let scale = |(i, mut row): (usize, ArrayViewMut1<f32>)| {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 && norm.is_finite() {
            row.mapv_inplace(|v| v / norm);
            None
        } else {
            Some(i)
        }
    };
    let rows = out.axis_iter_mut(Axis(0));
    let bad = match on_this_thread_now() {
        true => rows.enumerate().filter_map(scale).min(),
        false => rows.into_par_iter().enumerate().filter_map(scale).min(),
    };
    match bad {
        Some(i) => invalid(format!("{what} row {i} has zero norm; cosine is undefined")),
        None => Ok(out),
    }
}

/// Whether no value is NaN or infinite (an exponent of all ones), branch-free so that it
/// vectorises: a batch check reads every value.
fn all_finite(v: &[f32]) -> bool {
    v.iter().fold(0, |bad, v| bad | u32::from(v.to_bits() & 0x7f80_0000 == 0x7f80_0000)) == 0
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
    let finite = |row: ArrayView1<f32>| match row.as_slice() {
        Some(row) => all_finite(row),
        None => all_finite(&row.to_vec()),
    };
    let ok = match on_this_thread_now() {
        true => x.axis_iter(Axis(0)).all(finite),
        false => x.axis_iter(Axis(0)).into_par_iter().all(finite),
    };
    if !ok {
        return invalid(format!("{what} contains NaN or infinite values"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

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
        // Every non-finite value, anywhere in a batch, on the pool and on this thread;
        // the largest finite values pass.
        for bad in [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = Array2::<f32>::from_elem((40, 33), f32::MAX);
            x[[17, 5]] = -f32::MAX;
            check_batch(x.view(), 33, "q").unwrap();
            x[[29, 32]] = bad;
            assert!(check_batch(x.view(), 33, "q").is_err(), "{bad}");
            assert!(crate::packed::on_this_thread(|| check_batch(x.view(), 33, "q")).is_err(), "{bad}");
        }
    }
}
