//! Row helpers: normalisation and batch checks.

use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

use crate::error::{invalid, Result};

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
        assert!(check_batch(x.view(), 2, "q")
            .unwrap_err()
            .to_string()
            .contains("NaN"));
        assert!(check_batch(x.view(), 3, "q")
            .unwrap_err()
            .to_string()
            .contains("columns"));
    }
}
