//! Federated projection: softmax routing over cluster centroids, then the routed
//! clusters' maps blended by weight, `p = Σ_i w_i · (x @ W_i)`. The maps are stored
//! whole, `W` (K, D_in, D_out), or factored as a base and a low-rank correction per
//! cluster, `W_k = W.base + U_k M_k` (see `docs/format.md`).

use std::collections::BTreeMap;

use ndarray::{s, Array2, ArrayView2, ArrayView3, Axis};

use crate::blend::{self, LowRank};
use crate::error::{format_err, Result};
use crate::format::{ModelFile, Tensor};
use crate::model::{names, stack, Model};
use crate::packed::PackedMatrix;
use crate::precision::Precision;
use crate::routing::{Router, Routing, RoutingParams};

/// A federated projection.
#[derive(Clone, Debug)]
pub struct Federated {
    router: Router,
    maps: Maps,
    dim_out: usize,
    /// With per-question routing, the file's `centroids` (K, D_in) as given, for export
    /// (the router holds the questions).
    centroids: Option<Tensor>,
}

/// The K maps, whole or factored.
#[derive(Clone, Debug)]
enum Maps {
    Dense(Vec<PackedMatrix>),
    LowRank(LowRank),
}

/// Tensor names of factored maps: the base (D_in, D_out), every cluster's `U_k`
/// side by side (D_in, R) and every `M_k` stacked (R, D_out), R the sum of the ranks.
const BASE: &str = "W.base";
const SPANS: &str = "W.U";
const CORRECTIONS: &str = "W.M";

impl Federated {
    /// From `centroids` (K, D_in; normalised here), `maps` (K, D_in, D_out; packed here
    /// for the serving kernel) and routing parameters.
    pub fn new(centroids: ArrayView2<f32>, maps: ArrayView3<f32>, params: RoutingParams) -> Result<Self> {
        Self::with_router(Router::new(centroids, params)?, maps, Precision::F32)
    }

    /// From any router (centroid or per-question routing, with or without a prior) and
    /// its K maps (K, D_in, D_out), stored at `precision`. A per-question model built
    /// here has no `centroids` to export; one built from a file keeps the file's.
    pub fn with_router(router: Router, maps: ArrayView3<f32>, precision: Precision) -> Result<Self> {
        let (k, d_in) = (router.n_clusters(), router.dim());
        if maps.dim().0 != k || maps.dim().1 != d_in {
            return format_err(format!(
                "W has shape {:?}, expected ({k}, {d_in}, D_out) to match the routing",
                maps.shape()
            ));
        }
        let dim_out = maps.dim().2;
        let maps = Maps::Dense(maps.outer_iter().map(|w| PackedMatrix::pack_as(w, precision)).collect());
        Ok(Federated { router, maps, dim_out, centroids: None })
    }

    /// From any router and factored maps `W_k = base + U_k M_k`: `base` (D_in, D_out),
    /// `spans` (D_in, R) the `U_k` side by side, `corrections` (R, D_out) the `M_k`
    /// stacked, `ranks` (K) the width of each (summing to R), stored at `precision`.
    pub fn low_rank(
        router: Router,
        base: ArrayView2<f32>,
        spans: ArrayView2<f32>,
        corrections: ArrayView2<f32>,
        ranks: &[usize],
        precision: Precision,
    ) -> Result<Self> {
        let (k, d_in, dim_out) = (router.n_clusters(), router.dim(), base.ncols());
        let Some(total) = ranks.iter().try_fold(0usize, |sum, &r| sum.checked_add(r)) else {
            return format_err("`ranks` sum past the largest size");
        };
        if ranks.len() != k {
            return format_err(format!("{} ranks for {k} clusters", ranks.len()));
        }
        if base.nrows() != d_in || spans.dim() != (d_in, total) || corrections.dim() != (total, dim_out) {
            return format_err(format!(
                "{BASE} {:?}, {SPANS} {:?} and {CORRECTIONS} {:?} do not fit ranks summing to {total} and \
                 the routing's D_in = {d_in}: expected ({d_in}, D_out), ({d_in}, {total}), ({total}, D_out)",
                base.shape(),
                spans.shape(),
                corrections.shape()
            ));
        }
        let mut at = 0;
        let factors: Vec<_> = ranks
            .iter()
            .map(|&r| {
                at += r;
                (spans.slice(s![.., at - r..at]), corrections.slice(s![at - r..at, ..]))
            })
            .collect();
        let maps = Maps::LowRank(LowRank::new(base, &factors, precision));
        Ok(Federated { router, maps, dim_out, centroids: None })
    }

    pub(crate) fn from_model(m: &ModelFile) -> Result<Self> {
        let c = &m.config;
        let centroids = m.tensor("centroids")?.view2("centroids")?;
        let params = RoutingParams::from_config(c)?;
        let per_question = c.question_counts.is_some();
        let router = match &c.question_counts {
            None if m.tensors.contains_key("questions") => {
                return format_err("tensor `questions` needs `question_counts` in the config")
            }
            None => Router::new(centroids, params)?,
            Some(counts) => {
                if counts.len() != centroids.nrows() {
                    return format_err(format!("{} question counts for {} centroids", counts.len(), centroids.nrows()));
                }
                let questions = m.tensor("questions")?.view2("questions")?;
                Router::per_question(questions, counts, params, c.cluster_temperature)?
            }
        };
        let router = match m.tensors.get("prior") {
            Some(p) => router.with_prior(p.view1("prior")?)?,
            None => router,
        };
        let federated = match &c.ranks {
            None if [BASE, SPANS, CORRECTIONS].iter().any(|n| m.tensors.contains_key(*n)) => {
                return format_err(format!("tensors `{BASE}`, `{SPANS}`, `{CORRECTIONS}` need `ranks` in the config"))
            }
            None => Self::with_router(router, m.tensor("W")?.view3("W")?, c.weights_precision())?,
            Some(_) if m.tensors.contains_key("W") => {
                return format_err(format!("a model with `ranks` stores its maps factored ({BASE}, ...), not as `W`"))
            }
            Some(ranks) => Self::low_rank(
                router,
                m.tensor(BASE)?.view2(BASE)?,
                m.tensor(SPANS)?.view2(SPANS)?,
                m.tensor(CORRECTIONS)?.view2(CORRECTIONS)?,
                ranks,
                c.weights_precision(),
            )?,
        };
        Ok(Federated { centroids: per_question.then(|| Tensor::from_array(centroids)), ..federated })
    }

    /// Input dimension.
    pub fn dim_in(&self) -> usize {
        self.router.dim()
    }

    /// Output dimension.
    pub fn dim_out(&self) -> usize {
        self.dim_out
    }

    /// Centroids and routing parameters.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Routing weights of queries `x` (B, D_in).
    pub fn route(&self, x: ArrayView2<f32>) -> Result<Routing> {
        self.router.route(x)
    }

    /// Project queries `x` (B, D_in) to (B, D_out).
    pub fn project(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        let r = self.route(x)?;
        Ok(match &self.maps {
            Maps::Dense(maps) => blend::blend_maps(x, &r, maps),
            Maps::LowRank(maps) => blend::blend_low_rank(x, &r, maps),
        })
    }
}

impl Model for Federated {
    fn kind(&self) -> &'static str {
        "federated"
    }

    fn dim_in(&self) -> usize {
        Federated::dim_in(self)
    }

    fn dim_out(&self) -> usize {
        Federated::dim_out(self)
    }

    fn n_clusters(&self) -> Option<usize> {
        Some(self.router.n_clusters())
    }

    fn project(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        Federated::project(self, x)
    }

    fn route(&self, x: ArrayView2<f32>) -> Result<Option<Routing>> {
        Federated::route(self, x).map(Some)
    }

    fn tensor_names(&self) -> Vec<String> {
        names(&["centroids", "W", BASE, SPANS, CORRECTIONS, "questions", "prior"])
    }

    fn tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out: BTreeMap<String, Tensor> = self.router.tensors().into_iter().collect();
        if let Some(c) = &self.centroids {
            out.insert("centroids".to_string(), c.clone());
        }
        match &self.maps {
            Maps::Dense(maps) => {
                out.insert("W".to_string(), stack(maps, self.dim_in(), self.dim_out));
            }
            Maps::LowRank(maps) => {
                let side_by_side = |parts: &[PackedMatrix], axis| {
                    let arrays: Vec<Array2<f32>> = parts.iter().map(PackedMatrix::to_array).collect();
                    let views: Vec<ArrayView2<f32>> = arrays.iter().map(|a| a.view()).collect();
                    Tensor::from_array(ndarray::concatenate(axis, &views).expect("factor shapes agree").view())
                };
                out.insert(BASE.to_string(), Tensor::from_array(maps.base.to_array().view()));
                out.insert(SPANS.to_string(), side_by_side(&maps.spans, Axis(1)));
                out.insert(CORRECTIONS.to_string(), side_by_side(&maps.corrections, Axis(0)));
            }
        }
        out
    }
}
