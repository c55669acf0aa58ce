"""Bad input reaches Python as a clear exception, never a panic or a crash."""

import numpy as np
import pytest

import projroute as pr

from helpers import config, random_model, unit


@pytest.fixture(params=["global", "federated", "lda"])
def model(request):
    return random_model(request.param, np.random.default_rng(0), d=16, K=6, top_k=2)[0]


@pytest.mark.parametrize(
    "x, exc, match",
    [
        (np.zeros((0, 16), np.float32), ValueError, "empty batch"),
        (np.ones((3, 15), np.float32), ValueError, "15 columns, expected 16"),
        (np.ones(16, np.float32), ValueError, "must be 2-D"),
        (np.ones((2, 3, 16), np.float32), ValueError, "must be 2-D"),
        (np.full((2, 16), np.nan, np.float32), ValueError, "NaN"),
        (np.full((2, 16), np.inf, np.float32), ValueError, "NaN or infinite"),
        (np.ones((2, 16), np.int64), TypeError, "floating dtype"),
        (np.ones((2, 16), np.complex64), TypeError, "floating dtype"),
        (np.array([["a"] * 16]), TypeError, "floating dtype"),
        ([[0.1] * 16], TypeError, "numpy array"),
    ],
    ids=["empty", "wrong-dim", "1-d", "3-d", "nan", "inf", "int", "complex", "str", "list"],
)
def test_project_rejects_bad_queries(model, x, exc, match):
    with pytest.raises(exc, match=match):
        model.project(x)


def test_zero_query_is_rejected_by_routed_models():
    model, *_ = random_model("federated", np.random.default_rng(1))
    with pytest.raises(ValueError, match="zero norm"):
        model.project(np.zeros((1, 16), np.float32))


@pytest.mark.parametrize(
    "routing, match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_k": 7}, "top_k"),
        ({"top_k": 0}, "top_k"),
        ({"coverage": 1.5}, "coverage"),
    ],
    ids=["t-zero", "t-negative", "k-over-K", "k-zero", "coverage-over-1"],
)
def test_bad_routing_parameters(routing, match):
    rng = np.random.default_rng(2)
    params = {"n_clusters": 6, "temperature": 0.1, "top_k": 2, "coverage": None, **routing}
    tensors = {"centroids": unit(rng, 6, 4), "answers": unit(rng, 6, 4)}
    with pytest.raises(pr.ModelFormatError, match=match):
        pr.Projector.from_tensors(tensors, config("lda", 4, 4, **params))


def test_flat_index_bad_input():
    index = pr.FlatIndex(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match="k must be between 1 and the index size"):
        index.search(np.ones((1, 4), np.float32), 5)
    with pytest.raises(ValueError, match="k must be"):
        index.search(np.ones((1, 4), np.float32), 0)
    with pytest.raises(OverflowError):
        index.search(np.ones((1, 4), np.float32), -1)
    with pytest.raises(ValueError, match="empty batch"):
        pr.FlatIndex(np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match="zero norm"):
        pr.FlatIndex(np.zeros((2, 4), np.float32))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: pr.FederatedProjection(temperature=0), "temperature"),
        (lambda: pr.FederatedProjection(top_k=0), "top_k"),
        (lambda: pr.FederatedProjection(top_k=1.5), "top_k"),
        (lambda: pr.FederatedProjection(n_clusters=10_000, shrinkage=1.0), "more than"),
        (lambda: pr.FederatedProjection(n_clusters=0, shrinkage=1.0), "n_clusters"),
        (lambda: pr.FederatedProjection(shrinkage=2.0), "shrinkage"),
        (lambda: pr.FederatedProjection(n_clusters=4, top_k=9, shrinkage=1.0), "top_k=9 is more than n_clusters=4"),
        (lambda: pr.FederatedProjection(top_k=True), "top_k"),
        (lambda: pr.LdaProjection(temperature=-1), "temperature"),
        (lambda: pr.LdaProjection(n_clusters=3, top_k=4), "top_k=4 is more than n_clusters=3"),
        (lambda: pr.GlobalProjection(shrinkage="lots"), "shrinkage"),
    ],
    ids=[
        "t-zero",
        "k-zero",
        "k-float-over-1",
        "K-over-N",
        "K-zero",
        "shrinkage",
        "k-over-K",
        "k-bool",
        "lda-t",
        "lda-k-over-K",
        "global-shrinkage",
    ],
)
def test_estimators_reject_bad_parameters(make, match):
    rng = np.random.default_rng(3)
    Q, A = unit(rng, 40, 8), unit(rng, 40, 8)
    with pytest.raises(ValueError, match=match):
        make().fit(Q, A)


@pytest.mark.parametrize("cls", [pr.FederatedProjection, pr.LdaProjection])
def test_top_k_is_clamped_to_auto_clusters_and_recorded(cls):
    rng = np.random.default_rng(3)
    Q, A = unit(rng, 40, 8), unit(rng, 40, 8)
    extra = {"shrinkage": 1.0, "progress": False} if cls is pr.FederatedProjection else {}
    est = cls(top_k=50, **extra).fit(Q, A)
    K = est.config_["n_clusters"]
    assert K < 50 and est.config_["top_k"] == K
    assert est.config_["fit"]["top_k_requested"] == 50 and est.config_["fit"]["top_k_clamped_to"] == K
    # The default top_k ("auto" for federated) is no request: nothing to record.
    default = cls(n_clusters=3, **extra).fit(Q, A)
    assert default.config_["top_k"] == 3 and "top_k_requested" not in default.config_["fit"]


@pytest.mark.parametrize(
    "Q, A, match",
    [
        (np.ones((5, 4)), np.ones((4, 4)), "same number of rows"),
        (np.ones((0, 4)), np.ones((0, 4)), "zero pairs"),
        (np.full((5, 4), np.nan), np.ones((5, 4)), "finite"),
        (np.ones(4), np.ones(4), "2-D"),
    ],
    ids=["rows", "empty", "nan", "1-d"],
)
def test_fit_rejects_bad_pairs(Q, A, match):
    with pytest.raises(ValueError, match=match):
        pr.GlobalProjection(shrinkage=1.0).fit(Q, A)


def test_unfitted_estimator_says_so():
    with pytest.raises(RuntimeError, match="not fitted"):
        pr.FederatedProjection().project(np.ones((1, 4), np.float32))


@pytest.mark.parametrize("shape", [(2, 0), (0, 2)], ids=["dim-out-0", "dim-in-0"])
def test_zero_dimensions_are_format_errors(shape):
    """Found by fuzzing (build_and_project): a federated model with dim_out 0 panicked in
    the blend; every kind now refuses empty dimensions."""
    d_in, d_out = shape
    rng = np.random.default_rng(0)
    fed = {"centroids": rng.normal(size=(2, d_in)).astype(np.float32), "W": np.ones((2, d_in, d_out), np.float32)}
    routing = {"n_clusters": 2, "temperature": 0.1, "top_k": 1}
    with pytest.raises(pr.ModelFormatError, match="dimensions must be at least 1"):
        pr.Projector.from_tensors(fed, config("federated", d_in, d_out, **routing))
    with pytest.raises(pr.ModelFormatError, match="dimensions must be at least 1"):
        pr.Projector.from_tensors({"W": np.ones(shape, np.float32)}, config("global", d_in, d_out))
