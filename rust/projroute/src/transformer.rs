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

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use candle_nn::{layer_norm, linear, linear_no_bias, LayerNorm, Linear, Module, VarBuilder};
use ndarray::{Array2, ArrayView2};

use crate::error::{format_err, Error, Result};
use crate::format::{ModelFile, TransformerConfig};
use crate::linalg;

fn backend(e: candle_core::Error) -> Error {
    Error::Backend(e.to_string())
}

fn format(e: candle_core::Error) -> Error {
    Error::Format(e.to_string())
}

/// A linear layer with its weight stored transposed, (in, out) contiguous, so the
/// GEMM reads it row-major (PyTorch's (out, in) layout would be read strided).
#[derive(Clone)]
struct Dense {
    wt: Tensor,
    bias: Option<Tensor>,
}

impl Dense {
    fn new(l: Linear) -> candle_core::Result<Self> {
        Ok(Dense { wt: l.weight().t()?.contiguous()?, bias: l.bias().cloned() })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.matmul(&self.wt)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

fn dense(in_dim: usize, out_dim: usize, vb: VarBuilder) -> candle_core::Result<Dense> {
    Dense::new(linear(in_dim, out_dim, vb)?)
}

#[derive(Clone)]
struct Block {
    norm1: LayerNorm,
    query: Dense,
    /// (H, d_head, num_keys), pre-transposed and contiguous.
    keys_t: Tensor,
    /// (H, num_keys, d_head), contiguous.
    values: Tensor,
    out: Dense,
    norm2: LayerNorm,
    ffn1: Dense,
    ffn2: Dense,
    n_heads: usize,
    scale: f64,
}

impl Block {
    fn load(vb: VarBuilder, c: &TransformerConfig) -> candle_core::Result<Self> {
        let (d, h, nk) = (c.d_model, c.n_heads, c.num_keys);
        let dh = d / h;
        let heads = |t: Tensor| t.reshape((nk, h, dh))?.transpose(0, 1);
        Ok(Block {
            norm1: layer_norm(d, c.layer_norm_eps, vb.pp("norm1"))?,
            query: dense(d, d, vb.pp("query"))?,
            keys_t: heads(vb.get((nk, d), "keys")?)?.transpose(1, 2)?.contiguous()?,
            values: heads(vb.get((nk, d), "values")?)?.contiguous()?,
            out: dense(d, d, vb.pp("out"))?,
            norm2: layer_norm(d, c.layer_norm_eps, vb.pp("norm2"))?,
            ffn1: dense(d, c.ffn_dim, vb.pp("ffn1"))?,
            ffn2: dense(c.ffn_dim, d, vb.pp("ffn2"))?,
            n_heads: h,
            scale: 1.0 / (dh as f64).sqrt(),
        })
    }

    /// `h` (B, d_model) -> (B, d_model).
    fn forward(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        let (b, d) = h.dims2()?;
        let q = self.query.forward(&self.norm1.forward(h)?)?;
        let q = q.reshape((b, self.n_heads, d / self.n_heads))?.transpose(0, 1)?.contiguous()?;
        let att = candle_nn::ops::softmax_last_dim(&(q.matmul(&self.keys_t)? * self.scale)?)?;
        let o = att.matmul(&self.values)?.transpose(0, 1)?.contiguous()?.reshape((b, d))?;
        let h = (h + self.out.forward(&o)?)?;
        let f = self.ffn2.forward(&self.ffn1.forward(&self.norm2.forward(&h)?)?.gelu_erf()?)?;
        h + f
    }
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
                "norm1.weight", "norm1.bias", "query.weight", "query.bias", "keys", "values", "out.weight",
                "out.bias", "norm2.weight", "norm2.bias", "ffn1.weight", "ffn1.bias", "ffn2.weight", "ffn2.bias",
            ] {
                names.push(format!("layers.{i}.{t}"));
            }
        }
        names
    }

    pub(crate) fn from_model(m: &ModelFile) -> Result<Self> {
        Self::from_builder(tensors_builder(m)?, m)
    }

    /// Build from the tensors under `vb` with the architecture in `m`'s config.
    pub(crate) fn from_builder(vb: VarBuilder, m: &ModelFile) -> Result<Self> {
        let c = m.config.transformer.as_ref().ok_or_else(|| {
            Error::Format(format!("a `{}` config needs a `transformer` architecture", m.config.kind))
        })?;
        if c.n_heads == 0 || c.d_model % c.n_heads != 0 || c.n_layers == 0 || c.num_keys == 0 {
            return format_err(format!("bad transformer architecture {c:?}"));
        }
        let (d_in, d_out, d) = (m.config.dim_in, m.config.dim_out, c.d_model);
        let build = || -> candle_core::Result<Self> {
            Ok(Transformer {
                input: dense(d_in, d, vb.pp("input"))?,
                blocks: (0..c.n_layers).map(|i| Block::load(vb.pp("layers").pp(i), c)).collect::<candle_core::Result<_>>()?,
                norm: layer_norm(d, c.layer_norm_eps, vb.pp("norm"))?,
                output: dense(d, d_out, vb.pp("output"))?,
                skip: Dense::new(linear_no_bias(d_in, d_out, vb.pp("skip"))?)?,
                dim_in: d_in,
                dim_out: d_out,
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
    pub fn project(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        linalg::check_batch(x, self.dim_in, "queries")?;
        let b = x.nrows();
        let data: Vec<f32> = x.iter().copied().collect();
        let run = || -> candle_core::Result<Vec<f32>> {
            let x = Tensor::from_vec(data, (b, self.dim_in), &Device::Cpu)?;
            let mut h = self.input.forward(&x)?;
            for block in &self.blocks {
                h = block.forward(&h)?;
            }
            let y = (self.skip.forward(&x)? + self.output.forward(&self.norm.forward(&h)?)?)?;
            y.flatten_all()?.to_vec1::<f32>()
        };
        let y = run().map_err(backend)?;
        Array2::from_shape_vec((b, self.dim_out), y).map_err(|e| Error::Backend(e.to_string()))
    }
}
