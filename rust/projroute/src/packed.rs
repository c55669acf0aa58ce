//! Matrices packed once for repeated products, and the microkernel that reads them.
//!
//! A served model multiplies many small batches by the same per-cluster maps, so each
//! map is laid out at load time in the order the inner loop reads it: `KC`-deep row
//! blocks, each split into column panels of [`NR`] floats (zero-padded on the right
//! edge), every panel row one aligned cache line. A product `c = a @ b` takes a block
//! of rows of `a` (all of its depth, kept in L2; read in place when `a` is row-major,
//! the kernel broadcasting from `MR` row streams), then the panels one by
//! one, each depth slice (16 KiB, in L1) against every strip of `MR` rows, so an
//! output tile stays in L1 while it accumulates over the depth and the map streams
//! from memory once per row block. Maps may be stored as f16 or bf16 ([`Precision`]),
//! widened to f32 as they are loaded. On x86-64 with AVX2, FMA and F16C an explicit
//! 6x16 register-blocked kernel runs; elsewhere a portable kernel with the same
//! layout does.

use std::ops::Range;

use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

/// Columns per packed panel.
pub const NR: usize = 16;
/// Rows of `a` per microkernel call.
const MR: usize = 6;
/// Depth of one slice of a panel (16 KiB of f32 per panel slice).
const KC: usize = 256;
/// Most rows of `a` in one block.
const MC: usize = 120;
/// Floats of `a` kept in L2 at once (a block of rows, all of its depth): 192 KiB.
const A_BLOCK: usize = 48 * 1024;

/// One row of a panel: [`NR`] floats, cache-line aligned so that no vector load splits
/// across two lines.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Line([f32; NR]);

/// One row of a half-precision panel: [`NR`] f16 or bf16 bit patterns, two per cache line.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
struct HalfLine([u16; NR]);

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

    fn to_bits(self, v: f32) -> u16 {
        match self {
            Precision::F16 => half::f16::from_f32(v).to_bits(),
            _ => half::bf16::from_f32(v).to_bits(),
        }
    }
}

/// A packed matrix's lines at its precision.
#[derive(Clone, Debug)]
enum Lines {
    F32(Vec<Line>),
    Half(Precision, Vec<HalfLine>),
}

/// The lines of one panel slice.
#[derive(Clone, Copy)]
enum Panel<'a> {
    F32(&'a [Line]),
    Half(Precision, &'a [HalfLine]),
}

impl Panel<'_> {
    /// Row `p` of the panel in f32.
    fn row(&self, p: usize) -> [f32; NR] {
        match self {
            Panel::F32(l) => l[p].0,
            Panel::Half(Precision::F16, l) => l[p].0.map(|b| half::f16::from_bits(b).to_f32()),
            Panel::Half(_, l) => l[p].0.map(|b| half::bf16::from_bits(b).to_f32()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Panel::F32(l) => l.len(),
            Panel::Half(_, l) => l.len(),
        }
    }
}

/// A `(k, n)` matrix packed into column panels of `NR` (16) columns.
#[derive(Clone, Debug)]
pub struct PackedMatrix {
    k: usize,
    n: usize,
    /// Row block `kb..kb + kc` (kb a multiple of `KC`) starts at line `kb * n_panels`;
    /// within it, panel `j` is lines `j * kc..(j + 1) * kc`.
    lines: Lines,
}

impl PackedMatrix {
    /// Pack `b` (k, n), any strides.
    pub fn pack(b: ArrayView2<f32>) -> Self {
        Self::pack_as(b, Precision::F32)
    }

    /// Pack `b` (k, n) stored at `precision` (values rounded to nearest even).
    pub fn pack_as(b: ArrayView2<f32>, precision: Precision) -> Self {
        let (k, n) = b.dim();
        let mut lines = vec![Line([0.0; NR]); n.div_ceil(NR) * k];
        let mut packed = PackedMatrix { k, n, lines: Lines::F32(Vec::new()) };
        for p in 0..k {
            for col in 0..n {
                lines[packed.line_of(p, col)].0[col % NR] = b[[p, col]];
            }
        }
        packed.lines = match precision {
            Precision::F32 => Lines::F32(lines),
            half => Lines::Half(half, lines.iter().map(|l| HalfLine(l.0.map(|v| half.to_bits(v)))).collect()),
        };
        packed
    }

    /// The storage precision.
    pub fn precision(&self) -> Precision {
        match &self.lines {
            Lines::F32(_) => Precision::F32,
            Lines::Half(p, _) => *p,
        }
    }

    /// Rows (input dimension).
    pub fn rows(&self) -> usize {
        self.k
    }

    /// Columns (output dimension).
    pub fn cols(&self) -> usize {
        self.n
    }

    /// Index of the line holding (row, col).
    fn line_of(&self, row: usize, col: usize) -> usize {
        let kb = row / KC * KC;
        let kc = KC.min(self.k - kb);
        kb * self.n.div_ceil(NR) + (col / NR) * kc + (row - kb)
    }

    /// Lines of panel `j` in the row block starting at `kb`.
    fn panel(&self, kb: usize, j: usize) -> Panel<'_> {
        let kc = KC.min(self.k - kb);
        let at = kb * self.n.div_ceil(NR) + j * kc..kb * self.n.div_ceil(NR) + (j + 1) * kc;
        match &self.lines {
            Lines::F32(l) => Panel::F32(&l[at]),
            Lines::Half(p, l) => Panel::Half(*p, &l[at]),
        }
    }

    /// Unpacked value at (row, col); for tests and export.
    pub fn get(&self, row: usize, col: usize) -> f32 {
        let (kb, j) = (row / KC * KC, col / NR);
        self.panel(kb, j).row(row - kb)[col % NR]
    }

    /// `a @ self` (m, n) on the whole rayon pool: row blocks per thread for a tall
    /// `a`, column panels per thread for a short one. Called from inside the pool
    /// (the caller already runs in parallel), it computes on the calling thread.
    pub fn matmul(&self, a: ArrayView2<f32>) -> Array2<f32> {
        self.matmul_then(a, |_, _| {})
    }

    /// [`matmul`](Self::matmul), then `epilogue(i, row)` on every output row `i`
    /// (bias, activation, residual), applied by the thread that computed the row
    /// while it is still in cache.
    pub fn matmul_then(&self, a: ArrayView2<f32>, epilogue: impl Fn(usize, &mut [f32]) + Sync) -> Array2<f32> {
        let (m, n) = (a.nrows(), self.n);
        let threads = rayon::current_num_threads().max(1);
        let mut out = Array2::<f32>::zeros((m, n));
        let in_pool = rayon::current_thread_index().is_some();
        if in_pool || m >= 4 * MR * threads {
            // Row blocks, two per thread; inside the pool one block, run on this thread.
            let rows = if in_pool { m.max(1) } else { m.div_ceil(2 * threads).div_ceil(MR) * MR };
            out.axis_chunks_iter_mut(Axis(0), rows)
                .into_par_iter()
                .zip(a.axis_chunks_iter(Axis(0), rows))
                .enumerate()
                .for_each(|(chunk, (mut o, a))| {
                    let o = o.as_slice_mut().expect("fresh array is contiguous");
                    self.matmul_into(a, o, n, &mut Vec::new());
                    for (r, row) in o.chunks_exact_mut(n.max(1)).enumerate() {
                        epilogue(chunk * rows + r, row);
                    }
                });
        } else {
            let n_panels = n.div_ceil(NR);
            let per = n_panels.div_ceil(threads).max(1);
            let parts: Vec<(Range<usize>, Vec<f32>)> = (0..n_panels.div_ceil(per))
                .into_par_iter()
                .map(|t| {
                    let panels = t * per..((t + 1) * per).min(n_panels);
                    let width = (panels.end * NR).min(n) - panels.start * NR;
                    let mut c = vec![0.0f32; m * width];
                    self.panels_into(a, panels.clone(), &mut c, width, &mut Vec::new());
                    (panels, c)
                })
                .collect();
            for (panels, c) in parts {
                let (start, width) = (panels.start * NR, (panels.end * NR).min(n) - panels.start * NR);
                for (mut row, src) in out.axis_iter_mut(Axis(0)).zip(c.chunks_exact(width.max(1))) {
                    row.slice_mut(ndarray::s![start..start + width]).assign(&ndarray::aview1(src));
                }
            }
            for (i, mut row) in out.axis_iter_mut(Axis(0)).enumerate() {
                epilogue(i, row.as_slice_mut().expect("fresh array is contiguous"));
            }
        }
        out
    }

    /// `c = a @ self` on the calling thread.
    ///
    /// `a`: (m, k), any strides; `c`: (m, n) row-major with row stride `ldc`.
    /// `scratch` is reused between calls to avoid allocations.
    pub fn matmul_into(&self, a: ArrayView2<f32>, c: &mut [f32], ldc: usize, scratch: &mut Vec<f32>) {
        self.panels_into(a, 0..self.n.div_ceil(NR), c, ldc, scratch);
    }

    /// Columns of `panels` of `a @ self` into `c` (m, width) with row stride `ldc`,
    /// column 0 of `c` being the first column of `panels.start`.
    pub(crate) fn panels_into(&self, a: ArrayView2<f32>, panels: Range<usize>, c: &mut [f32], ldc: usize, scratch: &mut Vec<f32>) {
        let (m, k) = a.dim();
        let width = (panels.end * NR).min(self.n) - panels.start * NR;
        assert_eq!(k, self.k, "inner dimensions differ");
        assert!(ldc >= width && (m == 0 || c.len() >= (m - 1) * ldc + width), "output too small");
        if m == 0 {
            return;
        }
        if k == 0 {
            (0..m).for_each(|i| c[i * ldc..i * ldc + width].fill(0.0));
            return;
        }
        // The kernel reads the rows of a row-major `a` in place; other layouts are
        // copied row-major first.
        let a = match a.as_slice() {
            Some(rows) => rows,
            None => {
                scratch.clear();
                scratch.extend(a.iter());
                &scratch[..]
            }
        };
        let lda = k;
        let avx = has_avx2_fma();
        let mut tile = [0.0f32; MR * NR];
        // Rows per block: all of their depth stays in L2 while every panel passes.
        let mc_max = (A_BLOCK / k).clamp(MR, MC) / MR * MR;
        for i0 in (0..m).step_by(mc_max) {
            let mc = mc_max.min(m - i0);
            for j in panels.clone() {
                let nr = NR.min(self.n - j * NR);
                for kb in (0..k).step_by(KC) {
                    let (kc, accumulate) = (KC.min(k - kb), kb > 0);
                    let b = self.panel(kb, j);
                    let a_block = &a[i0 * lda + kb..];
                    if nr == NR {
                        let c_off = i0 * ldc + (j - panels.start) * NR;
                        strips(avx, mc, kc, a_block, lda, b, &mut c[c_off..], ldc, accumulate);
                        continue;
                    }
                    // Right edge: compute full tiles aside, copy the valid columns.
                    for s in (0..mc).step_by(MR) {
                        let mr = MR.min(mc - s);
                        let c_off = (i0 + s) * ldc + (j - panels.start) * NR;
                        for r in 0..mr {
                            tile[r * NR..r * NR + nr].copy_from_slice(&c[c_off + r * ldc..c_off + r * ldc + nr]);
                        }
                        micro(avx, mr, kc, &a_block[s * lda..], lda, b, &mut tile, NR, accumulate, s == 0);
                        for r in 0..mr {
                            c[c_off + r * ldc..c_off + r * ldc + nr].copy_from_slice(&tile[r * NR..r * NR + nr]);
                        }
                    }
                }
            }
        }
    }

    /// The matrix unpacked (k, n): the stored values, widened to f32 (for export).
    pub(crate) fn to_array(&self) -> Array2<f32> {
        Array2::from_shape_fn((self.k, self.n), |(row, col)| self.get(row, col))
    }
}

pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`micro`] over every strip of `MR` rows of `a` (mc rows of depth kc, row stride
/// `lda`) against one full panel, into `c` (mc, NR) with row stride `ldc`; one
/// dispatch per panel.
#[allow(clippy::too_many_arguments)]
fn strips(avx: bool, mc: usize, kc: usize, a: &[f32], lda: usize, b: Panel<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
    debug_assert!(a.len() >= (mc - 1) * lda + kc && b.len() >= kc && c.len() >= (mc - 1) * ldc + NR);
    #[cfg(target_arch = "x86_64")]
    if avx {
        // SAFETY: as in `micro`.
        unsafe {
            match b {
                Panel::F32(l) => avx2::strips::<0>(mc, kc, a, lda, l.as_ptr().cast(), c, ldc, accumulate),
                Panel::Half(Precision::F16, l) => avx2::strips::<1>(mc, kc, a, lda, l.as_ptr().cast(), c, ldc, accumulate),
                Panel::Half(_, l) => avx2::strips::<2>(mc, kc, a, lda, l.as_ptr().cast(), c, ldc, accumulate),
            }
        }
        return;
    }
    for s in (0..mc).step_by(MR) {
        let mr = MR.min(mc - s);
        micro(avx, mr, kc, &a[s * lda..], lda, b, &mut c[s * ldc..], ldc, accumulate, s == 0);
    }
}

/// `c[r, 0..NR] (+)= sum_p a[r * lda + p] * b[p][0..NR]` for `r < mr`, `p < kc`.
/// With `prefetch`, the panel after `b` is fetched into cache meanwhile (AVX2 kernel).
#[allow(clippy::too_many_arguments)]
fn micro(
    avx: bool,
    mr: usize,
    kc: usize,
    a: &[f32],
    lda: usize,
    b: Panel<'_>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    prefetch: bool,
) {
    debug_assert!(a.len() >= (mr - 1) * lda + kc && b.len() >= kc && c.len() >= (mr - 1) * ldc + NR);
    #[cfg(target_arch = "x86_64")]
    if avx {
        // SAFETY: AVX2, FMA and F16C were detected at run time; the slices are long
        // enough for every access (checked above in debug builds, by construction in callers).
        unsafe {
            let (ptr, kind) = match b {
                Panel::F32(l) => (l.as_ptr().cast::<u8>(), 0),
                Panel::Half(Precision::F16, l) => (l.as_ptr().cast::<u8>(), 1),
                Panel::Half(_, l) => (l.as_ptr().cast::<u8>(), 2),
            };
            let (a, c) = (a.as_ptr(), c.as_mut_ptr());
            macro_rules! go {
                ($k:literal) => {
                    match mr {
                        1 => avx2::micro::<1, $k>(kc, a, lda, ptr, c, ldc, accumulate, prefetch),
                        2 => avx2::micro::<2, $k>(kc, a, lda, ptr, c, ldc, accumulate, prefetch),
                        3 => avx2::micro::<3, $k>(kc, a, lda, ptr, c, ldc, accumulate, prefetch),
                        4 => avx2::micro::<4, $k>(kc, a, lda, ptr, c, ldc, accumulate, prefetch),
                        5 => avx2::micro::<5, $k>(kc, a, lda, ptr, c, ldc, accumulate, prefetch),
                        _ => avx2::micro::<6, $k>(kc, a, lda, ptr, c, ldc, accumulate, prefetch),
                    }
                };
            }
            match kind {
                0 => go!(0),
                1 => go!(1),
                _ => go!(2),
            }
        }
        return;
    }
    let _ = avx;
    let mut acc = [[0.0f32; NR]; MR];
    for p in 0..kc {
        let bp = b.row(p);
        for (r, acc_r) in acc.iter_mut().enumerate().take(mr) {
            let av = a[r * lda + p];
            for (x, &bv) in acc_r.iter_mut().zip(&bp) {
                *x += av * bv;
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate().take(mr) {
        let row = &mut c[r * ldc..r * ldc + NR];
        for (x, &v) in row.iter_mut().zip(acc_r) {
            *x = if accumulate { *x + v } else { v };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use proptest::prelude::*;

    fn filled(m: usize, n: usize, seed: u64) -> Array2<f32> {
        let mut s = seed;
        Array2::from_shape_simple_fn((m, n), || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
    }

    fn check(m: usize, k: usize, n: usize, seed: u64, portable: bool) {
        for precision in [Precision::F32, Precision::F16, Precision::BF16] {
            check_at(m, k, n, seed, portable, precision);
        }
    }

    /// The kernel against ndarray on the matrix rounded to `precision`.
    fn check_at(m: usize, k: usize, n: usize, seed: u64, portable: bool, precision: Precision) {
        let a = filled(m, k, seed);
        let b = filled(k, n, seed + 1).mapv(|v| precision.round(v));
        let packed = PackedMatrix::pack_as(b.view(), precision);
        assert_eq!(packed.precision(), precision);
        let mut c = vec![f32::NAN; m * n];
        if portable {
            // Drive the portable kernel directly on the first row block.
            let kc = KC.min(k);
            let a = a.slice(ndarray::s![.., ..kc]).to_owned();
            let b = b.slice(ndarray::s![..kc, ..]).to_owned();
            let packed = PackedMatrix::pack_as(b.view(), precision);
            let a = a.as_slice().expect("owned array is contiguous");
            for j in 0..n.div_ceil(NR) {
                let mut tile = vec![0.0f32; m * NR];
                for s in (0..m).step_by(MR) {
                    let mr = MR.min(m - s);
                    micro(false, mr, kc, &a[s * kc..], kc, packed.panel(0, j), &mut tile[s * NR..], NR, false, false);
                }
                for i in 0..m {
                    for col in 0..NR.min(n - j * NR) {
                        c[i * n + j * NR + col] = tile[i * NR + col];
                    }
                }
            }
        } else {
            packed.matmul_into(a.view(), &mut c, n, &mut Vec::new());
        }
        let kc = if portable { KC.min(k) } else { k };
        let want = a.slice(ndarray::s![.., ..kc]).dot(&b.slice(ndarray::s![..kc, ..]));
        for (x, y) in c.iter().zip(want.iter()) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{m}x{k}x{n}: {x} vs {y}");
        }
    }

    #[test]
    fn edges_and_blocks() {
        for &(m, k, n) in &[(1, 1, 1), (7, 300, 17), (13, 513, 32), (130, 260, 50), (6, 16, 16), (1, 768, 768)] {
            check(m, k, n, 3, false);
            check(m, k, n, 4, true);
        }
        assert_eq!(PackedMatrix::pack(filled(3, 20, 5).view()).get(2, 19), filled(3, 20, 5)[[2, 19]]);
    }

    #[test]
    fn parallel_matmul_splits_rows_or_panels() {
        for &(m, k, n) in &[(1, 70, 100), (5, 33, 50), (200, 40, 37), (1000, 16, 16)] {
            let (a, b) = (filled(m, k, 8), filled(k, n, 9));
            let got = PackedMatrix::pack(b.view()).matmul(a.view());
            let want = a.dot(&b);
            for (x, y) in got.iter().zip(want.iter()) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{m}x{k}x{n}: {x} vs {y}");
            }
            // The epilogue sees each row once, with its index; also when called from
            // inside the pool (one block on the calling thread).
            let packed = PackedMatrix::pack(b.view());
            let shift = |i: usize, row: &mut [f32]| row.iter_mut().for_each(|v| *v -= i as f32);
            let outside = packed.matmul_then(a.view(), shift);
            let (inside, _) = rayon::join(|| packed.matmul_then(a.view(), shift), || ());
            for shifted in [outside, inside] {
                for (((i, _), y), x) in want.indexed_iter().zip(shifted.iter()) {
                    assert!((x + i as f32 - y).abs() <= 1e-4 * (1.0 + y.abs() + i as f32), "{m}x{k}x{n} epilogue");
                }
            }
        }
    }

    #[test]
    fn strided_and_transposed_inputs() {
        let (a, b) = (filled(40, 300, 1), filled(280, 33, 2));
        let packed = PackedMatrix::pack(b.view());
        // Rows with a gap between them, a transposed view and a negative row stride:
        // each copied row-major first.
        let gapped = a.slice(ndarray::s![.., 5..285]);
        let transposed = a.t().to_owned().reversed_axes();
        let flipped = a.slice(ndarray::s![..;-1, 10..290]);
        for view in [gapped, transposed.slice(ndarray::s![.., 5..285]), flipped] {
            let want = view.dot(&b);
            for (x, y) in packed.matmul(view).iter().zip(want.iter()) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
    }

    #[test]
    fn empty_inner_dimension_gives_zeros() {
        let packed = PackedMatrix::pack(Array2::<f32>::zeros((0, 5)).view());
        let mut c = vec![1.0f32; 10];
        packed.matmul_into(Array2::<f32>::zeros((2, 0)).view(), &mut c, 5, &mut Vec::new());
        assert!(c.iter().all(|&v| v == 0.0));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        #[test]
        fn matches_ndarray(m in 1usize..40, k in 1usize..300, n in 1usize..40, seed in 0u64..1000) {
            check(m, k, n, seed, false);
        }
    }
}
