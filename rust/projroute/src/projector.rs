//! `Projector`: any projroute model, loaded from a file and ready to project.

use std::path::Path;

use ndarray::{Array2, ArrayView2};

use crate::error::{format_err, invalid, Error, Result};
use crate::format::{Config, ModelFile};
use crate::routing::{Routing, RoutingParams};
use crate::{Federated, Global, KeyRule, Keyed, Lda};

/// Optional tensor (N, D_out) of answer embeddings stored with a model for search.
pub const INDEX_TENSOR: &str = "index.embeddings";

/// A loaded model of any kind.
#[derive(Clone, Debug)]
pub enum Projector {
    /// One global map.
    Global(Global),
    /// Routed per-cluster maps.
    Federated(Federated),
    /// Routed per-head answer embeddings.
    Lda(Lda),
    /// Per-node maps chosen by a key per query (`tree` and `hierarchical` kinds).
    Keyed(Keyed),
    /// A distilled student run with candle.
    #[cfg(feature = "candle")]
    Transformer(crate::Transformer),
    /// Distilled domain students mixed by a router, run with candle.
    #[cfg(feature = "candle")]
    Ensemble(crate::Ensemble),
}

impl Projector {
    /// Load and validate a model file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_model(&ModelFile::open(path)?)
    }

    /// Build from a parsed model file, checking tensors against its config.
    pub fn from_model(m: &ModelFile) -> Result<Self> {
        let c = &m.config;
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (projector, expected): (Projector, Vec<String>) = match c.kind.as_str() {
            "global" => (Projector::Global(Global::from_model(m)?), names(&["W", "bias"])),
            "federated" => {
                (Projector::Federated(Federated::from_model(m)?), names(&["centroids", "W", "questions", "prior"]))
            }
            "lda" => (Projector::Lda(Lda::from_model(m)?), names(&["centroids", "answers"])),
            "tree" => (Projector::Keyed(Keyed::from_model(m, KeyRule::Tree)?), names(&["W"])),
            "hierarchical" => (Projector::Keyed(Keyed::from_model(m, KeyRule::Hierarchical)?), names(&["W"])),
            #[cfg(feature = "candle")]
            "transformer" => {
                let t = crate::Transformer::from_model(m)?;
                let expected = c.transformer.as_ref().map(crate::Transformer::tensor_names).unwrap_or_default();
                (Projector::Transformer(t), expected)
            }
            #[cfg(feature = "candle")]
            "transformer_ensemble" => {
                (Projector::Ensemble(crate::Ensemble::from_model(m)?), crate::Ensemble::tensor_names(m))
            }
            #[cfg(not(feature = "candle"))]
            "transformer" | "transformer_ensemble" => {
                return format_err(format!("`{}` models need projroute built with the `candle` feature", c.kind))
            }
            other => return format_err(format!("unknown model kind `{other}`")),
        };
        if let Some(extra) = m.tensors.keys().find(|k| !expected.contains(k) && *k != INDEX_TENSOR) {
            return format_err(format!("unexpected tensor `{extra}` in a `{}` model", c.kind));
        }
        if (projector.dim_in(), projector.dim_out()) != (c.dim_in, c.dim_out) {
            return format_err(format!(
                "tensors give dimensions {} -> {}, config says {} -> {}",
                projector.dim_in(),
                projector.dim_out(),
                c.dim_in,
                c.dim_out
            ));
        }
        if let Some(index) = m.tensors.get(INDEX_TENSOR) {
            let d = index.view2(INDEX_TENSOR)?.ncols();
            if d != c.dim_out {
                return format_err(format!("`{INDEX_TENSOR}` has {d} columns, expected dim_out {}", c.dim_out));
            }
        }
        if let Some(k) = projector.n_clusters() {
            if c.n_clusters != Some(k) {
                return format_err(format!("tensors have {k} clusters, config says {:?}", c.n_clusters));
            }
        }
        Ok(projector)
    }

    /// Model kind as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            Projector::Global(_) => "global",
            Projector::Federated(_) => "federated",
            Projector::Lda(_) => "lda",
            Projector::Keyed(m) if m.rule() == KeyRule::Tree => "tree",
            Projector::Keyed(_) => "hierarchical",
            #[cfg(feature = "candle")]
            Projector::Transformer(_) => "transformer",
            #[cfg(feature = "candle")]
            Projector::Ensemble(_) => "transformer_ensemble",
        }
    }

    /// Input dimension.
    pub fn dim_in(&self) -> usize {
        match self {
            Projector::Global(m) => m.dim_in(),
            Projector::Federated(m) => m.dim_in(),
            Projector::Lda(m) => m.dim_in(),
            Projector::Keyed(m) => m.dim_in(),
            #[cfg(feature = "candle")]
            Projector::Transformer(m) => m.dim_in(),
            #[cfg(feature = "candle")]
            Projector::Ensemble(m) => m.dim_in(),
        }
    }

    /// Output dimension.
    pub fn dim_out(&self) -> usize {
        match self {
            Projector::Global(m) => m.dim_out(),
            Projector::Federated(m) => m.dim_out(),
            Projector::Lda(m) => m.dim_out(),
            Projector::Keyed(m) => m.dim_out(),
            #[cfg(feature = "candle")]
            Projector::Transformer(m) => m.dim_out(),
            #[cfg(feature = "candle")]
            Projector::Ensemble(m) => m.dim_out(),
        }
    }

    /// Number of clusters or heads, for routed kinds.
    pub fn n_clusters(&self) -> Option<usize> {
        match self {
            Projector::Federated(m) => Some(m.router().n_clusters()),
            Projector::Lda(m) => Some(m.router().n_clusters()),
            _ => None,
        }
    }

    /// Project queries `x` (B, D_in) to (B, D_out). Keyed kinds need
    /// [`project_keyed`](Self::project_keyed) instead.
    pub fn project(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        match self {
            Projector::Global(m) => m.project(x),
            Projector::Federated(m) => m.project(x),
            Projector::Lda(m) => m.project(x),
            Projector::Keyed(m) => {
                let key = if m.rule() == KeyRule::Tree { "tree id" } else { "path like `a/b/c`" };
                invalid(format!("a `{}` model needs keys: one {key} per query", self.kind()))
            }
            #[cfg(feature = "candle")]
            Projector::Transformer(m) => m.project(x),
            #[cfg(feature = "candle")]
            Projector::Ensemble(m) => m.project(x),
        }
    }

    /// Project queries `x` (B, D_in) with one key per query (tree ids or paths) to
    /// (B, D_out); only for keyed kinds (`tree`, `hierarchical`).
    pub fn project_keyed(&self, x: ArrayView2<f32>, keys: &[&str]) -> Result<Array2<f32>> {
        match self {
            Projector::Keyed(m) => m.project_keyed(x, keys),
            _ => invalid(format!("a `{}` model takes no keys; call project without them", self.kind())),
        }
    }

    /// Routing weights of queries `x` (B, D_in); `None` for unrouted kinds.
    pub fn route(&self, x: ArrayView2<f32>) -> Result<Option<Routing>> {
        match self {
            Projector::Federated(m) => m.route(x).map(Some),
            Projector::Lda(m) => m.route(x).map(Some),
            _ => Ok(None),
        }
    }
}

/// Routing parameters from a routed kind's config.
pub(crate) fn routing_params(m: &ModelFile) -> Result<RoutingParams> {
    let c: &Config = &m.config;
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
