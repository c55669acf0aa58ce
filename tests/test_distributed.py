"""Batch projection on Ray Data (projroute.distributed): zero-copy Arrow conversions, and
Parquet / JSONL jobs on a local 2-CPU Ray instance that this module starts and stops,
checked bit for bit against projecting in one process."""

from __future__ import annotations

import json

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import projroute as pr  # noqa: E402
from projroute import cli  # noqa: E402
from projroute.distributed import as_column, as_matrix, project, project_table  # noqa: E402

from helpers import random_model, unit  # noqa: E402

D = 32  # the encoder_dir fixture's dimension


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with 2 CPUs for this module's jobs, shut down after them."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def federated(tmp_path_factory):
    """A random federated model file (D -> D, 6 clusters, top-3 routing)."""
    model, _, _ = random_model("federated", np.random.default_rng(0), d=D, top_k=3)
    path = tmp_path_factory.mktemp("model") / "fed.safetensors"
    model.save(path)
    return path


def embeddings_table(rng: np.random.Generator, n: int, first_id: int = 0) -> tuple[pa.Table, np.ndarray]:
    X = unit(rng, n, D)
    return pa.table({"id": np.arange(first_id, first_id + n), "embedding": as_column(X)}), X


def read_sorted(folder, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of a Parquet output folder, ordered by id."""
    t = pq.read_table(folder)
    order = np.argsort(t.column("id").to_numpy())
    return t.column("id").to_numpy()[order], as_matrix(t.column(column), column)[order]


# --- Arrow <-> numpy --------------------------------------------------------------------


def test_fixed_size_list_is_a_view_both_ways():
    X = unit(np.random.default_rng(1), 50, 8)
    col = as_column(X)
    back = as_matrix(col, "v")
    assert back.shape == (50, 8) and back.dtype == np.float32
    np.testing.assert_array_equal(back, X)
    assert np.shares_memory(back, np.frombuffer(col.values.buffers()[1], np.float32))
    sliced = as_matrix(col.slice(10, 5), "v")  # an offset into the buffer, still a view
    np.testing.assert_array_equal(sliced, X[10:15])


def test_variable_lists_and_doubles_are_read():
    X = np.random.default_rng(2).normal(size=(6, 4))
    np.testing.assert_array_equal(as_matrix(pa.array(list(X)), "v"), X)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (pa.array([[1.0, 2.0], [3.0]]), "rows of different lengths"),
        (pa.array([[1.0, 2.0], None]), "1 null rows"),
        (pa.array([[1.0, None]]), "null values"),
        (pa.array(["a", "b"]), "not a list of floats"),
        (pa.array([[1, 2]]), "not floats"),
    ],
    ids=["ragged", "null-row", "null-value", "strings", "integers"],
)
def test_bad_columns_are_named(array, message):
    with pytest.raises(ValueError, match=message):
        as_matrix(array, "embedding")


def test_core_errors_are_value_errors(federated):
    wrong = pa.table({"id": [0, 1], "embedding": as_column(unit(np.random.default_rng(5), 2, D + 1))})
    with pytest.raises(ValueError, match=f"{D + 1} columns, expected {D}"):
        project_table(wrong, federated)


def test_options_checked_before_any_job(tmp_path, federated):
    with pytest.raises(ValueError, match="model file, a static encoder"):
        project_table(pa.table({"x": [1]}), None)
    with pytest.raises(ValueError, match="id column"):
        project_table(pa.table({"x": [1]}), federated, index_dir=tmp_path)
    with pytest.raises(FileNotFoundError):
        project(tmp_path / "missing.parquet", tmp_path / "out", federated)
    (tmp_path / "a.csv").write_text("x\n")
    with pytest.raises(ValueError, match=r"\.parquet or \.jsonl"):
        project(tmp_path / "a.csv", tmp_path / "out", federated)


# --- on Ray -------------------------------------------------------------------------------


def test_parquet_on_ray_is_bit_identical(local_ray, tmp_path, federated):
    rng = np.random.default_rng(3)
    inputs = tmp_path / "in"
    inputs.mkdir()
    parts = []
    for i, n in enumerate((2500, 1700, 800)):  # three files, batches that cross them
        table, X = embeddings_table(rng, n, first_id=sum(len(p) for p in parts))
        pq.write_table(table, inputs / f"part-{i}.parquet", row_group_size=600)
        parts.append(X)
    X = np.concatenate(parts)
    out = tmp_path / "out"
    result = project(inputs, out, federated, batch_size=1000)
    assert result["rows"] == len(X)
    assert set(result["columns"]) == {"id", "projection"}
    ids, P = read_sorted(out, "projection")
    np.testing.assert_array_equal(ids, np.arange(len(X)))
    expected = pr.load(federated).project(X)
    assert P.dtype == np.float32 and P.shape == expected.shape
    assert np.array_equal(P, expected)  # bit-identical, not merely close


def test_jsonl_texts_with_encoder_and_index_shards(local_ray, tmp_path, federated, encoder_dir):
    texts = [f"how do I install package number {i}?" for i in range(300)] + ["émoji 🚀 and CJK 漢字", "x"]
    src = tmp_path / "texts.jsonl"
    src.write_text("".join(json.dumps({"id": 1000 + i, "text": t}) + "\n" for i, t in enumerate(texts)), "utf-8")
    shards = tmp_path / "shards"
    result = project(
        src, tmp_path / "out", federated, encoder=encoder_dir, index_dir=shards, id_column="id", batch_size=128
    )
    assert result["format"] == "json" and result["rows"] == len(texts)
    ids, P = read_sorted(tmp_path / "out", "projection")
    expected = pr.load(federated).project(pr.StaticEncoder.load(encoder_dir).encode(texts))
    np.testing.assert_array_equal(ids, 1000 + np.arange(len(texts)))
    assert np.array_equal(P, expected)
    files = sorted(shards.glob("shard-*.index"))
    assert len(files) >= 3  # 302 rows in batches of at most 128
    searchers = [pr.Searcher.open_index(f) for f in files]
    assert sum(len(s) for s in searchers) == len(texts)
    # A shard answers a text query by its own text, the encoder and model recorded in it.
    hits = [h for s in searchers for h in s.search([texts[7]], k=1)[0]]
    best = max(hits, key=lambda h: h[1])
    assert best[0] == 1007 and best[2] == texts[7] and best[1] == pytest.approx(1.0, abs=1e-5)


def test_cli_project_ray(local_ray, tmp_path, federated, capsys):
    table, X = embeddings_table(np.random.default_rng(6), 700)
    pq.write_table(table, tmp_path / "a.parquet")
    argv = ["project", "--ray", str(federated), str(tmp_path / "a.parquet"), "-o", str(tmp_path / "out"), "--json"]
    assert cli.main([*argv, "--batch-size", "256"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["rows"] == 700 and r["output_column"] == "projection"
    _, P = read_sorted(tmp_path / "out", "projection")
    assert np.array_equal(P, pr.load(federated).project(X))


def test_worker_errors_reach_the_caller(local_ray, tmp_path, federated):
    """Last of the Ray jobs: a failed job's actor may hold its CPU for a while."""
    table, _ = embeddings_table(np.random.default_rng(4), 50)
    pq.write_table(table.rename_columns(["id", "vectors"]), tmp_path / "a.parquet")
    with pytest.raises(ValueError, match=r"no column 'embedding'.*id, vectors"):
        project(tmp_path / "a.parquet", tmp_path / "out", federated)
