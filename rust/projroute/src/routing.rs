//! Softmax routing over centroids or over all training questions: temperature,
//! prior, top-k or coverage, renormalisation.
//!
//! For a query with cosine scores `s` (one per cluster), the weights are
//! `softmax(s / T)` restricted to the selected clusters and renormalised. The
//! selected clusters are the `top_k` highest scores (ties broken by the lower
//! index) or, with a `coverage` target, the smallest prefix of that order whose
//! full-softmax weight reaches the target (never more than `top_k`).

use std::ops::Range;

use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use crate::error::{format_err, invalid, Error, Result};
use crate::fastmath;
use crate::format::{Config, Tensor};
use crate::linalg;
use crate::packed::{PackedMatrix, NR};

/// How a query's weights over K clusters are computed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoutingParams {
    /// Softmax temperature `T` (> 0); scores are cosines in [-1, 1].
    pub temperature: f32,
    /// Most clusters a query is routed to (1..=K).
    pub top_k: usize,
    /// Optional coverage target in (0, 1]: keep the smallest number of clusters whose
    /// softmax weight sums to at least this (capped by `top_k`).
    pub coverage: Option<f32>,
}

impl RoutingParams {
    /// The routing parameters of a routed kind's config (`temperature`, `top_k`,
    /// `coverage`), checked against its `n_clusters`; a missing or bad field is an
    /// [`Error::Format`].
    pub fn from_config(c: &Config) -> Result<Self> {
        let missing = |field: &str| Error::Format(format!("a `{}` config needs `{field}`", c.kind));
        let params = RoutingParams {
            temperature: c.temperature.ok_or_else(|| missing("temperature"))?,
            top_k: c.top_k.ok_or_else(|| missing("top_k"))?,
            coverage: c.coverage,
        };
        let k = c.n_clusters.ok_or_else(|| missing("n_clusters"))?;
        params.validate(k).map_err(|e| Error::Format(format!("config: {e}")))?;
        Ok(params)
    }

    /// Check the parameters against the number of clusters `k`.
    pub fn validate(&self, n_clusters: usize) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return invalid(format!("temperature must be > 0, got {}", self.temperature));
        }
        if self.top_k == 0 || self.top_k > n_clusters {
            return invalid(format!(
                "top_k must be between 1 and the number of clusters ({n_clusters}), got {}",
                self.top_k
            ));
        }
        if let Some(c) = self.coverage {
            if !(c > 0.0 && c <= 1.0) {
                return invalid(format!("coverage must be in (0, 1], got {c}"));
            }
        }
        Ok(())
    }

    /// True when every cluster gets weight: plain softmax over all K.
    pub fn is_dense(&self, n_clusters: usize) -> bool {
        self.top_k >= n_clusters && self.coverage.is_none()
    }
}

/// Sparse routing weights for a batch, one row per query (CSR layout).
#[derive(Clone, Debug, PartialEq)]
pub struct Routing {
    /// Row `i` spans `offsets[i]..offsets[i + 1]` in `clusters` and `weights`.
    pub offsets: Vec<usize>,
    /// Cluster index of each entry, in descending weight order within a row.
    pub clusters: Vec<u32>,
    /// Weight of each entry; each row sums to 1.
    pub weights: Vec<f32>,
}

impl Routing {
    /// Number of queries.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// True for a routing of zero queries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Clusters and weights of query `i`.
    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let r = self.offsets[i]..self.offsets[i + 1];
        (&self.clusters[r.clone()], &self.weights[r])
    }

    /// Dense (B, K) weight matrix.
    pub fn to_dense(&self, n_clusters: usize) -> Array2<f32> {
        let mut dense = Array2::zeros((self.len(), n_clusters));
        for (i, mut out) in dense.axis_iter_mut(Axis(0)).enumerate() {
            let (c, w) = self.row(i);
            for (&c, &w) in c.iter().zip(w) {
                out[c as usize] = w;
            }
        }
        dense
    }
}

/// What a router scores queries against.
#[derive(Clone, Debug)]
enum Points {
    /// One centroid per cluster.
    Centroids,
    /// The training questions, sorted by cluster: cluster `k` owns points
    /// `offsets[k]..offsets[k + 1]`.
    Questions { offsets: Vec<usize>, cluster_temperature: Option<f32> },
}

/// Most queries a thread scores at once in per-question routing: bounds its (chunk, N)
/// score buffer, while each pass over the packed questions serves that many queries
/// (a multiple of the kernel's 6 rows).
const QUESTION_CHUNK: usize = 72;

/// Columns (questions) scored at once per chunk: a (chunk, block) score block of about
/// 1 MiB, kept in cache while it is folded into the running sums.
const QUESTION_BLOCK: usize = 4096;

/// Routing points, optional prior and parameters: what every routed kind shares.
///
/// With logits `z_i = cos(x, point_i) / T + ln p_i` (no prior: `p_i = 1`):
/// - centroid routing: `w = softmax(z)` over the selected clusters;
/// - per-question routing: a cluster's mass is the sum of `softmax(z)` over its
///   questions, optionally passed through a second `softmax(mass / T₂)`; then the
///   selected clusters' masses are renormalised.
///
/// Selection is the `top_k` largest (ties to the lower index) or a coverage prefix.
#[derive(Clone, Debug)]
pub struct Router {
    /// Unit routing points, transposed (D, P) and packed for the scoring GEMM.
    points_t: PackedMatrix,
    points: Points,
    /// `ln p` per point (P,).
    log_prior: Option<Vec<f32>>,
    /// The per-question softmax's shift where no maximum is needed: [`fixed_shift`].
    shift: Option<f32>,
    params: RoutingParams,
    /// The routing points (P, D) and the prior (P,) as given, for export.
    given: (Tensor, Option<Tensor>),
}

impl Router {
    /// Centroid routing from `centroids` (K, D; normalised here, a zero row is a
    /// format error) and parameters valid for K clusters.
    pub fn new(centroids: ArrayView2<f32>, params: RoutingParams) -> Result<Self> {
        params.validate(centroids.nrows())?;
        Ok(Router {
            points_t: pack_unit(centroids, "centroids")?,
            points: Points::Centroids,
            log_prior: None,
            shift: fixed_shift(params.temperature, None),
            params,
            given: (Tensor::from_array(centroids), None),
        })
    }

    /// Per-question routing from the training `questions` (N, D) sorted by cluster,
    /// `counts[k]` of them in cluster k (each at least 1), and an optional second-softmax
    /// temperature.
    pub fn per_question(
        questions: ArrayView2<f32>,
        counts: &[usize],
        params: RoutingParams,
        cluster_temperature: Option<f32>,
    ) -> Result<Self> {
        params.validate(counts.len())?;
        if counts.contains(&0) || counts.iter().sum::<usize>() != questions.nrows() {
            return format_err(format!(
                "question counts must be positive and sum to the {} questions",
                questions.nrows()
            ));
        }
        if let Some(t) = cluster_temperature {
            if !(t.is_finite() && t > 0.0) {
                return format_err(format!("cluster temperature must be > 0, got {t}"));
            }
        }
        let offsets = std::iter::once(0).chain(counts.iter().scan(0, |acc, &c| {
            *acc += c;
            Some(*acc)
        }));
        Ok(Router {
            points_t: pack_unit(questions, "questions")?,
            points: Points::Questions { offsets: offsets.collect(), cluster_temperature },
            log_prior: None,
            shift: fixed_shift(params.temperature, None),
            params,
            given: (Tensor::from_array(questions), None),
        })
    }

    /// Weight each routing point by `prior` (P,), finite and > 0:
    /// `w_i ∝ p_i · exp(s_i / T)`.
    pub fn with_prior(mut self, prior: ArrayView1<f32>) -> Result<Self> {
        if prior.len() != self.points_t.cols() {
            return format_err(format!(
                "prior has {} entries for {} routing points",
                prior.len(),
                self.points_t.cols()
            ));
        }
        if !prior.iter().all(|p| p.is_finite() && *p > 0.0) {
            return format_err("prior weights must be finite and > 0");
        }
        self.log_prior = Some(prior.iter().map(|p| p.ln()).collect());
        self.shift = fixed_shift(self.params.temperature, self.log_prior.as_deref());
        self.given.1 = Some(Tensor::from_array(prior));
        Ok(self)
    }

    /// The tensors this router was built from, under their file names: `centroids` or
    /// `questions` (as given, before normalising), and `prior` if any.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let points = match self.points {
            Points::Centroids => "centroids",
            Points::Questions { .. } => "questions",
        };
        let mut out = vec![(points.to_string(), self.given.0.clone())];
        out.extend(self.given.1.clone().map(|p| ("prior".to_string(), p)));
        out
    }

    /// Number of clusters K.
    pub fn n_clusters(&self) -> usize {
        match &self.points {
            Points::Centroids => self.points_t.cols(),
            Points::Questions { offsets, .. } => offsets.len() - 1,
        }
    }

    /// Query dimension.
    pub fn dim(&self) -> usize {
        self.points_t.rows()
    }

    /// The routing parameters.
    pub fn params(&self) -> &RoutingParams {
        &self.params
    }

    /// Cosine scores (B, P) of queries `x` (B, D) against the routing points (the
    /// centroids, or the training questions); validates the batch.
    pub fn scores(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        linalg::check_batch(x, self.dim(), "queries")?;
        Ok(self.points_t.matmul(linalg::normalize_rows(x, "queries")?.view()))
    }

    /// Sparse routing weights of queries `x` (B, D).
    pub fn route(&self, x: ArrayView2<f32>) -> Result<Routing> {
        linalg::check_batch(x, self.dim(), "queries")?;
        let logits = self.unit_logits(linalg::normalize_rows(x, "queries")?.view());
        // Logits already carry the temperature.
        route(logits.view(), &RoutingParams { temperature: 1.0, ..self.params })
    }

    /// Cluster logits (B, K) of unit queries `unit` (B, D), checked by the caller:
    /// temperature and prior included, so that with dense parameters their row softmax
    /// is the routing.
    pub(crate) fn unit_logits(&self, unit: ArrayView2<f32>) -> Array2<f32> {
        let inv_t = 1.0 / self.params.temperature;
        let prior = self.log_prior.as_deref();
        match &self.points {
            Points::Centroids => self.points_t.matmul_then(unit, |_, row| {
                fastmath::scale_shift(row, inv_t, prior);
            }),
            Points::Questions { offsets, cluster_temperature } => {
                self.question_logits(unit, offsets, *cluster_temperature)
            }
        }
    }
}

impl Router {
    /// Per-question routing's cluster logits (B, K) of unit queries `unit` (B, D): each
    /// query's softmax over all routing points (logits `cos / T + ln p`), summed per
    /// cluster (`offsets`: cluster `k` owns points `offsets[k]..offsets[k + 1]`) and
    /// turned into logits by [`cluster_logits`].
    fn question_logits(
        &self,
        unit: ArrayView2<f32>,
        offsets: &[usize],
        cluster_temperature: Option<f32>,
    ) -> Array2<f32> {
        let (k, n) = (offsets.len() - 1, self.points_t.cols());
        let threads = rayon::current_num_threads().max(1);
        let mut logits = Array2::<f32>::zeros((unit.nrows(), k));
        if unit.nrows() < 4 * threads {
            // Few queries: the whole GEMM at once, split by columns over the threads.
            // One block spanning all columns: its segments are the clusters themselves.
            let mut scores = self.points_t.matmul(unit);
            let mut tmp = vec![0.0f32; k];
            for (mut row, mut out) in scores.axis_iter_mut(Axis(0)).zip(logits.axis_iter_mut(Axis(0))) {
                let out = out.as_slice_mut().expect("contiguous");
                let mut max = f32::NEG_INFINITY;
                let row = row.as_slice_mut().expect("contiguous");
                self.add_block(row, 0, 0, offsets, &mut max, out, &mut tmp);
                cluster_logits(out, cluster_temperature);
            }
        } else {
            // Each thread takes an equal share of the queries, in chunks; a chunk is
            // scored block by block of columns (kept in cache), each block folded
            // into running per-cluster sums (an online softmax), so the (chunk, N)
            // scores never exist at once.
            let per_thread = unit.nrows().div_ceil(threads);
            let blocks: Vec<(Range<usize>, usize, Vec<usize>)> = (0..n)
                .step_by(QUESTION_BLOCK)
                .map(|c0| {
                    let c1 = (c0 + QUESTION_BLOCK).min(n);
                    let (k0, local) = block_segments(offsets, c0, c1);
                    (c0..c1, k0, local)
                })
                .collect();
            logits
                .axis_chunks_iter_mut(Axis(0), per_thread)
                .into_par_iter()
                .zip(unit.axis_chunks_iter(Axis(0), per_thread))
                .for_each(|(mut share, q)| {
                    let (mut scores, mut scratch, mut tmp) = (Vec::new(), Vec::new(), vec![0.0f32; k]);
                    let chunks = q.axis_chunks_iter(Axis(0), QUESTION_CHUNK);
                    for (q, mut out) in chunks.zip(share.axis_chunks_iter_mut(Axis(0), QUESTION_CHUNK)) {
                        let mut max = vec![f32::NEG_INFINITY; q.nrows()];
                        for (cols, k0, local) in &blocks {
                            let width = cols.len();
                            scores.resize(q.nrows() * width, 0.0);
                            let panels = cols.start / NR..cols.end.div_ceil(NR);
                            self.points_t.panels_into(q, panels, &mut scores, width, &mut scratch);
                            let rows = scores.chunks_exact_mut(width).zip(out.axis_iter_mut(Axis(0)));
                            for ((row, mut o), m) in rows.zip(max.iter_mut()) {
                                let o = o.as_slice_mut().expect("contiguous");
                                self.add_block(row, cols.start, *k0, local, m, o, &mut tmp);
                            }
                        }
                        for mut o in out.axis_iter_mut(Axis(0)) {
                            cluster_logits(o.as_slice_mut().expect("contiguous"), cluster_temperature);
                        }
                    }
                });
        }
        logits
    }

    /// Fold one block of a query's scores, columns `c0..c0 + row.len()`, into its
    /// running maximum logit `max` (or the [`fixed_shift`], where there is one) and
    /// per-cluster sums `sums[k] = Σ exp(z_i - max)`;
    /// the block overlaps clusters `k0..` with boundaries `local` (relative to c0).
    #[allow(clippy::too_many_arguments)]
    fn add_block(
        &self,
        row: &mut [f32],
        c0: usize,
        k0: usize,
        local: &[usize],
        max: &mut f32,
        sums: &mut [f32],
        tmp: &mut [f32],
    ) {
        let prior = self.log_prior.as_deref().map(|p| &p[c0..c0 + row.len()]);
        let inv_t = 1.0 / self.params.temperature;
        let block_max = self.shift.unwrap_or_else(|| fastmath::scaled_max(row, inv_t, prior));
        if block_max > *max {
            let rescale = (*max - block_max).exp();
            sums.iter_mut().for_each(|s| *s *= rescale);
            *max = block_max;
        }
        let tmp = &mut tmp[..local.len() - 1];
        fastmath::segment_exp_sums(row, inv_t, prior, *max, local, tmp);
        sums[k0..k0 + tmp.len()].iter_mut().zip(tmp.iter()).for_each(|(s, t)| *s += t);
    }
}

/// A shift for per-question routing's softmax that makes the block maxima unnecessary:
/// every logit `cos / T + ln p` of unit vectors lies in `[−1/T + min ln p, 1/T + max ln p]`;
/// with the upper end as the shift no `exp` overflows, and while the interval is at most
/// 80 wide none underflows (e^-80 is a normal f32), so every term keeps its relative
/// precision. `None` for colder temperatures or wider priors.
fn fixed_shift(temperature: f32, log_prior: Option<&[f32]>) -> Option<f32> {
    let (lo, hi) = log_prior.map_or((0.0, 0.0), |p| {
        p.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)))
    });
    let inv_t = 1.0 / temperature;
    (2.0 * inv_t + (hi - lo) <= 80.0).then_some(inv_t + hi)
}

/// Per-cluster sums of a query's `exp(z - max)` -> its cluster logits, in place:
/// `ln` of the normalised masses, or the masses over the second temperature.
fn cluster_logits(sums: &mut [f32], cluster_temperature: Option<f32>) {
    let total: f32 = sums.iter().sum();
    for z in sums.iter_mut() {
        *z = match cluster_temperature {
            Some(t2) => *z / total / t2,
            None => (*z / total).ln(),
        };
    }
}

/// The clusters overlapping columns `c0..c1` of per-question scores: the first, `k0`,
/// and their boundaries relative to `c0`, clipped to the block.
fn block_segments(offsets: &[usize], c0: usize, c1: usize) -> (usize, Vec<usize>) {
    let k0 = offsets.partition_point(|&o| o <= c0) - 1;
    let k1 = offsets.partition_point(|&o| o < c1);
    (k0, offsets[k0..=k1].iter().map(|&o| o.clamp(c0, c1) - c0).collect())
}

/// `points` (P, D) normalised, transposed and packed; a zero row is a format error.
fn pack_unit(points: ArrayView2<f32>, what: &str) -> Result<PackedMatrix> {
    let unit = linalg::normalize_rows(points, what).map_err(|e| Error::Format(e.to_string()))?;
    Ok(PackedMatrix::pack(unit.t()))
}

/// In-place, numerically stable `softmax(s / T)` of every row.
pub fn softmax_rows(mut scores: ArrayViewMut2<f32>, temperature: f32) {
    scores.axis_iter_mut(Axis(0)).into_par_iter().for_each(|mut row| {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let inv_t = 1.0 / temperature;
        let mut sum = 0.0f32;
        row.mapv_inplace(|v| {
            let e = ((v - max) * inv_t).exp();
            sum += e;
            e
        });
        let inv = 1.0 / sum;
        row.mapv_inplace(|v| v * inv);
    });
}

/// Route every query: scores `(B, K)` to sparse weights.
pub fn route(scores: ArrayView2<f32>, params: &RoutingParams) -> Result<Routing> {
    params.validate(scores.ncols())?;
    let one = |row: ArrayView1<f32>| match row.as_slice() {
        Some(s) => route_one(s, params),
        None => route_one(&row.to_vec(), params),
    };
    let rows: Vec<(Vec<u32>, Vec<f32>)> = match crate::packed::on_this_thread_now() {
        true => scores.axis_iter(Axis(0)).map(one).collect(),
        false => scores.axis_iter(Axis(0)).into_par_iter().map(one).collect(),
    };
    let mut routing =
        Routing { offsets: Vec::with_capacity(rows.len() + 1), clusters: Vec::new(), weights: Vec::new() };
    routing.offsets.push(0);
    for (c, w) in rows {
        routing.clusters.extend(c);
        routing.weights.extend(w);
        routing.offsets.push(routing.clusters.len());
    }
    Ok(routing)
}

/// Route one query's scores `s` (K,) to (clusters, weights).
fn route_one(s: &[f32], p: &RoutingParams) -> (Vec<u32>, Vec<f32>) {
    let k_all = s.len();
    let inv_t = 1.0 / p.temperature;
    // Descending score, ties to the lower index (a total order, as numpy's stable argsort of -s).
    let by_score = |a: &u32, b: &u32| s[*b as usize].total_cmp(&s[*a as usize]).then(a.cmp(b));
    let mut order: Vec<u32> = (0..k_all as u32).collect();
    let keep = match p.coverage {
        None => {
            if p.top_k < k_all {
                order.select_nth_unstable_by(p.top_k - 1, by_score);
                order.truncate(p.top_k);
            }
            order.sort_unstable_by(by_score);
            p.top_k
        }
        Some(target) => {
            order.sort_unstable_by(by_score);
            let max = s[order[0] as usize];
            let exps: Vec<f32> = order.iter().map(|&c| ((s[c as usize] - max) * inv_t).exp()).collect();
            let total: f32 = exps.iter().sum();
            let goal = target * total;
            let mut acc = 0.0f32;
            let mut k = k_all;
            for (i, e) in exps.iter().enumerate() {
                acc += e;
                if acc >= goal {
                    k = i + 1;
                    break;
                }
            }
            k.min(p.top_k)
        }
    };
    order.truncate(keep);
    let max = s[order[0] as usize];
    let mut weights: Vec<f32> = order.iter().map(|&c| ((s[c as usize] - max) * inv_t).exp()).collect();
    let sum: f32 = weights.iter().sum();
    weights.iter_mut().for_each(|w| *w /= sum);
    (order, weights)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use proptest::prelude::*;

    fn params(t: f32, k: usize, coverage: Option<f32>) -> RoutingParams {
        RoutingParams { temperature: t, top_k: k, coverage }
    }

    #[test]
    fn top_k_keeps_highest_and_renormalises() {
        let s = array![[0.1f32, 0.9, 0.5, 0.3]];
        let r = route(s.view(), &params(0.1, 2, None)).unwrap();
        let (c, w) = r.row(0);
        assert_eq!(c, &[1, 2]);
        let e = (0.4f32 / 0.1).exp();
        assert!((w[0] - e / (1.0 + e)).abs() < 1e-6);
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        let s = array![[0.5f32, 0.7, 0.7, 0.7]];
        let r = route(s.view(), &params(1.0, 2, None)).unwrap();
        assert_eq!(r.row(0).0, &[1, 2]);
    }

    #[test]
    fn coverage_takes_smallest_prefix() {
        // Softmax with T=1 of ln(weights) gives those weights back.
        let w = [0.5f32, 0.3, 0.15, 0.05];
        let s = Array2::from_shape_fn((1, 4), |(_, j)| w[j].ln());
        let r = route(s.view(), &params(1.0, 4, Some(0.79))).unwrap();
        assert_eq!(r.row(0).0, &[0, 1]);
        let r = route(s.view(), &params(1.0, 4, Some(0.81))).unwrap();
        assert_eq!(r.row(0).0, &[0, 1, 2]);
        // top_k caps coverage.
        let r = route(s.view(), &params(1.0, 1, Some(0.99))).unwrap();
        assert_eq!(r.row(0).0, &[0]);
    }

    #[test]
    fn bad_params_are_errors() {
        let s = array![[0.1f32, 0.2]];
        assert!(route(s.view(), &params(0.0, 1, None)).is_err());
        assert!(route(s.view(), &params(-1.0, 1, None)).is_err());
        assert!(route(s.view(), &params(f32::NAN, 1, None)).is_err());
        assert!(route(s.view(), &params(0.1, 3, None)).unwrap_err().to_string().contains("top_k"));
        assert!(route(s.view(), &params(0.1, 0, None)).is_err());
        assert!(route(s.view(), &params(0.1, 1, Some(1.5))).is_err());
    }

    #[test]
    fn softmax_is_stable_for_tiny_temperatures() {
        let mut s = array![[1.0f32, 0.999, -1.0]];
        softmax_rows(s.view_mut(), 1e-4);
        assert!(s.iter().all(|v| v.is_finite()));
        assert!((s.sum() - 1.0).abs() < 1e-6);
    }

    proptest! {
        #[test]
        fn dense_route_equals_softmax(
            vals in proptest::collection::vec(-1.0f32..1.0, 12),
            t in 0.01f32..2.0,
        ) {
            let s = Array2::from_shape_vec((3, 4), vals).unwrap();
            let r = route(s.view(), &params(t, 4, None)).unwrap().to_dense(4);
            let mut expected = s.clone();
            softmax_rows(expected.view_mut(), t);
            for (a, b) in r.iter().zip(expected.iter()) {
                prop_assert!((a - b).abs() < 1e-5);
            }
        }
    }
}
