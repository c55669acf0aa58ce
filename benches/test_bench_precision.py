"""Reduced-precision maps: single-query federated projection (D = 768, K = 124, top-10)
with W stored in float32, float16 and bfloat16, all computed in f32 by the same kernel.

A single query is bound by reading its top_k maps (23.6 MB in f32), so half-width
storage should nearly halve its latency; the bar (routing-modes issue) is float16 at
least 1.6x faster than float32. The numpy reference runs in the same group.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from projroute import Projector, reference

GROUP = "precision-federated-b1-d768-k124-top10"
N_QUERIES = 64  # distinct queries cycled, so the maps mostly come from DRAM


@pytest.fixture(scope="module")
def models(federated):
    config = json.loads(federated.projector.config)
    tensors = federated.projector.tensors()
    return {
        dtype: Projector.from_tensors(tensors, json.dumps({**config, "weights_dtype": dtype}))
        for dtype in ("float32", "float16", "bfloat16")
    }


def test_half_precision_error_is_small(federated, models):
    """What the storage costs: outputs of the half-precision maps against f32."""
    X = federated.X[:256]
    want = models["float32"].project(X)
    for dtype, tol in (("float16", 2e-3), ("bfloat16", 1.5e-2)):
        got = models[dtype].project(X)
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() > 1 - tol, (dtype, cos.min())


@pytest.mark.benchmark(group=GROUP)
def test_numpy_reference(benchmark, federated, medians, record):
    f = federated
    queries = itertools.cycle([f.X[i : i + 1] for i in range(N_QUERIES)])
    benchmark.pedantic(
        lambda: reference.project_federated(next(queries), f.centroids, f.W, f.temperature, f.top_k),
        rounds=50,
        warmup_rounds=3,
    )
    record(benchmark, medians, "numpy_reference", f.flops_per_query())


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.benchmark(group=GROUP)
def test_rust(benchmark, federated, models, medians, record, dtype):
    queries = itertools.cycle([federated.X[i : i + 1] for i in range(N_QUERIES)])
    model = models[dtype]
    benchmark.pedantic(lambda: model.project(next(queries)), rounds=200, warmup_rounds=10)
    record(benchmark, medians, f"rust_{dtype}", federated.flops_per_query())
