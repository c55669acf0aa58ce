//! The AVX-512 microkernel (x86-64 only): a 12x16 tile of `a @ b` held in twelve
//! 16-lane accumulators, one per row, while the panel streams past; f16 and bf16
//! panels widened to f32 as they are loaded.
//!
//! The kernel is written once over [`Lanes`], sixteen f32 lanes: `__m512` on the CPU,
//! and in the tests also a plain array, so that its indexing, tile heights and depth
//! remainders are checked on machines without AVX-512 as well (the array runs the same
//! code with each intrinsic replaced by its scalar definition).
//!
//! As in `avx2`, the kernels take raw pointers and check nothing: the driver asserts the
//! bounds once per call and only runs them with a [`Features`] in hand.

use super::NR;
use std::arch::x86_64::*;

/// Rows of `a` per full tile: twelve accumulators, the panel row, and the broadcast
/// (fused into the FMA's memory operand) fit the 32 vector registers with room to spare.
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

/// Sixteen f32 lanes: one panel row, or one accumulated row of a tile.
pub(super) trait Lanes: Copy {
    /// All zeros.
    ///
    /// # Safety
    ///
    /// The CPU must have what the implementation needs (AVX-512F for `__m512`).
    unsafe fn zero() -> Self;

    /// Panel row `p`: `KIND` 0 = a `Line` of f32, 1 = f16 and 2 = bf16 `HalfLine`s,
    /// widened to f32.
    ///
    /// # Safety
    ///
    /// As [`zero`](Self::zero); and `b` must point to at least `p + 1` readable lines
    /// of the `KIND` given (64 bytes a line, 64-byte aligned, for `KIND` 0; 32 bytes a
    /// line for 1 and 2).
    unsafe fn load<const KIND: u8>(b: *const u8, p: usize) -> Self;

    /// `self + a · b` in every lane, with one rounding.
    ///
    /// # Safety
    ///
    /// As [`zero`](Self::zero).
    unsafe fn fma(self, a: f32, b: Self) -> Self;

    /// `self + c[0..16]`.
    ///
    /// # Safety
    ///
    /// As [`zero`](Self::zero); and `c[0..16]` must be readable.
    unsafe fn add_from(self, c: *const f32) -> Self;

    /// Write the lanes to `c[0..16]`.
    ///
    /// # Safety
    ///
    /// As [`zero`](Self::zero); and `c[0..16]` must be writable.
    unsafe fn store(self, c: *mut f32);
}

impl Lanes for __m512 {
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm512_setzero_ps()
    }

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

/// `Σ_p a[r * lda + p] · b[p]` for each row `r < M`; with `PREFETCH`, the panel that
/// follows `b` in memory is fetched meanwhile.
///
/// # Safety
///
/// As [`Lanes`] requires of `V` (the caller is compiled with AVX-512F for `__m512`, so
/// that this inlines). `a[r * lda + p]` must be readable for every `r < M`, `p < kc`,
/// and `b` must point to at least `kc` readable panel lines of the `KIND` given, laid
/// out as [`Lanes::load`] requires. (The prefetch may point past the panel: it never
/// faults, and the address is formed with wrapping arithmetic.)
#[inline(always)]
unsafe fn accumulate_panel<V: Lanes, const M: usize, const KIND: u8, const PREFETCH: bool>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const u8,
) -> [V; M] {
    let line = if KIND == 0 { 4 * NR } else { 2 * NR };
    let mut acc = [V::zero(); M];
    // A macro, not a closure: closures do not inherit the target features.
    macro_rules! step {
        ($p:expr) => {{
            let p = $p;
            if PREFETCH && (KIND == 0 || p % 2 == 0) {
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((kc + p) * line).cast::<i8>());
            }
            let bp = V::load::<KIND>(b, p);
            for (r, x) in acc.iter_mut().enumerate() {
                *x = x.fma(*a.add(r * lda + p), bp);
            }
        }};
    }
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
    acc
}

/// The `M`x16 tile: `c[r, 0..16] (+)= Σ_p a[r * lda + p] · b[p]` for `r < M`, `p < kc`.
///
/// # Safety
///
/// As [`accumulate_panel`]; and `c[r * ldc..r * ldc + 16]` writable, and neither read
/// nor written through any other pointer meanwhile, for every `r < M`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<V: Lanes, const M: usize, const KIND: u8>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const u8,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    prefetch: bool,
) {
    let acc = if prefetch {
        accumulate_panel::<V, M, KIND, true>(kc, a, lda, b)
    } else {
        accumulate_panel::<V, M, KIND, false>(kc, a, lda, b)
    };
    for (r, x) in acc.into_iter().enumerate() {
        let row = c.add(r * ldc);
        let x = if accumulate { x.add_from(row) } else { x };
        x.store(row);
    }
}

/// [`tile`] over the strips of `a` (`mc` rows of depth `kc`, row stride `lda`) into `c`
/// (mc, 16): full strips of [`ROWS`], then one of the remaining height. The first strip
/// prefetches the next panel.
///
/// # Safety
///
/// As [`accumulate_panel`] for every row `r < mc`; and `c` must hold `mc` rows of 16
/// writable floats spaced `ldc` apart, not accessed through any other pointer meanwhile.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn strips_of<V: Lanes, const KIND: u8>(
    mc: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const u8,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let full = mc - mc % ROWS;
    for s in (0..full).step_by(ROWS) {
        tile::<V, ROWS, KIND>(kc, a.add(s * lda), lda, b, c.add(s * ldc), ldc, accumulate, s == 0);
    }
    let (a, c, first) = (a.add(full * lda), c.add(full * ldc), full == 0);
    macro_rules! rest {
        ($($m:literal)*) => {
            match mc - full {
                $($m => tile::<V, $m, KIND>(kc, a, lda, b, c, ldc, accumulate, first),)*
                _ => {}
            }
        };
    }
    rest!(1 2 3 4 5 6 7 8 9 10 11);
}

/// [`strips_of`] on AVX-512: `mc` rows of `a` (depth `kc`, stride `lda`) against one
/// panel into `c` (mc, 16).
///
/// # Safety
///
/// The CPU must have AVX-512F. `a` must hold `mc` rows of `kc` floats spaced `lda` apart
/// (`a.len() >= (mc - 1) * lda + kc`), `c` must hold `mc` rows of 16 floats spaced `ldc`
/// apart (`c.len() >= (mc - 1) * ldc + 16`), and `b` must point to at least `kc` readable
/// panel lines of the `KIND` given, laid out as [`Lanes::load`] requires.
#[target_feature(enable = "avx512f")]
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
    strips_of::<__m512, KIND>(mc, kc, a.as_ptr(), lda, b, c.as_mut_ptr(), ldc, accumulate);
}

/// [`tile`] on AVX-512, for the right edge's tiles of up to six rows.
///
/// # Safety
///
/// The CPU must have AVX-512F; otherwise as [`tile`].
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
    prefetch: bool,
) {
    tile::<__m512, M, KIND>(kc, a, lda, b, c, ldc, accumulate, prefetch);
}

#[cfg(test)]
mod tests {
    use super::super::tests::{filled, PRECISIONS};
    use super::super::{micro as drive_micro, strips as drive_strips, Kernel, PackedMatrix, MR};
    use super::*;

    /// Sixteen lanes as a plain array: each [`Lanes`] operation by its scalar
    /// definition (the FMA fused, as the instruction is).
    #[derive(Clone, Copy)]
    struct Emulated([f32; NR]);

    impl Lanes for Emulated {
        unsafe fn zero() -> Self {
            Emulated([0.0; NR])
        }

        unsafe fn load<const KIND: u8>(b: *const u8, p: usize) -> Self {
            if KIND == 0 {
                return Emulated(*b.cast::<[f32; NR]>().add(p));
            }
            let bits = *b.cast::<[u16; NR]>().add(p);
            Emulated(bits.map(|h| {
                if KIND == 1 {
                    half::f16::from_bits(h).to_f32()
                } else {
                    half::bf16::from_bits(h).to_f32()
                }
            }))
        }

        unsafe fn fma(self, a: f32, b: Self) -> Self {
            Emulated(std::array::from_fn(|i| a.mul_add(b.0[i], self.0[i])))
        }

        unsafe fn add_from(self, c: *const f32) -> Self {
            Emulated(std::array::from_fn(|i| self.0[i] + *c.add(i)))
        }

        unsafe fn store(self, c: *mut f32) {
            c.cast::<[f32; NR]>().write_unaligned(self.0);
        }
    }

    /// The kernel's code on emulated lanes, on any CPU: every strip height (two full
    /// strips and each remainder), depth remainder (the loop is unrolled by four),
    /// precision and accumulate setting, against the portable kernel.
    #[test]
    fn emulated_kernel_matches_portable() {
        for precision in PRECISIONS {
            for kc in [1, 2, 3, 4, 5, 7, 8, 61, 256] {
                let b = filled(kc, 2 * NR, 7).mapv(|v| precision.round(v));
                let packed = PackedMatrix::pack_as(b.view(), precision);
                let (lda, ldc) = (kc + 3, NR + 5);
                let rows = 2 * ROWS + 1;
                let a = filled(rows, lda, 8).into_raw_vec_and_offset().0;
                let start = filled(rows, ldc, 9).into_raw_vec_and_offset().0;
                for accumulate in [false, true] {
                    for mc in 1..=rows {
                        let mut got = start.clone();
                        let mut want = start.clone();
                        let panel = packed.panel(0, 1);
                        let (ptr, kind) = panel.raw();
                        // SAFETY: `a` holds `rows >= mc` rows of `lda >= kc` floats, `got`
                        // `rows` rows of `ldc >= 16`, and the panel `kc` lines of `kind`.
                        unsafe {
                            let (a, c) = (a.as_ptr(), got.as_mut_ptr());
                            match kind {
                                0 => strips_of::<Emulated, 0>(mc, kc, a, lda, ptr, c, ldc, accumulate),
                                1 => strips_of::<Emulated, 1>(mc, kc, a, lda, ptr, c, ldc, accumulate),
                                _ => strips_of::<Emulated, 2>(mc, kc, a, lda, ptr, c, ldc, accumulate),
                            }
                        }
                        drive_strips(Kernel::Portable, mc, kc, &a, lda, panel, &mut want, ldc, accumulate);
                        close(&got, &want, kc, mc);
                    }
                }
            }
        }
    }

    /// The real kernel, where the CPU has AVX-512F: through the driver's dispatch, every
    /// strip height and edge tile against the portable kernel.
    #[test]
    fn avx512_kernel_matches_portable() {
        let Some(features) = Features::detect() else {
            eprintln!("no AVX-512F on this CPU: the AVX-512 kernel is tested on emulated lanes only");
            return;
        };
        for precision in PRECISIONS {
            for kc in [1, 2, 3, 4, 5, 7, 8, 61, 256] {
                let b = filled(kc, 2 * NR, 7).mapv(|v| precision.round(v));
                let packed = PackedMatrix::pack_as(b.view(), precision);
                let (lda, ldc) = (kc + 3, NR + 5);
                let rows = 2 * ROWS + 1;
                let a = filled(rows, lda, 8).into_raw_vec_and_offset().0;
                let start = filled(rows, ldc, 9).into_raw_vec_and_offset().0;
                for accumulate in [false, true] {
                    for mr in 1..=MR {
                        for prefetch in [false, true] {
                            let (mut got, mut want) = (start.clone(), start.clone());
                            let panel = packed.panel(0, 0);
                            drive_micro(
                                Kernel::Avx512(features),
                                mr,
                                kc,
                                &a,
                                lda,
                                panel,
                                &mut got,
                                ldc,
                                accumulate,
                                prefetch,
                            );
                            drive_micro(Kernel::Portable, mr, kc, &a, lda, panel, &mut want, ldc, accumulate, prefetch);
                            close(&got, &want, kc, mr);
                        }
                    }
                    for mc in 1..=rows {
                        let (mut got, mut want) = (start.clone(), start.clone());
                        let panel = packed.panel(0, 1);
                        drive_strips(Kernel::Avx512(features), mc, kc, &a, lda, panel, &mut got, ldc, accumulate);
                        drive_strips(Kernel::Portable, mc, kc, &a, lda, panel, &mut want, ldc, accumulate);
                        close(&got, &want, kc, mc);
                    }
                }
            }
        }
    }

    /// `got` against `want` everywhere (rows the kernel must not touch included): they
    /// differ only in rounding, a fused multiply-add per step against a multiply and an add.
    fn close(got: &[f32], want: &[f32], kc: usize, rows: usize) {
        for (i, (x, y)) in got.iter().zip(want).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * kc as f32 * (1.0 + y.abs()),
                "kc {kc}, {rows} rows, element {i}: {x} vs {y}"
            );
        }
    }
}
