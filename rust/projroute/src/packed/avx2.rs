//! The AVX2/FMA/F16C microkernel (x86-64 only): a 6x16 tile of `a @ b` held in twelve
//! 8-lane accumulators while the panel streams past, f16 and bf16 panels widened to
//! f32 as they are loaded.
//!
//! The kernels take raw pointers and check nothing: the driver (`super::strips` and
//! `super::micro`) asserts the bounds once per call, and only runs them with a
//! [`Features`] in hand.

use super::NR;
use crate::cpu::has_avx2_fma;
use std::arch::x86_64::*;

/// Proof that this CPU has AVX2, FMA and F16C, the features the kernels are compiled
/// for: [`Features::detect`] is the only way to make one.
#[derive(Clone, Copy, Debug)]
pub(super) struct Features(());

impl Features {
    /// `Some` where the CPU has AVX2, FMA and F16C.
    pub(super) fn detect() -> Option<Self> {
        has_avx2_fma().then_some(Features(()))
    }
}

/// Panel row `p` as two vectors of 8: `KIND` 0 = f32 lines (64 bytes), 1 = f16 and
/// 2 = bf16 lines (32 bytes), widened to f32.
///
/// # Safety
///
/// The CPU must have AVX2 and F16C (the caller is compiled with them enabled, so that
/// this inlines). `b` must point to the lines of one panel of the `KIND` given, at
/// least `p + 1` of them, readable: 64 bytes a line and 32-byte aligned for `KIND` 0
/// (a `Line`), 32 bytes a line and 16-byte aligned for 1 and 2 (a `HalfLine`).
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
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C. `a` must hold `mc` rows of `kc` floats spaced
/// `lda` apart (`a.len() >= (mc - 1) * lda + kc`), `c` must hold `mc` rows of 16 floats
/// spaced `ldc` apart (`c.len() >= (mc - 1) * ldc + 16`), and `b` must point to at least
/// `kc` readable panel lines of the `KIND` given, laid out and aligned as [`load`]
/// requires.
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
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C (the caller is compiled with them enabled, so
/// that this inlines). `a[r * lda + p]` must be readable for every `r < M`, `p < kc`,
/// and `b` must point to at least `kc` readable panel lines of the `KIND` given, laid
/// out and aligned as [`load`] requires. (The prefetch may point past the panel: it
/// never faults, and the address is formed with wrapping arithmetic.)
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
/// `c[r, 0..16] (+)= Σ_p a[r * lda + p] · b[p]` for `r < M`, `p < kc`; with
/// `prefetch`, the panel that follows `b` in memory is fetched into cache meanwhile.
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C. `a[r * lda + p]` must be readable for every
/// `r < M`, `p < kc`; `c[r * ldc..r * ldc + 16]` writable, and neither read nor written
/// through any other pointer meanwhile, for every `r < M`; and `b` must point to at
/// least `kc` readable panel lines of the `KIND` given, laid out and aligned as [`load`]
/// requires.
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

#[cfg(test)]
mod tests {
    use super::super::tests::{filled, PRECISIONS};
    use super::super::{micro, strips, Kernel, PackedMatrix, MR, NR};
    use super::*;

    /// Every tile height, depth remainder (the loop is unrolled by four), precision,
    /// accumulate and prefetch setting of the AVX2 kernel against the portable one. They
    /// differ only in rounding: one fused multiply-add per step against a multiply and
    /// an add.
    #[test]
    fn avx2_kernel_matches_portable() {
        let Some(features) = Features::detect() else {
            eprintln!("no AVX2/FMA/F16C on this CPU: the AVX2 kernel is not tested");
            return;
        };
        for precision in PRECISIONS {
            for kc in [1, 2, 3, 4, 5, 7, 8, 61, 256] {
                let b = filled(kc, 2 * NR, 7).mapv(|v| precision.round(v));
                let packed = PackedMatrix::pack_as(b.view(), precision);
                let (lda, ldc) = (kc + 3, NR + 5);
                let a = filled(13, lda, 8).into_raw_vec_and_offset().0;
                let start = filled(13, ldc, 9).into_raw_vec_and_offset().0;
                for accumulate in [false, true] {
                    let mut got = start.clone();
                    let mut want = start.clone();
                    for mr in 1..=MR {
                        for prefetch in [false, true] {
                            let panel = packed.panel(0, 0);
                            micro(Kernel::Avx2(features), mr, kc, &a, lda, panel, &mut got, ldc, accumulate, prefetch);
                            micro(Kernel::Portable, mr, kc, &a, lda, panel, &mut want, ldc, accumulate, prefetch);
                            close(&got, &want, kc);
                        }
                    }
                    for mc in 1..=13 {
                        let panel = packed.panel(0, 1);
                        strips(Kernel::Avx2(features), mc, kc, &a, lda, panel, &mut got, ldc, accumulate);
                        strips(Kernel::Portable, mc, kc, &a, lda, panel, &mut want, ldc, accumulate);
                        close(&got, &want, kc);
                    }
                }
            }
        }
    }

    fn close(got: &[f32], want: &[f32], kc: usize) {
        for (i, (x, y)) in got.iter().zip(want).enumerate() {
            assert!((x - y).abs() <= 1e-5 * kc as f32 * (1.0 + y.abs()), "kc {kc}, element {i}: {x} vs {y}");
        }
    }
}
