#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod blend;
mod cpu;
#[cfg(feature = "candle")]
mod dense;
#[cfg(feature = "candle")]
mod ensemble;
mod error;
mod fastmath;
mod federated;
mod format;
mod global;
mod index;
mod keyed;
mod lda;
mod linalg;
mod packed;
mod precision;
mod projector;
mod routing;
#[cfg(feature = "candle")]
mod transformer;

pub use blend::{blend_maps, blend_vectors};
#[cfg(feature = "candle")]
pub use ensemble::Ensemble;
pub use error::{Error, Result};
pub use federated::Federated;
pub use format::{
    Config, EnsembleConfig, ModelFile, Tensor, TransformerConfig, CONFIG_KEY, FORMAT_NAME, FORMAT_VERSION,
};
pub use global::Global;
pub use index::FlatIndex;
pub use keyed::{KeyRule, Keyed};
pub use lda::Lda;
pub use packed::PackedMatrix;
pub use precision::Precision;
pub use projector::{Projector, INDEX_TENSOR};
pub use routing::{route, softmax_rows, Router, Routing, RoutingParams};
#[cfg(feature = "candle")]
pub use transformer::Transformer;
