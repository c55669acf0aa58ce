"""Per-question routing and prior-weighted softmax: the Rust core against the numpy
reference (tolerance as in test_parity: |rust - numpy| <= 1e-5 + 1e-4 |numpy|), and the
estimator options that produce them."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import projroute as pr
from projroute import reference as ref

from helpers import config, unit

RTOL, ATOL = 1e-4, 1e-5

shapes = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "B": st.integers(1, 300),
        # d >= 2: in one dimension every cosine is +-1, so two clusters with the same mix of
        # signs have equal masses in exact arithmetic, and which one top-k keeps depends on
        # the order each side sums in (a one-ulp difference), not on the routing rule.
        "d": st.integers(2, 20),
        "K": st.integers(1, 12),
        "per_cluster": st.integers(1, 40),
        "T": st.floats(0.02, 2.0),
        "top_k_frac": st.floats(0.0, 1.0),
        "coverage": st.one_of(st.none(), st.floats(0.05, 1.0)),
        "prior": st.booleans(),
        "T2": st.one_of(st.none(), st.floats(0.01, 1.0)),
    }
)


def _case(p):
    rng = np.random.default_rng(p["seed"])
    K, d = p["K"], p["d"]
    counts = rng.integers(1, p["per_cluster"] + 1, size=K)
    routing = {
        "n_clusters": K,
        "temperature": p["T"],
        "coverage": p["coverage"],
        "top_k": max(1, round(p["top_k_frac"] * K)),
    }
    X = rng.normal(size=(p["B"], d)).astype(np.float32)
    W = (rng.normal(size=(K, d, d)) / np.sqrt(d)).astype(np.float32)
    return rng, counts, routing, X, W


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_per_question_routing_matches_reference(p):
    rng, counts, r, X, W = _case(p)
    Qs = unit(rng, int(counts.sum()), p["d"])
    tensors = {"centroids": unit(rng, p["K"], p["d"]), "W": W, "questions": Qs}
    prior = rng.uniform(0.05, 3.0, size=len(Qs)).astype(np.float32) if p["prior"] else None
    if prior is not None:
        tensors["prior"] = prior
    extra = {"question_counts": counts.tolist()}
    if p["T2"] is not None:
        extra["cluster_temperature"] = p["T2"]
    model = pr.Projector.from_tensors(tensors, config("federated", p["d"], p["d"], **r, **extra))
    want = ref.route_questions(X, Qs, counts, r["temperature"], r["top_k"], r["coverage"], prior, p["T2"])
    got = model.route(X)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    # The blend of the weights served: weights within RTOL of the reference's can move an
    # output that cancels (terms near 1 summing to near 0) by more than RTOL of itself.
    np.testing.assert_allclose(model.project(X), ref.blend_maps(X, got, W), rtol=RTOL, atol=ATOL)


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_prior_weighted_centroid_routing_matches_reference(p):
    rng, _, r, X, W = _case(p)
    C = unit(rng, p["K"], p["d"])
    prior = rng.uniform(0.05, 3.0, size=p["K"]).astype(np.float32)
    model = pr.Projector.from_tensors(
        {"centroids": C, "W": W, "prior": prior}, config("federated", p["d"], p["d"], **r)
    )
    want = ref.route_weights(X, C, r["temperature"], r["top_k"], r["coverage"], prior)
    got = model.route(X)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(model.project(X), ref.blend_maps(X, got, W), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("T", [0.03, 0.01])
@pytest.mark.parametrize("B", [1, 3, 100])
def test_per_question_routing_across_column_blocks(B, T):
    """More questions than one scoring block (4096 columns), uneven clusters straddling
    block boundaries, a prior: the online softmax over blocks equals the reference, with
    the fixed shift (T = 0.03: logits within 80 of each other) and with block maxima
    (T = 0.01)."""
    rng = np.random.default_rng(11)
    counts = rng.integers(1, 600, size=37)
    N, d = int(counts.sum()), 16
    Qs, X = unit(rng, N, d), rng.normal(size=(B, d)).astype(np.float32)
    prior = rng.uniform(0.1, 5.0, size=N).astype(np.float32)
    W = rng.normal(size=(37, d, d)).astype(np.float32)
    r = {"n_clusters": 37, "temperature": T, "top_k": 5, "coverage": None}
    model = pr.Projector.from_tensors(
        {"centroids": unit(rng, 37, d), "W": W, "questions": Qs, "prior": prior},
        config("federated", d, d, **r, question_counts=counts.tolist()),
    )
    assert N > 2 * 4096
    want = ref.route_questions(X, Qs, counts, T, 5, None, prior)
    np.testing.assert_allclose(model.route(X), want, rtol=RTOL, atol=ATOL)


def test_prior_is_the_log_shift_it_claims():
    """w ∝ p exp(s/T): a prior of exp(delta/T) equals adding delta to the scores."""
    rng = np.random.default_rng(0)
    C, X = unit(rng, 5, 8), rng.normal(size=(7, 8)).astype(np.float32)
    p = np.array([1, 2, 4, 8, 16], np.float32)
    w = ref.route_weights(X, C, 0.5, 5, None, p)
    S = ref.unit_rows(X) @ C.T
    e = p * np.exp(S / 0.5)
    np.testing.assert_allclose(w, e / e.sum(axis=1, keepdims=True), rtol=1e-5)


def test_per_question_routing_sums_question_probabilities():
    """One question per cluster makes per-question routing the centroid routing."""
    rng = np.random.default_rng(1)
    C, X, W = unit(rng, 6, 8), rng.normal(size=(9, 8)).astype(np.float32), rng.normal(size=(6, 8, 8)).astype(np.float32)
    r = {"n_clusters": 6, "temperature": 0.2, "top_k": 3, "coverage": None}
    per_q = pr.Projector.from_tensors(
        {"centroids": C, "W": W, "questions": C}, config("federated", 8, 8, **r, question_counts=[1] * 6)
    )
    per_c = pr.Projector.from_tensors({"centroids": C, "W": W}, config("federated", 8, 8, **r))
    np.testing.assert_allclose(per_q.route(X), per_c.route(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "tensors, extra, match",
    [
        ({"questions": np.ones((3, 4), np.float32)}, {}, "question_counts"),
        ({"questions": np.ones((3, 4), np.float32)}, {"question_counts": [1, 1]}, "sum to"),
        ({"questions": np.ones((3, 4), np.float32)}, {"question_counts": [3, 0]}, "positive"),
        (
            {"questions": np.ones((2, 4), np.float32)},
            {"question_counts": [1, 1], "cluster_temperature": 0.0},
            "cluster temperature",
        ),
        ({"prior": np.ones(3, np.float32)}, {}, "prior has 3"),
        ({"prior": np.array([1.0, 0.0], np.float32)}, {}, "prior weights"),
    ],
)
def test_bad_routing_tensors_are_format_errors(tensors, extra, match):
    C, W = np.eye(2, 4, dtype=np.float32), np.zeros((2, 4, 4), np.float32)
    r = {"n_clusters": 2, "temperature": 0.1, "top_k": 2, "coverage": None}
    with pytest.raises(pr.ModelFormatError, match=match):
        pr.Projector.from_tensors({"centroids": C, "W": W, **tensors}, config("federated", 4, 4, **r, **extra))


def _pairs(rng, n=240, d=12, K=4):
    """Pairs from K regions, each with its own rotation."""
    centers = unit(rng, K, d)
    rot = [np.linalg.qr(rng.normal(size=(d, d)))[0].astype(np.float32) for _ in range(K)]
    g = rng.integers(0, K, n)
    Q = ref.unit_rows(centers[g] + 0.3 * rng.normal(size=(n, d)).astype(np.float32))
    A = np.stack([q @ rot[k] for q, k in zip(Q, g)])
    return Q, A


@pytest.mark.parametrize(
    "options",
    [
        {"routing": "questions"},
        {"routing": "questions", "cluster_temperature": 0.05, "prior": "entropy"},
        {"prior": "sizes"},
        {"prior": "entropy"},
    ],
)
def test_estimator_modes_serve_what_the_reference_computes(options, tmp_path):
    rng = np.random.default_rng(3)
    Q, A = _pairs(rng)
    est = pr.FederatedProjection(n_clusters=4, top_k=2, shrinkage=1.0, progress=False, **options).fit(Q, A)
    X = rng.normal(size=(30, Q.shape[1])).astype(np.float32)
    t = est.projector_.tensors()
    w = est._weights(X, est.centroids_, est.labels_, est.routing_)
    np.testing.assert_allclose(est.route(X), w, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(est.project(X), ref.blend_maps(X, w, t["W"]), rtol=RTOL, atol=ATOL)
    est.save(tmp_path / "m.safetensors")
    back = pr.load(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(back.project(X), est.project(X))
    assert set(t) == {"centroids", "W"} | set(est.routing_)
    if options.get("routing") == "questions":
        assert json.loads(back.config)["question_counts"] == np.bincount(est.labels_).tolist()


def test_array_prior_and_bad_options():
    rng = np.random.default_rng(4)
    Q, A = _pairs(rng, n=60)
    prior = np.linspace(0.5, 2.0, len(Q))
    est = pr.FederatedProjection(n_clusters=3, shrinkage=1.0, progress=False, prior=prior).fit(Q, A)
    np.testing.assert_allclose(est.routing_["prior"], np.bincount(est.labels_, prior), rtol=1e-6)
    bad = [
        ({"prior": np.ones(5)}, "one finite weight"),
        ({"prior": -prior}, "one finite weight"),
        ({"prior": "loud"}, "prior must be"),
        ({"routing": "answers"}, "routing must be"),
        ({"cluster_temperature": 0.1}, "routing='questions'"),
        ({"routing": "questions", "cluster_temperature": 0.0}, "temperature"),
        ({"routing": "questions", "prior": "sizes"}, "centroid routing"),
    ]
    for options, match in bad:
        with pytest.raises(ValueError, match=match):
            pr.FederatedProjection(n_clusters=3, shrinkage=1.0, progress=False, **options).fit(Q, A)


@pytest.mark.parametrize("dtype, tol", [("float16", 1e-3), ("bfloat16", 8e-3)])
def test_reduced_precision_maps(dtype, tol, tmp_path):
    """W stored at half width: the file holds that dtype, the model serves exactly the
    rounded maps (computed in f32), and the outputs stay close to the f32 model's."""
    from safetensors.numpy import load_file

    rng = np.random.default_rng(5)
    Q, A = _pairs(rng)
    est = pr.FederatedProjection(n_clusters=4, top_k=2, shrinkage=1.0, progress=False).fit(Q, A)
    path = tmp_path / "half.safetensors"
    est.save(path, weights_dtype=dtype)
    back = pr.load(path)
    assert json.loads(back.config)["weights_dtype"] == dtype
    est.save(tmp_path / "full.safetensors")
    assert (tmp_path / "full.safetensors").stat().st_size - path.stat().st_size == est.W_.nbytes // 2
    W = back.tensors()["W"]
    if dtype == "float16":
        np.testing.assert_array_equal(W, est.W_.astype(np.float16).astype(np.float32))
        assert str(load_file(path)["W"].dtype) == "float16"
    X = rng.normal(size=(50, Q.shape[1])).astype(np.float32)
    want = ref.project_federated(X, est.centroids_, W, est.temperature, est.top_k_)
    np.testing.assert_allclose(back.project(X), want, rtol=RTOL, atol=ATOL)
    full = est.project(X)
    cos = (back.project(X) * full).sum(1) / np.linalg.norm(full, axis=1) ** 2
    assert np.abs(cos - 1).max() < tol
    with pytest.raises(ValueError, match="weights_dtype"):
        pr.with_weights_dtype(back, "int8")
    bad = json.loads(back.config) | {"weights_dtype": "float8"}
    with pytest.raises(pr.ModelFormatError, match="weights_dtype"):
        pr.Projector.from_tensors(back.tensors(), json.dumps(bad))
