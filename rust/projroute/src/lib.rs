#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "ann")]
mod ann;
mod answer_index;
mod atomic_file;
mod blend;
pub mod cpu;
#[cfg(feature = "candle")]
mod dense;
#[cfg(feature = "candle")]
mod ensemble;
mod error;
mod fastmath;
mod federated;
mod format;
mod index;
mod lda;
mod linalg;
mod model;
mod packed;
mod precision;
mod prle;
mod procrustes;
mod projector;
mod routing;
#[cfg(feature = "text")]
mod searcher;
#[cfg(feature = "text")]
mod static_encoder;
mod team;
pub mod threads;
#[cfg(feature = "candle")]
mod transformer;
mod trees;
#[cfg(feature = "text")]
mod wordpiece;

#[cfg(feature = "ann")]
pub use ann::AnnIndex;
pub use answer_index::{
    file_kind, read_index_header, AnnGraph, AnnParams, AnswerIndex, FileKind, IndexHeader, INDEX_FORMAT_NAME,
    INDEX_FORMAT_VERSION,
};
pub use blend::{blend_maps, blend_vectors};
#[cfg(feature = "candle")]
pub use ensemble::Ensemble;
pub use error::{Error, Result};
pub use federated::Federated;
pub use format::{
    read_config, save_file, Config, EnsembleConfig, ModelFile, PrleConfig, Tensor, TransformerConfig, CONFIG_KEY,
    FORMAT_NAME, FORMAT_VERSION, INDEX_TENSOR,
};
pub use index::FlatIndex;
pub use lda::Lda;
pub use model::Model;
pub use packed::PackedMatrix;
pub use precision::Precision;
pub use prle::Prle;
pub use procrustes::Global;
pub use projector::Projector;
pub use routing::{route, softmax_rows, Router, Routing, RoutingParams};
#[cfg(feature = "text")]
pub use searcher::{Hit, SearchOptions, Searcher};
#[cfg(feature = "text")]
pub use static_encoder::StaticEncoder;
#[cfg(feature = "candle")]
pub use transformer::Transformer;
pub use trees::{KeyRule, Keyed};
