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
//! widened to f32 as they are loaded. The kernel is chosen at run time from the CPU's
//! features: on x86-64 with AVX-512F a 12x32 register-blocked kernel of 16-lane
//! vectors over two panels at once, with AVX2, FMA and F16C a 6x16 one of 8-lane
//! vectors; elsewhere a portable kernel with the same layout. `PROJROUTE_KERNEL` (`avx512`, `avx2` or `portable`),
//! read once, caps the choice, to compare the paths on one machine.
//!
//! This file holds the layout and the driver (blocking, threads, the right edge, and
//! the choice of kernel, with the bounds every kernel call relies on checked once per
//! call); `portable` holds the portable microkernel, `tile` the SIMD one, written once
//! over 16-lane vectors that `avx2` and `avx512` implement.

use std::ops::Range;
use std::sync::Mutex;

use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis};

use crate::precision::Precision;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod portable;
#[cfg(target_arch = "x86_64")]
mod tile;

/// Columns per packed panel.
pub const NR: usize = 16;
/// Rows of `a` per microkernel call.
const MR: usize = 6;
/// Depth of one slice of a panel (16 KiB of f32 per panel slice).
const KC: usize = 256;
/// Most rows of `a` in one block.
pub(crate) const MC: usize = 120;
/// Products of fewer multiply-adds run on the calling thread: sharing them out costs
/// more than it saves.
const SPLIT_MIN: usize = 1 << 16;
/// A block holds a multiple of this many rows: the strip heights of every kernel divide it.
const STRIP: usize = 12;
/// Floats of `a` kept in L2 at once (a block of rows, all of its depth): 384 KiB, so
/// that a cluster's queries in a federated batch (about 80 rows of 768) are one block
/// and its map streams from memory once.
const A_BLOCK: usize = 96 * 1024;

/// One row of a panel: [`NR`] floats, cache-line aligned so that no vector load splits
/// across two lines.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Line([f32; NR]);

/// One row of a half-precision panel: [`NR`] f16 or bf16 bit patterns, two per cache line.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
struct HalfLine([u16; NR]);

// The SIMD kernels step through a panel `4 * NR` (f32) or `2 * NR` (f16, bf16) bytes a
// row, f32 lines with aligned 64-byte (AVX-512) or 32-byte (AVX2) loads, half lines with
// 16-byte aligned (AVX2) or unaligned loads: lines are exactly that long and at least
// that aligned.
const _: () = assert!(std::mem::size_of::<Line>() == 4 * NR && std::mem::align_of::<Line>() >= 64);
const _: () = assert!(std::mem::size_of::<HalfLine>() == 2 * NR && std::mem::align_of::<HalfLine>() >= 16);

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

    /// What the SIMD kernels take: the address of the first line, and its `KIND`
    /// (0 = f32 `Line`s, 1 = f16 and 2 = bf16 `HalfLine`s).
    fn raw(&self) -> (*const u8, u8) {
        match self {
            Panel::F32(l) => (l.as_ptr().cast(), 0),
            Panel::Half(Precision::F16, l) => (l.as_ptr().cast(), 1),
            Panel::Half(_, l) => (l.as_ptr().cast(), 2),
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
        self.panels(kb, j, 1)
    }

    /// Lines of `count` consecutive panels from `j` in the row block starting at `kb`
    /// (each `min(KC, k - kb)` lines, one after the other).
    fn panels(&self, kb: usize, j: usize, count: usize) -> Panel<'_> {
        let kc = KC.min(self.k - kb);
        let at = kb * self.n.div_ceil(NR) + j * kc..kb * self.n.div_ceil(NR) + (j + count) * kc;
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

    /// `a @ self` (m, n) on the [`team`](crate::team) (as many threads as the current
    /// rayon pool): row blocks for a tall `a`, column panels for a short one. Where the
    /// core has already split the work across threads (one chunk of a batch per
    /// thread), or the product is small (under 2^16 multiply-adds), it computes on the
    /// calling thread.
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
        let here = on_this_thread_now() || m * self.k * n < SPLIT_MIN;
        if here || m >= 4 * MR * threads {
            // Row blocks on the team, two per thread; or one block, run on this thread.
            let rows = if here { m.max(1) } else { m.div_ceil(2 * threads).div_ceil(MR) * MR };
            let outs: Vec<Mutex<ArrayViewMut2<f32>>> =
                out.axis_chunks_iter_mut(Axis(0), rows).map(Mutex::new).collect();
            let inputs: Vec<ArrayView2<f32>> = a.axis_chunks_iter(Axis(0), rows).collect();
            crate::team::run(outs.len(), &|chunk| {
                let mut o = outs[chunk].lock().unwrap_or_else(|p| p.into_inner());
                let o = o.as_slice_mut().expect("fresh array is contiguous");
                self.matmul_into(inputs[chunk], o, n, &mut Vec::new());
                for (r, row) in o.chunks_exact_mut(n.max(1)).enumerate() {
                    epilogue(chunk * rows + r, row);
                }
            });
        } else {
            // Column panels per task of the team: a short product's time is reading the
            // matrix, each thread its share from its own cache.
            let n_panels = n.div_ceil(NR);
            let per = n_panels.div_ceil(threads).max(1);
            let tasks: Vec<Range<usize>> =
                (0..n_panels.div_ceil(per)).map(|t| t * per..((t + 1) * per).min(n_panels)).collect();
            let parts = crate::team::map(tasks.len(), |t| {
                let width = (tasks[t].end * NR).min(n) - tasks[t].start * NR;
                let mut c = vec![0.0f32; m * width];
                self.panels_into(a, tasks[t].clone(), &mut c, width, &mut Vec::new());
                c
            });
            for (panels, c) in tasks.into_iter().zip(parts) {
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
    pub(crate) fn panels_into(
        &self,
        a: ArrayView2<f32>,
        panels: Range<usize>,
        c: &mut [f32],
        ldc: usize,
        scratch: &mut Vec<f32>,
    ) {
        self.panels_with(Kernel::detect(), a, panels, c, ldc, scratch)
    }

    /// [`panels_into`](Self::panels_into) on the `kernel` given.
    fn panels_with(
        &self,
        kernel: Kernel,
        a: ArrayView2<f32>,
        panels: Range<usize>,
        c: &mut [f32],
        ldc: usize,
        scratch: &mut Vec<f32>,
    ) {
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
        let mut tile = [0.0f32; MR * NR];
        // Rows per block: all of their depth stays in L2 while every panel passes; a
        // whole number of the widest kernel's strips.
        let mc_max = (A_BLOCK / k).clamp(STRIP, MC) / STRIP * STRIP;
        // Full panels go to the kernel `kernel.panels_per_tile()` at a time where that many
        // are left; the right edge's panel alone.
        let full = |j: usize| j < panels.end && (j + 1) * NR <= self.n;
        let count_at = |j: usize| {
            let most = kernel.panels_per_tile();
            if (j..j + most).all(full) {
                most
            } else {
                1
            }
        };
        for i0 in (0..m).step_by(mc_max) {
            let mc = mc_max.min(m - i0);
            let mut j = panels.start;
            while j < panels.end {
                let count = count_at(j);
                let nr = NR.min(self.n - j * NR);
                for kb in (0..k).step_by(KC) {
                    let (kc, accumulate) = (KC.min(k - kb), kb > 0);
                    let b = self.panels(kb, j, count);
                    // The slice the loop takes next: the same panels one row block down,
                    // or the next panels' first row block.
                    let next = if kb + KC < k {
                        Some((self.panels(kb + KC, j, count), count))
                    } else if j + count < panels.end {
                        let after = count_at(j + count);
                        Some((self.panels(0, j + count, after), after))
                    } else {
                        None
                    };
                    let a_block = &a[i0 * lda + kb..];
                    if nr == NR {
                        let c_off = i0 * ldc + (j - panels.start) * NR;
                        strips(kernel, mc, kc, a_block, lda, b, count, &mut c[c_off..], ldc, accumulate, next);
                        continue;
                    }
                    // Right edge: compute full tiles aside, copy the valid columns.
                    for s in (0..mc).step_by(MR) {
                        let mr = MR.min(mc - s);
                        let c_off = (i0 + s) * ldc + (j - panels.start) * NR;
                        for r in 0..mr {
                            tile[r * NR..r * NR + nr].copy_from_slice(&c[c_off + r * ldc..c_off + r * ldc + nr]);
                        }
                        let next = if s == 0 { next } else { None };
                        micro(kernel, mr, kc, &a_block[s * lda..], lda, b, &mut tile, NR, accumulate, next);
                        for r in 0..mr {
                            c[c_off + r * ldc..c_off + r * ldc + nr].copy_from_slice(&tile[r * NR..r * NR + nr]);
                        }
                    }
                }
                j += count;
            }
        }
    }

    /// The matrix unpacked (k, n): the stored values, widened to f32 (for export).
    pub(crate) fn to_array(&self) -> Array2<f32> {
        Array2::from_shape_fn((self.k, self.n), |(row, col)| self.get(row, col))
    }
}

thread_local! {
    /// Set while [`on_this_thread`] runs on this thread.
    static ON_THIS_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` with every [`PackedMatrix::matmul`] it makes computed on the calling thread:
/// for work the caller has already split across the pool (one chunk of a batch per
/// thread). Being on a pool thread is not enough to tell: `threads::install` runs a
/// whole call on one, and its products should use the pool.
pub(crate) fn on_this_thread<R>(f: impl FnOnce() -> R) -> R {
    /// Restores the flag on the way out, panics included.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ON_THIS_THREAD.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(ON_THIS_THREAD.with(|c| c.replace(true)));
    f()
}

/// Whether the packed kernel takes its AVX-512 path on this CPU (detected, and not capped
/// by `PROJROUTE_KERNEL`): then `fastmath`'s loops take their AVX-512 build too.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512_chosen() -> bool {
    matches!(Kernel::detect(), Kernel::Avx512(_))
}

/// Whether this thread is inside [`on_this_thread`]: then the core's row loops run on
/// it too, not on the pool.
pub(crate) fn on_this_thread_now() -> bool {
    ON_THIS_THREAD.with(|c| c.get())
}

/// The microkernel a product runs on.
#[derive(Clone, Copy, Debug)]
enum Kernel {
    /// [`portable::micro`], on any CPU.
    Portable,
    /// The AVX2/FMA/F16C kernel: only constructed from the detection's proof.
    #[cfg(target_arch = "x86_64")]
    Avx2(avx2::Features),
    /// The AVX-512F kernel: only constructed from the detection's proof.
    #[cfg(target_arch = "x86_64")]
    Avx512(avx512::Features),
}

impl Kernel {
    /// The widest kernel this CPU runs, at most the one `PROJROUTE_KERNEL` names
    /// (`avx512`, `avx2` or `portable`; anything else, or unset, caps nothing). Detected
    /// once per process.
    fn detect() -> Self {
        static CHOSEN: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let cap = std::env::var("PROJROUTE_KERNEL").unwrap_or_default();
            let allowed = match cap.as_str() {
                "portable" => 0,
                "avx2" => 1,
                _ => 2,
            };
            Kernel::available()
                .into_iter()
                .filter(|k| k.rank() <= allowed)
                .max_by_key(|k| k.rank())
                .unwrap_or(Kernel::Portable)
        })
    }

    /// Every kernel this CPU can run, portable first.
    fn available() -> Vec<Self> {
        #[allow(unused_mut)]
        let mut all = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            all.extend(avx2::Features::detect().map(Kernel::Avx2));
            all.extend(avx512::Features::detect().map(Kernel::Avx512));
        }
        all
    }

    /// 0 portable, 1 AVX2, 2 AVX-512: the order of preference.
    fn rank(self) -> u8 {
        match self {
            Kernel::Portable => 0,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(_) => 1,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(_) => 2,
        }
    }

    /// Panels one SIMD tile covers: two for AVX-512 (see `avx512`), one otherwise.
    fn panels_per_tile(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(_) => 2,
            _ => 1,
        }
    }

    /// The name [`kernel_path`] reports.
    fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(_) => "avx2+fma+f16c",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(_) => "avx512f",
        }
    }
}

/// The microkernel every packed product in this process runs: `"avx512f"`,
/// `"avx2+fma+f16c"` or `"portable"`.
pub fn kernel_path() -> &'static str {
    Kernel::detect().name()
}

/// Whether a slice of `len` elements holds `rows` rows of `cols` elements spaced `stride`
/// apart: the last one ends at `(rows - 1) * stride + cols`.
fn holds(len: usize, rows: usize, cols: usize, stride: usize) -> bool {
    rows == 0 || (rows - 1).checked_mul(stride).and_then(|r| r.checked_add(cols)).is_some_and(|end| end <= len)
}

/// `kernel`'s tiles over every strip of `a` (mc rows of depth kc, row stride `lda`;
/// strips of 6 rows for the portable and AVX2 kernels, 12 for AVX-512) against `count`
/// consecutive full panels `b` (at most `kernel.panels_per_tile()`), into `c`
/// (mc, count NR) with row stride `ldc`, prefetching `next` (the panels used next, and
/// how many they are); one dispatch per call.
///
/// Panics unless `count` is in range and `a`, `b` and `c` hold all of that (checked once
/// per call: the SIMD kernels' reads and writes are unchecked).
#[allow(clippy::too_many_arguments)]
fn strips(
    kernel: Kernel,
    mc: usize,
    kc: usize,
    a: &[f32],
    lda: usize,
    b: Panel<'_>,
    count: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    next: Option<(Panel<'_>, usize)>,
) {
    assert!(
        (1..=kernel.panels_per_tile()).contains(&count)
            && holds(a.len(), mc, kc, lda)
            && b.len() >= count * kc
            && holds(c.len(), mc, count * NR, ldc),
        "packed kernel: {mc}x{kc} strip block of {count} panels out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    if !matches!(kernel, Kernel::Portable) {
        // SAFETY: `Kernel::Avx2` and `Kernel::Avx512` are only built from their
        // `Features::detect`, so the CPU has AVX2, FMA and F16C, or AVX-512F. The assert
        // above bounds every access: rows `r < mc` of `a` are read at `r * lda + p`
        // (`p < kc`) and of `c` written at `r * ldc + 0..count * NR`, and `b` has at
        // least `count * kc` lines. The pointer given for `b` is that of its `Line`s
        // (`KIND` 0) or `HalfLine`s (1 = f16, 2 = bf16), whose size and alignment are what the
        // kernels' loads expect (the const asserts beside their definitions); the `count`
        // panels follow one another `kc` lines apart, as `PackedMatrix::panels` lays them
        // out, and `count` is 1 except for AVX-512. `c` is borrowed exclusively, so
        // nothing else reads or writes it meanwhile.
        unsafe {
            let ((ptr, kind), next) = (b.raw(), next_lines(next));
            match (kernel, kind, count) {
                (Kernel::Avx512(_), 0, 1) => avx512::strips::<0, 1>(mc, kc, a, lda, ptr, c, ldc, accumulate, next),
                (Kernel::Avx512(_), 1, 1) => avx512::strips::<1, 1>(mc, kc, a, lda, ptr, c, ldc, accumulate, next),
                (Kernel::Avx512(_), _, 1) => avx512::strips::<2, 1>(mc, kc, a, lda, ptr, c, ldc, accumulate, next),
                (Kernel::Avx512(_), 0, _) => avx512::strips::<0, 2>(mc, kc, a, lda, ptr, c, ldc, accumulate, next),
                (Kernel::Avx512(_), 1, _) => avx512::strips::<1, 2>(mc, kc, a, lda, ptr, c, ldc, accumulate, next),
                (Kernel::Avx512(_), _, _) => avx512::strips::<2, 2>(mc, kc, a, lda, ptr, c, ldc, accumulate, next),
                (_, 0, _) => avx2::strips::<0>(mc, kc, a, lda, ptr, c, ldc, accumulate, next),
                (_, 1, _) => avx2::strips::<1>(mc, kc, a, lda, ptr, c, ldc, accumulate, next),
                (_, _, _) => avx2::strips::<2>(mc, kc, a, lda, ptr, c, ldc, accumulate, next),
            }
        }
        return;
    }
    for s in (0..mc).step_by(MR) {
        let mr = MR.min(mc - s);
        micro(kernel, mr, kc, &a[s * lda..], lda, b, &mut c[s * ldc..], ldc, accumulate, None);
    }
}

/// What the SIMD kernels prefetch for `next` (panels, and how many): the address of its
/// first line and the lines per panel.
#[cfg(target_arch = "x86_64")]
fn next_lines(next: Option<(Panel<'_>, usize)>) -> tile::Next {
    next.map(|(panels, count)| (panels.raw().0, panels.len() / count))
}

/// `c[r, 0..NR] (+)= sum_p a[r * lda + p] * b[p][0..NR]` for `r < mr`, `p < kc`.
/// The SIMD kernels fetch `next` (panels, and how many) into cache meanwhile.
///
/// Panics unless `1 <= mr <= MR` and `a`, `b` and `c` hold all of that (checked once
/// per call: the SIMD kernels' reads and writes are unchecked).
#[allow(clippy::too_many_arguments)]
fn micro(
    kernel: Kernel,
    mr: usize,
    kc: usize,
    a: &[f32],
    lda: usize,
    b: Panel<'_>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    next: Option<(Panel<'_>, usize)>,
) {
    assert!(
        (1..=MR).contains(&mr) && holds(a.len(), mr, kc, lda) && b.len() >= kc && holds(c.len(), mr, NR, ldc),
        "packed kernel: {mr}x{kc} tile out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    if !matches!(kernel, Kernel::Portable) {
        // SAFETY: `Kernel::Avx2` and `Kernel::Avx512` are only built from their
        // `Features::detect`, so the CPU has AVX2, FMA and F16C, or AVX-512F. The assert
        // above makes `mr` one of the `M` below (1..=6) and bounds every access of that
        // `M`x16 kernel: rows `r < mr` of `a` are read at `r * lda + p` (`p < kc`) and of
        // `c` written at `r * ldc + 0..NR`, and `b` has at least `kc` lines. The pointer
        // given for `b` is that of its `Line`s (`kind` 0) or `HalfLine`s (1 = f16, 2 =
        // bf16), whose size and alignment are what the kernels' loads expect (the const
        // asserts beside their definitions); prefetches never fault. `c` is borrowed
        // exclusively, so nothing else reads or writes it meanwhile.
        unsafe {
            let ((ptr, kind), prefetch) = (b.raw(), next_lines(next));
            let (a, c) = (a.as_ptr(), c.as_mut_ptr());
            macro_rules! go {
                ($module:ident, $k:literal) => {
                    match mr {
                        1 => $module::micro::<1, $k>(kc, a, lda, ptr, c, ldc, accumulate, prefetch),
                        2 => $module::micro::<2, $k>(kc, a, lda, ptr, c, ldc, accumulate, prefetch),
                        3 => $module::micro::<3, $k>(kc, a, lda, ptr, c, ldc, accumulate, prefetch),
                        4 => $module::micro::<4, $k>(kc, a, lda, ptr, c, ldc, accumulate, prefetch),
                        5 => $module::micro::<5, $k>(kc, a, lda, ptr, c, ldc, accumulate, prefetch),
                        _ => $module::micro::<6, $k>(kc, a, lda, ptr, c, ldc, accumulate, prefetch),
                    }
                };
            }
            match (kernel, kind) {
                (Kernel::Avx512(_), 0) => go!(avx512, 0),
                (Kernel::Avx512(_), 1) => go!(avx512, 1),
                (Kernel::Avx512(_), _) => go!(avx512, 2),
                (_, 0) => go!(avx2, 0),
                (_, 1) => go!(avx2, 1),
                (_, _) => go!(avx2, 2),
            }
        }
        return;
    }
    let _ = next; // the portable kernel leaves caching to the hardware prefetcher
    portable::micro(mr, kc, a, lda, b, c, ldc, accumulate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use proptest::prelude::*;

    /// Shapes (m, k, n) with partial strips, partial panels and several row blocks.
    pub(super) const SHAPES: [(usize, usize, usize); 6] =
        [(1, 1, 1), (7, 300, 17), (13, 513, 32), (130, 260, 50), (6, 16, 16), (1, 768, 768)];

    pub(super) const PRECISIONS: [Precision; 3] = [Precision::F32, Precision::F16, Precision::BF16];

    /// A deterministic (m, n) matrix of values in [-0.5, 0.5).
    pub(super) fn filled(m: usize, n: usize, seed: u64) -> Array2<f32> {
        let mut s = seed;
        Array2::from_shape_simple_fn((m, n), || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
    }

    /// `got` (row-major) against `want` to f32 accuracy.
    pub(super) fn assert_close(got: &[f32], want: &Array2<f32>, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (x, y) in got.iter().zip(want.iter()) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{what}: {x} vs {y}");
        }
    }

    fn check(m: usize, k: usize, n: usize, seed: u64) {
        for precision in PRECISIONS {
            check_at(m, k, n, seed, precision);
        }
    }

    /// The driver (and whichever kernel it picks) against ndarray on the matrix rounded
    /// to `precision`.
    fn check_at(m: usize, k: usize, n: usize, seed: u64, precision: Precision) {
        let a = filled(m, k, seed);
        let b = filled(k, n, seed + 1).mapv(|v| precision.round(v));
        let packed = PackedMatrix::pack_as(b.view(), precision);
        assert_eq!(packed.precision(), precision);
        let mut c = vec![f32::NAN; m * n];
        packed.matmul_into(a.view(), &mut c, n, &mut Vec::new());
        assert_close(&c, &a.dot(&b), &format!("{m}x{k}x{n} {}", precision.name()));
    }

    /// Each kernel this CPU can run, forced through the whole driver (blocks, strips,
    /// right edges), against ndarray: the paths a machine without some of them cannot
    /// reach are tested wherever the CI's machine has them.
    #[test]
    fn every_available_kernel_matches_ndarray() {
        let kernels = Kernel::available();
        eprintln!("kernels on this CPU: {:?}", kernels.iter().map(|k| k.name()).collect::<Vec<_>>());
        for kernel in kernels {
            for (m, k, n) in SHAPES.into_iter().chain([(37, 600, 70), (130, 96, 48)]) {
                for precision in PRECISIONS {
                    let a = filled(m, k, 21);
                    let b = filled(k, n, 22).mapv(|v| precision.round(v));
                    let packed = PackedMatrix::pack_as(b.view(), precision);
                    let mut c = vec![f32::NAN; m * n];
                    packed.panels_with(kernel, a.view(), 0..n.div_ceil(NR), &mut c, n, &mut Vec::new());
                    assert_close(&c, &a.dot(&b), &format!("{} {m}x{k}x{n} {}", kernel.name(), precision.name()));
                }
            }
        }
    }

    /// A row's output is the same bits whichever tile computes it: alone, or in a batch
    /// (a 12-row strip or a remainder's tile), for every kernel this CPU has.
    #[test]
    fn a_rows_output_does_not_depend_on_its_batch() {
        for kernel in Kernel::available() {
            for (k, n) in [(1, 16), (7, 40), (300, 130), (513, 256)] {
                for precision in PRECISIONS {
                    let a = filled(30, k, 31);
                    let packed = PackedMatrix::pack_as(filled(k, n, 32).mapv(|v| precision.round(v)).view(), precision);
                    let product = |rows: std::ops::Range<usize>| {
                        let mut c = vec![0.0f32; rows.len() * n];
                        let a = a.slice(ndarray::s![rows, ..]);
                        packed.panels_with(kernel, a, 0..n.div_ceil(NR), &mut c, n, &mut Vec::new());
                        c
                    };
                    let batch = product(0..30);
                    for rows in [0..1, 29..30, 3..5, 12..15, 26..29] {
                        let want = &batch[rows.start * n..rows.end * n];
                        let got = product(rows.clone());
                        assert!(
                            got.iter().zip(want).all(|(x, y)| x.to_bits() == y.to_bits()),
                            "{} {k}x{n} {} rows {rows:?}",
                            kernel.name(),
                            precision.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn edges_and_blocks() {
        for (m, k, n) in SHAPES {
            check(m, k, n, 3);
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
            // The epilogue sees each row once, with its index; also on one thread (one
            // block).
            let packed = PackedMatrix::pack(b.view());
            let shift = |i: usize, row: &mut [f32]| row.iter_mut().for_each(|v| *v -= i as f32);
            let outside = packed.matmul_then(a.view(), shift);
            let inside = on_this_thread(|| packed.matmul_then(a.view(), shift));
            for shifted in [outside, inside] {
                for (((i, _), y), x) in want.indexed_iter().zip(shifted.iter()) {
                    assert!((x + i as f32 - y).abs() <= 1e-4 * (1.0 + y.abs() + i as f32), "{m}x{k}x{n} epilogue");
                }
            }
        }
    }

    /// A call the pool runs whole (as `threads::install` does) still splits its products
    /// across the pool; only `on_this_thread` keeps them on the calling thread, and the
    /// flag is restored after it, panics included.
    #[test]
    fn only_on_this_thread_keeps_a_product_on_its_thread() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        assert!(!pool.install(on_this_thread_now));
        assert!(pool.install(|| on_this_thread(on_this_thread_now)));
        assert!(std::panic::catch_unwind(|| on_this_thread(|| panic!("inside"))).is_err());
        assert!(!on_this_thread_now());
        // On a pool of two, a tall product's row blocks are shared out: the epilogue runs
        // on two threads (the caller and the team's helper) in some call (whether the
        // helper is awake in time is up to timing).
        let (a, b) = (filled(4096, 256, 1), PackedMatrix::pack(filled(256, 256, 2).view()));
        let used = std::sync::Mutex::new(std::collections::HashSet::new());
        // Up to 200 calls (seconds on a busy machine), stopping once both threads are seen.
        for _ in 0..200 {
            pool.install(|| {
                b.matmul_then(a.view(), |_, _| {
                    used.lock().unwrap().insert(std::thread::current().id());
                })
            });
            if used.lock().unwrap().len() == 2 {
                break;
            }
        }
        assert_eq!(used.into_inner().unwrap().len(), 2, "all row blocks ran on one thread");
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

    #[test]
    fn kernel_bounds_are_checked_in_release_builds() {
        let b = PackedMatrix::pack(filled(8, 16, 1).view());
        let a = filled(6, 8, 2).into_raw_vec_and_offset().0;
        let call = |mr: usize, a: &[f32], c_len: usize| {
            let a = a.to_vec();
            let panel = b.panel(0, 0);
            std::panic::catch_unwind(move || {
                let mut c = vec![0.0f32; c_len];
                micro(Kernel::detect(), mr, 8, &a, 8, panel, &mut c, NR, false, None);
                strips(Kernel::detect(), mr.max(1), 8, &a, 8, panel, 1, &mut c, NR, false, None);
            })
            .is_ok()
        };
        assert!(call(6, &a, 6 * NR));
        assert!(!call(6, &a, 6 * NR - 1), "output one float short");
        assert!(!call(6, &a[..47], 6 * NR), "input one float short");
        assert!(!call(0, &a, 6 * NR), "no rows");
        assert!(!call(7, &filled(7, 8, 2).into_raw_vec_and_offset().0, 7 * NR), "more rows than a tile");
        let short = PackedMatrix::pack(filled(7, 16, 1).view());
        let mut c = vec![0.0f32; NR];
        let panel = short.panel(0, 0);
        let a2 = a.clone();
        let result =
            std::panic::catch_unwind(move || micro(Kernel::detect(), 1, 8, &a2, 8, panel, &mut c, NR, false, None));
        assert!(result.is_err(), "panel one line short");
        // More panels than the kernel's tile covers, or more than the matrix has.
        let wide = PackedMatrix::pack(filled(8, 3 * NR, 1).view());
        let kernel = Kernel::detect();
        for (count, ok) in [(kernel.panels_per_tile(), true), (kernel.panels_per_tile() + 1, false)] {
            let (a, panels) = (a.clone(), wide.panels(0, 0, count.min(3)));
            let result = std::panic::catch_unwind(move || {
                let mut c = vec![0.0f32; 6 * 3 * NR];
                strips(kernel, 6, 8, &a, 8, panels, count, &mut c, 3 * NR, false, None);
            });
            assert_eq!(result.is_ok(), ok, "{count} panels in one call");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        #[test]
        fn matches_ndarray(m in 1usize..40, k in 1usize..300, n in 1usize..40, seed in 0u64..1000) {
            check(m, k, n, seed);
        }
    }
}
