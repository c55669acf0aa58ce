//! The distilled student, run with candle on the CPU: a query embedding (one token)
//! cross-attends to learned keys and values in each block, then a feed-forward
//! network, with residuals and pre-layer-norms; the output adds a linear skip path.
//!
//! ```text
//! h = input(x)
//! for each block: q = query(norm1(h)); a = softmax(q·keysᵀ/√d_head) per head
//!                 h = h + out(a·values);  h = h + ffn2(gelu(ffn1(norm2(h))))
//! y = skip(x) + output(norm(h))
//! ```
//! Tensor names and layouts are PyTorch's `state_dict` of
//! `projroute.distill.ProjectionTransformer` (`Linear.weight` is (out, in)).
//!
//! The attention is folded into other matrices at load, so the source tensors cannot
//! be recovered from the built network: a model built from a file keeps them (they
//! are small) for export.

use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor};
use candle_nn::{layer_norm, LayerNorm, Module, VarBuilder};
use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

use crate::dense::{matrix, Dense};
use crate::error::{format_err, Error, Result};
use crate::format::{self as file, ModelFile, TransformerConfig};
use crate::linalg;
use crate::model::Model;

fn backend(e: candle_core::Error) -> Error {
    Error::Backend(e.to_string())
}

fn format(e: candle_core::Error) -> Error {
    Error::Format(e.to_string())
}

/// Rows of a large batch that one thread runs through the whole network at once.
const CHUNK: usize = 64;

/// One block, with the attention folded at load time into two GEMMs:
/// per-head scores `norm1(h) @ (W_qᵀ K) + b_q K` against a block-diagonal `K`
/// (d, H·nk) scaled by 1/√d_head, a softmax within each head (the GEMM's epilogue), then
/// `att @ (V W_outᵀ) + b_out` with a block-diagonal `V` (H·nk, d). This is the same
/// function as query → per-head attention → out, without per-head transposes.
#[derive(Clone)]
struct Block {
    norm1: LayerNorm,
    scores: Dense,
    mix: Dense,
    norm2: LayerNorm,
    ffn1: Dense,
    ffn2: Dense,
}

impl Block {
    fn load(vb: VarBuilder, c: &TransformerConfig) -> candle_core::Result<Self> {
        let (d, h, nk) = (c.d_model, c.n_heads, c.num_keys);
        let dh = d / h;
        let (keys, values) = (matrix(&vb, (nk, d), "keys")?, matrix(&vb, (nk, d), "values")?);
        let scale = 1.0 / (dh as f32).sqrt();
        let (mut k_bd, mut v_bd) = (Array2::<f32>::zeros((d, h * nk)), Array2::<f32>::zeros((h * nk, d)));
        for row in 0..d {
            let head = row / dh;
            for j in 0..nk {
                k_bd[(row, head * nk + j)] = keys[(j, row)] * scale;
                v_bd[(head * nk + j, row)] = values[(j, row)];
            }
        }
        let (wq, bq) = (matrix(&vb, (d, d), "query.weight")?, vb.get(d, "query.bias")?.to_vec1::<f32>()?);
        let (wo, bo) = (matrix(&vb, (d, d), "out.weight")?, vb.get(d, "out.bias")?.to_vec1::<f32>()?);
        let scores_bias = ndarray::aview1(&bq).dot(&k_bd).to_vec();
        Ok(Block {
            norm1: layer_norm(d, c.layer_norm_eps, vb.pp("norm1"))?,
            scores: Dense::new(wq.t().dot(&k_bd).view(), Some(scores_bias)).with_softmax(nk),
            mix: Dense::new(v_bd.dot(&wo.t()).view(), Some(bo)),
            norm2: layer_norm(d, c.layer_norm_eps, vb.pp("norm2"))?,
            ffn1: Dense::linear(d, c.ffn_dim, true, vb.pp("ffn1"))?.with_gelu(),
            ffn2: Dense::linear(c.ffn_dim, d, true, vb.pp("ffn2"))?,
        })
    }

    /// `h` (B, d_model) -> (B, d_model).
    fn forward(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        let att = self.scores.forward(&self.norm1.forward(h)?)?;
        let h = self.mix.forward_add(&att, h)?;
        self.ffn2.forward_add(&self.ffn1.forward(&self.norm2.forward(&h)?)?, &h)
    }
}

/// Copies of the tensors of `m` called one of `names` (a built model's sources).
pub(crate) fn keep(m: &ModelFile, names: &[String]) -> BTreeMap<String, file::Tensor> {
    names.iter().filter_map(|n| m.tensors.get(n).map(|t| (n.clone(), t.clone()))).collect()
}

/// A candle `VarBuilder` over all tensors of a model file (CPU, f32).
pub(crate) fn tensors_builder(m: &ModelFile) -> Result<VarBuilder<'static>> {
    let device = Device::Cpu;
    let tensors = m
        .tensors
        .iter()
        .map(|(name, t)| Ok((name.clone(), Tensor::from_slice(&t.data, t.shape.as_slice(), &device).map_err(format)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    Ok(VarBuilder::from_tensors(tensors, candle_core::DType::F32, &device))
}

/// A distilled `ProjectionTransformer`.
#[derive(Clone)]
pub struct Transformer {
    input: Dense,
    blocks: Vec<Block>,
    norm: LayerNorm,
    output: Dense,
    skip: Dense,
    dim_in: usize,
    dim_out: usize,
    /// The tensors it was built from, for export (empty for an ensemble's student,
    /// whose ensemble keeps them).
    source: BTreeMap<String, file::Tensor>,
}

impl std::fmt::Debug for Transformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Transformer(dim_in={}, dim_out={}, blocks={})", self.dim_in, self.dim_out, self.blocks.len())
    }
}

impl Transformer {
    /// Tensor names a model with this architecture has.
    pub fn tensor_names(c: &TransformerConfig) -> Vec<String> {
        let mut names: Vec<String> =
            ["input.weight", "input.bias", "norm.weight", "norm.bias", "output.weight", "output.bias", "skip.weight"]
                .map(String::from)
                .to_vec();
        for i in 0..c.n_layers {
            for t in [
                "norm1.weight",
                "norm1.bias",
                "query.weight",
                "query.bias",
                "keys",
                "values",
                "out.weight",
                "out.bias",
                "norm2.weight",
                "norm2.bias",
                "ffn1.weight",
                "ffn1.bias",
                "ffn2.weight",
                "ffn2.bias",
            ] {
                names.push(format!("layers.{i}.{t}"));
            }
        }
        names
    }

    pub(crate) fn from_model(m: &ModelFile) -> Result<Self> {
        let t = Self::from_builder(tensors_builder(m)?, m)?;
        let names = m.config.transformer.as_ref().map(Self::tensor_names).unwrap_or_default();
        Ok(Transformer { source: keep(m, &names), ..t })
    }

    /// Build from the tensors under `vb` with the architecture in `m`'s config.
    pub(crate) fn from_builder(vb: VarBuilder, m: &ModelFile) -> Result<Self> {
        let c =
            m.config.transformer.as_ref().ok_or_else(|| {
                Error::Format(format!("a `{}` config needs a `transformer` architecture", m.config.kind))
            })?;
        if c.n_heads == 0 || c.d_model % c.n_heads != 0 || c.n_layers == 0 || c.num_keys == 0 {
            return format_err(format!("bad transformer architecture {c:?}"));
        }
        let (d_in, d_out, d) = (m.config.dim_in, m.config.dim_out, c.d_model);
        let build = || -> candle_core::Result<Self> {
            Ok(Transformer {
                input: Dense::linear(d_in, d, true, vb.pp("input"))?,
                blocks: (0..c.n_layers)
                    .map(|i| Block::load(vb.pp("layers").pp(i), c))
                    .collect::<candle_core::Result<_>>()?,
                norm: layer_norm(d, c.layer_norm_eps, vb.pp("norm"))?,
                output: Dense::linear(d, d_out, true, vb.pp("output"))?,
                skip: Dense::linear(d_in, d_out, false, vb.pp("skip"))?,
                dim_in: d_in,
                dim_out: d_out,
                source: BTreeMap::new(),
            })
        };
        build().map_err(format)
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
    ///
    /// A large batch is cut into chunks of [`CHUNK`] rows, each run through the whole
    /// network by one thread, so its activations stay in that core's cache and the
    /// threads meet once instead of at every layer; a small batch runs as one, each
    /// layer on all threads.
    pub fn project(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        linalg::check_batch(x, self.dim_in, "queries")?;
        if x.nrows() < 2 * CHUNK * rayon::current_num_threads() {
            return self.forward(x);
        }
        // On rayon's pool, not the team: candle's own parallel kernels inside a chunk use
        // rayon, which from a team helper would hand off to an idle pool (with the team
        // B=1024 ran at 0.81x, side by side).
        let mut out = Array2::<f32>::zeros((x.nrows(), self.dim_out));
        out.axis_chunks_iter_mut(Axis(0), CHUNK)
            .into_par_iter()
            .zip(x.axis_chunks_iter(Axis(0), CHUNK))
            .try_for_each(|(mut o, x)| crate::packed::on_this_thread(|| self.forward(x)).map(|y| o.assign(&y)))?;
        Ok(out)
    }

    /// The network on `x` (B, D_in), whose shape the caller has checked.
    fn forward(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        let b = x.nrows();
        let run = || -> candle_core::Result<Vec<f32>> {
            let x = Tensor::from_vec(x.iter().copied().collect(), (b, self.dim_in), &Device::Cpu)?;
            let mut h = self.input.forward(&x)?;
            for block in &self.blocks {
                h = block.forward(&h)?;
            }
            let y = self.output.forward_add(&self.norm.forward(&h)?, &self.skip.forward(&x)?)?;
            y.flatten_all()?.to_vec1::<f32>()
        };
        let y = run().map_err(backend)?;
        Array2::from_shape_vec((b, self.dim_out), y).map_err(|e| Error::Backend(e.to_string()))
    }
}

impl Model for Transformer {
    fn kind(&self) -> &'static str {
        "transformer"
    }

    fn dim_in(&self) -> usize {
        self.dim_in
    }

    fn dim_out(&self) -> usize {
        self.dim_out
    }

    fn project(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        Transformer::project(self, x)
    }

    fn tensor_names(&self) -> Vec<String> {
        self.source.keys().cloned().collect()
    }

    fn tensors(&self) -> BTreeMap<String, file::Tensor> {
        self.source.clone()
    }
}
