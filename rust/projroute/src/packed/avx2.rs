//! The AVX2/FMA/F16C kernel (x86-64 only): the [`tile`](super::tile) on sixteen lanes
//! held as two 8-lane vectors, a 6x16 tile in twelve accumulators; f16 and bf16 panels
//! widened to f32 as they are loaded.

use super::tile::{self, Lanes, Next};
use super::NR;
use crate::cpu::has_avx2_fma;
use std::arch::x86_64::*;

/// Rows of `a` per full tile.
pub(super) const ROWS: usize = 6;

/// Proof that this CPU has AVX2, FMA and F16C, the features the kernel is compiled
/// for: [`Features::detect`] is the only way to make one.
#[derive(Clone, Copy, Debug)]
pub(super) struct Features(());

impl Features {
    /// `Some` where the CPU has AVX2, FMA and F16C.
    pub(super) fn detect() -> Option<Self> {
        has_avx2_fma().then_some(Features(()))
    }
}

/// Sixteen lanes as two AVX vectors (lanes 0..8, 8..16).
#[derive(Clone, Copy)]
struct Pair(__m256, __m256);

impl Lanes for Pair {
    #[inline(always)]
    unsafe fn zero() -> Self {
        Pair(_mm256_setzero_ps(), _mm256_setzero_ps())
    }

    /// f32 lines with two aligned 32-byte loads; half lines with two aligned 16-byte loads.
    #[inline(always)]
    unsafe fn load<const KIND: u8>(b: *const u8, p: usize) -> Self {
        if KIND == 0 {
            let f = b.cast::<f32>().add(p * NR);
            return Pair(_mm256_load_ps(f), _mm256_load_ps(f.add(8)));
        }
        let h = b.add(p * 2 * NR).cast::<__m128i>();
        let (x0, x1) = (_mm_load_si128(h), _mm_load_si128(h.add(1)));
        if KIND == 1 {
            Pair(_mm256_cvtph_ps(x0), _mm256_cvtph_ps(x1))
        } else {
            let widen = |x| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(x)));
            Pair(widen(x0), widen(x1))
        }
    }

    #[inline(always)]
    unsafe fn fma(self, a: f32, b: Self) -> Self {
        let a = _mm256_set1_ps(a);
        Pair(_mm256_fmadd_ps(a, b.0, self.0), _mm256_fmadd_ps(a, b.1, self.1))
    }

    #[inline(always)]
    unsafe fn add_from(self, c: *const f32) -> Self {
        Pair(_mm256_add_ps(self.0, _mm256_loadu_ps(c)), _mm256_add_ps(self.1, _mm256_loadu_ps(c.add(8))))
    }

    #[inline(always)]
    unsafe fn store(self, c: *mut f32) {
        _mm256_storeu_ps(c, self.0);
        _mm256_storeu_ps(c.add(8), self.1);
    }
}

/// [`tile::strips`] in 6-row strips: `mc` rows of `a` (depth `kc`, stride `lda`) against
/// one panel into `c` (mc, 16).
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C. `a` must hold `mc` rows of `kc` floats spaced
/// `lda` apart (`a.len() >= (mc - 1) * lda + kc`), `c` must hold `mc` rows of 16 floats
/// spaced `ldc` apart (`c.len() >= (mc - 1) * ldc + 16`), and `b` must point to at least
/// `kc` readable panel lines of the `KIND` given (0 f32, 1 f16, 2 bf16), aligned as
/// `Line` and `HalfLine` are.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn strips<const KIND: u8>(
    mc: usize,
    kc: usize,
    a: &[f32],
    lda: usize,
    b: *const u8,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    next: Next,
) {
    tile::strips::<Pair, ROWS, 1, KIND>(mc, kc, a.as_ptr(), lda, b, c.as_mut_ptr(), ldc, accumulate, next);
}

/// One [`tile::tile`] of `M` rows (the right edge's tiles).
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C; otherwise as [`tile::tile`], with `b` aligned
/// as for [`strips`].
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn micro<const M: usize, const KIND: u8>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const u8,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    next: Next,
) {
    tile::tile::<Pair, M, 1, KIND>(kc, a, lda, b, c, ldc, accumulate, tile::share(next, 0, 1));
}
