"""Throughput of N Python threads projecting through one model against one thread.

Groups (see benches/README.md):
  threads-core1-federated-b1024  core set to one thread (``set_num_threads(1)``): the
                                 Python threads alone give the parallelism, which shows
                                 that the GIL is released
  threads-default-federated-b1024  default core threads (one per core), shared by the
                                   Python threads

Every round projects the same 16 batches of B=1024, split among the threads, so the
throughput ratio of N threads to one is the inverse ratio of the round times.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import projroute as pr
from projroute._format import header

B, D, K, TOP_K, BATCHES = 1024, 384, 64, 10, 16


@pytest.fixture(scope="module")
def model_and_batches():
    rng = np.random.default_rng(20240601)
    C = rng.normal(size=(K, D)).astype(np.float32)
    W = (rng.normal(size=(K, D, D)) / np.sqrt(D)).astype(np.float32)
    config = header("federated", D, D, n_clusters=K, temperature=0.1, top_k=TOP_K, coverage=None)
    model = pr.Projector.from_tensors({"centroids": C, "W": W}, json.dumps(config))
    batches = [rng.normal(size=(B, D)).astype(np.float32) for _ in range(BATCHES)]
    return model, batches


@pytest.mark.parametrize("threads", [1, 2, 8])
@pytest.mark.parametrize("core", [1, 0], ids=["core1", "default"])
def test_threads(benchmark, model_and_batches, core, threads):
    model, batches = model_and_batches
    benchmark.group = f"threads-{'core1' if core else 'default'}-federated-b{B}"
    pr.set_num_threads(core)
    try:
        with ThreadPoolExecutor(threads) as pool:
            work = lambda: list(pool.map(model.project, batches))  # noqa: E731
            work()
            cpu, wall = time.process_time(), time.perf_counter()
            benchmark.pedantic(work, rounds=5, iterations=1)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        pr.set_num_threads(0)
    benchmark.extra_info.update(threads=threads, core_threads=core or "default", queries=B * BATCHES)
    benchmark.extra_info["queries_per_s"] = B * BATCHES / benchmark.stats.stats.median
    # Cores kept busy on average (process CPU time over wall time): above 1 with the core
    # on one thread means Python threads projected at once, i.e. the GIL was released.
    benchmark.extra_info["busy_cores"] = cpu / wall
