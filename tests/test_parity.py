"""The Rust core against the numpy reference (python/projroute/reference.py).

Tolerance: float32 throughout, |rust - numpy| <= 1e-5 + 1e-4 * |numpy| elementwise.
Coverage selection compares cumulative sums to a threshold; random scores land on
the threshold with negligible probability.
"""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import projroute as pr
from projroute import _format
from projroute import reference as ref

from helpers import config, random_model, unit

RTOL, ATOL = 1e-4, 1e-5

shapes = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "B": st.integers(1, 40),
        "d_in": st.integers(1, 24),
        "d_out": st.integers(1, 24),
        "K": st.integers(1, 30),
        "T": st.floats(0.01, 2.0),
        "top_k_frac": st.floats(0.0, 1.0),
        "coverage": st.one_of(st.none(), st.floats(0.05, 1.0)),
    }
)


def _routing(p):
    top_k = max(1, round(p["top_k_frac"] * p["K"]))
    return {"n_clusters": p["K"], "temperature": p["T"], "top_k": top_k, "coverage": p["coverage"]}


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_federated_matches_reference(p):
    rng = np.random.default_rng(p["seed"])
    K, d_in, d_out = p["K"], p["d_in"], p["d_out"]
    r = _routing(p)
    C = unit(rng, K, d_in)
    W = rng.normal(size=(K, d_in, d_out)).astype(np.float32)
    X = rng.normal(size=(p["B"], d_in)).astype(np.float32)
    model = pr.Projector.from_tensors({"centroids": C, "W": W}, config("federated", d_in, d_out, **r))
    args = (r["temperature"], r["top_k"], r["coverage"])
    np.testing.assert_allclose(model.route(X), ref.route_weights(X, C, *args), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(model.project(X), ref.project_federated(X, C, W, *args), rtol=RTOL, atol=ATOL)


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_factored_federated_matches_reference(p):
    """Maps stored as ``W.base + U_k M_k`` (ranks 0 to D_in, orthonormal U_k as a fit
    gives) project as the whole maps do in the reference."""
    rng = np.random.default_rng(p["seed"])
    K, d_in, d_out = p["K"], p["d_in"], p["d_out"]
    r = _routing(p)
    C, X = unit(rng, K, d_in), rng.normal(size=(p["B"], d_in)).astype(np.float32)
    ranks = rng.integers(0, d_in + 1, size=K).tolist()
    U = [np.linalg.qr(rng.normal(size=(d_in, d_in)))[0][:, :rk] for rk in ranks]
    M = [rng.normal(size=(rk, d_out)) / np.sqrt(d_in) for rk in ranks]
    tensors = {
        "centroids": C,
        "W.base": (rng.normal(size=(d_in, d_out)) / np.sqrt(d_in)).astype(np.float32),
        "W.U": np.concatenate(U, axis=1).astype(np.float32),
        "W.M": np.concatenate(M, axis=0).astype(np.float32),
    }
    model = pr.Projector.from_tensors(tensors, config("federated", d_in, d_out, **r, ranks=ranks))
    whole, cfg = _format.dense_maps(model.tensors(), json.loads(model.config))
    assert cfg["version"] == 1 and "ranks" not in cfg and whole["W"].shape == (K, d_in, d_out)
    args = (r["temperature"], r["top_k"], r["coverage"])
    want = ref.project_federated(X, C, whole["W"], *args)
    np.testing.assert_allclose(model.project(X), want, rtol=RTOL, atol=ATOL)


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_lda_matches_reference(p):
    rng = np.random.default_rng(p["seed"])
    K, d_in, d_out = p["K"], p["d_in"], p["d_out"]
    r = _routing(p)
    C, Ans = unit(rng, K, d_in), rng.normal(size=(K, d_out)).astype(np.float32)
    X = rng.normal(size=(p["B"], d_in)).astype(np.float32)
    model = pr.Projector.from_tensors({"centroids": C, "answers": Ans}, config("lda", d_in, d_out, **r))
    args = (r["temperature"], r["top_k"], r["coverage"])
    np.testing.assert_allclose(model.project(X), ref.project_lda(X, C, Ans, *args), rtol=RTOL, atol=ATOL)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 50), st.integers(1, 30), st.integers(1, 30))
def test_global_matches_reference(seed, B, d_in, d_out):
    rng = np.random.default_rng(seed)
    W, b = rng.normal(size=(d_in, d_out)).astype(np.float32), rng.normal(size=d_out).astype(np.float32)
    X = rng.normal(size=(B, d_in)).astype(np.float32)
    model = pr.Projector.from_tensors({"W": W, "bias": b}, config("global", d_in, d_out))
    np.testing.assert_allclose(model.project(X), ref.project_global(X, W, b), rtol=RTOL, atol=ATOL)


def test_large_batch_uses_the_grouped_path_correctly():
    """Many queries per cluster (the chunked, multi-threaded blend) at a realistic size."""
    rng = np.random.default_rng(1)
    model, t, r = random_model("federated", rng, d=96, K=12, top_k=3)
    X = rng.normal(size=(2000, 96)).astype(np.float32)
    want = ref.project_federated(X, t["centroids"], t["W"], r["temperature"], r["top_k"])
    np.testing.assert_allclose(model.project(X), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("layout", ["fortran", "strided", "float64", "float16"])
def test_other_layouts_and_float_dtypes_give_the_same_result(layout):
    rng = np.random.default_rng(2)
    model, *_ = random_model("federated", rng, top_k=2)
    X = rng.normal(size=(9, 16)).astype(np.float32)
    want = model.project(X)
    other = {
        "fortran": np.asfortranarray(X),
        "strided": np.repeat(X, 2, axis=1)[:, ::2],
        "float64": X.astype(np.float64),
        "float16": X.astype(np.float16),
    }[layout]
    atol = 1e-2 if layout == "float16" else 1e-6
    np.testing.assert_allclose(model.project(other), want, atol=atol)


def test_flat_index_matches_numpy_ranking():
    rng = np.random.default_rng(3)
    E, X = rng.normal(size=(300, 20)).astype(np.float32), rng.normal(size=(25, 20)).astype(np.float32)
    ids, scores = pr.FlatIndex(E).search(X, 7)
    S = ref.unit_rows(X) @ ref.unit_rows(E).T
    want = np.argsort(-S, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(scores, np.take_along_axis(S, want, axis=1), atol=1e-5)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
