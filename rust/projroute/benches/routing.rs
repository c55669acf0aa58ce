//! criterion benches of the core operations, one group per op, with FLOP throughput.
//! Run: `cargo bench -p projroute` (or `make bench-rust`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{Array2, Array3};
use projroute::{route, FlatIndex, Federated, Lda, Router, RoutingParams};

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
    group.bench_function("cosine_scores_d384", |bench| {
        bench.iter(|| router.scores(x.view()).unwrap())
    });
    for (name, top_k, coverage) in [("top10", 10, None), ("coverage0.9", k, Some(0.9))] {
        let params = RoutingParams { temperature: 0.1, top_k, coverage };
        group.bench_function(name, |bench| bench.iter(|| route(scores.view(), &params).unwrap()));
    }
    group.finish();
}

fn index(c: &mut Criterion) {
    let (n, d, b) = (20_000, 384, 256);
    let index = FlatIndex::new(random((n, d), 9).view()).unwrap();
    let x = random((b, d), 10);
    let mut group = c.benchmark_group("flat_index_search_f32_n20000_d384");
    group.throughput(Throughput::Elements(b as u64));
    group.bench_function("b256_k10", |bench| bench.iter(|| index.search(x.view(), 10).unwrap()));
    group.finish();
}

criterion_group!(benches, federated, lda, routing, index);
criterion_main!(benches);
