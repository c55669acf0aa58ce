//! The endpoints: request and response bodies, the checks on them (exactly those the
//! OpenAPI document states), and the core's work for a batch of requests.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use ndarray::{concatenate, Array2, ArrayView2, Axis};
use serde::{Deserialize, Deserializer, Serialize};

use crate::batcher::{Batcher, Batching, Run};
use crate::error::{ApiError, ApiJson};
use crate::metrics::Metrics;
use crate::service::ModelService;
use projroute::Searcher;

/// Largest magnitude a query value may have (larger ones are refused, so that no
/// computation overflows float32).
pub const MAX_ABS_VALUE: f64 = 1e6;
/// A query to a routed model needs a component at least this large: cosine routing is
/// undefined for a zero vector (and its norm would underflow near zero).
pub const MIN_COMPONENT: f64 = 1e-6;
/// Answers returned by `/search` when the request gives no `k` (at most the answers there are).
pub const DEFAULT_K: usize = 10;

/// Limits on every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most queries (vectors or texts) in one request.
    pub max_queries: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Longest a request may take, from its arrival to its response.
    pub timeout: Duration,
}

/// `Some` of the value when the field is present: unlike a plain `Option`, `null` is
/// refused rather than taken as absent.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// `POST /project` on a model.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectRequest {
    vectors: Vec<Vec<f64>>,
    #[serde(default, deserialize_with = "present")]
    keys: Option<Vec<String>>,
}

/// `POST /search` on a model with stored answers.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorSearchRequest {
    vectors: Vec<Vec<f64>>,
    #[serde(default, deserialize_with = "present")]
    keys: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    k: Option<f64>,
}

/// `POST /embed` on an index.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    texts: Vec<String>,
}

/// `POST /search` on an index.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSearchRequest {
    texts: Vec<String>,
    #[serde(default, deserialize_with = "present")]
    k: Option<f64>,
}

/// Vectors out: `/project` (all present) and `/embed` (`null` for a text without a known token).
#[derive(Serialize)]
pub struct VectorsResponse<V> {
    vectors: Vec<V>,
}

/// One answer found by `/search`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hit {
    id: i64,
    score: f32,
    text: Option<String>,
}

/// `/search` out: the hits of each query, best first.
#[derive(Serialize)]
pub struct SearchResponse {
    results: Vec<Vec<Hit>>,
}

/// Queries of one request for a model, checked.
pub struct Queries {
    x: Array2<f32>,
    keys: Option<Vec<String>>,
    k: usize,
}

/// Texts of one request for an index, checked.
pub struct Texts {
    texts: Vec<String>,
    k: usize,
}

/// 422 unless `n` is in 1..=max_queries.
fn check_count(n: usize, limits: &Limits, field: &str) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::invalid(format!("no queries: `{field}` is empty")));
    }
    if n > limits.max_queries {
        return Err(ApiError::invalid(format!(
            "too many queries: {n} in one request, the limit is {} (--max-queries)",
            limits.max_queries
        )));
    }
    Ok(())
}

/// `k`, or its default, as a count in 1..=n_answers.
fn check_k(k: Option<f64>, n_answers: usize) -> Result<usize, ApiError> {
    let Some(k) = k else { return Ok(DEFAULT_K.min(n_answers)) };
    if k.fract() != 0.0 || k < 1.0 || k > n_answers as f64 {
        return Err(ApiError::invalid(format!(
            "k out of range: it must be an integer from 1 to {n_answers} (the number of answers), got {k}"
        )));
    }
    Ok(k as usize)
}

impl ModelService {
    /// The vectors as a (B, dim_in) float32 matrix, with their keys, after every check:
    /// count, dimension, magnitude, non-zero for routed kinds, one key per query for
    /// keyed kinds and none otherwise.
    fn queries(
        &self,
        vectors: Vec<Vec<f64>>,
        keys: Option<Vec<String>>,
        k: usize,
        limits: &Limits,
    ) -> Result<Queries, ApiError> {
        let (n, dim) = (vectors.len(), self.projector.dim_in());
        check_count(n, limits, "vectors")?;
        let mut flat = Vec::with_capacity(n * dim);
        for (i, v) in vectors.into_iter().enumerate() {
            if v.len() != dim {
                return Err(ApiError::invalid(format!(
                    "wrong dimension: query {i} has {} values, the model takes {dim}",
                    v.len()
                )));
            }
            if let Some(j) = v.iter().position(|x| x.is_nan() || x.abs() > MAX_ABS_VALUE) {
                return Err(ApiError::invalid(format!(
                    "query {i}, value {j} is {}: values must be finite, of magnitude at most {MAX_ABS_VALUE:e}",
                    v[j]
                )));
            }
            if self.routed() && !v.iter().any(|x| x.abs() >= MIN_COMPONENT) {
                return Err(ApiError::invalid(format!(
                    "query {i} is (nearly) zero: a `{}` model routes by cosine, which needs a value of \
                     magnitude at least {MIN_COMPONENT:e}",
                    self.projector.kind()
                )));
            }
            flat.extend(v.iter().map(|&x| x as f32));
        }
        let kind = self.projector.kind();
        match (&keys, self.keyed()) {
            (None, true) => return Err(ApiError::invalid(format!("a `{kind}` model needs `keys`: one per query"))),
            (Some(keys), true) if keys.len() != n => {
                return Err(ApiError::invalid(format!("{} keys for {n} queries: give one key per query", keys.len())))
            }
            (Some(_), false) => return Err(ApiError::invalid(format!("a `{kind}` model takes no `keys`"))),
            _ => {}
        }
        let x = Array2::from_shape_vec((n, dim), flat).expect("n rows of dim values");
        Ok(Queries { x, keys, k })
    }

    /// The projections of every request's queries, stacked (B, dim_out).
    fn project_all(&self, batch: &[Queries]) -> Result<Array2<f32>, ApiError> {
        let views: Vec<ArrayView2<f32>> = batch.iter().map(|q| q.x.view()).collect();
        let x = concatenate(Axis(0), &views).map_err(|e| ApiError::internal(e.to_string()))?;
        let y = if self.keyed() {
            let keys: Vec<&str> = batch.iter().flat_map(|q| q.keys.iter().flatten().map(String::as_str)).collect();
            self.projector.project_keyed(x.view(), &keys)?
        } else {
            self.projector.project(x.view())?
        };
        if let Some(i) = y.outer_iter().position(|row| row.iter().any(|v| !v.is_finite())) {
            return Err(ApiError::internal(format!("the model gave non-finite values for query {i}")));
        }
        Ok(y)
    }

    /// `/project` for a batch: each request's projected rows.
    fn project_batch(&self, batch: &[Queries]) -> Result<Vec<Vec<Vec<f32>>>, ApiError> {
        let y = self.project_all(batch)?;
        let mut rows = y.outer_iter().map(|r| r.to_vec());
        Ok(batch.iter().map(|q| rows.by_ref().take(q.x.nrows()).collect()).collect())
    }

    /// `/search` for a batch: each query's `k` best stored answers (a zero projection finds none).
    fn search_batch(&self, batch: &[Queries]) -> Result<Vec<Vec<Vec<Hit>>>, ApiError> {
        let answers = self.answers.as_ref().ok_or_else(|| ApiError::internal("no stored answers"))?;
        let y = self.project_all(batch)?;
        let live: Vec<usize> = (0..y.nrows()).filter(|&i| cosine_defined(y.row(i).iter())).collect();
        let k_max = batch.iter().map(|q| q.k).max().unwrap_or(1);
        let mut hits = vec![Vec::new(); y.nrows()];
        if !live.is_empty() {
            let (ids, scores) = answers.index.search(y.select(Axis(0), &live).view(), k_max)?;
            for (row, &q) in live.iter().enumerate() {
                hits[q] = ids
                    .row(row)
                    .iter()
                    .zip(scores.row(row))
                    .map(|(&i, &score)| Hit {
                        id: i64::from(i),
                        score,
                        text: answers.texts.as_ref().map(|t| t[i as usize].clone()),
                    })
                    .collect();
            }
        }
        let mut hits = hits.into_iter();
        let mut out = Vec::with_capacity(batch.len());
        for q in batch {
            // The top k_max, sorted with ties to the lower index, starts with the top k.
            let mut mine: Vec<Vec<Hit>> = hits.by_ref().take(q.x.nrows()).collect();
            mine.iter_mut().for_each(|h| h.truncate(q.k));
            out.push(mine);
        }
        Ok(out)
    }
}

/// Whether a row has a cosine: finite, with a norm above zero as the core computes it.
fn cosine_defined<'a>(row: impl Iterator<Item = &'a f32> + Clone) -> bool {
    let norm = row.clone().map(|v| v * v).sum::<f32>().sqrt();
    norm > 0.0 && norm.is_finite()
}

/// `/embed` for a batch of index requests: each text's vector as searched (encoded,
/// then projected), `None` for a text with no known token.
fn embed_batch(searcher: &Searcher, batch: &[Texts]) -> Result<Vec<Vec<Option<Vec<f32>>>>, ApiError> {
    let texts: Vec<&str> = batch.iter().flat_map(|t| t.texts.iter().map(String::as_str)).collect();
    let x = searcher.encoder().encode(&texts)?;
    let live: Vec<usize> = (0..x.nrows()).filter(|&i| cosine_defined(x.row(i).iter())).collect();
    let mut out = vec![None; x.nrows()];
    if !live.is_empty() {
        let x_live = x.select(Axis(0), &live);
        let y = match searcher.projector() {
            Some(p) => p.project(x_live.view())?,
            None => x_live,
        };
        for (row, &i) in live.iter().enumerate() {
            out[i] = Some(y.row(row).to_vec());
        }
    }
    let mut out = out.into_iter();
    Ok(batch.iter().map(|t| out.by_ref().take(t.texts.len()).collect()).collect())
}

/// `/search` for a batch of index requests, one call of the searcher per distinct `k`.
fn search_texts_batch(searcher: &Searcher, batch: &[Texts]) -> Result<Vec<Vec<Vec<Hit>>>, ApiError> {
    let mut out = vec![Vec::new(); batch.len()];
    for k in batch.iter().map(|t| t.k).collect::<BTreeSet<_>>() {
        let members: Vec<usize> = (0..batch.len()).filter(|&i| batch[i].k == k).collect();
        let texts: Vec<&str> = members.iter().flat_map(|&i| batch[i].texts.iter().map(String::as_str)).collect();
        let mut found = searcher.search(&texts, k)?.into_iter().map(|hits| {
            hits.into_iter().map(|h| Hit { id: h.id, score: h.score, text: Some(h.text) }).collect::<Vec<_>>()
        });
        for &i in &members {
            out[i] = found.by_ref().take(batch[i].texts.len()).collect();
        }
    }
    Ok(out)
}

/// The state of a model's endpoints.
pub struct ModelApi {
    model: Arc<ModelService>,
    limits: Limits,
    project: Batcher<Queries, Vec<Vec<f32>>>,
    search: Option<Batcher<Queries, Vec<Vec<Hit>>>>,
}

impl ModelApi {
    /// Endpoints for `model`; its batchers' tasks start on the current runtime.
    pub fn new(model: ModelService, limits: Limits, batching: Option<Batching>, metrics: &Arc<Metrics>) -> Self {
        let model = Arc::new(model);
        let m = model.clone();
        let run: Arc<Run<Queries, Vec<Vec<f32>>>> = Arc::new(move |batch: &[Queries]| m.project_batch(batch));
        let project = Batcher::new("/project", metrics.clone(), batching, run);
        let search = model.answers.as_ref().map(|_| {
            let m = model.clone();
            let run: Arc<Run<Queries, Vec<Vec<Hit>>>> = Arc::new(move |batch: &[Queries]| m.search_batch(batch));
            Batcher::new("/search", metrics.clone(), batching, run)
        });
        ModelApi { model, limits, project, search }
    }
}

/// `POST /project`: vectors in, projected vectors out.
pub async fn project(
    State(api): State<Arc<ModelApi>>,
    ApiJson(req): ApiJson<ProjectRequest>,
) -> Result<Json<VectorsResponse<Vec<f32>>>, ApiError> {
    let q = api.model.queries(req.vectors, req.keys, 0, &api.limits)?;
    let rows = q.x.nrows();
    let vectors = api.project.submit(q, rows).await?;
    Ok(Json(VectorsResponse { vectors }))
}

/// `POST /search` on a model: vectors in, the `k` best stored answers of each out.
pub async fn search_vectors(
    State(api): State<Arc<ModelApi>>,
    ApiJson(req): ApiJson<VectorSearchRequest>,
) -> Result<Json<SearchResponse>, ApiError> {
    let (Some(search), Some(answers)) = (&api.search, &api.model.answers) else {
        return Err(ApiError::new(axum::http::StatusCode::NOT_FOUND, "this model stores no answers to search"));
    };
    let k = check_k(req.k, answers.index.len())?;
    let q = api.model.queries(req.vectors, req.keys, k, &api.limits)?;
    let rows = q.x.nrows();
    let results = search.submit(q, rows).await?;
    Ok(Json(SearchResponse { results }))
}

/// The state of an index's endpoints.
pub struct IndexApi {
    searcher: Arc<Searcher>,
    limits: Limits,
    embed: Batcher<Texts, Vec<Option<Vec<f32>>>>,
    search: Batcher<Texts, Vec<Vec<Hit>>>,
}

impl IndexApi {
    /// Endpoints for `searcher`; its batchers' tasks start on the current runtime.
    pub fn new(searcher: Searcher, limits: Limits, batching: Option<Batching>, metrics: &Arc<Metrics>) -> Self {
        let searcher = Arc::new(searcher);
        let s = searcher.clone();
        let embed: Arc<Run<Texts, _>> = Arc::new(move |batch: &[Texts]| embed_batch(&s, batch));
        let s = searcher.clone();
        let search: Arc<Run<Texts, _>> = Arc::new(move |batch: &[Texts]| search_texts_batch(&s, batch));
        IndexApi {
            searcher,
            limits,
            embed: Batcher::new("/embed", metrics.clone(), batching, embed),
            search: Batcher::new("/search", metrics.clone(), batching, search),
        }
    }
}

/// `POST /embed`: texts in, their vectors as searched out.
pub async fn embed(
    State(api): State<Arc<IndexApi>>,
    ApiJson(req): ApiJson<EmbedRequest>,
) -> Result<Json<VectorsResponse<Option<Vec<f32>>>>, ApiError> {
    check_count(req.texts.len(), &api.limits, "texts")?;
    let rows = req.texts.len();
    let vectors = api.embed.submit(Texts { texts: req.texts, k: 0 }, rows).await?;
    Ok(Json(VectorsResponse { vectors }))
}

/// `POST /search` on an index: texts in, the `k` best answers of each out.
pub async fn search_texts(
    State(api): State<Arc<IndexApi>>,
    ApiJson(req): ApiJson<TextSearchRequest>,
) -> Result<Json<SearchResponse>, ApiError> {
    check_count(req.texts.len(), &api.limits, "texts")?;
    let k = check_k(req.k, api.searcher.len())?;
    let rows = req.texts.len();
    let results = api.search.submit(Texts { texts: req.texts, k }, rows).await?;
    Ok(Json(SearchResponse { results }))
}
