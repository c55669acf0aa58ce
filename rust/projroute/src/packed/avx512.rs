//! The AVX-512F kernel (x86-64 only): the [`tile`](super::tile) on one 16-lane vector per
//! row and panel, a 12x32 tile of two panels in twenty-four accumulators (with the two
//! panel rows and the broadcast, inside the 32 vector registers); f16 and bf16 panels
//! widened to f32 as they are loaded. Two panels, not one: a 12x16 tile loads thirteen
//! vectors for twelve FMAs, so on cores that issue two 512-bit FMAs and two 512-bit loads
//! a cycle (Intel's) the loads, not the FMAs, would set its pace; 12x32 loads fourteen
//! for twenty-four.

use super::tile::{self, Lanes, Next};
use super::NR;
use std::arch::x86_64::*;

/// Rows of `a` per full tile.
pub(super) const ROWS: usize = 12;

/// Proof that this CPU has AVX-512F, the one feature the kernel is compiled for (it
/// implies AVX2, FMA and F16C): [`Features::detect`] is the only way to make one.
#[derive(Clone, Copy, Debug)]
pub(super) struct Features(());

impl Features {
    /// `Some` where the CPU has AVX-512F.
    pub(super) fn detect() -> Option<Self> {
        std::arch::is_x86_feature_detected!("avx512f").then_some(Features(()))
    }
}

impl Lanes for __m512 {
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm512_setzero_ps()
    }

    /// f32 lines with one aligned 64-byte load; half lines with one unaligned 32-byte load.
    #[inline(always)]
    unsafe fn load<const KIND: u8>(b: *const u8, p: usize) -> Self {
        if KIND == 0 {
            return _mm512_load_ps(b.cast::<f32>().add(p * NR));
        }
        let h = _mm256_loadu_si256(b.add(p * 2 * NR).cast::<__m256i>());
        if KIND == 1 {
            _mm512_cvtph_ps(h)
        } else {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }

    #[inline(always)]
    unsafe fn fma(self, a: f32, b: Self) -> Self {
        _mm512_fmadd_ps(_mm512_set1_ps(a), b, self)
    }

    #[inline(always)]
    unsafe fn add_from(self, c: *const f32) -> Self {
        _mm512_add_ps(self, _mm512_loadu_ps(c))
    }

    #[inline(always)]
    unsafe fn store(self, c: *mut f32) {
        _mm512_storeu_ps(c, self)
    }
}

/// [`tile::strips`] in 12-row strips: `mc` rows of `a` (depth `kc`, stride `lda`)
/// against `P` consecutive panels into `c` (mc, 16 `P`).
///
/// # Safety
///
/// The CPU must have AVX-512F. `a` must hold `mc` rows of `kc` floats spaced `lda` apart
/// (`a.len() >= (mc - 1) * lda + kc`), `c` must hold `mc` rows of 16 `P` floats spaced `ldc`
/// apart (`c.len() >= (mc - 1) * ldc + 16 P`), and `b` must point to at least `P kc`
/// readable panel lines of the `KIND` given (0 f32, 1 f16, 2 bf16), aligned as `Line`
/// and `HalfLine` are.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn strips<const KIND: u8, const P: usize>(
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
    tile::strips::<__m512, ROWS, P, KIND>(mc, kc, a.as_ptr(), lda, b, c.as_mut_ptr(), ldc, accumulate, next);
}

/// One [`tile::tile`] of `M` rows (the right edge's tiles).
///
/// # Safety
///
/// The CPU must have AVX-512F; otherwise as [`tile::tile`], with `b` aligned as for
/// [`strips`].
#[target_feature(enable = "avx512f")]
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
    tile::tile::<__m512, M, 1, KIND>(kc, a, lda, b, c, ldc, accumulate, tile::share(next, 0, 1));
}
