"""The distilled student: candle (Rust core) against the same student in PyTorch on
the CPU with the same thread count, and against a federated teacher of the size the
student replaces (D=384, K=140, top-10) in the Rust core.

Bars (distillation issue): candle single-query latency no worse than PyTorch's;
candle B=1024 throughput at least 0.8x PyTorch's.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest

from projroute import Projector
from projroute._format import header

D, K, TOP_K, T = 384, 140, 10, 0.1
THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@pytest.fixture(scope="module")
def torch():
    """torch, imported only when these benchmarks run (its OpenMP pool would otherwise
    sit beside numpy's BLAS threads in the other benchmarks)."""
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def models(torch):
    from projroute.distill import ProjectionTransformer, save_student

    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    student = ProjectionTransformer(D, D).eval()
    path = os.path.join(tempfile.mkdtemp(), "student.safetensors")
    save_student(student, path, {"teacher": "benchmark"})
    rng = np.random.default_rng(0)
    C = rng.standard_normal((K, D), dtype=np.float32)
    W = (rng.standard_normal((K, D, D), dtype=np.float32) / np.sqrt(D)).astype(np.float32)
    config = header("federated", D, D, n_clusters=K, temperature=T, top_k=TOP_K, coverage=None)
    teacher = Projector.from_tensors({"centroids": C, "W": W}, json.dumps(config))
    X = rng.standard_normal((1024, D), dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return student, Projector.load(path), teacher, X


def torch_project(torch, student, x):
    with torch.inference_mode():
        return student(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("batch", [1, 1024], ids=["b1", "b1024"])
@pytest.mark.parametrize("impl", ["candle", "torch", "federated_teacher"])
def test_student(benchmark, torch, models, impl, batch):
    student, served, teacher, X = models
    benchmark.group = f"student-d{D}-b{batch}"
    benchmark.extra_info.update(
        role=impl, threads=THREADS, student_parameters=student.n_parameters(), teacher_parameters=K * D * D + K * D
    )
    queries = [X[i : i + batch] for i in range(0, len(X), batch)][:64]
    fn = {
        "candle": served.project,
        "torch": lambda x: torch_project(torch, student, x),
        "federated_teacher": teacher.project,
    }[impl]
    np.testing.assert_allclose(served.project(X[:4]), torch_project(torch, student, X[:4]), atol=1e-4)
    it = iter(range(10**9))
    rounds = 200 if batch == 1 else 20
    benchmark.pedantic(lambda: fn(queries[next(it) % len(queries)]), rounds=rounds, warmup_rounds=3)
    benchmark.extra_info["queries_per_s"] = batch / benchmark.stats.stats.median
