"""Batch projection on Ray Data against the same job in one process (issue 14's Ray bar).

Group ``ray-project-parquet-d384-federated``: ROWS (default 1,000,000) unit embeddings,
D=384, in 8 Parquet files, projected by a federated model (K=64, top-10, T=0.1) and
written as Parquet:
  direct  one process: ``pyarrow.parquet.read_table``, ``Projector.project`` on every
          row at once (the core on all cores), ``write_table``;
  ray     ``projroute.distributed.project`` on a local Ray instance with 2 CPUs (started
          before the timing, as a cluster would be): read tasks, one actor (the core on
          2 threads), write tasks.
After the timings, the two outputs are checked to be bit-identical.

Opt-in (minutes; about 3 GB of files in the temporary folder): PROJROUTE_BENCH_RAY=1,
PROJROUTE_BENCH_RAY_ROWS for another size.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import projroute  # noqa: E402
from projroute import Projector  # noqa: E402
from projroute._format import header  # noqa: E402
from projroute.distributed import as_column, as_matrix, project  # noqa: E402

pytestmark = pytest.mark.skipif(
    os.environ.get("PROJROUTE_BENCH_RAY") != "1", reason="minutes and ~3 GB of files: set PROJROUTE_BENCH_RAY=1"
)

GROUP = "ray-project-parquet-d384-federated"
ROWS = int(os.environ.get("PROJROUTE_BENCH_RAY_ROWS", "1000000"))
D, K, TOP_K, T = 384, 64, 10, 0.1
FILES = 8
SEED = 20261130


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """(input folder, model file, scratch folder): seeded embeddings and model."""
    import json

    root = tmp_path_factory.mktemp("ray-bench")
    rng = np.random.default_rng(SEED)
    C = rng.standard_normal((K, D), dtype=np.float32)
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    W = rng.standard_normal((K, D, D), dtype=np.float32) / np.float32(np.sqrt(D))
    config = json.dumps(header("federated", D, D, n_clusters=K, temperature=T, top_k=TOP_K, coverage=None))
    model = root / "fed.safetensors"
    Projector.from_tensors({"centroids": C, "W": W}, config).save(model)
    inputs = root / "in"
    inputs.mkdir()
    for f, rows in enumerate(np.array_split(np.arange(ROWS), FILES)):
        X = rng.standard_normal((len(rows), D), dtype=np.float32)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        table = pa.table({"id": rows, "embedding": as_column(X)})
        pq.write_table(table, inputs / f"part-{f}.parquet", row_group_size=65536)
    return inputs, model, root


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def direct(inputs, model_path, output) -> None:
    """The whole job in this process: read every row, project at once, write one file."""
    table = pq.read_table(inputs)
    P = projroute.load(model_path).project(as_matrix(table.column("embedding"), "embedding"))
    pq.write_table(pa.table({"id": table.column("id"), "projection": as_column(P)}), output / "part-0.parquet")


def fresh(root, name: str):
    """An empty output folder ``name`` (emptied before each round)."""
    out = root / name
    if out.exists():
        for f in out.iterdir():
            f.unlink()
    out.mkdir(exist_ok=True)
    return out


def run(benchmark, fn) -> None:
    rounds = int(os.environ.get("PROJROUTE_BENCH_RAY_ROUNDS", "3"))
    benchmark.pedantic(fn, setup=lambda: time.sleep(0.5), rounds=rounds, iterations=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update({"rows": ROWS, "rows_per_s": ROWS / median, "loadavg_1m": os.getloadavg()[0]})


@pytest.mark.benchmark(group=GROUP)
def test_direct(benchmark, job):
    inputs, model, root = job
    run(benchmark, lambda: direct(inputs, model, fresh(root, "direct")))


@pytest.mark.benchmark(group=GROUP)
def test_ray(benchmark, job, local_ray):
    inputs, model, root = job
    run(benchmark, lambda: project(inputs, fresh(root, "ray"), model, actors=1, threads=2))


def test_outputs_bit_identical(job):
    """The last rounds' outputs, row for row (needs both benchmarks to have run)."""
    _, _, root = job

    def rows(name):
        t = pq.read_table(root / name)
        order = np.argsort(t.column("id").to_numpy())
        return t.column("id").to_numpy()[order], as_matrix(t.column("projection"), "projection")[order]

    ids_d, P_d = rows("direct")
    ids_r, P_r = rows("ray")
    np.testing.assert_array_equal(ids_r, ids_d)
    assert len(ids_d) == ROWS
    assert np.array_equal(P_r, P_d)
