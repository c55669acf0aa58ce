"""Per-question routing at N = 100,000 training questions, D = 384, B = 1024, top-10:
the Rust core beside the numpy reference and the square-GEMM roofline, in one run.

The useful FLOPs are the similarity GEMM (2·B·N·D) plus the blend (2·B·top_k·D²); the
bar (routing-modes issue) is at least 75% of the roofline's GFLOP/s. K = 256 clusters
(about √N, within the range `projroute analyze` suggests) is the case the bar is
checked on; K = 1000 is shown too: there the blend must read up to K·D² floats
(590 MB) of maps for about 10 queries each, so it is bound by memory, not by FLOPs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from projroute import Projector, reference
from projroute._format import header

N, D, B, TOP_K, T = 100_000, 384, 1024, 10, 0.05


def group(K):
    return f"per-question-n100k-d384-b1024-k{K}-top10"


@pytest.fixture(scope="module", params=[256, 1000], ids=["k256", "k1000"])
def case(request):
    K = request.param
    rng = np.random.default_rng(7)
    counts = np.diff(np.linspace(0, N, K + 1).astype(int))
    questions = rng.standard_normal((N, D), dtype=np.float32)
    questions /= np.linalg.norm(questions, axis=1, keepdims=True)
    centroids = np.add.reduceat(questions, np.cumsum(counts) - counts, axis=0)
    W = rng.standard_normal((K, D, D), dtype=np.float32) * np.float32(1 / np.sqrt(D))
    # Queries near training questions, so that routing is peaked as in real use.
    X = questions[rng.integers(0, N, B)] + 0.05 * rng.standard_normal((B, D), dtype=np.float32)
    config = header(
        "federated", D, D, n_clusters=K, temperature=T, top_k=TOP_K, coverage=None, question_counts=counts.tolist()
    )
    model = Projector.from_tensors({"centroids": centroids, "W": W, "questions": questions}, json.dumps(config))
    flops = 2.0 * B * N * D + 2.0 * B * TOP_K * D * D
    return model, questions, counts, W, X, flops, K


def numpy_reference(questions, counts, W, X):
    return reference.blend_maps(X, reference.route_questions(X, questions, counts, T, TOP_K), W)


def test_rust_matches_reference_at_scale(case):
    model, questions, counts, W, X, _, _ = case
    want = numpy_reference(questions, counts, W, X[:64])
    np.testing.assert_allclose(model.project(X[:64]), want, rtol=1e-4, atol=1e-5)


def test_roofline_numpy_gemm_2048(benchmark, case, gemm_operands, medians, record):
    """Roofline: square float32 GEMM through numpy's BLAS on all its threads."""
    benchmark.group = group(case[-1])
    a, b = gemm_operands
    out = np.empty_like(a)
    benchmark.pedantic(np.matmul, args=(a, b), kwargs={"out": out}, rounds=5, warmup_rounds=1)
    record(benchmark, medians, "roofline", 2.0 * a.shape[0] ** 3)


def test_numpy_similarity_gemm(benchmark, case, medians, record):
    """Diagnostic: the (B, D) @ (D, N) similarity GEMM alone, through numpy's BLAS."""
    _, questions, _, _, X, _, K = case
    benchmark.group = group(K)
    out = np.empty((B, N), np.float32)
    benchmark.pedantic(np.matmul, args=(X, questions.T), kwargs={"out": out}, rounds=3, warmup_rounds=1)
    record(benchmark, medians, "numpy_similarity_gemm", 2.0 * B * N * D)


def test_numpy_reference(benchmark, case, medians, record):
    _, questions, counts, W, X, flops, K = case
    benchmark.group = group(K)
    benchmark.pedantic(numpy_reference, args=(questions, counts, W, X), rounds=3, warmup_rounds=0)
    record(benchmark, medians, "numpy_reference", flops)


def test_rust(benchmark, case, medians, record):
    model, *_, X, flops, K = case
    benchmark.group = group(K)
    benchmark.pedantic(model.project, args=(X,), rounds=5, warmup_rounds=1)
    record(benchmark, medians, "rust", flops)


def test_rust_paired_with_roofline(benchmark, case, gemm_operands, paired):
    """The bar's ratio in paired rounds (roofline GEMM, then Rust), robust to a host
    whose speed drifts between the group's separate benchmarks."""
    model, *_, X, flops, K = case
    benchmark.group = group(K)
    paired(benchmark, lambda: model.project(X), flops, gemm_operands)
