//! Linear layers of the distilled students as candle custom ops on the packed kernel.
//!
//! Each weight is constant, so it is packed once at load ([`PackedMatrix`]) and every
//! product runs on the same microkernel as the federated maps. Bias, an activation
//! (GELU, or a softmax within groups of columns) and a residual are applied as the
//! epilogue of the product, row by row while the row is in cache, so a layer is one
//! pass over its output and one candle op.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use candle_nn::VarBuilder;
use ndarray::{Array2, ArrayView2};

use crate::fastmath;
use crate::packed::PackedMatrix;

/// The activation of a [`Dense`] layer.
#[derive(Clone, Copy, Debug)]
enum Activation {
    Identity,
    /// The exact (erf) GELU.
    Gelu,
    /// A softmax within each run of this many columns.
    Softmax(usize),
}

/// `y = act(x @ W + b) [+ residual]`, with `W` (in, out) packed.
#[derive(Clone, Debug)]
pub(crate) struct Dense {
    w: PackedMatrix,
    bias: Option<Vec<f32>>,
    act: Activation,
}

impl Dense {
    /// `w` (in, out), `bias` (out).
    pub(crate) fn new(w: ArrayView2<f32>, bias: Option<Vec<f32>>) -> Self {
        Dense {
            w: PackedMatrix::pack(w),
            bias,
            act: Activation::Identity,
        }
    }

    /// A PyTorch `nn.Linear(in_dim, out_dim)` under `vb` (`weight` is (out, in)).
    pub(crate) fn linear(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let w = matrix(&vb, (out_dim, in_dim), "weight")?;
        let b = if bias {
            Some(vb.get(out_dim, "bias")?.to_vec1::<f32>()?)
        } else {
            None
        };
        Ok(Self::new(w.t(), b))
    }

    /// The same layer followed by the exact (erf) GELU.
    pub(crate) fn with_gelu(self) -> Self {
        Dense {
            act: Activation::Gelu,
            ..self
        }
    }

    /// The same layer followed by a softmax within each run of `group` outputs
    /// (`group` must divide the output dimension).
    pub(crate) fn with_softmax(self, group: usize) -> Self {
        assert!(
            group > 0 && self.w.cols().is_multiple_of(group),
            "softmax groups must tile the outputs"
        );
        Dense {
            act: Activation::Softmax(group),
            ..self
        }
    }

    /// `x` (B, in) -> (B, out).
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.apply_op1_no_bwd(self)
    }

    /// `x` (B, in), `residual` (B, out) -> `residual + layer(x)`.
    pub(crate) fn forward_add(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        x.apply_op2_no_bwd(residual, self)
    }

    fn run(&self, x: ArrayView2<f32>, residual: Option<&[f32]>) -> (CpuStorage, Shape) {
        let n = self.w.cols();
        let y = self.w.matmul_then(x, |i, row| {
            if let Some(b) = &self.bias {
                row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
            match self.act {
                Activation::Identity => {}
                Activation::Gelu => fastmath::gelu_in_place(row),
                Activation::Softmax(group) => fastmath::softmax_groups(row, group),
            }
            if let Some(r) = residual {
                row.iter_mut()
                    .zip(&r[i * n..(i + 1) * n])
                    .for_each(|(v, r)| *v += r);
            }
        });
        let shape = Shape::from((x.nrows(), n));
        (CpuStorage::F32(y.into_raw_vec_and_offset().0), shape)
    }
}

/// A contiguous f32 (B, cols) matrix in candle storage, viewed without copying.
fn view<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    cols: usize,
) -> candle_core::Result<ArrayView2<'a, f32>> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("dense layer input must be contiguous".into()))?;
    match l.dims() {
        &[_, c] if c == cols => {}
        dims => candle_core::bail!("dense layer expects (B, {cols}), got {dims:?}"),
    }
    let data = &s.as_slice::<f32>()?[start..end];
    ArrayView2::from_shape((data.len() / cols.max(1), cols), data).map_err(candle_core::Error::wrap)
}

impl CustomOp1 for Dense {
    fn name(&self) -> &'static str {
        "projroute-dense"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok(self.run(view(s, l, self.w.rows())?, None))
    }
}

impl CustomOp2 for Dense {
    fn name(&self) -> &'static str {
        "projroute-dense-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = view(s1, l1, self.w.rows())?;
        let r = view(s2, l2, self.w.cols())?;
        if r.nrows() != x.nrows() {
            candle_core::bail!("residual has {} rows for {} inputs", r.nrows(), x.nrows());
        }
        Ok(self.run(x, Some(r.as_slice().expect("contiguous view"))))
    }
}

/// A (rows, cols) f32 tensor under `vb` as an ndarray.
pub(crate) fn matrix(
    vb: &VarBuilder,
    shape: (usize, usize),
    name: &str,
) -> candle_core::Result<Array2<f32>> {
    let data = vb.get(shape, name)?.flatten_all()?.to_vec1::<f32>()?;
    Array2::from_shape_vec(shape, data).map_err(candle_core::Error::wrap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fastmath::gelu;

    #[test]
    fn dense_matches_ndarray_with_bias_gelu_and_residual() {
        let (b, k, n) = (70, 33, 20);
        let x = Array2::from_shape_fn((b, k), |(i, j)| ((i * 7 + j * 3) % 11) as f32 / 11.0 - 0.5);
        let w = Array2::from_shape_fn((k, n), |(i, j)| ((i * 5 + j) % 13) as f32 / 13.0 - 0.5);
        let bias: Vec<f32> = (0..n).map(|j| j as f32 / n as f32).collect();
        let r = Array2::from_shape_fn((b, n), |(i, j)| (i + j) as f32 * 0.01);
        let layer = Dense::new(w.view(), Some(bias.clone())).with_gelu();
        let dev = candle_core::Device::Cpu;
        let xt = Tensor::from_slice(x.as_slice().unwrap(), (b, k), &dev).unwrap();
        let rt = Tensor::from_slice(r.as_slice().unwrap(), (b, n), &dev).unwrap();
        let got = layer
            .forward_add(&xt, &rt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = (x.dot(&w) + ndarray::aview1(&bias)).mapv(gelu) + &r;
        for (g, w) in got.iter().zip(want.iter()) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
        let bad = Tensor::zeros((b, k + 1), candle_core::DType::F32, &dev).unwrap();
        assert!(layer.forward(&bad).is_err());
    }
}
