//! [`Model`]: what every servable kind of model does. Each kind implements it in its
//! own file, with its own `from_model`; [`Projector`](crate::Projector) dispatches to
//! it once, through a registry of kind names.

use std::collections::BTreeMap;

use ndarray::{Array2, ArrayView2};

use crate::error::{invalid, Result};
use crate::format::Tensor;
use crate::packed::PackedMatrix;
use crate::routing::Routing;

/// A servable model of one kind, built from a model file's tensors and config.
///
/// Only [`kind`](Self::kind), the dimensions, [`project`](Self::project) and the two
/// tensor methods are required; keyed and routed kinds override the rest.
pub trait Model: Send + Sync + std::fmt::Debug {
    /// Model kind as written in the file's config.
    fn kind(&self) -> &'static str;

    /// Input dimension.
    fn dim_in(&self) -> usize;

    /// Output dimension.
    fn dim_out(&self) -> usize;

    /// Number of clusters or heads, for routed kinds.
    fn n_clusters(&self) -> Option<usize> {
        None
    }

    /// Project queries `x` (B, D_in) to (B, D_out). Keyed kinds answer with an error
    /// asking for keys.
    fn project(&self, x: ArrayView2<f32>) -> Result<Array2<f32>>;

    /// Project queries `x` (B, D_in) with one key per query to (B, D_out); keyed kinds
    /// only.
    fn project_keyed(&self, x: ArrayView2<f32>, keys: &[&str]) -> Result<Array2<f32>> {
        let _ = (x, keys);
        invalid(format!("a `{}` model takes no keys; call project without them", self.kind()))
    }

    /// The key of the node that serves each of `keys`; keyed kinds only.
    fn resolve(&self, keys: &[&str]) -> Result<Vec<String>> {
        let _ = keys;
        invalid(format!("a `{}` model takes no keys", self.kind()))
    }

    /// Routing weights of queries `x` (B, D_in); `None` for unrouted kinds.
    fn route(&self, x: ArrayView2<f32>) -> Result<Option<Routing>> {
        let _ = x;
        Ok(None)
    }

    /// Names of the tensors this kind reads (some may be optional); any other tensor
    /// in its file, except the index, is an error.
    fn tensor_names(&self) -> Vec<String>;

    /// Export: exactly the tensors this model was built from, bit for bit (a `W` stored
    /// at half precision as the widened f32 values its file holds).
    fn tensors(&self) -> BTreeMap<String, Tensor>;
}

/// Names as owned strings.
pub(crate) fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

/// Maps packed one per cluster or node, unpacked and stacked into one (M, D_in, D_out)
/// tensor; all maps have the shape `(dim_in, dim_out)`.
pub(crate) fn stack(maps: &[PackedMatrix], dim_in: usize, dim_out: usize) -> Tensor {
    let mut data = Vec::with_capacity(maps.len() * dim_in * dim_out);
    for m in maps {
        data.extend(m.to_array().iter().copied());
    }
    Tensor { shape: vec![maps.len(), dim_in, dim_out], data }
}

/// Every model type is `Send + Sync`, so that one loaded model serves many threads.
const _: fn() = || {
    fn check<T: Send + Sync>() {}
    check::<crate::Projector>();
    check::<crate::Global>();
    check::<crate::Federated>();
    check::<crate::Lda>();
    check::<crate::Prle>();
    check::<crate::Keyed>();
    check::<crate::Router>();
    check::<crate::FlatIndex>();
    check::<crate::ModelFile>();
    #[cfg(feature = "candle")]
    check::<crate::Transformer>();
    #[cfg(feature = "candle")]
    check::<crate::Ensemble>();
    check::<crate::AnswerIndex>();
    #[cfg(feature = "text")]
    check::<crate::StaticEncoder>();
    #[cfg(feature = "text")]
    check::<crate::Searcher>();
};
