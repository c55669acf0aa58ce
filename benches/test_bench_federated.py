"""Federated projection: Rust ``Projector.project`` beside numpy baselines and bounds.

Groups (see benches/README.md):
  federated-b1024-d768-k124-top10  Rust vs numpy reference vs fast numpy vs square-GEMM roofline
  federated-b1-d768-k124-top10     single-query latency vs numpy and a DRAM-bandwidth bound
"""

from __future__ import annotations

import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from projroute import reference

G_BATCH = "federated-b1024-d768-k124-top10"
G_SINGLE = "federated-b1-d768-k124-top10"

# Distinct single queries cycled by the B=1 benchmarks: each routes to its own top_k
# clusters, so the maps read (top_k · D² floats ≈ 23.6 MB per query) are mostly not
# the ones the previous call left in the last-level cache.
N_SINGLE_QUERIES = 64


def fast_project_federated(
    X: np.ndarray, C_unit: np.ndarray, W: np.ndarray, temperature: float, top_k: int
) -> np.ndarray:
    """Pure-numpy grouped federated projection, equal to ``reference.project_federated``.

    ``C_unit`` are the centroids already scaled to unit rows (model-side, once; the Rust
    core does the same at load). Top-k by ``argpartition`` (no full sort), softmax over
    the k selected scores only, then one GEMM per used cluster on the gathered, weighted
    rows, written into one (B·k, D_out) buffer in cluster order and summed back per query.
    """
    B, _D = X.shape
    K, _, D_out = W.shape
    k = min(top_k, K)
    S = (X / np.linalg.norm(X, axis=1, keepdims=True)) @ C_unit.T
    idx = np.argpartition(-S, k - 1, axis=1)[:, :k] if k < K else np.broadcast_to(np.arange(K), (B, K))
    s = np.take_along_axis(S, idx, axis=1)
    e = np.exp((s - s.max(axis=1, keepdims=True)) / np.float32(temperature))
    e /= e.sum(axis=1, keepdims=True)
    # Group the B·k (query, cluster, weight) triples by cluster.
    clusters = idx.ravel()
    order = np.argsort(clusters, kind="stable")
    rows = order // k
    Xg = X[rows]
    Xg *= e.ravel()[order, None]
    counts = np.bincount(clusters, minlength=K)
    bounds = np.concatenate(([0], np.cumsum(counts)))
    P = np.empty((B * k, D_out), dtype=np.float32)
    for c in np.flatnonzero(counts):
        lo, hi = bounds[c], bounds[c + 1]
        np.matmul(Xg[lo:hi], W[c], out=P[lo:hi])
    # Back to (query, slot) order and sum the k slots of each query.
    unsorted = np.empty_like(P)
    unsorted[order] = P
    return unsorted.reshape(B, k, D_out).sum(axis=1)


@pytest.fixture(scope="module")
def c_unit(federated):
    return reference.unit_rows(federated.centroids)


def test_fast_numpy_matches_reference(federated, c_unit):
    """The hand-written numpy baseline computes what the reference computes (and the
    Rust core agrees with both), checked once on the full batch."""
    f = federated
    X = f.X
    want = reference.project_federated(X, f.centroids, f.W, f.temperature, f.top_k)
    got = fast_project_federated(X, c_unit, f.W, f.temperature, f.top_k)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(f.projector.project(X), want, rtol=1e-4, atol=1e-5)


# --- B = 1024 -------------------------------------------------------------------------


@pytest.mark.benchmark(group=G_BATCH)
def test_batch_roofline_numpy_gemm_2048(benchmark, gemm_operands, medians, record):
    """Roofline: square float32 GEMM through numpy's BLAS on all its threads."""
    a, b = gemm_operands
    out = np.empty_like(a)
    benchmark.pedantic(np.matmul, args=(a, b), kwargs={"out": out}, rounds=5, warmup_rounds=1)
    n = a.shape[0]
    record(benchmark, medians, "roofline", 2.0 * n**3)


@pytest.mark.benchmark(group=G_BATCH)
def test_batch_numpy_reference(benchmark, federated, medians, record):
    f = federated
    benchmark.pedantic(
        reference.project_federated,
        args=(f.X, f.centroids, f.W, f.temperature, f.top_k),
        rounds=5,
        warmup_rounds=1,
    )
    record(benchmark, medians, "numpy_reference", f.flops)


@pytest.mark.benchmark(group=G_BATCH)
def test_batch_numpy_fast(benchmark, federated, c_unit, medians, record):
    f = federated
    benchmark.pedantic(
        fast_project_federated,
        args=(f.X, c_unit, f.W, f.temperature, f.top_k),
        rounds=5,
        warmup_rounds=1,
    )
    record(benchmark, medians, "numpy_fast", f.flops)


@pytest.mark.benchmark(group=G_BATCH)
def test_batch_rust_route_only(benchmark, federated, medians, record):
    """Sub-step: routing alone (cosine scores + top-k softmax, dense (B, K) result)."""
    f = federated
    benchmark.pedantic(f.projector.route, args=(f.X,), rounds=10, warmup_rounds=1)
    record(benchmark, medians, "rust_route")


@pytest.mark.benchmark(group=G_BATCH)
def test_batch_diag_numpy_gemm_b1024_d768(benchmark, federated, medians, record):
    """Diagnostic: one dense (B, D) @ (D, D) GEMM through numpy's BLAS: what a single
    cluster's map over the whole batch costs (k of these ≈ the federated FLOPs)."""
    f = federated
    w = f.W[0]
    out = np.empty((len(f.X), w.shape[1]), dtype=np.float32)
    benchmark.pedantic(np.matmul, args=(f.X, w), kwargs={"out": out}, rounds=40, warmup_rounds=2)
    record(benchmark, medians, "diag_numpy_gemm", 2.0 * f.X.shape[0] * f.X.shape[1] * w.shape[1])


@pytest.mark.benchmark(group=G_BATCH)
def test_batch_diag_rust_gemm_b1024_d768(benchmark, federated, rust_gemm, medians, record):
    """Diagnostic: the same GEMM through the Rust core (a global map: the packed kernel
    on all threads), to tell kernel speed from the federated blend's overheads."""
    f = federated
    w = f.W[0]
    p = rust_gemm(w)
    benchmark.pedantic(p.project, args=(f.X,), rounds=40, warmup_rounds=2)
    record(benchmark, medians, "diag_rust_gemm", 2.0 * f.X.shape[0] * f.X.shape[1] * w.shape[1])


@pytest.mark.benchmark(group=G_BATCH)
def test_batch_rust_paired_with_roofline(benchmark, federated, gemm_operands, paired):
    """The bar's ratio in paired rounds (roofline GEMM, then Rust best of five), robust
    to a host whose speed drifts between the group's separate benchmarks."""
    f = federated
    paired(benchmark, lambda: f.projector.project(f.X), f.flops, gemm_operands, calls=5)


@pytest.mark.benchmark(group=G_BATCH)
def test_batch_rust(benchmark, federated, medians, record):
    f = federated
    benchmark.pedantic(f.projector.project, args=(f.X,), rounds=40, warmup_rounds=2)
    med = record(benchmark, medians, "rust", f.flops)
    if med is None:
        return
    seen = medians[G_BATCH]
    if "roofline" in seen:
        roof_gflops = 2.0 * 2048**3 / seen["roofline"] / 1e9
        benchmark.extra_info["roofline_gflops"] = roof_gflops
        benchmark.extra_info["pct_of_roofline"] = 100.0 * (f.flops / med / 1e9) / roof_gflops
    for base in ("numpy_reference", "numpy_fast"):
        if base in seen:
            benchmark.extra_info[f"speedup_vs_{base}"] = seen[base] / med
    if "rust_route" in seen:
        benchmark.extra_info["route_share_pct"] = 100.0 * seen["rust_route"] / med


# --- B = 1 ----------------------------------------------------------------------------


def _single_queries(federated):
    return [federated.X[i : i + 1] for i in range(N_SINGLE_QUERIES)]


def _in_cache_gb_per_s(read, block: np.ndarray, repeats: int = 200) -> float:
    """Rate of the probe ``read`` on a 1/16 slice of a block (≈ 1.5 MB, cache-resident):
    far above the DRAM rate means the probe is bandwidth-bound, not compute-bound."""
    part = np.ascontiguousarray(block[: len(block) // 16])
    read(part)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        read(part)
        times.append(time.perf_counter() - t)
    return part.nbytes / float(np.median(times)) / 1e9


def _membw(benchmark, membw_blocks, medians, record, role, read):
    """Benchmark ``read`` over the cycled blocks (none cache-resident) and report the
    implied GB/s and bound in ms."""
    blocks = itertools.cycle(membw_blocks)
    benchmark.pedantic(lambda: read(next(blocks)), rounds=40, warmup_rounds=len(membw_blocks))
    med = record(benchmark, medians, role)
    if med is not None:
        nbytes = membw_blocks[0].nbytes
        benchmark.extra_info["bytes"] = nbytes
        benchmark.extra_info["gb_per_s"] = nbytes / med / 1e9
        benchmark.extra_info["bound_ms"] = med * 1e3
        benchmark.extra_info["in_cache_gb_per_s"] = _in_cache_gb_per_s(read, membw_blocks[0])


@pytest.mark.benchmark(group=G_SINGLE)
def test_single_membw_sum_1thread(benchmark, membw_blocks, medians, record):
    """Bandwidth probe: ``np.add.reduce`` over a fresh top_k·D² float32 block (≈ 23.6 MB)
    on one thread. numpy's pairwise float32 sum is close to compute-bound (compare
    extra_info in_cache_gb_per_s), so this is a loose bound."""
    _membw(benchmark, membw_blocks, medians, record, "membw_sum_1thread", np.add.reduce)


@pytest.mark.benchmark(group=G_SINGLE)
def test_single_membw_max_allthreads(benchmark, membw_blocks, medians, record):
    """Bandwidth probe: ``np.max`` over the block, one slice per core (numpy releases the
    GIL in the reduction), as the Rust core spreads a query's maps over its threads."""
    n = max(1, len(os.sched_getaffinity(0)))
    with ThreadPoolExecutor(n) as pool:

        def read(block):
            return max(pool.map(np.max, np.array_split(block, n)))

        _membw(benchmark, membw_blocks, medians, record, "membw_max_allthreads", read)
    benchmark.extra_info["threads"] = n


@pytest.mark.benchmark(group=G_SINGLE)
def test_single_membw_gemv_blas(benchmark, federated, membw_blocks, medians, record):
    """Bandwidth probe: BLAS sgemv over the block viewed as (top_k·D, D) times one vector,
    the very access pattern of one query (stream the top_k maps once), on numpy's BLAS
    threads."""
    d = federated.W.shape[1]
    x = np.random.default_rng(0).standard_normal(d, dtype=np.float32)
    _membw(benchmark, membw_blocks, medians, record, "membw_gemv_blas", lambda b: b.reshape(-1, d) @ x)


@pytest.mark.benchmark(group=G_SINGLE)
def test_single_numpy_reference(benchmark, federated, medians, record):
    f = federated
    queries = itertools.cycle(_single_queries(f))
    benchmark.pedantic(
        lambda: reference.project_federated(next(queries), f.centroids, f.W, f.temperature, f.top_k),
        rounds=60,
        warmup_rounds=5,
    )
    record(benchmark, medians, "numpy_reference", f.flops_per_query())


@pytest.mark.benchmark(group=G_SINGLE)
def test_single_numpy_fast(benchmark, federated, c_unit, medians, record):
    f = federated
    queries = itertools.cycle(_single_queries(f))
    benchmark.pedantic(
        lambda: fast_project_federated(next(queries), c_unit, f.W, f.temperature, f.top_k),
        rounds=60,
        warmup_rounds=5,
    )
    record(benchmark, medians, "numpy_fast", f.flops_per_query())


@pytest.mark.benchmark(group=G_SINGLE)
def test_single_rust(benchmark, federated, medians, record):
    f = federated
    queries = itertools.cycle(_single_queries(f))
    benchmark.pedantic(lambda: f.projector.project(next(queries)), rounds=100, warmup_rounds=5)
    med = record(benchmark, medians, "rust", f.flops_per_query())
    if med is None:
        return
    seen = medians[G_SINGLE]
    nbytes = f.top_k * f.W.shape[1] * f.W.shape[2] * 4
    benchmark.extra_info["bytes_read"] = nbytes
    benchmark.extra_info["effective_gb_per_s"] = nbytes / med / 1e9
    for base in ("numpy_reference", "numpy_fast"):
        if base in seen:
            benchmark.extra_info[f"speedup_vs_{base}"] = seen[base] / med
    bounds = [t for role, t in seen.items() if role.startswith("membw_")]
    if bounds:
        benchmark.extra_info["bandwidth_bound_ms"] = min(bounds) * 1e3
        benchmark.extra_info["latency_over_bound"] = med / min(bounds)
