//! Blending per-cluster outputs with routing weights.
//!
//! `blend_maps` computes `out_i = Σ_j w_ij · (x_i @ W_{c_ij})` grouped by cluster: the
//! queries routed to a cluster are gathered (pre-scaled by their weights) and sent
//! through one GEMM with that cluster's map, so the cost is B·k·D², not B·K·D². Each
//! row's terms are then summed in its routing order, so a row's output is the same bits
//! whatever batch it comes in and however many threads run (batching, micro-batching
//! and distributed jobs reproduce a one-query call exactly).
//! [`LowRank`] maps, `W_k = base + U_k M_k`, are blended the same way with each term's
//! product taken through the cluster's rank, `(x_i U_k) M_k`, and the base one more
//! term of each row. `blend_vectors` computes `out_i = Σ_j w_ij · a_{c_ij}` for per-cluster vectors.

use std::cell::RefCell;

use ndarray::{s, Array2, ArrayView2, ArrayViewMut2, Axis, Zip};
use rayon::prelude::*;

use crate::fastmath;
use crate::packed::PackedMatrix;
use crate::precision::Precision;
use crate::routing::Routing;

/// Rows blended at once: bounds the buffer of per-term products (TILE · k · D_out floats).
const TILE: usize = 4096;
/// Product buffers up to this many floats in all (32 MiB) are kept for the calling
/// thread's next call, so that a large batch does not fault fresh pages in every time.
const KEEP_FLOATS: usize = 1 << 23;

thread_local! {
    /// Each bin's product buffer from this thread's last [`blend_tile`].
    static PRODUCTS: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// Per-cluster maps that a blend multiplies the routed queries by.
trait ClusterMaps: Sync {
    fn n_clusters(&self) -> usize;
    fn dim_out(&self) -> usize;
    /// `c = x @ W_cluster`: `x` (n, D_in) row-major, `c` (n, D_out) row-major;
    /// `scratch` is reused between calls.
    fn product_into(&self, cluster: usize, x: ArrayView2<f32>, c: &mut [f32], scratch: &mut Vec<f32>);
}

impl ClusterMaps for [PackedMatrix] {
    fn n_clusters(&self) -> usize {
        self.len()
    }

    fn dim_out(&self) -> usize {
        self.first().map_or(0, PackedMatrix::cols)
    }

    fn product_into(&self, cluster: usize, x: ArrayView2<f32>, c: &mut [f32], scratch: &mut Vec<f32>) {
        self[cluster].matmul_into(x, c, self.dim_out(), scratch);
    }
}

/// Maps `W_k = base + U_k M_k`: a common base (D_in, D_out) and per cluster a
/// correction of rank `r_k`, `U_k` (D_in, r_k) and `M_k` (r_k, D_out); `r_k` may be 0.
/// Stored so, a cluster's map costs `r_k (D_in + D_out)` floats instead of
/// `D_in D_out`.
#[derive(Clone, Debug)]
pub(crate) struct LowRank {
    pub(crate) base: PackedMatrix,
    pub(crate) spans: Vec<PackedMatrix>,
    pub(crate) corrections: Vec<PackedMatrix>,
}

impl LowRank {
    /// From the base and each cluster's `(U_k, M_k)`; packed here at `precision`.
    /// Panics unless the shapes agree (callers check them first).
    pub(crate) fn new(
        base: ArrayView2<f32>,
        factors: &[(ArrayView2<f32>, ArrayView2<f32>)],
        precision: Precision,
    ) -> Self {
        let (d_in, d_out) = base.dim();
        for (u, m) in factors {
            assert!(u.nrows() == d_in && m.ncols() == d_out && u.ncols() == m.nrows(), "factor shapes differ");
        }
        LowRank {
            base: PackedMatrix::pack_as(base, precision),
            spans: factors.iter().map(|(u, _)| PackedMatrix::pack_as(*u, precision)).collect(),
            corrections: factors.iter().map(|(_, m)| PackedMatrix::pack_as(*m, precision)).collect(),
        }
    }
}

/// The terms of [`LowRank`] maps as cluster maps: each cluster's correction `U_k M_k`,
/// and the base as cluster K.
struct Terms<'a>(&'a LowRank);

impl ClusterMaps for Terms<'_> {
    fn n_clusters(&self) -> usize {
        self.0.spans.len() + 1
    }

    fn dim_out(&self) -> usize {
        self.0.base.cols()
    }

    fn product_into(&self, cluster: usize, x: ArrayView2<f32>, c: &mut [f32], scratch: &mut Vec<f32>) {
        if cluster == self.0.spans.len() {
            return self.0.base.matmul_into(x, c, self.dim_out(), scratch);
        }
        let (u, m) = (&self.0.spans[cluster], &self.0.corrections[cluster]);
        let (n, r) = (x.nrows(), u.cols());
        scratch.resize(n * r, 0.0);
        u.matmul_into(x, scratch, r, &mut Vec::new());
        let t = ArrayView2::from_shape((n, r), &scratch[..]).expect("n * r floats");
        m.matmul_into(t, c, self.dim_out(), &mut Vec::new());
    }
}

/// A routed term: the query (row in the tile), its weight, and its position among all
/// the tile's terms (row by row, in routing order).
type Term = (u32, f32, u32);

/// One unit of work: a slice of the terms routed to one cluster.
struct Chunk<'a> {
    cluster: usize,
    rows: &'a [Term],
}

/// The terms of rows `rows` routed to each cluster.
fn group_by_cluster(routing: &Routing, rows: std::ops::Range<usize>, n_clusters: usize) -> Vec<Vec<Term>> {
    let mut groups: Vec<Vec<Term>> = vec![Vec::new(); n_clusters];
    let mut term = 0u32;
    for (local, i) in rows.enumerate() {
        let (c, w) = routing.row(i);
        for (&c, &w) in c.iter().zip(w) {
            groups[c as usize].push((local as u32, w, term));
            term += 1;
        }
    }
    groups
}

/// Split the groups into chunks and deal them into `n_bins` bins of about equal rows
/// (largest first, each to the lightest bin), so that every thread gets a share even
/// when one cluster takes most queries.
fn plan(groups: &[Vec<Term>], n_bins: usize) -> Vec<Vec<Chunk<'_>>> {
    let total: usize = groups.iter().map(Vec::len).sum();
    let max_rows = total.div_ceil(2 * n_bins).max(32);
    let mut chunks: Vec<Chunk<'_>> = groups
        .iter()
        .enumerate()
        .flat_map(|(cluster, rows)| rows.chunks(max_rows).map(move |rows| Chunk { cluster, rows }))
        .collect();
    chunks.sort_by(|a, b| b.rows.len().cmp(&a.rows.len()).then(a.cluster.cmp(&b.cluster)));
    let mut bins: Vec<(usize, Vec<Chunk<'_>>)> = (0..n_bins).map(|_| (0, Vec::new())).collect();
    for chunk in chunks {
        let lightest = bins.iter_mut().min_by_key(|(load, _)| *load).expect("n_bins >= 1");
        lightest.0 += chunk.rows.len();
        lightest.1.push(chunk);
    }
    bins.into_iter().map(|(_, chunks)| chunks).filter(|c| !c.is_empty()).collect()
}

/// `out_i = Σ_j w_ij · (x_i @ maps[c_ij])`, each row's terms summed in routing order.
///
/// `x`: (B, D_in); `maps`: K packed (D_in, D_out) maps; returns (B, D_out).
pub fn blend_maps(x: ArrayView2<f32>, routing: &Routing, maps: &[PackedMatrix]) -> Array2<f32> {
    blend(x, routing, maps)
}

/// `out_i = Σ_j w_ij · (x_i @ W_{c_ij})` for [`LowRank`] maps: the corrections blended
/// as [`blend_maps`] blends maps, with the base one more term of every row, last, at
/// the row's total weight `Σ_j w_ij`.
///
/// `x`: (B, D_in); returns (B, D_out).
pub(crate) fn blend_low_rank(x: ArrayView2<f32>, routing: &Routing, maps: &LowRank) -> Array2<f32> {
    let base = maps.spans.len() as u32;
    let mut with_base = Routing {
        offsets: Vec::with_capacity(routing.len() + 1),
        clusters: Vec::with_capacity(routing.clusters.len() + routing.len()),
        weights: Vec::with_capacity(routing.weights.len() + routing.len()),
    };
    with_base.offsets.push(0);
    for i in 0..routing.len() {
        let (c, w) = routing.row(i);
        with_base.clusters.extend_from_slice(c);
        with_base.clusters.push(base);
        with_base.weights.extend_from_slice(w);
        with_base.weights.push(w.iter().sum());
        with_base.offsets.push(with_base.clusters.len());
    }
    blend(x, &with_base, &Terms(maps))
}

/// The grouped blend over any [`ClusterMaps`].
fn blend<M: ClusterMaps + ?Sized>(x: ArrayView2<f32>, routing: &Routing, maps: &M) -> Array2<f32> {
    let d_out = maps.dim_out();
    let mut out = Array2::<f32>::zeros((x.nrows(), d_out));
    for start in (0..x.nrows()).step_by(TILE) {
        let end = (start + TILE).min(x.nrows());
        blend_tile(x, routing, start..end, maps, out.slice_mut(s![start..end, ..]));
    }
    out
}

/// [`blend_maps`] for the rows `rows` of `x` into `out` (rows.len(), D_out).
fn blend_tile<M: ClusterMaps + ?Sized>(
    x: ArrayView2<f32>,
    routing: &Routing,
    rows: std::ops::Range<usize>,
    maps: &M,
    mut out: ArrayViewMut2<f32>,
) {
    let (d_in, d_out) = (x.ncols(), out.ncols());
    let first = rows.start;
    let groups = group_by_cluster(routing, rows.clone(), maps.n_clusters());
    let bins = plan(&groups, rayon::current_num_threads().max(1));
    // Where each term's product lands: (bin, row of that bin's products).
    let n_terms: usize = groups.iter().map(Vec::len).sum();
    let mut place = vec![(0u32, 0u32); n_terms];
    for (b, chunks) in bins.iter().enumerate() {
        for (r, &(_, _, term)) in chunks.iter().flat_map(|c| c.rows).enumerate() {
            place[term as usize] = (b as u32, r as u32);
        }
    }
    let mut products = PRODUCTS.with(|p| std::mem::take(&mut *p.borrow_mut()));
    products.resize_with(bins.len(), Vec::new);
    bins.par_iter().zip(products.par_iter_mut()).for_each(|(chunks, product)| {
        let n_rows: usize = chunks.iter().map(|c| c.rows.len()).sum();
        if product.len() < n_rows * d_out {
            // Every float of the first n_rows · d_out is written below before it is read.
            product.resize(n_rows * d_out, 0.0);
        }
        let mut gathered = Array2::<f32>::zeros((0, d_in));
        let mut scratch = Vec::new();
        let mut at = 0;
        for chunk in chunks {
            let n = chunk.rows.len();
            if gathered.nrows() < n {
                gathered = Array2::zeros((n, d_in));
            }
            for (dst, &(i, w, _)) in gathered.axis_iter_mut(Axis(0)).zip(chunk.rows) {
                scale_into(dst, x.row(first + i as usize), w);
            }
            let c = &mut product[at * d_out..(at + n) * d_out];
            maps.product_into(chunk.cluster, gathered.slice(s![..n, ..]), c, &mut scratch);
            at += n;
        }
    });
    let mut term_start = vec![0usize; rows.len() + 1];
    for (local, i) in rows.enumerate() {
        term_start[local + 1] = term_start[local] + routing.row(i).0.len();
    }
    out.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each(|(local, mut row)| {
        let row = row.as_slice_mut().expect("rows of the output are contiguous");
        for &(b, r) in &place[term_start[local]..term_start[local + 1]] {
            let src = &products[b as usize][r as usize * d_out..(r as usize + 1) * d_out];
            fastmath::add_weighted_row(row, src, 1.0);
        }
    });
    if products.iter().map(Vec::capacity).sum::<usize>() <= KEEP_FLOATS {
        PRODUCTS.with(|p| *p.borrow_mut() = products);
    }
}

/// `dst = w · src`, vectorised where both rows are contiguous.
fn scale_into(mut dst: ndarray::ArrayViewMut1<f32>, src: ndarray::ArrayView1<f32>, w: f32) {
    match (dst.as_slice_mut(), src.as_slice()) {
        (Some(d), Some(s)) => fastmath::scaled_copy(d, s, w),
        _ => Zip::from(dst).and(src).for_each(|d, &v| *d = v * w),
    }
}

/// `out_i = Σ_j w_ij · vectors[c_ij]`, row by row (for sparse routings; a dense one
/// is better served by one GEMM with the dense weights).
///
/// `vectors`: (K, D_out); returns (B, D_out).
pub fn blend_vectors(routing: &Routing, vectors: ArrayView2<f32>) -> Array2<f32> {
    let mut out = Array2::<f32>::zeros((routing.len(), vectors.ncols()));
    out.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each(|(i, mut row)| {
        let (c, w) = routing.row(i);
        for (&c, &w) in c.iter().zip(w) {
            row.scaled_add(w, &vectors.row(c as usize));
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, ArrayView3};

    fn naive(x: ArrayView2<f32>, routing: &Routing, maps: ArrayView3<f32>) -> Array2<f32> {
        let mut out = Array2::zeros((x.nrows(), maps.dim().2));
        for i in 0..x.nrows() {
            let (c, w) = routing.row(i);
            for (&c, &w) in c.iter().zip(w) {
                let y = x.row(i).dot(&maps.index_axis(Axis(0), c as usize));
                out.row_mut(i).scaled_add(w, &y);
            }
        }
        out
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    #[test]
    fn grouped_blend_equals_naive_loop() {
        let mut seed = 7;
        let (b, d_in, d_out, k) = (70, 9, 6, 5);
        let x = Array2::from_shape_fn((b, d_in), |_| lcg(&mut seed));
        let maps = Array3::from_shape_fn((k, d_in, d_out), |_| lcg(&mut seed));
        // Every query to clusters (i % k) and 0, except cluster 0 takes most weight.
        let mut routing = Routing { offsets: vec![0], clusters: vec![], weights: vec![] };
        for i in 0..b {
            let c = (i % (k - 1) + 1) as u32;
            routing.clusters.extend([0, c]);
            routing.weights.extend([0.7, 0.3]);
            routing.offsets.push(routing.clusters.len());
        }
        let packed: Vec<PackedMatrix> = maps.outer_iter().map(PackedMatrix::pack).collect();
        let got = blend_maps(x.view(), &routing, &packed);
        let want = naive(x.view(), &routing, maps.view());
        for (a, b) in got.iter().zip(want.iter()) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let vectors = maps.index_axis(Axis(1), 0);
        let got = blend_vectors(&routing, vectors);
        assert!(routing.weights.len() * 4 >= b * k, "this routing is dense enough for the GEMM path too");
        let dense = PackedMatrix::pack(vectors).matmul(routing.to_dense(k).view());
        for (a, b) in dense.iter().zip(got.iter()) {
            assert!((a - b).abs() < 1e-5);
        }
        let want = routing.to_dense(k).dot(&vectors);
        for (a, b) in got.iter().zip(want.iter()) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    /// Factored maps blend as their products `base + U_k M_k` do, for ranks 0, 1, an
    /// odd one and more than one panel, alone, in a batch and on 1 or 3 threads.
    #[test]
    fn low_rank_blend_equals_the_dense_maps() {
        let mut seed = 5;
        let (b, d_in, d_out, ranks) = (300, 21, 37, [0usize, 1, 7, 19]);
        let x = Array2::from_shape_fn((b, d_in), |_| lcg(&mut seed));
        let base = Array2::from_shape_fn((d_in, d_out), |_| lcg(&mut seed));
        let factors: Vec<(Array2<f32>, Array2<f32>)> = ranks
            .iter()
            .map(|&r| {
                (
                    Array2::from_shape_fn((d_in, r), |_| lcg(&mut seed)),
                    Array2::from_shape_fn((r, d_out), |_| lcg(&mut seed)),
                )
            })
            .collect();
        let views: Vec<_> = factors.iter().map(|(u, m)| (u.view(), m.view())).collect();
        let maps = LowRank::new(base.view(), &views, Precision::F32);
        let dense = Array3::from_shape_fn((ranks.len(), d_in, d_out), |(k, i, j)| {
            base[[i, j]] + factors[k].0.row(i).dot(&factors[k].1.column(j))
        });
        let mut routing = Routing { offsets: vec![0], clusters: vec![], weights: vec![] };
        for i in 0..b {
            routing.clusters.extend([(i % 4) as u32, ((i / 4) % 4) as u32]);
            routing.weights.extend([0.6, 0.3]); // not summing to 1: the base is scaled by 0.9
            routing.offsets.push(routing.clusters.len());
        }
        let got = blend_low_rank(x.view(), &routing, &maps);
        let want = naive(x.view(), &routing, dense.view());
        for (a, b) in got.iter().zip(want.iter()) {
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
        let one = Routing { offsets: vec![0, 2], clusters: routing.clusters[6..8].to_vec(), weights: vec![0.6, 0.3] };
        assert_eq!(blend_low_rank(x.slice(s![3..4, ..]), &one, &maps), got.slice(s![3..4, ..]));
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            assert_eq!(pool.install(|| blend_low_rank(x.view(), &routing, &maps)), got, "{threads} threads");
        }
    }

    /// A row's output is the same bits alone, in any batch, across tiles and on any
    /// number of threads.
    #[test]
    fn blend_is_batch_and_thread_invariant() {
        let mut seed = 11;
        let (b, d, k, top) = (TILE + 300, 24, 7, 3);
        let x = Array2::from_shape_fn((b, d), |_| lcg(&mut seed));
        let maps = Array3::from_shape_fn((k, d, d), |_| lcg(&mut seed));
        let packed: Vec<PackedMatrix> = maps.outer_iter().map(PackedMatrix::pack).collect();
        let mut routing = Routing { offsets: vec![0], clusters: vec![], weights: vec![] };
        for i in 0..b {
            for j in 0..top {
                routing.clusters.push(((i * 5 + j * 3) % k) as u32);
                routing.weights.push(lcg(&mut seed) + 0.5);
            }
            routing.offsets.push(routing.clusters.len());
        }
        let all = blend_maps(x.view(), &routing, &packed);
        let sub = |rows: std::ops::Range<usize>| {
            let mut r = Routing { offsets: vec![0], clusters: vec![], weights: vec![] };
            for i in rows.clone() {
                let (c, w) = routing.row(i);
                r.clusters.extend_from_slice(c);
                r.weights.extend_from_slice(w);
                r.offsets.push(r.clusters.len());
            }
            blend_maps(x.slice(s![rows, ..]), &r, &packed)
        };
        for rows in [0..1, 5..6, 100..357, TILE - 10..TILE + 20, 0..b] {
            assert_eq!(sub(rows.clone()), all.slice(s![rows, ..]), "rows differ from the full batch");
        }
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            assert_eq!(pool.install(|| blend_maps(x.view(), &routing, &packed)), all, "{threads} threads");
        }
    }
}
