//! [`AnnIndex`]: approximate cosine top-k over answer vectors, through an HNSW graph
//! from `usearch` (float16 vectors in the graph, inner product on unit vectors), with
//! every candidate re-scored exactly on the float32 unit vectors.

use ndarray::{Array2, ArrayView1, ArrayView2, Axis};
use rayon::prelude::*;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::answer_index::{AnnGraph, AnnParams, AnswerIndex};
use crate::error::{format_err, invalid, Error, Result};
use crate::linalg;

impl AnnParams {
    /// Parameters for a new graph: `connectivity` (M, >= 2), `ef_construction` and
    /// `ef_search` (>= 1).
    pub fn new(connectivity: usize, ef_construction: usize, ef_search: usize) -> Result<Self> {
        let params = AnnParams {
            method: "hnsw".into(),
            library: "usearch".into(),
            library_version: usearch::version().into(),
            metric: "ip".into(),
            vectors: "f16".into(),
            connectivity,
            ef_construction,
            ef_search,
        };
        params.check().map_err(|e| match e {
            Error::Format(m) => Error::InvalidInput(m),
            other => other,
        })?;
        Ok(params)
    }
}

impl Default for AnnParams {
    /// M = 32, ef_construction = 128, ef_search = 128: recall@10 0.95 at 2.8 ms over
    /// 10^6 corpus texts on 2 cores (README, "Approximate index").
    fn default() -> Self {
        AnnParams::new(32, 128, 128).expect("the defaults are valid")
    }
}

impl AnswerIndex {
    /// Build an approximate graph over the answers (replacing any), so that a
    /// [`crate::Searcher`] over this index searches approximately.
    pub fn build_ann(&mut self, params: &AnnParams) -> Result<()> {
        self.ann = Some(AnnIndex::build(self.view(), params)?.to_graph()?);
        Ok(())
    }
}

/// Approximate cosine search over N answer vectors: an HNSW graph proposes candidates,
/// which are re-scored exactly. `Send + Sync`; queries run in parallel.
pub struct AnnIndex {
    graph: Index,
    /// Unit answer vectors (N, D), for exact re-scoring.
    unit: Array2<f32>,
    params: AnnParams,
}

impl std::fmt::Debug for AnnIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnnIndex")
            .field("n", &self.len())
            .field("dim", &self.dim())
            .field("params", &self.params)
            .finish()
    }
}

fn backend(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Backend(format!("usearch could not {what}: {e}"))
}

fn options(dim: usize, params: &AnnParams) -> IndexOptions {
    IndexOptions {
        dimensions: dim,
        metric: MetricKind::IP,
        quantization: ScalarKind::F16,
        connectivity: params.connectivity,
        expansion_add: params.ef_construction,
        // The candidate count is asked per search (max(k, ef)), which overrides this.
        expansion_search: 1,
        multi: false,
    }
}

impl AnnIndex {
    /// Build a graph over the rows of `embeddings` (N, D; normalised here, no zero
    /// row), inserting on all rayon threads.
    pub fn build(embeddings: ArrayView2<f32>, params: &AnnParams) -> Result<Self> {
        linalg::check_batch(embeddings, embeddings.ncols(), "answer vectors")?;
        let unit = linalg::normalize_rows(embeddings, "answer vectors")?;
        let graph = Index::new(&options(unit.ncols(), params)).map_err(|e| backend("create an index", e))?;
        graph
            .reserve_capacity_and_threads(unit.nrows(), rayon::current_num_threads())
            .map_err(|e| backend("reserve memory", e))?;
        unit.axis_iter(Axis(0)).into_par_iter().enumerate().try_for_each(|(i, row)| {
            let row = row.as_slice().expect("a fresh array's rows are contiguous");
            graph.add(i as u64, row).map_err(|e| backend("add a vector", e))
        })?;
        Ok(AnnIndex { graph, unit, params: params.clone() })
    }

    /// Load a stored graph over the rows of `embeddings` (N, D), checking that it
    /// holds N vectors of dimension D.
    pub fn load(stored: &AnnGraph, embeddings: ArrayView2<f32>) -> Result<Self> {
        stored.params.check()?;
        let unit = linalg::normalize_rows(embeddings, "answer vectors")?;
        let (n, d) = unit.dim();
        let graph = Index::new(&options(d, &stored.params)).map_err(|e| backend("create an index", e))?;
        let meta = Index::metadata_from_buffer(&stored.bytes)
            .or_else(|e| format_err(format!("`ann_graph` is not a usearch index: {e}")))?;
        if meta.dimensions != d as u64 || meta.count_present != n as u64 || meta.count_deleted != 0 {
            return format_err(format!(
                "`ann_graph` holds {} vectors of dimension {}; the index has {n} of dimension {d}",
                meta.count_present, meta.dimensions
            ));
        }
        if meta.metric != MetricKind::IP || meta.quantization != ScalarKind::F16 {
            return format_err("`ann_graph` is not an inner-product graph over float16 vectors");
        }
        graph.load_from_buffer(&stored.bytes).or_else(|e| format_err(format!("`ann_graph` does not load: {e}")))?;
        graph
            .reserve_capacity_and_threads(n, rayon::current_num_threads())
            .map_err(|e| backend("reserve search threads", e))?;
        Ok(AnnIndex { graph, unit, params: stored.params.clone() })
    }

    /// The graph as stored in an index file.
    pub fn to_graph(&self) -> Result<AnnGraph> {
        let mut bytes = vec![0u8; self.graph.serialized_length()];
        self.graph.save_to_buffer(&mut bytes).map_err(|e| backend("serialise the graph", e))?;
        Ok(AnnGraph { params: self.params.clone(), bytes })
    }

    /// The graph's parameters.
    pub fn params(&self) -> &AnnParams {
        &self.params
    }

    /// Unit answer vectors (N, D).
    pub fn unit(&self) -> ArrayView2<'_, f32> {
        self.unit.view()
    }

    /// Number of answers N.
    pub fn len(&self) -> usize {
        self.unit.nrows()
    }

    /// True when there are no answers (never: `build` and `load` reject that).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Dimension D.
    pub fn dim(&self) -> usize {
        self.unit.ncols()
    }

    /// The about-`k` nearest answers of each query `x` (B, D) by cosine, `(ids, scores)`
    /// (B, k) best first (ties to the lower id), from max(k, `ef`) graph candidates
    /// (`ef` defaults to the stored `ef_search`), each re-scored exactly.
    pub fn search(&self, x: ArrayView2<f32>, k: usize, ef: Option<usize>) -> Result<(Array2<u32>, Array2<f32>)> {
        linalg::check_batch(x, self.dim(), "queries")?;
        if k == 0 || k > self.len() {
            return invalid(format!("k must be between 1 and the index size ({}), got {k}", self.len()));
        }
        if ef == Some(0) {
            return invalid("ef must be at least 1");
        }
        let count = k.max(ef.unwrap_or(self.params.ef_search));
        let q = linalg::normalize_rows(x, "queries")?;
        let rows: Vec<Vec<(u32, f32)>> =
            q.axis_iter(Axis(0)).into_par_iter().map(|q| self.search_one(q, count)).collect::<Result<_>>()?;
        let b = rows.len();
        let mut ids = Array2::<u32>::zeros((b, k));
        let mut scores = Array2::<f32>::zeros((b, k));
        for (r, hits) in rows.into_iter().enumerate() {
            if hits.len() < k {
                return Err(Error::Backend(format!(
                    "the graph returned {} candidates, fewer than k = {k}",
                    hits.len()
                )));
            }
            for (j, (i, s)) in hits.into_iter().take(k).enumerate() {
                ids[[r, j]] = i;
                scores[[r, j]] = s;
            }
        }
        Ok((ids, scores))
    }

    /// One unit query's `count` graph candidates, re-scored exactly, best first.
    fn search_one(&self, q: ArrayView1<f32>, count: usize) -> Result<Vec<(u32, f32)>> {
        let slice = q.as_slice().expect("a fresh array's rows are contiguous");
        let found = self.graph.search(slice, count).map_err(|e| backend("search", e))?;
        let mut hits = found
            .keys
            .iter()
            .map(|&key| match usize::try_from(key).ok().filter(|&i| i < self.len()) {
                Some(i) => Ok((i as u32, self.unit.row(i).dot(&q))),
                None => format_err(format!("`ann_graph` returned key {key}, not an answer position")),
            })
            .collect::<Result<Vec<_>>>()?;
        hits.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FlatIndex;

    /// `n` points in `d` dimensions with the structure of text embeddings (seeded): a
    /// 16-d latent space of `clusters` Gaussian clusters, mapped into `d` dimensions by a
    /// fixed random matrix, plus isotropic noise. (Random Gaussian vectors,
    /// with no structure, are HNSW's worst case.)
    pub(crate) fn clustered(n: usize, d: usize, clusters: usize, seed: u64) -> Array2<f32> {
        let mut state = 0x5EED;
        let mut gauss = move || {
            let mut uniform = || {
                state += 0x9E37_79B9_7F4A_7C15u64;
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
            };
            let (u, v) = (uniform().max(1e-12), uniform());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        };
        // The same centres and map for every seed; the points differ.
        let latent = 16;
        let centres = Array2::from_shape_simple_fn((clusters, latent), &mut gauss);
        let map = Array2::from_shape_simple_fn((latent, d), &mut gauss);
        for _ in 0..seed * 1000 {
            gauss();
        }
        let mut z = Array2::from_shape_simple_fn((n, latent), || 0.5 * gauss());
        for (i, mut row) in z.axis_iter_mut(Axis(0)).enumerate() {
            row += &centres.row(i * 7919 % clusters);
        }
        z.dot(&map) + Array2::from_shape_simple_fn((n, d), gauss)
    }

    fn recall(got: &Array2<u32>, want: &Array2<u32>) -> f64 {
        let found: usize = got
            .outer_iter()
            .zip(want.outer_iter())
            .map(|(g, w)| g.iter().filter(|i| w.iter().any(|j| j == *i)).count())
            .sum();
        found as f64 / want.len() as f64
    }

    #[test]
    fn recall_at_10_against_exact_search() {
        let answers = clustered(20_000, 64, 200, 1);
        let queries = clustered(300, 64, 200, 2);
        let ann = AnnIndex::build(answers.view(), &AnnParams::default()).unwrap();
        let (want, want_scores) = FlatIndex::new(answers.view()).unwrap().search(queries.view(), 10).unwrap();
        let (got, scores) = ann.search(queries.view(), 10, None).unwrap();
        let r = recall(&got, &want);
        assert!(r >= 0.95, "recall@10 {r}");
        // Exact cosines, best first, never above the exact top-10's at the same rank.
        for (g, w) in scores.outer_iter().zip(want_scores.outer_iter()) {
            assert!(g.windows(2).into_iter().all(|p| p[0] >= p[1]));
            assert!(g.iter().zip(w).all(|(a, b)| *a <= b + 1e-5));
        }
        let unit = linalg::normalize_rows(answers.view(), "a").unwrap();
        let q = linalg::normalize_rows(queries.view(), "q").unwrap();
        assert!((scores[[5, 3]] - unit.row(got[[5, 3]] as usize).dot(&q.row(5))).abs() < 1e-6);
        // ef trades speed for recall.
        let (low, _) = ann.search(queries.view(), 10, Some(10)).unwrap();
        let (high, _) = ann.search(queries.view(), 10, Some(400)).unwrap();
        assert!(
            recall(&low, &want) < r && recall(&high, &want) >= r,
            "{} {r} {}",
            recall(&low, &want),
            recall(&high, &want)
        );

        // The stored graph loads and searches the same.
        let graph = ann.to_graph().unwrap();
        assert_eq!(graph.params, AnnParams::default());
        let back = AnnIndex::load(&graph, answers.view()).unwrap();
        assert_eq!(back.search(queries.view(), 10, None).unwrap(), (got, scores));
    }

    #[test]
    fn bad_inputs_and_graphs_are_errors() {
        let answers = clustered(200, 8, 5, 3);
        let ann = AnnIndex::build(answers.view(), &AnnParams::new(4, 16, 8).unwrap()).unwrap();
        let q = clustered(2, 8, 5, 4);
        for (k, ef) in [(0, None), (201, None), (3, Some(0))] {
            assert!(matches!(ann.search(q.view(), k, ef), Err(Error::InvalidInput(_))), "k {k} ef {ef:?}");
        }
        assert_eq!(ann.search(q.view(), 200, None).unwrap().0.ncols(), 200);
        let nan = ndarray::array![[f32::NAN; 8]];
        assert!(ann.search(nan.view(), 1, None).unwrap_err().to_string().contains("NaN"));
        assert!(ann.search(q.view().slice(ndarray::s![.., ..4]), 1, None).is_err());
        assert!(AnnIndex::build(Array2::zeros((0, 8)).view(), &AnnParams::default()).is_err());
        assert!(AnnIndex::build(Array2::zeros((3, 8)).view(), &AnnParams::default()).is_err());
        assert!(
            AnnParams::new(1, 16, 8).is_err() && AnnParams::new(4, 0, 8).is_err() && AnnParams::new(4, 8, 0).is_err()
        );

        let graph = ann.to_graph().unwrap();
        let err = AnnIndex::load(&graph, answers.slice(ndarray::s![..199, ..])).unwrap_err();
        assert!(matches!(err, Error::Format(_)) && err.to_string().contains("200 vectors"), "{err}");
        for bytes in [vec![], vec![7u8; 100], graph.bytes[..graph.bytes.len() / 2].to_vec()] {
            let bad = AnnGraph { params: graph.params.clone(), bytes };
            assert!(matches!(AnnIndex::load(&bad, answers.view()), Err(Error::Format(_))));
        }
    }
}
