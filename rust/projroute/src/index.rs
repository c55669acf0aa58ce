//! A flat (exact) cosine index over embeddings.

use ndarray::{s, Array2, ArrayView2, Axis};
use rayon::prelude::*;

use crate::error::{invalid, Result};
use crate::linalg;
use crate::packed::PackedMatrix;

/// Queries scored per GEMM block, to bound memory at (block, N) floats.
const BLOCK: usize = 1024;

/// Exact cosine search over N unit-normalised embeddings.
#[derive(Clone, Debug)]
pub struct FlatIndex {
    /// Unit embeddings, transposed (D, N) and packed for the scoring GEMM.
    embeddings_t: PackedMatrix,
}

impl FlatIndex {
    /// Index the rows of `embeddings` (N, D); rows are normalised here.
    pub fn new(embeddings: ArrayView2<f32>) -> Result<Self> {
        linalg::check_batch(embeddings, embeddings.ncols(), "index embeddings")?;
        let unit = linalg::normalize_rows(embeddings, "index embeddings")?;
        Ok(FlatIndex { embeddings_t: PackedMatrix::pack(unit.t()) })
    }

    /// Number of indexed items.
    pub fn len(&self) -> usize {
        self.embeddings_t.cols()
    }

    /// True when nothing is indexed (never, as `new` rejects that).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.embeddings_t.rows()
    }

    /// The `k` nearest items of each query `x` (B, D) by cosine: `(ids, scores)`, both
    /// (B, k), best first, ties to the lower id.
    pub fn search(&self, x: ArrayView2<f32>, k: usize) -> Result<(Array2<u32>, Array2<f32>)> {
        linalg::check_batch(x, self.dim(), "queries")?;
        if k == 0 || k > self.len() {
            return invalid(format!("k must be between 1 and the index size ({}), got {k}", self.len()));
        }
        let q = linalg::normalize_rows(x, "queries")?;
        let b = q.nrows();
        let mut ids = Array2::<u32>::zeros((b, k));
        let mut scores = Array2::<f32>::zeros((b, k));
        for start in (0..b).step_by(BLOCK) {
            let end = (start + BLOCK).min(b);
            let sims = self.embeddings_t.matmul(q.slice(s![start..end, ..]));
            ids.slice_mut(s![start..end, ..])
                .axis_iter_mut(Axis(0))
                .into_par_iter()
                .zip(scores.slice_mut(s![start..end, ..]).axis_iter_mut(Axis(0)))
                .zip(sims.axis_iter(Axis(0)))
                .for_each(|((mut id_row, mut score_row), sim)| {
                    let sim = sim.as_slice().expect("fresh GEMM output is contiguous");
                    for (j, i) in top_k(sim, k).into_iter().enumerate() {
                        id_row[j] = i;
                        score_row[j] = sim[i as usize];
                    }
                });
        }
        Ok((ids, scores))
    }
}

/// Below this many items per wanted one, [`top_k`] selects by partitioning instead of scanning.
const SCAN_RATIO: usize = 64;

/// Ids of the `k` (>= 1) highest of `sim`, best first; equal scores in id order (scores
/// compared by `f32::total_cmp`).
fn top_k(sim: &[f32], k: usize) -> Vec<u32> {
    if k.saturating_mul(SCAN_RATIO) > sim.len() {
        let by_score = |a: &u32, b: &u32| sim[*b as usize].total_cmp(&sim[*a as usize]).then(a.cmp(b));
        let mut order: Vec<u32> = (0..sim.len() as u32).collect();
        if k < order.len() {
            order.select_nth_unstable_by(k - 1, by_score);
            order.truncate(k);
        }
        order.sort_unstable_by(by_score);
        return order;
    }
    // One pass with a sorted buffer of the best k: almost every item is turned away by
    // one integer comparison with the k-th best. `total_key` orders like `total_cmp`.
    let total_key = |v: f32| {
        let bits = v.to_bits() as i32;
        bits ^ ((((bits >> 31) as u32) >> 1) as i32)
    };
    let mut best: Vec<(i32, u32)> = Vec::with_capacity(k + 1);
    for (i, &v) in sim.iter().enumerate() {
        let key = total_key(v);
        if best.len() == k && key <= best[k - 1].0 {
            continue;
        }
        // After the equal keys: their ids are lower.
        let at = best.partition_point(|&(b, _)| b >= key);
        best.insert(at, (key, i as u32));
        best.truncate(k);
    }
    best.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn finds_nearest_by_cosine() {
        let index = FlatIndex::new(array![[1.0f32, 0.0], [0.0, 2.0], [1.0, 1.0]].view()).unwrap();
        let (ids, scores) = index.search(array![[0.0f32, 5.0], [3.0, 0.1]].view(), 2).unwrap();
        assert_eq!(ids, array![[1, 2], [0, 2]]);
        assert!((scores[[0, 0]] - 1.0).abs() < 1e-6);
        assert!(index.search(array![[1.0f32, 0.0]].view(), 4).is_err());
        assert!(index.search(array![[1.0f32, 0.0]].view(), 0).is_err());
    }

    #[test]
    fn both_selections_give_the_sorted_order_with_ties_to_the_lower_id() {
        let mut rng = 7u64;
        let mut next = || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (rng >> 33) as u32
        };
        for n in [1usize, 5, 64, 65, 640, 5000] {
            // Few distinct values, so that ties are common; signed zeros and infinities too.
            let mut sim: Vec<f32> = (0..n).map(|_| (next() % 9) as f32 * 0.25 - 1.0).collect();
            for (i, v) in [0.0f32, -0.0, f32::INFINITY, f32::NEG_INFINITY].into_iter().enumerate() {
                if i < n {
                    sim[next() as usize % n] = v;
                }
            }
            let mut want: Vec<u32> = (0..n as u32).collect();
            want.sort_by(|a, b| sim[*b as usize].total_cmp(&sim[*a as usize]).then(a.cmp(b)));
            for k in [1, 2, 10, n / 2, n].into_iter().filter(|&k| (1..=n).contains(&k)) {
                assert_eq!(top_k(&sim, k), want[..k], "n {n} k {k}");
            }
        }
    }
}
