//! LDA multi-head projection (the flat-softmax teacher): each head has a centroid and
//! an answer embedding, `p = Σ_i softmax(cos(x, c_i) / T)_i · a_i`, optionally top-k.

use std::collections::BTreeMap;

use ndarray::{Array2, ArrayView2};

use crate::blend;
use crate::error::{format_err, Result};
use crate::format::{ModelFile, Tensor};
use crate::model::{names, Model};
use crate::packed::PackedMatrix;
use crate::routing::{self, Router, Routing, RoutingParams};

/// An LDA multi-head projection.
#[derive(Clone, Debug)]
pub struct Lda {
    router: Router,
    answers: Array2<f32>,
    /// `answers` packed for the dense (flat-softmax) GEMM.
    packed: PackedMatrix,
}

impl Lda {
    /// From `centroids` (K, D_in; normalised here), `answers` (K, D_out) and routing
    /// parameters.
    pub fn new(centroids: ArrayView2<f32>, answers: Array2<f32>, params: RoutingParams) -> Result<Self> {
        if answers.nrows() != centroids.nrows() {
            return format_err(format!("{} answer rows for {} centroids", answers.nrows(), centroids.nrows()));
        }
        let packed = PackedMatrix::pack(answers.view());
        Ok(Lda { router: Router::new(centroids, params)?, answers, packed })
    }

    pub(crate) fn from_model(m: &ModelFile) -> Result<Self> {
        let centroids = m.tensor("centroids")?.view2("centroids")?;
        let answers = m.tensor("answers")?.view2("answers")?.to_owned();
        Self::new(centroids, answers, RoutingParams::from_config(&m.config)?)
    }

    /// Input dimension.
    pub fn dim_in(&self) -> usize {
        self.router.dim()
    }

    /// Output dimension.
    pub fn dim_out(&self) -> usize {
        self.answers.ncols()
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
        let params = self.router.params();
        if params.is_dense(self.router.n_clusters()) {
            // Flat softmax: weights in place of the scores, then one GEMM.
            let mut w = self.router.scores(x)?;
            routing::softmax_rows(w.view_mut(), params.temperature);
            return Ok(self.packed.matmul(w.view()));
        }
        let r = self.route(x)?;
        let k = self.router.n_clusters();
        if r.weights.len() * 4 >= r.len() * k {
            // A quarter or more of the weights are non-zero: one GEMM beats row sums.
            return Ok(self.packed.matmul(r.to_dense(k).view()));
        }
        Ok(blend::blend_vectors(&r, self.answers.view()))
    }
}

impl Model for Lda {
    fn kind(&self) -> &'static str {
        "lda"
    }

    fn dim_in(&self) -> usize {
        Lda::dim_in(self)
    }

    fn dim_out(&self) -> usize {
        Lda::dim_out(self)
    }

    fn n_clusters(&self) -> Option<usize> {
        Some(self.router.n_clusters())
    }

    fn project(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        Lda::project(self, x)
    }

    fn route(&self, x: ArrayView2<f32>) -> Result<Option<Routing>> {
        Lda::route(self, x).map(Some)
    }

    fn tensor_names(&self) -> Vec<String> {
        names(&["centroids", "answers"])
    }

    fn tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out: BTreeMap<String, Tensor> = self.router.tensors().into_iter().collect();
        out.insert("answers".to_string(), Tensor::from_array(self.answers.view()));
        out
    }
}
