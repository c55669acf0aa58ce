"""Federated projection: Rust ``Projector.project`` beside numpy baselines and bounds.

Groups (see benches/README.md):
  federated-b1024-d768-k124-top10  Rust vs numpy reference vs fast numpy vs square-GEMM roofline
  federated-b1-d768-k124-top10     single-query latency vs numpy and a DRAM-bandwidth bound
"""

from __future__ import annotations

import itertools
import os
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
    B, D = X.shape
    K, _, D_out = W.shape
    k = min(top_k, K)
    S = (X / np.linalg.norm(X, axis=1, keepdims=True)) @ C_unit.T
    if k < K:
        idx = np.argpartition(-S, k - 1, axis=1)[:, :k]
    else:
        idx = np.broadcast_to(np.arange(K), (B, K))
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
    X = f.X[:256]
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
def test_batch_rust(benchmark, federated, medians, record):
    f = federated
    benchmark.pedantic(f.projector.project, args=(f.X,), rounds=10, warmup_rounds=1)
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


@pytest.mark.benchmark(group=G_SINGLE)
def test_single_membw_bound_1thread(benchmark, membw_blocks, medians, record):
    """Bandwidth bound, one thread: sum a fresh top_k·D² float32 block (≈ 23.6 MB),
    cycling over several blocks so none is cache-resident."""
    blocks = itertools.cycle(membw_blocks)
    benchmark.pedantic(lambda: np.add.reduce(next(blocks)), rounds=40, warmup_rounds=len(membw_blocks))
    med = record(benchmark, medians, "membw_1thread")
    if med is not None:
        nbytes = membw_blocks[0].nbytes
        benchmark.extra_info["bytes"] = nbytes
        benchmark.extra_info["gb_per_s"] = nbytes / med / 1e9
        benchmark.extra_info["bound_ms"] = med * 1e3


@pytest.mark.benchmark(group=G_SINGLE)
def test_single_membw_bound_allthreads(benchmark, membw_blocks, medians, record):
    """Bandwidth bound, all cores: the same block summed in one slice per core (numpy
    releases the GIL in the reduction), as the Rust core may spread a query's maps over
    its threads."""
    n = max(1, len(os.sched_getaffinity(0)))
    blocks = itertools.cycle(membw_blocks)
    with ThreadPoolExecutor(n) as pool:

        def read_block():
            parts = np.array_split(next(blocks), n)
            return sum(pool.map(np.add.reduce, parts))

        benchmark.pedantic(read_block, rounds=40, warmup_rounds=len(membw_blocks))
    med = record(benchmark, medians, "membw_allthreads")
    if med is not None:
        nbytes = membw_blocks[0].nbytes
        benchmark.extra_info["threads"] = n
        benchmark.extra_info["bytes"] = nbytes
        benchmark.extra_info["gb_per_s"] = nbytes / med / 1e9
        benchmark.extra_info["bound_ms"] = med * 1e3


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
    bounds = [seen[b] for b in ("membw_1thread", "membw_allthreads") if b in seen]
    if bounds:
        benchmark.extra_info["bandwidth_bound_ms"] = min(bounds) * 1e3
        benchmark.extra_info["latency_over_bound"] = med / min(bounds)
