"""Cluster-count suggestion, routing granularity and meta-clustering (projroute.analysis),
and the ``projroute analyze`` command on the packaged demo data."""

import json

import numpy as np
import pytest

import projroute as pr
from projroute import analysis as an
from projroute.procrustes import procrustes

from helpers import config, random_model, unit

pytest.importorskip("sklearn")

D = 8


def sphere(rng: np.random.Generator, n: int, k: int, d: int) -> np.ndarray:
    """(n, d) unit rows spread evenly over a random k-dimensional subspace."""
    basis = np.linalg.qr(rng.normal(size=(d, k)))[0].T
    return unit(rng, n, k) @ basis


def federated(C: np.ndarray, W: np.ndarray, T: float = 0.1, top_k: int = 10, **fit) -> pr.Projector:
    """A federated Projector from centroids (K, d) and maps (K, d, d)."""
    K, d = C.shape
    cfg = json.loads(config("federated", d, d, n_clusters=K, temperature=T, top_k=min(top_k, K), coverage=None))
    return pr.Projector.from_tensors(
        {"centroids": C.astype(np.float32), "W": W.astype(np.float32)}, json.dumps({**cfg, "fit": fit})
    )


@pytest.fixture(scope="module")
def pairs():
    """400 pairs (d=8) in four topics; answers are a rotated, noisy copy of the questions."""
    rng = np.random.default_rng(0)
    centers = unit(rng, 4, D)
    Q = np.repeat(centers, 100, axis=0) + 0.3 * rng.normal(size=(400, D)).astype(np.float32)
    R = np.linalg.qr(rng.normal(size=(D, D)))[0]
    R[:, 0] *= np.sign(np.linalg.det(R))
    A = Q @ R + 0.05 * rng.normal(size=Q.shape)
    return Q.astype(np.float32), A.astype(np.float32)


@pytest.fixture(scope="module")
def fitted(pairs):
    return pr.FederatedProjection(n_clusters=6, shrinkage=0.5, top_k=3, progress=False).fit(*pairs)


# --- suggest_n_clusters ---------------------------------------------------------------


def test_suggestion_on_data_of_known_rank():
    s = an.suggest_n_clusters(sphere(np.random.default_rng(1), 2000, 4, 16))
    assert s["effective_rank"] == pytest.approx(4, abs=0.1)
    # Variance is spread evenly over 4 directions: 3 hold 75% < 80%, so r = 4.
    assert s["r"] == 4 and s["two_pow_r"] == 16 and not s["two_pow_r_capped"]
    assert s["sqrt_n"] == pytest.approx(np.sqrt(2000))
    assert s["bounds"] == [23, 1000] and s["recommended"] == 23  # rank 4 is clipped up to sqrt(N)/2


def test_suggestion_in_range_and_capped():
    s = an.suggest_n_clusters(sphere(np.random.default_rng(2), 100, 16, 32))
    assert 12 < s["effective_rank"] < 16 and s["recommended"] == round(s["effective_rank"])
    assert s["r"] > 7 and s["two_pow_r"] == 100 and s["two_pow_r_capped"]


def test_suggestion_rejects_one_row():
    with pytest.raises(ValueError, match="at least two embeddings"):
        an.suggest_n_clusters(np.ones((1, 4)))


# --- granularity ----------------------------------------------------------------------


@pytest.mark.parametrize("top_k", [2, 6], ids=["top2", "all"])
def test_granularity_uses_the_full_softmax(top_k):
    rng = np.random.default_rng(3)
    model, tensors, _routing = random_model("federated", rng, d=D, K=6, T=0.2, top_k=top_k)
    X = rng.normal(size=(50, D)).astype(np.float32)
    g = an.granularity(model, X)
    C = tensors["centroids"] / np.linalg.norm(tensors["centroids"], axis=1, keepdims=True)
    e = np.exp((X / np.linalg.norm(X, axis=1, keepdims=True)) @ C.T / 0.2)
    full = np.cumsum(-np.sort(-e / e.sum(axis=1, keepdims=True), axis=1), axis=1)
    np.testing.assert_allclose(g["curve"], full.mean(axis=0), rtol=1e-5)
    assert np.all(np.diff(g["curve"]) >= 0) and g["curve"][-1] == pytest.approx(1.0)
    assert g["top1"] == g["curve"][0] and g["top_k_weight"] == g["curve"][top_k - 1]
    k = g["mean_k"]
    assert 1 <= k["50%"] <= k["80%"] <= k["95%"] <= 6
    assert k["80%"] == pytest.approx(np.mean((full < 0.8).sum(axis=1) + 1))
    sims = (C @ C.T)[np.triu_indices(6, 1)]
    assert g["centroid_cosine"] == pytest.approx({"min": sims.min(), "mean": sims.mean(), "max": sims.max()})
    assert g["duplicate_centroids"] == 0 and (g["n_clusters"], g["top_k"], g["queries"]) == (6, top_k, 50)


def test_granularity_of_an_estimator_and_duplicates(fitted, pairs):
    g = an.granularity(fitted, pairs[0])
    assert g == an.granularity(fitted.projector_, pairs[0])
    C = np.repeat(unit(np.random.default_rng(4), 2, D), 3, axis=0)
    assert an.granularity(federated(C, np.stack([np.eye(D)] * 6)), pairs[0])["duplicate_centroids"] == 4


def test_granularity_rejects_unrouted_models():
    model, _, _ = random_model("global", np.random.default_rng(5), d=D)
    with pytest.raises(ValueError, match="a global model has no routing"):
        an.granularity(model, np.ones((2, D), np.float32))


def test_plot_coverage(tmp_path):
    path = tmp_path / "coverage.png"
    an.plot_coverage([0.4, 0.7, 0.9, 1.0], path, top_k=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- meta-clustering ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["kmeans", "agglomerative"])
@pytest.mark.parametrize("merge", ["average", "refit"])
def test_meta_cluster_builds_a_smaller_model(fitted, pairs, method, merge):
    merged = an.meta_cluster(fitted, 2, method, merge, *pairs)
    cfg = json.loads(merged.config)
    assert merged.kind == "federated" and merged.n_clusters == 2 and cfg["top_k"] == 2
    t = merged.tensors()
    assert t["centroids"].shape == (2, D) and t["W"].shape == (2, D, D)
    np.testing.assert_allclose(np.linalg.norm(t["centroids"], axis=1), 1, rtol=1e-5)
    meta = cfg["fit"]["meta"]
    assert meta["from_clusters"] == 6 and sorted(set(meta["groups"])) == [0, 1]
    assert sum(cfg["fit"]["cluster_sizes"]) == len(pairs[0])
    assert merged.project(pairs[0][:5]).shape == (5, D)


def test_groups_follow_the_centroids():
    rng = np.random.default_rng(6)
    centers = unit(rng, 3, D)
    C = np.repeat(centers, 4, axis=0) + 0.01 * rng.normal(size=(12, D))
    for method in ("kmeans", "agglomerative"):
        groups = an.group_centroids(C, 3, method)
        assert all(len(set(groups[i : i + 4])) == 1 for i in range(0, 12, 4)) and len(set(groups)) == 3


def test_average_of_identical_rotations_is_that_rotation(pairs):
    rng = np.random.default_rng(7)
    R = np.linalg.qr(rng.normal(size=(D, D)))[0]
    merged = an.meta_cluster(federated(unit(rng, 5, D), np.stack([2 * R] * 5)), 2, sizes=[1, 2, 3, 4, 5])
    np.testing.assert_allclose(merged.tensors()["W"], np.stack([2 * R] * 2), atol=1e-5)
    np.testing.assert_allclose(merged.project(pairs[0]), pairs[0] @ (2 * R), atol=1e-5)


def test_average_of_distinct_rotations_is_scaled_orthogonal():
    rng = np.random.default_rng(8)
    Rs = [np.linalg.qr(rng.normal(size=(D, D)))[0] for _ in range(3)]
    M = an.nearest_scaled_orthogonal(np.mean(Rs, axis=0))
    s = np.linalg.svd(np.mean(Rs, axis=0), compute_uv=False).mean()
    np.testing.assert_allclose(M.T @ M, s**2 * np.eye(D), atol=1e-10)
    assert np.linalg.norm(M - np.mean(Rs, axis=0)) < np.linalg.norm(s * Rs[0] - np.mean(Rs, axis=0))


def test_merged_centroid_is_the_size_weighted_mean():
    C = np.eye(3, D)
    merged = an.merge_centroids(C, np.array([1.0, 3.0, 5.0]), np.array([0, 0, 1]))
    np.testing.assert_allclose(merged, [np.array([1, 3, 0, 0, 0, 0, 0, 0]) / np.sqrt(10), np.eye(D)[2]])


@pytest.mark.parametrize("n_meta", [1, 2])
def test_refit_is_procrustes_on_the_union(pairs, n_meta):
    Q, A = pairs
    est = pr.FederatedProjection(n_clusters=4, shrinkage=1.0, progress=False).fit(Q, A)
    merged = an.meta_cluster(est, n_meta, merge="refit", Q=Q, A=A)
    groups = np.asarray(json.loads(merged.config)["fit"]["meta"]["groups"])
    for g, W in enumerate(merged.tensors()["W"]):
        rows = groups[est.labels_] == g
        # Each group holds far more than D pairs: its questions span the space.
        np.testing.assert_allclose(W, procrustes(Q[rows], A[rows], allow_reflection=True), atol=1e-5)


@pytest.mark.parametrize("merge", ["average", "refit"])
def test_meta_cluster_to_k_reproduces_the_model(fitted, pairs, merge):
    merged = an.meta_cluster(fitted, 6, merge=merge, Q=pairs[0], A=pairs[1])
    np.testing.assert_allclose(merged.project(pairs[0]), fitted.project(pairs[0]), atol=1e-5)
    cost = an.merge_cost(fitted, merged, pairs[0], pairs[1][:50], [[i] for i in range(50)] * 8)
    assert cost["cosine"] == pytest.approx(1.0) and cost["merged"] == cost["original"]
    assert set(cost) == {"cosine", "raw", "original", "merged"} and cost["raw"]["n"] == 400


def test_refit_labels_given_or_nearest(tmp_path, fitted, pairs):
    path = tmp_path / "m.safetensors"
    fitted.save(path, answers=pairs[1][:7], answer_texts=list("abcdefg"))
    loaded = pr.load(path)
    by_file = an.meta_cluster(loaded, 3, merge="refit", Q=pairs[0], A=pairs[1])
    by_estimator = an.meta_cluster(fitted, 3, merge="refit", Q=pairs[0], A=pairs[1])
    assert json.loads(by_file.config)["fit"]["meta"]["pair_labels"] == "nearest centroid"
    assert json.loads(by_estimator.config)["fit"]["meta"]["pair_labels"] == "given"
    assert by_file.tensors()["index.embeddings"].shape == (7, D) and "index.texts" in by_file.metadata


def test_suggest_meta_picks_the_largest_decisive_candidate():
    """Four bundles of 20 near-identical centroids: routing splits across a bundle
    until merging brings each bundle to a few clusters."""
    rng = np.random.default_rng(9)
    centers = unit(rng, 4, D * 2)
    C = np.repeat(centers, 20, axis=0) + 0.01 * rng.normal(size=(80, D * 2))
    model = federated(C, np.stack([np.eye(D * 2)] * 80))
    X = np.repeat(centers, 25, axis=0) + 0.05 * rng.normal(size=(100, D * 2)).astype(np.float32)
    r = an.suggest_meta(model, X, [64, 4, 16])
    rows = {row["n_meta"]: row for row in r["rows"]}
    assert list(rows) == [4, 16, 64] and rows[4]["top1"] > 0.9
    assert rows[16]["top1"] < 0.5 and rows[16]["mean_k"]["80%"] <= 10  # met through k80
    assert rows[64]["top1"] < 0.5 and rows[64]["mean_k"]["80%"] > 10  # not met
    assert r["suggested"] == 16 and r["met"]
    merged = an.meta_cluster(model, 16)
    assert an.granularity(merged, X)["top1"] == pytest.approx(rows[16]["top1"])
    assert an.suggest_meta(model, X, [64]) == {"suggested": 64, "met": False, "rows": [rows[64]]}


def test_meta_candidates():
    assert an.meta_candidates(185) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert an.meta_candidates(4) == [1, 2] and an.meta_candidates(1) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_meta": 0}, r"n_meta must be an int in \[1, 6\]"),
        ({"n_meta": 7}, r"n_meta must be an int in \[1, 6\]"),
        ({"n_meta": 2, "method": "ward"}, "method must be 'kmeans' or 'agglomerative'"),
        ({"n_meta": 2, "merge": "sum"}, "merge must be 'average' or 'refit'"),
        ({"n_meta": 2, "merge": "refit"}, "needs the training pairs"),
        ({"n_meta": 2, "sizes": [1, 2]}, "sizes must be 6 non-negative counts"),
    ],
    ids=["zero", "above-k", "method", "merge", "refit-no-pairs", "sizes"],
)
def test_meta_cluster_bad_inputs(fitted, kwargs, message):
    with pytest.raises(ValueError, match=message):
        an.meta_cluster(fitted, **kwargs)


def test_meta_cluster_bad_labels_and_kinds(fitted, pairs):
    with pytest.raises(ValueError, match="labels must hold one cluster in"):
        an.meta_cluster(fitted, 2, merge="refit", Q=pairs[0], A=pairs[1], labels=np.full(400, 6))
    lda = pr.LdaProjection(n_clusters=3).fit(*pairs)
    with pytest.raises(ValueError, match="needs a federated model, got lda"):
        an.meta_cluster(lda, 2)
    with pytest.raises(ValueError, match="a global model has no routing"):
        an.meta_cluster(random_model("global", np.random.default_rng(0), d=D)[0], 1)


# --- projroute analyze ----------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    pytest.importorskip("sentence_transformers")
    from projroute import cli

    path = tmp_path_factory.mktemp("analyze") / "demo.safetensors"
    assert (
        cli.main(
            [
                "fit",
                "demo",
                "-o",
                str(path),
                "--kind",
                "federated",
                "--n-clusters",
                "8",
                "--shrinkage",
                "0.5",
                "--no-index",
            ]
        )
        == 0
    )
    return path


def test_cli_analyze_prints_the_tables_and_writes_the_plot(capsys, tmp_path, demo_model):
    from projroute import cli

    plot, out = tmp_path / "coverage.png", tmp_path / "merged.safetensors"
    capsys.readouterr()
    assert (
        cli.main(
            [
                "analyze",
                str(demo_model),
                "demo",
                "--plot",
                str(plot),
                "--meta",
                "auto",
                "--merge",
                "refit",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert text.startswith("demo: 333 training pairs; 666 held-out queries against 333 answers")
    assert "effective rank" in text and "recommended K=" in text and "(capped at N)" in text
    assert "mean k for 50% / 80% / 95% of the weight:" in text and f"coverage plot: {plot}" in text
    assert plot.read_bytes()[:4] == b"\x89PNG"
    lines = text.splitlines()
    header = lines.index(next(s for s in lines if s.startswith("model ")))
    assert lines[header].split() == ["model", "K", "top-1", "k80", "cos", "hit@1", "mrr"]
    table = lines[header + 1 : header + 6]
    assert table[0].startswith("raw cosine") and table[1].split()[:2] == ["original", "8"]
    assert [s.split()[-6] for s in table[2:]] == ["1", "2", "4"]  # K' candidates below K=8
    suggested = next(s for s in table if s.startswith("merged *")).split()[2]
    assert f"wrote the merged model (K'={suggested})" in text
    assert pr.load(out).n_clusters == int(suggested)
    assert "nearest centroid by question cosine" in text
    half = next(s for s in lines if s.strip().startswith("float16 "))
    assert float(half.split("1 - cos ")[1].split(",")[0]) < 1e-3


def test_cli_analyze_json_and_errors(capsys, demo_model):
    from projroute import cli

    capsys.readouterr()
    assert (
        cli.main(["analyze", str(demo_model), "demo", "--meta", "2", "4", "--method", "agglomerative", "--json"]) == 0
    )
    r = json.loads(capsys.readouterr().out)
    assert r["granularity"]["n_clusters"] == 8 and len(r["granularity"]["curve"]) == 8
    m = r["meta"]
    assert [row["n_meta"] for row in m["rows"]] == [2, 4] and m["suggested"] in (2, 4)
    assert m["method"] == "agglomerative" and m["merge"] == "average" and m["pair_labels"] is None
    assert all(-1 <= row["cosine"] <= 1 and 0 <= row["hit@1"] <= 1 for row in m["rows"])
    assert set(m["raw"]) == set(m["original"]) == {"hit@1", "mrr"}
    p = r["precision"]
    maps = sum(t.size for name, t in pr.load(demo_model).tensors().items() if name.startswith("W."))
    assert set(p) == {"float16", "bfloat16"} and p["float16"]["w_bytes"] == 2 * maps
    assert maps < 8 * 384 * 384  # the demo's maps are stored factored
    assert p["bfloat16"]["cosine"] < p["float16"]["cosine"] <= 1 + 1e-6
    with pytest.raises(SystemExit) as exc:
        cli.main(["analyze", str(demo_model), "demo", "--meta", "9"])
    assert exc.value.code == 2 and "n_meta must be an int in [1, 8]" in capsys.readouterr().err
