//! Blending per-cluster outputs with routing weights.
//!
//! `blend_maps` computes `out_i = Σ_j w_ij · (x_i @ W_{c_ij})` grouped by cluster: the
//! queries routed to a cluster are gathered (pre-scaled by their weights) and sent
//! through one GEMM with that cluster's map, so the cost is B·k·D², not B·K·D².
//! `blend_vectors` computes `out_i = Σ_j w_ij · a_{c_ij}` for per-cluster vectors.

use ndarray::{s, Array2, ArrayView2, Axis, Zip};
use rayon::prelude::*;

use crate::packed::PackedMatrix;
use crate::routing::Routing;

/// One unit of work: a slice of the queries routed to one cluster.
struct Chunk<'a> {
    cluster: usize,
    rows: &'a [(u32, f32)],
}

/// Queries routed to each cluster, as (query, weight) lists.
fn group_by_cluster(routing: &Routing, n_clusters: usize) -> Vec<Vec<(u32, f32)>> {
    let mut groups: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n_clusters];
    for i in 0..routing.len() {
        let (c, w) = routing.row(i);
        for (&c, &w) in c.iter().zip(w) {
            groups[c as usize].push((i as u32, w));
        }
    }
    groups
}

/// Split the groups into chunks and deal them into `n_bins` bins of about equal rows
/// (largest first, each to the lightest bin), so that every thread gets a share even
/// when one cluster takes most queries.
fn plan(groups: &[Vec<(u32, f32)>], n_bins: usize) -> Vec<Vec<Chunk<'_>>> {
    let total: usize = groups.iter().map(Vec::len).sum();
    let max_rows = total.div_ceil(2 * n_bins).max(32);
    let mut chunks: Vec<Chunk<'_>> = groups
        .iter()
        .enumerate()
        .flat_map(|(cluster, rows)| {
            rows.chunks(max_rows)
                .map(move |rows| Chunk { cluster, rows })
        })
        .collect();
    chunks.sort_by(|a, b| {
        b.rows
            .len()
            .cmp(&a.rows.len())
            .then(a.cluster.cmp(&b.cluster))
    });
    let mut bins: Vec<(usize, Vec<Chunk<'_>>)> = (0..n_bins).map(|_| (0, Vec::new())).collect();
    for chunk in chunks {
        let lightest = bins
            .iter_mut()
            .min_by_key(|(load, _)| *load)
            .expect("n_bins >= 1");
        lightest.0 += chunk.rows.len();
        lightest.1.push(chunk);
    }
    bins.into_iter()
        .map(|(_, chunks)| chunks)
        .filter(|c| !c.is_empty())
        .collect()
}

/// `out_i = Σ_j w_ij · (x_i @ maps[c_ij])`.
///
/// `x`: (B, D_in); `maps`: K packed (D_in, D_out) maps; returns (B, D_out).
pub fn blend_maps(x: ArrayView2<f32>, routing: &Routing, maps: &[PackedMatrix]) -> Array2<f32> {
    let (b, d_in) = x.dim();
    let d_out = maps.first().map_or(0, PackedMatrix::cols);
    let groups = group_by_cluster(routing, maps.len());
    let bins = plan(&groups, rayon::current_num_threads().max(1));
    let partials: Vec<Array2<f32>> = bins
        .par_iter()
        .map(|chunks| {
            let mut acc = Array2::<f32>::zeros((b, d_out));
            let mut gathered = Array2::<f32>::zeros((0, d_in));
            let mut product = Vec::new();
            let mut scratch = Vec::new();
            for chunk in chunks {
                let n = chunk.rows.len();
                if gathered.nrows() < n {
                    gathered = Array2::zeros((n, d_in));
                }
                for (dst, &(i, w)) in gathered.axis_iter_mut(Axis(0)).zip(chunk.rows) {
                    Zip::from(dst)
                        .and(x.row(i as usize))
                        .for_each(|d, &v| *d = v * w);
                }
                product.resize(n * d_out, 0.0);
                maps[chunk.cluster].matmul_into(
                    gathered.slice(s![..n, ..]),
                    &mut product,
                    d_out,
                    &mut scratch,
                );
                for (src, &(i, _)) in product.chunks_exact(d_out).zip(chunk.rows) {
                    for (d, &v) in acc.row_mut(i as usize).iter_mut().zip(src) {
                        *d += v;
                    }
                }
            }
            acc
        })
        .collect();
    sum_partials(partials, (b, d_out))
}

/// Sum the per-thread partial outputs.
fn sum_partials(mut partials: Vec<Array2<f32>>, dim: (usize, usize)) -> Array2<f32> {
    let Some(mut out) = partials.pop() else {
        return Array2::zeros(dim);
    };
    for p in &partials {
        Zip::from(out.axis_iter_mut(Axis(0)))
            .and(p.axis_iter(Axis(0)))
            .par_for_each(|mut o, p| o += &p);
    }
    out
}

/// `out_i = Σ_j w_ij · vectors[c_ij]`, row by row (for sparse routings; a dense one
/// is better served by one GEMM with the dense weights).
///
/// `vectors`: (K, D_out); returns (B, D_out).
pub fn blend_vectors(routing: &Routing, vectors: ArrayView2<f32>) -> Array2<f32> {
    let mut out = Array2::<f32>::zeros((routing.len(), vectors.ncols()));
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(i, mut row)| {
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
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    #[test]
    fn grouped_blend_equals_naive_loop() {
        let mut seed = 7;
        let (b, d_in, d_out, k) = (70, 9, 6, 5);
        let x = Array2::from_shape_fn((b, d_in), |_| lcg(&mut seed));
        let maps = Array3::from_shape_fn((k, d_in, d_out), |_| lcg(&mut seed));
        // Every query to clusters (i % k) and 0, except cluster 0 takes most weight.
        let mut routing = Routing {
            offsets: vec![0],
            clusters: vec![],
            weights: vec![],
        };
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
        assert!(
            routing.weights.len() * 4 >= b * k,
            "this routing is dense enough for the GEMM path too"
        );
        let dense = PackedMatrix::pack(vectors).matmul(routing.to_dense(k).view());
        for (a, b) in dense.iter().zip(got.iter()) {
            assert!((a - b).abs() < 1e-5);
        }
        let want = routing.to_dense(k).dot(&vectors);
        for (a, b) in got.iter().zip(want.iter()) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}
