//! The AVX2/FMA/F16C microkernel (x86-64 only): a 6x16 tile of `a @ b` held in twelve
//! 8-lane accumulators while the panel streams past, f16 and bf16 panels widened to
//! f32 as they are loaded.

use super::NR;
use std::arch::x86_64::*;

/// Panel row `p` as two vectors of 8: `KIND` 0 = f32 lines (64 bytes), 1 = f16 and
/// 2 = bf16 lines (32 bytes), widened to f32.
#[inline(always)]
unsafe fn load<const KIND: u8>(b: *const u8, p: usize) -> (__m256, __m256) {
    if KIND == 0 {
        let f = b.cast::<f32>().add(p * NR);
        return (_mm256_load_ps(f), _mm256_load_ps(f.add(8)));
    }
    let h = b.add(p * 2 * NR).cast::<__m128i>();
    let (x0, x1) = (_mm_load_si128(h), _mm_load_si128(h.add(1)));
    if KIND == 1 {
        (_mm256_cvtph_ps(x0), _mm256_cvtph_ps(x1))
    } else {
        let widen = |x| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(x)));
        (widen(x0), widen(x1))
    }
}

/// `micro` over the strips of `a` (mc rows of depth kc, row stride `lda`) into `c` (mc, 16).
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
) {
    let (a, c) = (a.as_ptr(), c.as_mut_ptr());
    let full = mc - mc % 6;
    for s in (0..full).step_by(6) {
        micro::<6, KIND>(kc, a.add(s * lda), lda, b, c.add(s * ldc), ldc, accumulate, s == 0);
    }
    let (a, c, first) = (a.add(full * lda), c.add(full * ldc), full == 0);
    match mc - full {
        0 => {}
        1 => micro::<1, KIND>(kc, a, lda, b, c, ldc, accumulate, first),
        2 => micro::<2, KIND>(kc, a, lda, b, c, ldc, accumulate, first),
        3 => micro::<3, KIND>(kc, a, lda, b, c, ldc, accumulate, first),
        4 => micro::<4, KIND>(kc, a, lda, b, c, ldc, accumulate, first),
        _ => micro::<5, KIND>(kc, a, lda, b, c, ldc, accumulate, first),
    }
}

/// `Σ_p a[r * lda + p] · b[p]` for each row `r < M`, as (lanes 0..8, lanes 8..16); with
/// `PREFETCH`, the panel that follows `b` in memory is fetched meanwhile.
#[inline(always)]
unsafe fn accumulate_panel<const M: usize, const KIND: u8, const PREFETCH: bool>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const u8,
) -> ([__m256; M], [__m256; M]) {
    let line = if KIND == 0 { 4 * NR } else { 2 * NR };
    let mut lo = [_mm256_setzero_ps(); M];
    let mut hi = [_mm256_setzero_ps(); M];
    // A macro, not a closure: closures do not inherit the target features.
    macro_rules! step {
        ($p:expr) => {{
            let p = $p;
            if PREFETCH && (KIND == 0 || p % 2 == 0) {
                // A prefetch never faults, so running past the end is harmless.
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((kc + p) * line).cast::<i8>());
            }
            let (b0, b1) = load::<KIND>(b, p);
            for r in 0..M {
                let av = _mm256_broadcast_ss(&*a.add(r * lda + p));
                lo[r] = _mm256_fmadd_ps(av, b0, lo[r]);
                hi[r] = _mm256_fmadd_ps(av, b1, hi[r]);
            }
        }};
    }
    // Unrolled by four: the loop bookkeeping would otherwise compete with the FMAs
    // for issue slots.
    let mut p = 0;
    while p + 4 <= kc {
        step!(p);
        step!(p + 1);
        step!(p + 2);
        step!(p + 3);
        p += 4;
    }
    while p < kc {
        step!(p);
        p += 1;
    }
    (lo, hi)
}

/// The `M`x16 register-blocked kernel: `2 * M` accumulators of 8 lanes.
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
    prefetch: bool,
) {
    let (mut lo, mut hi) = if prefetch {
        accumulate_panel::<M, KIND, true>(kc, a, lda, b)
    } else {
        accumulate_panel::<M, KIND, false>(kc, a, lda, b)
    };
    for r in 0..M {
        let row = c.add(r * ldc);
        if accumulate {
            lo[r] = _mm256_add_ps(lo[r], _mm256_loadu_ps(row));
            hi[r] = _mm256_add_ps(hi[r], _mm256_loadu_ps(row.add(8)));
        }
        _mm256_storeu_ps(row, lo[r]);
        _mm256_storeu_ps(row.add(8), hi[r]);
    }
}
