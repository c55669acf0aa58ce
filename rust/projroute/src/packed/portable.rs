//! The portable microkernel: plain Rust with the same layout as the AVX2 kernel, for
//! CPUs without AVX2, FMA and F16C and everywhere off x86-64. Every access is
//! bounds-checked.

use super::{Panel, MR, NR};

/// `c[r, 0..NR] (+)= sum_p a[r * lda + p] * b[p][0..NR]` for `r < mr`, `p < kc`
/// (`mr <= MR`): the tile is accumulated in registers over the whole depth, then
/// stored (or added, with `accumulate`) once.
#[allow(clippy::too_many_arguments)]
pub(super) fn micro(
    mr: usize,
    kc: usize,
    a: &[f32],
    lda: usize,
    b: Panel<'_>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
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

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_close, filled, PRECISIONS, SHAPES};
    use super::super::{PackedMatrix, KC, MR, NR};
    use super::*;

    /// The portable kernel, driven directly on the first row block (whatever kernel the
    /// driver would pick), against ndarray on the matrix rounded to each precision.
    #[test]
    fn portable_kernel_matches_ndarray() {
        for (m, k, n) in SHAPES {
            for precision in PRECISIONS {
                let kc = KC.min(k);
                let a = filled(m, k, 4).slice(ndarray::s![.., ..kc]).to_owned();
                let b = filled(k, n, 5).mapv(|v| precision.round(v)).slice(ndarray::s![..kc, ..]).to_owned();
                let packed = PackedMatrix::pack_as(b.view(), precision);
                let a_rows = a.as_slice().expect("owned array is contiguous");
                let mut c = vec![f32::NAN; m * n];
                for j in 0..n.div_ceil(NR) {
                    let mut tile = vec![0.0f32; m * NR];
                    for s in (0..m).step_by(MR) {
                        let mr = MR.min(m - s);
                        micro(mr, kc, &a_rows[s * kc..], kc, packed.panel(0, j), &mut tile[s * NR..], NR, false);
                    }
                    for i in 0..m {
                        for col in 0..NR.min(n - j * NR) {
                            c[i * n + j * NR + col] = tile[i * NR + col];
                        }
                    }
                }
                assert_close(&c, &a.dot(&b), &format!("{m}x{k}x{n} {}", precision.name()));
            }
        }
    }
}
