//! One linear map for every query: `p = x @ W + bias` (the `global` kind, fitted by
//! `projroute.procrustes` in Python).

use std::collections::BTreeMap;

use ndarray::{Array1, Array2, ArrayView2};

use crate::error::{format_err, Result};
use crate::format::{ModelFile, Tensor};
use crate::linalg;
use crate::model::{names, Model};
use crate::packed::PackedMatrix;
use crate::precision::Precision;

/// A global projection.
#[derive(Clone, Debug)]
pub struct Global {
    w: PackedMatrix,
    bias: Option<Array1<f32>>,
}

impl Global {
    /// From the map `w` (D_in, D_out), stored at `precision`, and an optional `bias` (D_out,).
    pub fn new(w: Array2<f32>, bias: Option<Array1<f32>>, precision: Precision) -> Result<Self> {
        if let Some(b) = &bias {
            if b.len() != w.ncols() {
                return format_err(format!("bias has {} values, W has {} columns", b.len(), w.ncols()));
            }
        }
        Ok(Global { w: PackedMatrix::pack_as(w.view(), precision), bias })
    }

    pub(crate) fn from_model(m: &ModelFile) -> Result<Self> {
        let w = m.tensor("W")?.view2("W")?.to_owned();
        let bias = match m.tensors.get("bias") {
            Some(t) => Some(t.view1("bias")?.to_owned()),
            None => None,
        };
        Self::new(w, bias, m.config.weights_precision())
    }

    /// Input dimension.
    pub fn dim_in(&self) -> usize {
        self.w.rows()
    }

    /// Output dimension.
    pub fn dim_out(&self) -> usize {
        self.w.cols()
    }

    /// Project queries `x` (B, D_in) to (B, D_out).
    pub fn project(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        linalg::check_batch(x, self.dim_in(), "queries")?;
        let mut p = self.w.matmul(x);
        if let Some(b) = &self.bias {
            p += b;
        }
        Ok(p)
    }
}

impl Model for Global {
    fn kind(&self) -> &'static str {
        "global"
    }

    fn dim_in(&self) -> usize {
        Global::dim_in(self)
    }

    fn dim_out(&self) -> usize {
        Global::dim_out(self)
    }

    fn project(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        Global::project(self, x)
    }

    fn tensor_names(&self) -> Vec<String> {
        names(&["W", "bias"])
    }

    fn tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        out.insert("W".to_string(), Tensor::from_array(self.w.to_array().view()));
        if let Some(b) = &self.bias {
            out.insert("bias".to_string(), Tensor::from_array(b.view()));
        }
        out
    }
}
