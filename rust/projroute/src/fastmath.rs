//! Branch-free f32 `exp` and `erf` for long loops (softmax over all training
//! questions, GELU epilogues): written so the compiler vectorises them, with an
//! AVX2/FMA build of each loop chosen at run time.

/// `exp(x)`: Cody–Waite reduction to `r` in [-ln2/2, ln2/2], a degree-6 polynomial
/// (the Cephes `expf` coefficients), and the power of two put into the exponent
/// bits. Inputs are clamped to [-87, 88]; relative error below 2e-7. `FUSED`: its
/// multiply-adds fused (one instruction each where the loops are built with FMA, else the
/// correctly rounded library call: the same bits in every build), for per-question
/// routing; else rounded twice, the bits the transformer kinds' attention has always
/// had (stored outputs of old model files are checked to the bit).
#[inline(always)]
pub(crate) fn exp<const FUSED: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to the nearest integer, left in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = madd::<FUSED>(x, LOG2E, ROUND);
    let n = t - ROUND;
    let r = madd::<FUSED>(-n, LN2_LO, madd::<FUSED>(-n, LN2_HI, x));
    let p = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.0e-1]
        .iter()
        .fold(0.0f32, |acc, &c| madd::<FUSED>(acc, r, c));
    let e = madd::<FUSED>(p * r, r, r) + 1.0;
    let pow2 = f32::from_bits(((t.to_bits() as i32 - ROUND.to_bits() as i32 + 127) as u32) << 23);
    e * pow2
}

/// `a · b + c`, fused or rounded twice.
#[inline(always)]
fn madd<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[cfg(feature = "candle")]
/// erf as an odd rational function on [-4, 4] (clamped beyond, where erf is 1 to f32
/// precision); max abs error 4.5e-7 evaluated in f32. Coefficients are the published
/// ones of Eigen's `generic_fast_erf_float`.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    const ALPHA: [f32; 7] = [
        -2.726_142_3e-10,
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.9546e-3,
        -1.609_603_3e-2,
    ];
    const BETA: [f32; 5] = [-1.456_607_2e-5, -2.133_740_6e-4, -1.682_827e-3, -7.373_329e-3, -1.426_474e-2];
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = ALPHA.iter().fold(0.0, |acc, &a| acc * x2 + a);
    let q = BETA.iter().fold(0.0, |acc, &b| acc * x2 + b);
    x * p / q
}

#[cfg(feature = "candle")]
/// The exact GELU, `x Φ(x) = x (1 + erf(x / √2)) / 2` (PyTorch's `nn.GELU()`).
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Define `$name(args)` running `$body` in an AVX-512 build where the packed kernel
/// takes its AVX-512 path (so `PROJROUTE_KERNEL` caps both), else in an AVX2/FMA build
/// when the CPU has it. The builds compute the same operations in the same order (fused
/// multiply-adds only where the code asks for them), so they return the same bits.
macro_rules! dispatch {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        pub(crate) fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn inner($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                /// `inner` compiled for AVX-512F.
                ///
                /// # Safety
                ///
                /// The CPU must have AVX-512F (which implies AVX2 and FMA on every CPU that
                /// has it); nothing else (the body is safe code).
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn wide512($($arg: $ty),*) $(-> $ret)? { inner($($arg),*) }
                /// `inner` compiled for AVX2 and FMA.
                ///
                /// # Safety
                ///
                /// The CPU must have AVX2 and FMA; nothing else (the body is safe code).
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? { inner($($arg),*) }
                if crate::packed::avx512_chosen() {
                    // SAFETY: the packed kernel's AVX-512 path is only chosen once AVX-512F
                    // has been detected on this CPU, and AVX-512F CPUs have AVX2 and FMA.
                    return unsafe { wide512($($arg),*) };
                }
                if crate::cpu::has_avx2_fma() {
                    // SAFETY: `has_avx2_fma` has just detected AVX2 and FMA (and F16C) on
                    // this CPU, the only precondition of `wide`.
                    return unsafe { wide($($arg),*) };
                }
            }
            inner($($arg),*)
        }
    };
}

#[cfg(feature = "candle")]
dispatch! {
    /// `v = gelu(v)` for every element.
    fn gelu_in_place(v: &mut [f32]) {
        v.iter_mut().for_each(|x| *x = gelu(*x));
    }
}

#[cfg(feature = "candle")]
/// `fold(v)` with eight running accumulators, so that the reduction vectorises.
#[inline(always)]
fn reduce8(v: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = f(*a, x);
        }
    }
    chunks.remainder().iter().chain(&acc).fold(init, |a, &b| f(a, b))
}

dispatch! {
    /// `v = v * scale + shift` (shift optional, same length).
    fn scale_shift(v: &mut [f32], scale: f32, shift: Option<&[f32]>) {
        match shift {
            Some(s) => v.iter_mut().zip(s).for_each(|(x, s)| *x = *x * scale + s),
            None => v.iter_mut().for_each(|x| *x *= scale),
        }
    }
}

/// Lanes of the softmax loops' running sums and maxima: one chunk of a row. The order
/// of the sums follows from it, the same in every build of the loops.
const LANES: usize = 16;

/// `z = x · scale + s` of one chunk (no shift adds 0, as [`logit`] does).
#[inline(always)]
fn logits(x: &[f32; LANES], s: Option<&[f32; LANES]>, scale: f32) -> [f32; LANES] {
    let mut z = [0.0f32; LANES];
    match s {
        Some(s) => {
            for l in 0..LANES {
                z[l] = x[l] * scale + s[l];
            }
        }
        None => {
            for l in 0..LANES {
                z[l] = x[l] * scale + 0.0;
            }
        }
    }
    z
}

/// `z = x · scale + s` of element `j` of a row's rest after its whole chunks.
#[inline(always)]
fn logit(x: f32, j: usize, shift_rest: Option<&[f32]>, scale: f32) -> f32 {
    x * scale + shift_rest.map_or(0.0, |s| s[j])
}

/// `Σ a` over the lanes, pairwise: lane `l` plus lane `l + 8`, then `+ 4`, `+ 2`, `+ 1`.
#[inline(always)]
fn sum_lanes(mut a: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            a[l] += a[l + width];
        }
        width /= 2;
    }
    a[0]
}

dispatch! {
    /// `max_j (v[j] · scale + shift[j])` over finite inputs (shift optional, as long as
    /// `v`); −∞ if `v` is empty.
    fn scaled_max(v: &[f32], scale: f32, shift: Option<&[f32]>) -> f32 {
        let (whole, rest) = v.as_chunks::<LANES>();
        let shift = shift.map(|s| s.as_chunks::<LANES>());
        let mut acc = [f32::NEG_INFINITY; LANES];
        for (i, x) in whole.iter().enumerate() {
            let z = logits(x, shift.map(|s| &s.0[i]), scale);
            // Finite inputs: a plain comparison, not `f32::max`'s NaN handling.
            for l in 0..LANES {
                acc[l] = if z[l] > acc[l] { z[l] } else { acc[l] };
            }
        }
        let mut max = f32::NEG_INFINITY;
        let rest = rest.iter().enumerate().map(|(j, &x)| logit(x, j, shift.map(|s| s.1), scale));
        for z in acc.into_iter().chain(rest) {
            max = if z > max { z } else { max };
        }
        max
    }
}

dispatch! {
    /// `out[k] = Σ exp(z_j − max)` over `j` in segment `k`, with `z = v · scale + shift`
    /// (shift optional, as long as `v`) and segment `k` being `offsets[k]..offsets[k + 1]`
    /// (K + 1 entries from 0 to `v.len()`), leaving `exp(z_j − max)` in `v`. First the
    /// exponentials, in one pass over the row (so that no segment's end stalls it); then
    /// each segment's sum: element `i` of the segment into running sum `i mod LANES`,
    /// which [`sum_lanes`] adds up.
    fn segment_exp_sums(v: &mut [f32], scale: f32, shift: Option<&[f32]>, max: f32, offsets: &[usize], out: &mut [f32]) {
        let (whole, rest) = v.as_chunks_mut::<LANES>();
        let shift = shift.map(|s| s.as_chunks::<LANES>());
        for (i, x) in whole.iter_mut().enumerate() {
            let z = logits(x, shift.map(|s| &s.0[i]), scale);
            for l in 0..LANES {
                x[l] = exp::<true>(z[l] - max);
            }
        }
        for (j, x) in rest.iter_mut().enumerate() {
            *x = exp::<true>(logit(*x, j, shift.map(|s| s.1), scale) - max);
        }
        for (o, w) in out.iter_mut().zip(offsets.windows(2)) {
            let (whole, rest) = v[w[0]..w[1]].as_chunks::<LANES>();
            let mut acc = [0.0f32; LANES];
            for e in whole {
                for l in 0..LANES {
                    acc[l] += e[l];
                }
            }
            let mut last = [0.0f32; LANES];
            last[..rest.len()].copy_from_slice(rest);
            for l in 0..LANES {
                acc[l] += last[l];
            }
            *o = sum_lanes(acc);
        }
    }
}

dispatch! {
    /// `dst = w · src` (same length).
    fn scaled_copy(dst: &mut [f32], src: &[f32], w: f32) {
        dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v * w);
    }
}

#[cfg(feature = "candle")]
dispatch! {
    /// `v = softmax(v)` within each run of `group` elements (`v.len()` a multiple of it).
    fn softmax_groups(v: &mut [f32], group: usize) {
        for g in v.chunks_exact_mut(group) {
            let max = reduce8(g, f32::NEG_INFINITY, f32::max);
            g.iter_mut().for_each(|x| *x = exp::<false>(*x - max));
            let inv = 1.0 / reduce8(g, 0.0, |a, b| a + b);
            g.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

#[cfg(feature = "text")]
dispatch! {
    /// `acc += w[i] * rows[i]` for the four rows in turn (the rounding of four
    /// `add_weighted_row` calls), in one pass: four loads in flight per element and one
    /// update of `acc` (mean pooling of token embeddings).
    fn add_weighted_rows4(acc: &mut [f32], rows: [&[f32]; 4], w: [f32; 4]) {
        let n = acc.len();
        let [a, b, c, d] = rows.map(|r| &r[..n]);
        for j in 0..n {
            acc[j] = acc[j] + a[j] * w[0] + b[j] * w[1] + c[j] * w[2] + d[j] * w[3];
        }
    }
}

dispatch! {
    /// `acc += w * row`.
    fn add_weighted_row(acc: &mut [f32], row: &[f32], w: f32) {
        acc.iter_mut().zip(row).for_each(|(a, v)| *a += v * w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "candle")]
    /// erf to f64 precision: Taylor series for |x| ≤ 3, the erfc continued fraction beyond.
    fn erf_f64(x: f64) -> f64 {
        if x.abs() > 3.0 {
            let mut f = 0.0;
            for n in (1..60).rev() {
                f = (n as f64 / 2.0) / (x.abs() + f);
            }
            let erfc = (-x * x).exp() / std::f64::consts::PI.sqrt() / (x.abs() + f);
            return x.signum() * (1.0 - erfc);
        }
        let (mut term, mut sum) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[cfg(feature = "candle")]
    #[test]
    fn erf_is_accurate_everywhere() {
        let mut worst: f64 = 0.0;
        for i in -80_000..=80_000 {
            let x = i as f32 * 1e-4;
            worst = worst.max((erf(x) as f64 - erf_f64(x as f64)).abs());
        }
        assert!(worst < 1e-6, "max |erf error| {worst}");
        assert!((erf(100.0) - 1.0).abs() < 1e-6 && (erf(-100.0) + 1.0).abs() < 1e-6);
        assert!(erf(f32::NAN).is_nan());
    }

    #[test]
    fn exp_is_accurate_where_softmax_needs_it() {
        let mut worst: [f64; 2] = [0.0; 2];
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let want = (x as f64).exp();
            for (w, got) in worst.iter_mut().zip([exp::<false>(x), exp::<true>(x)]) {
                *w = w.max(((got as f64) - want).abs() / want);
            }
        }
        assert!(worst.iter().all(|&w| w < 3e-7), "max relative exp error {worst:?}");
        assert!(exp::<false>(-1e9) > 0.0 && exp::<true>(-1e9) < 1e-37);
    }

    #[test]
    fn loops_match_scalar_code() {
        let v: Vec<f32> = (0..1003).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        let shift: Vec<f32> = (0..1003).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut a = v.clone();
        scale_shift(&mut a, 10.0, Some(&shift));
        let want: Vec<f32> = v.iter().zip(&shift).map(|(x, s)| x * 10.0 + s).collect();
        assert_eq!(a, want);
        // Empty segments, one inside the first chunk, ends inside and at chunk edges.
        let offsets = [0, 1, 5, 32, 500, 500, 1003, 1003];
        for shift in [Some(&shift[..]), None] {
            let z: Vec<f32> = v.iter().enumerate().map(|(j, x)| x * 10.0 + shift.map_or(0.0, |s| s[j])).collect();
            let max = scaled_max(&v, 10.0, shift);
            assert_eq!(max, z.iter().cloned().fold(f32::NEG_INFINITY, f32::max));
            let mut sums = [0.0f32; 7];
            let mut e = v.clone();
            segment_exp_sums(&mut e, 10.0, shift, max, &offsets, &mut sums);
            assert!(e.iter().zip(&z).all(|(&e, &z)| e == exp::<true>(z - max)), "the exponentials are left in v");
            for (k, w) in offsets.windows(2).enumerate() {
                // The stated order, to the bit: running sum i mod 16 of the segment's
                // element i, then pairwise.
                let mut lanes = [0.0f32; LANES];
                (w[0]..w[1]).for_each(|j| lanes[(j - w[0]) % LANES] += exp::<true>(z[j] - max));
                assert_eq!(sums[k].to_bits(), sum_lanes(lanes).to_bits(), "segment {k}");
                let want: f64 = z[w[0]..w[1]].iter().map(|&x| ((x - max) as f64).exp()).sum();
                assert!((sums[k] as f64 - want).abs() <= 1e-5 * want.max(1e-30), "segment {k}: {} vs {want}", sums[k]);
            }
        }
        assert_eq!(scaled_max(&[], 1.0, None), f32::NEG_INFINITY);
        #[cfg(feature = "candle")]
        {
            let mut g = v.clone();
            gelu_in_place(&mut g);
            assert!(g.iter().zip(&v).all(|(g, &x)| (g - gelu(x)).abs() < 1e-6));
            let mut p = v[..1000].to_vec();
            softmax_groups(&mut p, 40);
            for (p, v) in p.chunks(40).zip(v.chunks(40)) {
                let max = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                let z: f64 = v.iter().map(|&x| (x as f64 - max).exp()).sum();
                for (p, &x) in p.iter().zip(v) {
                    assert!((*p as f64 - (x as f64 - max).exp() / z).abs() < 1e-6);
                }
            }
        }
    }
}
