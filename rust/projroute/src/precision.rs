//! How stored weights are kept: f32, f16 or bf16, widened to f32 for every product.

/// How a packed matrix stores its values; products are computed in f32 either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// 32-bit floats.
    F32,
    /// IEEE half precision (10-bit mantissa): half the memory traffic.
    F16,
    /// bfloat16 (8-bit mantissa, the f32 exponent range): half the memory traffic.
    BF16,
}

impl Precision {
    /// `float32`, `float16` or `bfloat16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "float32",
            Precision::F16 => "float16",
            Precision::BF16 => "bfloat16",
        }
    }

    /// From a [`name`](Self::name); `None` on anything else.
    pub fn from_name(name: &str) -> Option<Self> {
        [Precision::F32, Precision::F16, Precision::BF16].into_iter().find(|p| p.name() == name)
    }

    /// `v` as stored at this precision (round to nearest even), back in f32.
    pub fn round(self, v: f32) -> f32 {
        match self {
            Precision::F32 => v,
            Precision::F16 => half::f16::from_f32(v).to_f32(),
            Precision::BF16 => half::bf16::from_f32(v).to_f32(),
        }
    }

    /// The 16-bit pattern of `v` rounded to nearest even: f16 for [`F16`](Self::F16),
    /// bf16 otherwise (only called for the half precisions).
    pub(crate) fn to_bits(self, v: f32) -> u16 {
        match self {
            Precision::F16 => half::f16::from_f32(v).to_bits(),
            _ => half::bf16::from_f32(v).to_bits(),
        }
    }
}
