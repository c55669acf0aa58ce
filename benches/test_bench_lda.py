"""LDA multi-head projection with a flat softmax over all K heads (top_k = K): Rust
``Projector.project`` beside the numpy reference and a hand-written numpy version.

Groups (see benches/README.md):
  lda-flat-softmax-d384-k1000-b1     single query
  lda-flat-softmax-d384-k1000-b1024  batch of 1024
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from projroute import reference

G_B1 = "lda-flat-softmax-d384-k1000-b1"
G_B1024 = "lda-flat-softmax-d384-k1000-b1024"
N_SINGLE_QUERIES = 64


def fast_project_lda_flat(X: np.ndarray, C_unit: np.ndarray, answers: np.ndarray, temperature: float) -> np.ndarray:
    """Flat-softmax LDA in plain numpy, equal to ``reference.project_lda`` with top_k = K:
    cosine scores X̂ @ Ĉᵀ, max-subtract, exp in place, normalise, @ answers.
    ``C_unit`` are the centroids already scaled to unit rows (model-side, once)."""
    S = (X / np.linalg.norm(X, axis=1, keepdims=True)) @ C_unit.T
    S -= S.max(axis=1, keepdims=True)
    S /= np.float32(temperature)
    np.exp(S, out=S)
    S /= S.sum(axis=1, keepdims=True)
    return S @ answers


@pytest.fixture(scope="module")
def c_unit(lda):
    return reference.unit_rows(lda.centroids)


def test_fast_numpy_matches_reference(lda, c_unit):
    """The hand-written baseline and the Rust core compute what the reference computes."""
    X = lda.X
    want = reference.project_lda(X, lda.centroids, lda.answers, lda.temperature, lda.top_k)
    got = fast_project_lda_flat(X, c_unit, lda.answers, lda.temperature)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lda.projector.project(X), want, rtol=1e-4, atol=1e-5)


def _finish_rust(benchmark, medians, record, group, flops):
    med = record(benchmark, medians, "rust", flops)
    if med is None:
        return
    seen = medians[group]
    for base in ("numpy_reference", "numpy_fast"):
        if base in seen:
            benchmark.extra_info[f"speedup_vs_{base}"] = seen[base] / med


# --- B = 1 ----------------------------------------------------------------------------


def _singles(lda):
    return itertools.cycle([lda.X[i : i + 1] for i in range(N_SINGLE_QUERIES)])


@pytest.mark.benchmark(group=G_B1)
def test_b1_numpy_reference(benchmark, lda, medians, record):
    q = _singles(lda)
    benchmark.pedantic(
        lambda: reference.project_lda(next(q), lda.centroids, lda.answers, lda.temperature, lda.top_k),
        rounds=300,
        warmup_rounds=10,
    )
    record(benchmark, medians, "numpy_reference", lda.flops(1))


@pytest.mark.benchmark(group=G_B1)
def test_b1_numpy_fast(benchmark, lda, c_unit, medians, record):
    q = _singles(lda)
    benchmark.pedantic(
        lambda: fast_project_lda_flat(next(q), c_unit, lda.answers, lda.temperature),
        rounds=300,
        warmup_rounds=10,
    )
    record(benchmark, medians, "numpy_fast", lda.flops(1))


@pytest.mark.benchmark(group=G_B1)
def test_b1_rust(benchmark, lda, medians, record):
    q = _singles(lda)
    benchmark.pedantic(lambda: lda.projector.project(next(q)), rounds=300, warmup_rounds=10)
    _finish_rust(benchmark, medians, record, G_B1, lda.flops(1))


# --- B = 1024 -------------------------------------------------------------------------


@pytest.mark.benchmark(group=G_B1024)
def test_b1024_numpy_reference(benchmark, lda, medians, record):
    benchmark.pedantic(
        reference.project_lda,
        args=(lda.X, lda.centroids, lda.answers, lda.temperature, lda.top_k),
        rounds=10,
        warmup_rounds=1,
    )
    record(benchmark, medians, "numpy_reference", lda.flops(len(lda.X)))


@pytest.mark.benchmark(group=G_B1024)
def test_b1024_numpy_fast(benchmark, lda, c_unit, medians, record):
    benchmark.pedantic(
        fast_project_lda_flat,
        args=(lda.X, c_unit, lda.answers, lda.temperature),
        rounds=20,
        warmup_rounds=1,
    )
    record(benchmark, medians, "numpy_fast", lda.flops(len(lda.X)))


@pytest.mark.benchmark(group=G_B1024)
def test_b1024_rust_route_only(benchmark, lda, medians, record):
    """Sub-step: routing alone (scores + flat softmax, dense (B, K) result)."""
    benchmark.pedantic(lda.projector.route, args=(lda.X,), rounds=20, warmup_rounds=1)
    record(benchmark, medians, "rust_route")


@pytest.mark.benchmark(group=G_B1024)
def test_b1024_diag_numpy_gemms(benchmark, lda, c_unit, medians, record):
    """Diagnostic: just the two GEMMs of flat-softmax LDA through numpy's BLAS,
    (B, D) @ (D, K) then (B, K) @ (K, D)."""
    X, A, Ct = lda.X, lda.answers, np.ascontiguousarray(c_unit.T)
    S = np.empty((len(X), len(A)), dtype=np.float32)
    out = np.empty((len(X), A.shape[1]), dtype=np.float32)

    def two_gemms():
        np.matmul(X, Ct, out=S)
        np.matmul(S, A, out=out)

    benchmark.pedantic(two_gemms, rounds=40, warmup_rounds=2)
    record(benchmark, medians, "diag_numpy_gemms", lda.flops(len(X)))


@pytest.mark.benchmark(group=G_B1024)
def test_b1024_diag_rust_gemms(benchmark, lda, c_unit, rust_gemm, medians, record):
    """Diagnostic: the same two GEMMs through the Rust core (two global maps: the
    packed kernel on all threads, each call also checks its input is finite)."""
    X = lda.X
    scores = rust_gemm(np.ascontiguousarray(c_unit.T))
    blend = rust_gemm(lda.answers)
    benchmark.pedantic(lambda: blend.project(scores.project(X)), rounds=40, warmup_rounds=2)
    record(benchmark, medians, "diag_rust_gemms", lda.flops(len(X)))


@pytest.mark.benchmark(group=G_B1024)
def test_b1024_rust(benchmark, lda, medians, record):
    benchmark.pedantic(lda.projector.project, args=(lda.X,), rounds=20, warmup_rounds=1)
    _finish_rust(benchmark, medians, record, G_B1024, lda.flops(len(lda.X)))
    seen = medians.get(G_B1024, {})
    if "rust_route" in seen and "rust" in seen:
        benchmark.extra_info["route_share_pct"] = 100.0 * seen["rust_route"] / seen["rust"]
