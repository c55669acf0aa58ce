//! criterion benches of the core operations, one group per op, with FLOP throughput.
//! Run: `cargo bench -p projroute` (or `make bench-rust`).

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use ndarray::{Array2, Array3};
use projroute::{route, Federated, FlatIndex, Lda, PackedMatrix, Router, RoutingParams};

fn random(shape: (usize, usize), seed: u64) -> Array2<f32> {
    let mut s = seed;
    Array2::from_shape_simple_fn(shape, || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    })
}

fn federated(c: &mut Criterion) {
    let (d, k, top_k) = (768, 124, 10);
    let centroids = random((k, d), 1);
    let maps = Array3::from_shape_vec((k, d, d), random((k * d, d), 2).into_raw_vec_and_offset().0).unwrap();
    let params = RoutingParams { temperature: 0.1, top_k, coverage: None };
    let model = Federated::new(centroids.view(), maps.view(), params).unwrap();
    let mut group = c.benchmark_group("federated_project_f32_d768_k124_top10");
    group.sample_size(10);
    for b in [1usize, 1024] {
        let x = random((b, d), 3);
        group.throughput(Throughput::Elements((2 * b * top_k * d * d) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(b), &x, |bench, x| {
            bench.iter(|| model.project(x.view()).unwrap())
        });
    }
    group.finish();
}

fn lda(c: &mut Criterion) {
    let (d, k) = (384, 1000);
    let params = RoutingParams { temperature: 0.1, top_k: k, coverage: None };
    let model = Lda::new(random((k, d), 4).view(), random((k, d), 5), params).unwrap();
    let mut group = c.benchmark_group("lda_flat_softmax_f32_d384_k1000");
    for b in [1usize, 1024] {
        let x = random((b, d), 6);
        group.throughput(Throughput::Elements(b as u64));
        group.bench_with_input(BenchmarkId::from_parameter(b), &x, |bench, x| {
            bench.iter(|| model.project(x.view()).unwrap())
        });
    }
    group.finish();
}

fn routing(c: &mut Criterion) {
    let (d, k, b) = (384, 1000, 1024);
    let all = RoutingParams { temperature: 0.1, top_k: k, coverage: None };
    let router = Router::new(random((k, d), 7).view(), all).unwrap();
    let x = random((b, d), 8);
    let scores = router.scores(x.view()).unwrap();
    let mut group = c.benchmark_group("routing_f32_b1024_k1000");
    group.throughput(Throughput::Elements(b as u64));
    group.bench_function("cosine_scores_d384", |bench| bench.iter(|| router.scores(x.view()).unwrap()));
    for (name, top_k, coverage) in [("top10", 10, None), ("coverage0.9", k, Some(0.9))] {
        let params = RoutingParams { temperature: 0.1, top_k, coverage };
        group.bench_function(name, |bench| bench.iter(|| route(scores.view(), &params).unwrap()));
    }
    group.finish();
}

/// Exact top-10 search, queries per second: one query (memory-bound), a served
/// micro-batch (32) and an offline batch (256).
fn index(c: &mut Criterion) {
    let (n, d) = (20_000, 384);
    let index = FlatIndex::new(random((n, d), 9).view()).unwrap();
    let mut group = c.benchmark_group("flat_index_search_f32_n20000_d384_k10");
    for b in [1, 32, 256] {
        let x = random((b, d), 10);
        group.throughput(Throughput::Elements(b as u64));
        group.bench_with_input(BenchmarkId::from_parameter(b), &x, |bench, x| {
            bench.iter(|| index.search(x.view(), 10).unwrap())
        });
    }
    group.finish();
}

/// The packed kernel on one thread at the distilled student's GEMM shapes (B=1024),
/// beside the core's FMA peak: `fma_peak` is a register-only loop of 12 independent
/// 8-lane FMA chains (`fma_peak_avx512`: 16-lane, where the CPU has AVX-512F), so both
/// throughputs are FLOP/s and their ratio is the kernel's share of the peak of the
/// path it takes (the line printed first names it).
fn packed_gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("packed_gemm_1thread");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") && std::arch::is_x86_feature_detected!("fma") {
        const STEPS: usize = 100_000;
        group.throughput(Throughput::Elements((STEPS * 12 * 16) as u64));
        group.bench_function("fma_peak", |bench| {
            // SAFETY: AVX and FMA were detected above.
            bench.iter(|| unsafe { fma_chains(STEPS) })
        });
        if std::arch::is_x86_feature_detected!("avx512f") {
            group.throughput(Throughput::Elements((STEPS * 12 * 32) as u64));
            group.bench_function("fma_peak_avx512", |bench| {
                // SAFETY: AVX-512F was detected above.
                bench.iter(|| unsafe { fma_chains_avx512(STEPS) })
            });
        }
    }
    for (m, k, n) in [(1024, 384, 256), (1024, 256, 256), (1024, 256, 512), (1024, 512, 256)] {
        let (a, b) = (random((m, k), 11), PackedMatrix::pack(random((k, n), 12).view()));
        let mut out = vec![0.0f32; m * n];
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        group.bench_function(format!("{m}x{k}x{n}"), |bench| {
            bench.iter(|| b.matmul_into(a.view(), &mut out, n, &mut Vec::new()))
        });
    }
    group.finish();
}

/// `steps` rounds of 12 independent FMAs on 8 lanes (192 FLOP per round).
///
/// # Safety
///
/// The CPU must have AVX and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,fma")]
unsafe fn fma_chains(steps: usize) -> f32 {
    use std::arch::x86_64::*;
    // Opaque inputs, so that the compiler cannot fold the chains at build time.
    let (a, b) = (_mm256_set1_ps(std::hint::black_box(0.999_999)), _mm256_set1_ps(std::hint::black_box(1e-7)));
    let mut acc = [_mm256_set1_ps(1.0); 12];
    for _ in 0..std::hint::black_box(steps) {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let sum = acc.iter().fold(_mm256_setzero_ps(), |s, &x| _mm256_add_ps(s, x));
    _mm256_cvtss_f32(sum)
}

/// `steps` rounds of 12 independent FMAs on 16 lanes (384 FLOP per round).
///
/// # Safety
///
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_chains_avx512(steps: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(std::hint::black_box(0.999_999)), _mm512_set1_ps(std::hint::black_box(1e-7)));
    let mut acc = [_mm512_set1_ps(1.0); 12];
    for _ in 0..std::hint::black_box(steps) {
        for x in acc.iter_mut() {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    _mm512_reduce_add_ps(acc.iter().fold(_mm512_setzero_ps(), |s, &x| _mm512_add_ps(s, x)))
}

criterion_group!(benches, federated, lda, routing, index, packed_gemm);

fn main() {
    eprintln!("{}", projroute::cpu::describe());
    benches();
    Criterion::default().configure_from_args().final_summary();
}
