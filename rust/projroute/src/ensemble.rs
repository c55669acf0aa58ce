//! A hierarchical ensemble of distilled students: a router MLP scores the domains,
//! the `top_k` best are mixed by their renormalised softmax weights.
//!
//! ```text
//! w = softmax(top_k(router(x)))      router = Linear -> GELU -> Linear
//! y = Σ_d w_d · student_d(x)
//! ```
//! Tensor names follow PyTorch's `state_dict`: `router.0.*`, `router.2.*` (an
//! `nn.Sequential`), and `students.{d}.*` for each student.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use ndarray::{Array2, ArrayView2, Axis};

use crate::dense::Dense;
use crate::error::{format_err, Error, Result};
use crate::format::{self as file, EnsembleConfig, ModelFile};
use crate::model::Model;
use crate::routing::{route, RoutingParams};
use crate::transformer::{keep, tensors_builder, Transformer};

/// A `transformer_ensemble` model.
#[derive(Clone)]
pub struct Ensemble {
    router: (Dense, Dense),
    students: Vec<Transformer>,
    top_k: usize,
    dim_in: usize,
    dim_out: usize,
    /// The tensors it was built from, for export (the students fold their attention).
    source: BTreeMap<String, file::Tensor>,
}

impl std::fmt::Debug for Ensemble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ensemble(domains={}, top_k={})", self.students.len(), self.top_k)
    }
}

impl Ensemble {
    /// Tensor names an ensemble with this configuration has.
    pub fn tensor_names(m: &ModelFile) -> Vec<String> {
        let (Some(t), Some(e)) = (&m.config.transformer, &m.config.ensemble) else {
            return Vec::new();
        };
        let mut names: Vec<String> =
            ["router.0.weight", "router.0.bias", "router.2.weight", "router.2.bias"].map(String::from).to_vec();
        for d in 0..e.n_domains {
            names.extend(Transformer::tensor_names(t).into_iter().map(|n| format!("students.{d}.{n}")));
        }
        names
    }

    pub(crate) fn from_model(m: &ModelFile) -> Result<Self> {
        let c = &m.config;
        let e: &EnsembleConfig = c
            .ensemble
            .as_ref()
            .ok_or_else(|| Error::Format("a `transformer_ensemble` config needs an `ensemble` section".into()))?;
        if e.n_domains == 0 || e.top_k == 0 || e.top_k > e.n_domains || e.router_hidden == 0 {
            return format_err(format!("bad ensemble configuration {e:?}"));
        }
        let vb = tensors_builder(m)?;
        let fmt = |err: candle_core::Error| Error::Format(err.to_string());
        let router = (
            Dense::linear(c.dim_in, e.router_hidden, true, vb.pp("router").pp(0)).map_err(fmt)?.with_gelu(),
            Dense::linear(e.router_hidden, e.n_domains, true, vb.pp("router").pp(2)).map_err(fmt)?,
        );
        let students = (0..e.n_domains)
            .map(|d| Transformer::from_builder(vb.pp("students").pp(d), m))
            .collect::<Result<Vec<_>>>()?;
        let source = keep(m, &Self::tensor_names(m));
        Ok(Ensemble { router, students, top_k: e.top_k, dim_in: c.dim_in, dim_out: c.dim_out, source })
    }

    /// Input dimension.
    pub fn dim_in(&self) -> usize {
        self.dim_in
    }

    /// Output dimension.
    pub fn dim_out(&self) -> usize {
        self.dim_out
    }

    /// Project queries `x` (B, D_in) to (B, D_out).
    pub fn project(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        crate::linalg::check_batch(x, self.dim_in, "queries")?;
        let b = x.nrows();
        let logits = {
            let run = || -> candle_core::Result<Vec<f32>> {
                let t = Tensor::from_vec(x.iter().copied().collect::<Vec<f32>>(), (b, self.dim_in), &Device::Cpu)?;
                self.router.1.forward(&self.router.0.forward(&t)?)?.flatten_all()?.to_vec1::<f32>()
            };
            run().map_err(|err| Error::Backend(err.to_string()))?
        };
        let logits =
            Array2::from_shape_vec((b, self.students.len()), logits).map_err(|err| Error::Backend(err.to_string()))?;
        // Top-k softmax over the logits: the routing core with temperature 1.
        let params = RoutingParams { temperature: 1.0, top_k: self.top_k, coverage: None };
        let weights = route(logits.view(), &params)?.to_dense(self.students.len());
        let mut out = Array2::<f32>::zeros((b, self.dim_out));
        for (d, student) in self.students.iter().enumerate() {
            let w = weights.column(d);
            let rows: Vec<usize> = (0..b).filter(|&i| w[i] > 0.0).collect();
            if rows.is_empty() {
                continue;
            }
            let y = student.project(x.select(Axis(0), &rows).view())?;
            for (r, &i) in rows.iter().enumerate() {
                out.row_mut(i).scaled_add(w[i], &y.row(r));
            }
        }
        Ok(out)
    }
}

impl Model for Ensemble {
    fn kind(&self) -> &'static str {
        "transformer_ensemble"
    }

    fn dim_in(&self) -> usize {
        self.dim_in
    }

    fn dim_out(&self) -> usize {
        self.dim_out
    }

    fn project(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        Ensemble::project(self, x)
    }

    fn tensor_names(&self) -> Vec<String> {
        self.source.keys().cloned().collect()
    }

    fn tensors(&self) -> BTreeMap<String, file::Tensor> {
        self.source.clone()
    }
}
