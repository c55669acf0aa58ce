//! The register-blocked tile both SIMD kernels run, written once over [`Lanes`]: sixteen
//! f32 lanes, one panel row. `avx2` implements them as two 8-lane vectors (a 6x16 tile
//! of one panel in twelve registers), `avx512` as one 16-lane vector (a 12x32 tile of
//! two panels in twenty-four), and the tests as a plain array, so that the tile's
//! indexing, heights, panel counts and depth remainders are checked on every machine,
//! whatever vectors it has.
//!
//! Nothing here checks bounds or features: the driver asserts the bounds once per call,
//! and only the kernels' entry points, compiled with their target features and called
//! with a detection's proof in hand, instantiate these functions (which are
//! `inline(always)`, so that they and the intrinsics inline into those entry points).

use super::NR;
use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};

/// The panels a tile fetches into cache while it runs, being the ones used next: the
/// first line of `P` panels and the lines per panel. The addresses are formed with
/// wrapping arithmetic and prefetches never fault, so it may point anywhere.
pub(super) type Next = Option<(*const u8, usize)>;

/// One tile's share of the [`Next`] panels: their first line, the lines per panel, and
/// the first line and number of lines of each panel that this tile fetches.
pub(super) type Share = Option<(*const u8, usize, usize, usize)>;

/// The strips of a block share the prefetching of the next panels: the `t`-th of
/// `n` strips takes its `t`-th part of each panel's lines (an even number of them, so
/// that half-precision lines go two to a cache line), so that no strip issues them
/// all at once.
pub(super) fn share(next: Next, t: usize, n: usize) -> Share {
    next.map(|(at, kc)| {
        let part = kc.div_ceil(n).next_multiple_of(2);
        (at, kc, t * part, part)
    })
}

/// Sixteen f32 lanes: one panel row, or one accumulated row of a tile.
pub(super) trait Lanes: Copy {
    /// All zeros.
    ///
    /// # Safety
    ///
    /// The CPU must have what the implementation's instructions need.
    unsafe fn zero() -> Self;

    /// Panel row `p`: `KIND` 0 = a `Line` of f32, 1 = f16 and 2 = bf16 `HalfLine`s,
    /// widened to f32.
    ///
    /// # Safety
    ///
    /// As [`zero`](Self::zero); and `b` must point to at least `p + 1` readable lines of
    /// the `KIND` given, laid out and aligned as `Line` (64 bytes) or `HalfLine` (32 bytes).
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

/// `Σ_p a[r * lda + p] · b_q[p]` for each row `r < M` and each of the `P` panels `b_q`
/// that follow one another from `b` (`kc` lines each); with `PREFETCH`, lines
/// `from..from + count` (at most `kc` of them) of each of the `P` panels at `next`
/// (`next_kc` lines apart) are fetched meanwhile.
///
/// # Safety
///
/// As [`Lanes`] requires of `V`. `a[r * lda + p]` must be readable for every `r < M`,
/// `p < kc`, and `b` must point to at least `P * kc` readable panel lines of the `KIND`
/// given.
#[inline(always)]
unsafe fn accumulate_panels<V: Lanes, const M: usize, const P: usize, const KIND: u8, const PREFETCH: bool>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const u8,
    (next, next_kc, from, count): (*const u8, usize, usize, usize),
) -> [[V; P]; M] {
    let line = if KIND == 0 { 4 * NR } else { 2 * NR };
    let mut acc = [[V::zero(); P]; M];
    // A macro, not a closure: closures do not inherit the target features.
    macro_rules! step {
        ($p:expr) => {{
            let p = $p;
            if PREFETCH && p < count && (KIND == 0 || p % 2 == 0) {
                for q in 0..P {
                    let at = next.wrapping_add((q * next_kc + from + p) * line);
                    _mm_prefetch::<_MM_HINT_T1>(at.cast::<i8>());
                }
            }
            let mut bp = [V::zero(); P];
            for (q, x) in bp.iter_mut().enumerate() {
                *x = V::load::<KIND>(b.add(q * kc * line), p);
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let av = *a.add(r * lda + p);
                for (x, &bq) in row.iter_mut().zip(&bp) {
                    *x = x.fma(av, bq);
                }
            }
        }};
    }
    // Unrolled by four: the loop bookkeeping would otherwise compete with the FMAs for
    // issue slots.
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

/// The `M`x(16 `P`) tile: `c[r, 16 q..16 q + 16] (+)= Σ_p a[r * lda + p] · b_q[p]` for
/// `r < M`, `q < P`, `p < kc`, fetching its [`Share`] of the next panels meanwhile.
///
/// # Safety
///
/// As [`accumulate_panels`]; and `c[r * ldc..r * ldc + 16 P]` writable, and neither read
/// nor written through any other pointer meanwhile, for every `r < M`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile<V: Lanes, const M: usize, const P: usize, const KIND: u8>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const u8,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    share: Share,
) {
    let acc = match share {
        Some(share) => accumulate_panels::<V, M, P, KIND, true>(kc, a, lda, b, share),
        None => accumulate_panels::<V, M, P, KIND, false>(kc, a, lda, b, (b, 0, 0, 0)),
    };
    for (r, row) in acc.into_iter().enumerate() {
        for (q, x) in row.into_iter().enumerate() {
            let at = c.add(r * ldc + q * NR);
            let x = if accumulate { x.add_from(at) } else { x };
            x.store(at);
        }
    }
}

/// [`tile`] over the strips of `a` (`mc` rows of depth `kc`, row stride `lda`) against
/// `P` consecutive panels into `c` (mc, 16 `P`): full strips of `ROWS` (at most 12),
/// then one of the remaining height. The strips share the prefetching of the [`Next`]
/// panels.
///
/// # Safety
///
/// As [`accumulate_panels`] for every row `r < mc`; and `c` must hold `mc` rows of
/// 16 `P` writable floats spaced `ldc` apart, not accessed through any other pointer
/// meanwhile.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn strips<V: Lanes, const ROWS: usize, const P: usize, const KIND: u8>(
    mc: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const u8,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    next: Next,
) {
    let (full, n) = (mc - mc % ROWS, mc.div_ceil(ROWS));
    for s in (0..full).step_by(ROWS) {
        let share = share(next, s / ROWS, n);
        tile::<V, ROWS, P, KIND>(kc, a.add(s * lda), lda, b, c.add(s * ldc), ldc, accumulate, share);
    }
    let (a, c, share) = (a.add(full * lda), c.add(full * ldc), share(next, n - 1, n));
    macro_rules! rest {
        ($($m:literal)*) => {
            match mc - full {
                $($m if $m < ROWS => tile::<V, $m, P, KIND>(kc, a, lda, b, c, ldc, accumulate, share),)*
                _ => {}
            }
        };
    }
    rest!(1 2 3 4 5 6 7 8 9 10 11);
}

#[cfg(test)]
mod tests {
    use super::super::tests::{filled, PRECISIONS};
    use super::super::{micro, strips as drive_strips, Kernel, PackedMatrix, Panel, MR};
    use super::*;

    /// Sixteen lanes as a plain array: each [`Lanes`] operation by its scalar
    /// definition (the FMA fused, as the instructions are).
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

    /// Run `kernel` (mc, kc, a, lda, panels, count, c, ldc, accumulate) on `count`
    /// consecutive panels and the portable kernel on each of them, on the same inputs,
    /// for every strip height up to two full strips of `rows` and one more, depth
    /// remainder (the loop is unrolled by four), precision and accumulate setting; they
    /// must agree everywhere, rows and columns the kernel must not touch included.
    fn against_portable(
        rows: usize,
        count: usize,
        kernel: impl Fn(usize, usize, &[f32], usize, Panel<'_>, usize, &mut [f32], usize, bool),
    ) {
        for precision in PRECISIONS {
            for kc in [1, 2, 3, 4, 5, 7, 8, 61, 256] {
                let b = filled(kc, 4 * NR, 7).mapv(|v| precision.round(v));
                let packed = PackedMatrix::pack_as(b.view(), precision);
                let (lda, ldc, n) = (kc + 3, count * NR + 5, 2 * rows + 1);
                let a = filled(n, lda, 8).into_raw_vec_and_offset().0;
                let start = filled(n, ldc, 9).into_raw_vec_and_offset().0;
                for accumulate in [false, true] {
                    for mc in 1..=n {
                        let (mut got, mut want) = (start.clone(), start.clone());
                        kernel(mc, kc, &a, lda, packed.panels(0, 1, count), count, &mut got, ldc, accumulate);
                        for q in 0..count {
                            let panel = packed.panel(0, 1 + q);
                            drive_strips(
                                Kernel::Portable,
                                mc,
                                kc,
                                &a,
                                lda,
                                panel,
                                1,
                                &mut want[q * NR..],
                                ldc,
                                accumulate,
                                None,
                            );
                        }
                        for (i, (x, y)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (x - y).abs() <= 1e-5 * kc as f32 * (1.0 + y.abs()),
                                "{count} panels, kc {kc}, {mc} rows, element {i}: {x} vs {y}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// `kernel`'s edge tiles (1..=MR rows; prefetch on, and accumulate on with prefetch
    /// off) against the portable kernel's.
    fn edges_against_portable(kernel: Kernel) {
        for precision in PRECISIONS {
            for kc in [1, 3, 4, 7, 256] {
                let b = filled(kc, NR, 7).mapv(|v| precision.round(v));
                let packed = PackedMatrix::pack_as(b.view(), precision);
                let (lda, ldc) = (kc + 3, NR + 5);
                let a = filled(MR, lda, 8).into_raw_vec_and_offset().0;
                let start = filled(MR, ldc, 9).into_raw_vec_and_offset().0;
                for (mr, accumulate, prefetch) in (1..=MR).flat_map(|m| [(m, false, true), (m, true, false)]) {
                    let (mut got, mut want) = (start.clone(), start.clone());
                    let panel = packed.panel(0, 0);
                    let next = prefetch.then_some((panel, 1));
                    micro(kernel, mr, kc, &a, lda, panel, &mut got, ldc, accumulate, next);
                    micro(Kernel::Portable, mr, kc, &a, lda, panel, &mut want, ldc, accumulate, next);
                    for (x, y) in got.iter().zip(&want) {
                        assert!((x - y).abs() <= 1e-5 * kc as f32 * (1.0 + y.abs()), "{mr} rows, kc {kc}: {x} vs {y}");
                    }
                }
            }
        }
    }

    /// Each SIMD kernel this CPU has, through the driver's dispatch: every strip height
    /// up to 25 rows (each remainder of 6- and 12-row strips), on one panel and on as
    /// many as its tile covers, and every edge tile, against the portable kernel. A
    /// machine without one still runs its code on emulated lanes (below).
    #[test]
    fn every_simd_kernel_matches_portable() {
        for kernel in Kernel::available().into_iter().filter(|k| !matches!(k, Kernel::Portable)) {
            eprintln!("testing the {} kernel", kernel.name());
            for count in 1..=kernel.panels_per_tile() {
                against_portable(12, count, |mc, kc, a, lda, panels, count, c, ldc, acc| {
                    drive_strips(kernel, mc, kc, a, lda, panels, count, c, ldc, acc, Some((panels, count)))
                });
            }
            edges_against_portable(kernel);
        }
    }

    /// The tile's code on emulated lanes, at both kernels' strip heights and panel counts.
    #[test]
    fn emulated_tile_matches_portable() {
        for (rows, count) in [(6, 1), (12, 2)] {
            against_portable(rows, count, |mc, kc, a, lda, panels, count, c, ldc, accumulate| {
                let (ptr, kind) = panels.raw();
                // SAFETY: `against_portable` gives `mc` rows of `lda >= kc` floats of `a`,
                // `mc` rows of `ldc >= 16 count` of `c`, and `count` panels of `kc` lines
                // of `kind`, one after the other.
                unsafe {
                    let (a, c) = (a.as_ptr(), c.as_mut_ptr());
                    match (count, kind) {
                        (1, 0) => strips::<Emulated, 6, 1, 0>(mc, kc, a, lda, ptr, c, ldc, accumulate, Some((ptr, kc))),
                        (1, 1) => strips::<Emulated, 6, 1, 1>(mc, kc, a, lda, ptr, c, ldc, accumulate, Some((ptr, kc))),
                        (1, _) => strips::<Emulated, 6, 1, 2>(mc, kc, a, lda, ptr, c, ldc, accumulate, Some((ptr, kc))),
                        (_, 0) => {
                            strips::<Emulated, 12, 2, 0>(mc, kc, a, lda, ptr, c, ldc, accumulate, Some((ptr, kc)))
                        }
                        (_, 1) => {
                            strips::<Emulated, 12, 2, 1>(mc, kc, a, lda, ptr, c, ldc, accumulate, Some((ptr, kc)))
                        }
                        (_, _) => {
                            strips::<Emulated, 12, 2, 2>(mc, kc, a, lda, ptr, c, ldc, accumulate, Some((ptr, kc)))
                        }
                    }
                }
            });
        }
    }
}
