//! Federated projection: softmax routing over cluster centroids, then the routed
//! clusters' maps blended by weight, `p = Σ_i w_i · (x @ W_i)`.

use std::collections::BTreeMap;

use ndarray::{Array2, ArrayView2, ArrayView3};

use crate::blend;
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
    maps: Vec<PackedMatrix>,
    dim_out: usize,
    /// With per-question routing, the file's `centroids` (K, D_in) as given, for export
    /// (the router holds the questions).
    centroids: Option<Tensor>,
}

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
        let maps = maps.outer_iter().map(|w| PackedMatrix::pack_as(w, precision)).collect();
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
        let federated = Self::with_router(router, m.tensor("W")?.view3("W")?, c.weights_precision())?;
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
        Ok(blend::blend_maps(x, &r, &self.maps))
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
        names(&["centroids", "W", "questions", "prior"])
    }

    fn tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out: BTreeMap<String, Tensor> = self.router.tensors().into_iter().collect();
        if let Some(c) = &self.centroids {
            out.insert("centroids".to_string(), c.clone());
        }
        out.insert("W".to_string(), stack(&self.maps, self.dim_in(), self.dim_out));
        out
    }
}
