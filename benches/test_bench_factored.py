"""Factored federated maps, ``W_k = W.base + U_k M_k``, against the same maps whole.

Group factored-d384-k100-top10-b{B}, B = 1, 8, 64: the load test's model
(``benches/serve_load.py``: D=384, 100 clusters of about 100 questions, so corrections
of rank about 100, top-10), projected by the Rust core stored factored (as fitted and
saved) and whole (``_format.dense_maps``), beside the numpy reference on the whole maps.
Held-out queries are cycled, so that consecutive calls route to different clusters.
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from projroute import Projector, _format, reference

sys.path.insert(0, str(Path(__file__).parent))
import serve_load

BATCHES = (1, 8, 64)


@pytest.fixture(scope="module")
def served():
    """(factored Projector, whole Projector, whole tensors, config, held-out queries)."""
    with tempfile.TemporaryDirectory() as tmp:
        path, queries = serve_load.build(Path(tmp))
        factored = Projector.load(str(path))
    config = json.loads(factored.config)
    assert "ranks" in config, "the load test's model is stored factored"
    tensors, whole_config = _format.dense_maps(factored.tensors(), config)
    whole = Projector.from_tensors(tensors, json.dumps(whole_config))
    return factored, whole, tensors, config, queries


def _batches(queries: np.ndarray, b: int):
    return itertools.cycle([np.ascontiguousarray(queries[i : i + b]) for i in range(0, len(queries) - b + 1, b)])


@pytest.mark.parametrize("b", BATCHES)
@pytest.mark.parametrize("role", ["rust_factored", "rust_whole", "numpy_reference"])
def test_factored_against_whole(benchmark, served, medians, record, role, b):
    factored, whole, tensors, config, queries = served
    benchmark.group = f"factored-d384-k100-top10-b{b}"
    batches = _batches(queries, b)
    run = {
        "rust_factored": lambda: factored.project(next(batches)),
        "rust_whole": lambda: whole.project(next(batches)),
        "numpy_reference": lambda: reference.project_federated(
            next(batches), tensors["centroids"], tensors["W"], config["temperature"], config["top_k"]
        ),
    }[role]
    benchmark.pedantic(run, rounds=100 if b < 64 else 40, warmup_rounds=5)
    med = record(benchmark, medians, role)
    seen = medians.get(benchmark.group, {})
    if med is not None and role != "rust_factored" and "rust_factored" in seen:
        benchmark.extra_info["factored_speedup"] = med / seen["rust_factored"]
