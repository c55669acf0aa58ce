"""Invariants of every kind as properties (hypothesis), beside the reference-parity
tests (test_parity, test_routing_modes, test_trees) and the old-file tests (test_compat):

* routing weights are non-negative and sum to 1; top-k keeps the clusters with the
  largest full-softmax weights, renormalised;
* permuting the clusters in the file permutes the routing and leaves outputs unchanged;
* a batch projects as its rows one by one;
* save then load is the identity (tensors, config and outputs, bit for bit);
* maps stored as float16 / bfloat16 give outputs within ``u * sum_i |x_i| |W_ij|`` of
  float32 (u = 2^-11 for float16, 2^-8 for bfloat16: the rounding of each weight),
  plus float32 noise.
"""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import projroute as pr

from helpers import unit

FIXTURES = Path(__file__).parent / "fixtures" / "pre_issue9"
ROUTED = ["federated", "federated_questions", "federated_prior", "lda"]
KINDS = ["global", *ROUTED, "tree", "hierarchical"]
NODES = ["", "a", "b", "a/b"]
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}

cases = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "B": st.integers(1, 200),
        "d": st.integers(2, 24),
        "K": st.integers(1, 10),
        "T": st.floats(0.02, 2.0),
        "top_k_frac": st.floats(0.0, 1.0),
        "coverage": st.one_of(st.none(), st.floats(0.05, 0.99)),
    }
)


def build(kind: str, p: dict, top_k: int | None = None, coverage: float | None = None, perm=None):
    """(tensors, config) of a random model of ``kind`` for case ``p``; ``perm`` reorders
    its clusters (or keyed nodes) in the file."""
    rng = np.random.default_rng(p["seed"])
    d, K = p["d"], p["K"]
    perm = np.arange(K) if perm is None else perm
    cfg = {"format": "projroute", "version": pr.FORMAT_VERSION, "kind": kind.split("_")[0], "dim_in": d, "dim_out": d}
    W = (rng.normal(size=(K, d, d)) / np.sqrt(d)).astype(np.float32)
    if kind == "global":
        return {"W": W[0], "bias": rng.normal(size=d).astype(np.float32)}, cfg
    if kind in ("tree", "hierarchical"):
        n = min(K, len(NODES))
        order = [i for i in perm if i < n]
        return {"W": W[order]}, {**cfg, "nodes": [NODES[i] for i in order]}
    routing = {
        "n_clusters": K,
        "temperature": p["T"],
        "top_k": K if top_k is None else top_k,
        "coverage": coverage,
    }
    C = unit(rng, K, d)
    if kind == "lda":
        return {"centroids": C[perm], "answers": unit(rng, K, d)[perm]}, {**cfg, **routing}
    tensors = {"centroids": C[perm], "W": W[perm]}
    if kind == "federated_prior":
        tensors["prior"] = rng.uniform(0.1, 3.0, size=K).astype(np.float32)[perm]
    if kind == "federated_questions":
        counts = rng.integers(1, 6, size=K)
        Qs = unit(rng, int(counts.sum()), d)
        blocks = np.split(np.arange(len(Qs)), np.cumsum(counts)[:-1])
        tensors["questions"] = Qs[np.concatenate([blocks[i] for i in perm])]
        routing["question_counts"] = counts[perm].tolist()
    return tensors, {**cfg, **routing}


def served(tensors: dict, cfg: dict) -> pr.Projector:
    return pr.Projector.from_tensors(tensors, json.dumps(cfg))


def queries(p: dict) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(p["seed"] + 1)
    keys = list(rng.choice(["", "a", "b", "a/b", "a/b/c", "c"], size=p["B"]))
    return rng.normal(size=(p["B"], p["d"])).astype(np.float32), keys


def project(model: pr.Projector, X: np.ndarray, keys: list[str]) -> np.ndarray:
    return model.project(X, keys) if model.kind in ("tree", "hierarchical") else model.project(X)


@settings(max_examples=40, deadline=None)
@given(cases, st.sampled_from(ROUTED))
def test_routing_weights_are_a_top_k_distribution(p, kind):
    top_k = max(1, round(p["top_k_frac"] * p["K"]))
    X, _ = queries(p)
    w = served(*build(kind, p, top_k, p["coverage"])).route(X)
    assert w.shape == (p["B"], p["K"])
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-5)
    assert ((w > 0).sum(1) <= top_k).all()
    full = served(*build(kind, p)).route(X)
    for row, full_row in zip(w, full):
        kept = row > 0
        if (~kept).any():
            assert full_row[kept].min() >= full_row[~kept].max() * (1 - 1e-4) - 1e-7
        np.testing.assert_allclose(row[kept], full_row[kept] / full_row[kept].sum(), rtol=1e-4, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(cases, st.sampled_from(ROUTED), st.randoms(use_true_random=False))
def test_permuting_the_clusters_in_the_file_changes_nothing(p, kind, random):
    top_k = max(1, round(p["top_k_frac"] * p["K"]))
    perm = np.array(random.sample(range(p["K"]), p["K"]))
    X, _ = queries(p)
    model = served(*build(kind, p, top_k, p["coverage"]))
    shuffled = served(*build(kind, p, top_k, p["coverage"], perm=perm))
    np.testing.assert_allclose(shuffled.route(X), model.route(X)[:, perm], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(shuffled.project(X), model.project(X), rtol=1e-4, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(cases, st.sampled_from(["tree", "hierarchical"]), st.randoms(use_true_random=False))
def test_permuting_the_nodes_in_the_file_changes_nothing(p, kind, random):
    perm = np.array(random.sample(range(p["K"]), p["K"]))
    X, keys = queries(p)
    model = served(*build(kind, p))
    np.testing.assert_array_equal(project(served(*build(kind, p, perm=perm)), X, keys), project(model, X, keys))


@settings(max_examples=40, deadline=None)
@given(cases, st.sampled_from(KINDS))
def test_a_batch_projects_as_its_rows_one_by_one(p, kind):
    top_k = max(1, round(p["top_k_frac"] * p["K"]))
    model = served(*build(kind, p, top_k, p["coverage"]))
    X, keys = queries(p)
    rows = np.vstack([project(model, X[i : i + 1], keys[i : i + 1]) for i in range(len(X))])
    np.testing.assert_allclose(project(model, X, keys), rows, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["transformer", "transformer_ensemble"])
def test_a_batch_projects_as_its_rows_one_by_one_for_students(name):
    model = pr.load(FIXTURES / f"{name}.safetensors")
    X = np.random.default_rng(0).normal(size=(300, model.dim_in)).astype(np.float32)
    rows = np.vstack([model.project(X[i : i + 1]) for i in range(len(X))])
    np.testing.assert_allclose(model.project(X), rows, rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(cases, st.sampled_from(KINDS), st.sampled_from(["float32", "float16", "bfloat16"]))
def test_save_then_load_is_the_identity(p, kind, weights_dtype):
    tensors, cfg = build(kind, p, max(1, round(p["top_k_frac"] * p["K"])), p["coverage"])
    if weights_dtype != "float32":
        cfg["weights_dtype"] = weights_dtype
    model = served(tensors, cfg)
    X, keys = queries(p)
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "m.safetensors")
        back = pr.load(Path(tmp) / "m.safetensors")
    assert json.loads(back.config) == json.loads(model.config)
    saved, loaded = model.tensors(), back.tensors()
    assert saved.keys() == loaded.keys()
    for name in saved:
        np.testing.assert_array_equal(loaded[name], saved[name])
    np.testing.assert_array_equal(project(back, X, keys), project(model, X, keys))


@settings(max_examples=40, deadline=None)
@given(cases, st.sampled_from(["global", "federated", "federated_prior", "tree", "hierarchical"]))
@pytest.mark.parametrize("weights_dtype", list(UNIT_ROUNDOFF))
def test_half_precision_maps_stay_within_the_stated_bound(weights_dtype, p, kind):
    tensors, cfg = build(kind, p, max(1, round(p["top_k_frac"] * p["K"])), p["coverage"])
    X, keys = queries(p)
    full = project(served(tensors, cfg), X, keys)
    half = project(served(tensors, {**cfg, "weights_dtype": weights_dtype}), X, keys)
    W = tensors["W"].reshape(-1, p["d"], p["d"])
    scale = np.max(np.abs(X) @ np.abs(W), axis=0)  # the largest sum_i |x_i||W_ij| over the maps
    bound = (UNIT_ROUNDOFF[weights_dtype] + 1e-5) * scale + 1e-6
    assert (np.abs(half - full) <= bound).all()
