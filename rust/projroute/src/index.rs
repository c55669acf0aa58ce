//! A flat (exact) cosine index over embeddings.

use ndarray::{s, Array2, ArrayView2, Axis};
use rayon::prelude::*;

use crate::error::{invalid, Result};
use crate::linalg;
use crate::packed::{PackedMatrix, MC, NR};

/// Index columns scored per task (64 panels): the scores of a block of queries against
/// them stay in L2 while their best k are taken, and no (B, N) score matrix is made.
const CHUNK: usize = 64 * NR;
/// Queries per task: the packed kernel's largest row block (their (ROWS, CHUNK) scores
/// take 480 KiB).
const ROWS: usize = MC;

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
    ///
    /// Each task scores a block of queries against a chunk of the index and keeps each
    /// query's best k there; a query's k best overall are the best of its chunks' k.
    pub fn search(&self, x: ArrayView2<f32>, k: usize) -> Result<(Array2<u32>, Array2<f32>)> {
        linalg::check_batch(x, self.dim(), "queries")?;
        let n = self.len();
        if k == 0 || k > n {
            return invalid(format!("k must be between 1 and the index size ({n}), got {k}"));
        }
        let q = linalg::normalize_rows(x, "queries")?;
        let b = q.nrows();
        let (row_blocks, chunks) = (b.div_ceil(ROWS), n.div_ceil(CHUNK));
        // Task t: rows of block t / chunks, columns of chunk t % chunks; each query's
        // (score, id) candidates, best first.
        let found: Vec<Vec<Vec<(f32, u32)>>> = (0..row_blocks * chunks)
            .into_par_iter()
            .map_init(
                || (Vec::new(), Vec::new()),
                |(sims, scratch), t| {
                    let rows = t / chunks * ROWS..(t / chunks * ROWS + ROWS).min(b);
                    let cols = t % chunks * CHUNK..(t % chunks * CHUNK + CHUNK).min(n);
                    let width = cols.len();
                    sims.resize(rows.len() * width, 0.0);
                    let panels = cols.start / NR..cols.end.div_ceil(NR);
                    self.embeddings_t.panels_into(q.slice(s![rows, ..]), panels, sims, width, scratch);
                    sims.chunks_exact(width)
                        .map(|sim| {
                            let ids = top_k(sim, k.min(width));
                            ids.into_iter().map(|i| (sim[i as usize], cols.start as u32 + i)).collect()
                        })
                        .collect()
                },
            )
            .collect();
        let mut ids = Array2::<u32>::zeros((b, k));
        let mut scores = Array2::<f32>::zeros((b, k));
        ids.axis_iter_mut(Axis(0)).into_par_iter().zip(scores.axis_iter_mut(Axis(0))).enumerate().for_each(
            |(i, (mut id_row, mut score_row))| {
                let (block, r) = (i / ROWS, i % ROWS);
                let mut best: Vec<(f32, u32)> = found[block * chunks..(block + 1) * chunks]
                    .iter()
                    .flat_map(|part| part[r].iter().copied())
                    .collect();
                keep_first(&mut best, k, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                for (j, (score, id)) in best.into_iter().enumerate() {
                    id_row[j] = id;
                    score_row[j] = score;
                }
            },
        );
        Ok((ids, scores))
    }
}

/// Below this many items per wanted one, [`top_k`] selects by partitioning instead of scanning.
const SCAN_RATIO: usize = 64;
/// Items per block of [`top_k`]'s scan.
const BLOCK: usize = 16;

/// Ids of the `k` (>= 1) highest of `sim`, best first; equal scores in id order (scores
/// compared by `f32::total_cmp`).
fn top_k(sim: &[f32], k: usize) -> Vec<u32> {
    if k.saturating_mul(SCAN_RATIO) > sim.len() {
        let by_score = |a: &u32, b: &u32| sim[*b as usize].total_cmp(&sim[*a as usize]).then(a.cmp(b));
        let mut order: Vec<u32> = (0..sim.len() as u32).collect();
        keep_first(&mut order, k, by_score);
        return order;
    }
    // The k-th largest of the blocks' largest keys bounds the k-th best from below, so
    // only blocks reaching it (k of them, and ties) are scanned, each item offered to a
    // sorted buffer of the best k. `total_key` orders like `total_cmp`; the blocks'
    // maxima are one vectorised pass.
    let total_key = |v: f32| {
        let bits = v.to_bits() as i32;
        bits ^ ((((bits >> 31) as u32) >> 1) as i32)
    };
    let maxima: Vec<i32> = sim
        .chunks_exact(BLOCK)
        .map(|block| {
            let block: &[f32; BLOCK] = block.try_into().expect("chunks_exact gives whole blocks");
            block.iter().fold(i32::MIN, |m, &v| m.max(total_key(v)))
        })
        .collect();
    // At least 64k items, so at least 4k blocks.
    let floor = *maxima.clone().select_nth_unstable_by(k - 1, |a, b| b.cmp(a)).1;
    let mut best: Vec<(i32, u32)> = Vec::with_capacity(k + 1);
    let mut offer = |i: usize, v: f32| {
        let key = total_key(v);
        if best.len() == k && key <= best[k - 1].0 {
            return;
        }
        // After the equal keys: their ids are lower.
        let at = best.partition_point(|&(b, _)| b >= key);
        best.insert(at, (key, i as u32));
        best.truncate(k);
    };
    for (b, _) in maxima.iter().enumerate().filter(|(_, &m)| m >= floor) {
        (b * BLOCK..(b + 1) * BLOCK).for_each(|i| offer(i, sim[i]));
    }
    (maxima.len() * BLOCK..sim.len()).for_each(|i| offer(i, sim[i]));
    best.into_iter().map(|(_, i)| i).collect()
}

/// Keep the first `k` of `items` under `order`, sorted by it.
fn keep_first<T>(items: &mut Vec<T>, k: usize, order: impl Fn(&T, &T) -> std::cmp::Ordering) {
    if k < items.len() {
        items.select_nth_unstable_by(k - 1, &order);
        items.truncate(k);
    }
    items.sort_unstable_by(&order);
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

    /// Across row blocks and index chunks (the last one narrower than k), the search
    /// gives exactly the full sort of every score. Rows of four entries of ±1 keep
    /// every score exact, and tied ones common.
    #[test]
    fn chunked_search_equals_a_full_sort() {
        let mut rng = 11u64;
        let mut next = |below: usize| {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (rng >> 33) as usize % below
        };
        let d = 16;
        let mut rows = |n: usize| {
            let mut x = Array2::<f32>::zeros((n, d));
            for mut row in x.outer_iter_mut() {
                while row.iter().filter(|v| **v != 0.0).count() < 4 {
                    row[next(d)] = if next(2) == 0 { 1.0 } else { -1.0 };
                }
            }
            x
        };
        let (n, b) = (2 * CHUNK + 452, ROWS + 10);
        let (embeddings, queries) = (rows(n), rows(b));
        let index = FlatIndex::new(embeddings.view()).unwrap();
        let exact = queries.dot(&embeddings.t()) / 4.0;
        for k in [1, 10, 700, n] {
            let (ids, scores) = index.search(queries.view(), k).unwrap();
            for (i, sim) in exact.outer_iter().enumerate() {
                let mut want: Vec<u32> = (0..n as u32).collect();
                want.sort_by(|a, b| sim[*b as usize].total_cmp(&sim[*a as usize]).then(a.cmp(b)));
                assert_eq!(ids.row(i).to_vec(), want[..k], "query {i}, k {k}");
                assert!(ids.row(i).iter().zip(scores.row(i)).all(|(&j, &s)| s == sim[j as usize]));
            }
        }
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
