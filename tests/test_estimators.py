"""Fitting: Procrustes, the minimal per-cluster maps, shrinkage and the estimators' API."""

import json

import numpy as np
import pytest

import projroute as pr
from projroute import reference as ref
from projroute.clustering import effective_rank, resolve_n_clusters
from projroute.metrics import retrieval_metrics
from projroute.procrustes import cluster_delta, least_squares_scale, procrustes
from projroute.serving import stored_index
from projroute.validation import SHRINKAGE_GRID

from helpers import assert_one_se_choice, unit


def rotation(rng, d, det=1.0):
    R = np.linalg.qr(rng.normal(size=(d, d)))[0]
    if np.sign(np.linalg.det(R)) != det:
        R[:, 0] = -R[:, 0]
    return R


def test_procrustes_recovers_a_rotation_and_keeps_det_plus_one():
    rng = np.random.default_rng(0)
    Q = rng.normal(size=(50, 6))
    R = rotation(rng, 6)
    np.testing.assert_allclose(procrustes(Q, Q @ R), R, atol=1e-8)
    F = rotation(rng, 6, det=-1.0)  # a reflection: the proper fit must stay a rotation
    assert np.linalg.det(procrustes(Q, Q @ F)) == pytest.approx(1.0)
    np.testing.assert_allclose(procrustes(Q, Q @ F, allow_reflection=True), F, atol=1e-8)
    assert least_squares_scale(Q, 2.5 * Q @ R, R) == pytest.approx(2.5)


def test_global_scale_and_centre():
    rng = np.random.default_rng(1)
    Q = rng.normal(size=(200, 5)).astype(np.float32)
    R, t = rotation(rng, 5), rng.normal(size=5)
    A = (1.7 * Q @ R + t).astype(np.float32)
    g = pr.GlobalProjection(shrinkage=1.0, scale=True, center=True).fit(Q, A)
    np.testing.assert_allclose(g.W_, 1.7 * R, atol=1e-4)
    np.testing.assert_allclose(g.bias_, t, atol=1e-4)
    np.testing.assert_allclose(g.project(Q), A, atol=1e-4)


def test_global_shrinkage_is_cross_validated():
    rng = np.random.default_rng(2)
    Q = unit(rng, 300, 12)
    A = Q @ rotation(rng, 12) + 0.05 * rng.normal(size=(300, 12))
    g = pr.GlobalProjection().fit(Q, A)
    assert set(g.validation_) == set(SHRINKAGE_GRID)
    # A clean rotation: a strong map wins clearly; ties go to the more shrunk value.
    assert g.shrinkage_ >= 0.5 and g.validation_[g.shrinkage_] > g.validation_[0.0] + 0.2
    assert_one_se_choice(g.shrinkage_, g.validation_)
    assert json.loads(g.projector_.config)["fit"]["shrinkage"] == g.shrinkage_
    # Unrelated answers: no map beats doing nothing by much, and the identity must not lose.
    noise = unit(rng, 300, 12)
    h = pr.GlobalProjection().fit(Q, noise)
    assert h.validation_[h.shrinkage_] >= h.validation_[0.0]


def test_cluster_delta_is_minimal():
    """base + delta equals base outside the span of the cluster's questions and the
    cluster's own Procrustes map inside it."""
    rng = np.random.default_rng(3)
    d, n = 20, 4
    Qc, Ac = unit(rng, n, d), unit(rng, n, d)
    base = rotation(rng, d)
    W = base + cluster_delta(Qc, Ac, base)
    # A direction orthogonal to every question of the cluster.
    z = rng.normal(size=d)
    z -= np.linalg.lstsq(Qc.T, z, rcond=None)[0] @ Qc
    np.testing.assert_allclose(z @ W, z @ base, atol=1e-10)
    # Inside the span, it acts as the Procrustes rotation R of the cluster (fitted in d dims).
    R = procrustes(Qc, Ac)
    np.testing.assert_allclose(Qc @ W, Qc @ R, atol=1e-6)


def piecewise_rotations(rng, K=4, per=150, d=16):
    """Questions in K separated groups, each group's answers rotated by its own map."""
    centers = unit(rng, K, d) * 3
    Q, A = [], []
    for k in range(K):
        q = centers[k] + rng.normal(size=(per, d))
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        Q.append(q)
        A.append(q @ rotation(rng, d))
    return np.vstack(Q).astype(np.float32), np.vstack(A).astype(np.float32)


def test_federated_beats_global_when_maps_differ_per_cluster():
    rng = np.random.default_rng(4)
    Q, A = piecewise_rotations(rng)
    Qt, At = piecewise_rotations(np.random.default_rng(4))  # same maps, same centres
    rng_t = np.random.default_rng(99)
    idx = rng_t.choice(len(Qt), 200, replace=False)
    Xtest = (Qt[idx] + 0.01 * rng_t.normal(size=(200, 16))).astype(np.float32)
    corpus, gold = At, [[i] for i in idx]
    fed = pr.FederatedProjection(n_clusters=4, cluster_on="questions", top_k=1, progress=False).fit(Q, A)
    glob = pr.GlobalProjection().fit(Q, A)
    m_fed = retrieval_metrics(fed.project(Xtest), corpus, gold)
    m_glob = retrieval_metrics(glob.project(Xtest), corpus, gold)
    m_raw = retrieval_metrics(Xtest, corpus, gold)
    assert fed.shrinkage_ > 0.5
    assert m_fed["hit@1"] > max(m_glob["hit@1"], m_raw["hit@1"]) + 0.2


def test_federated_project_matches_reference_and_round_trips(tmp_path):
    rng = np.random.default_rng(5)
    Q, A = unit(rng, 120, 10), unit(rng, 120, 10)
    fed = pr.FederatedProjection(n_clusters="auto", top_k=0.8, progress=False).fit(Q, A)
    assert len(fed.centroids_) == resolve_n_clusters("auto", ref.unit_rows(A))
    cfg = json.loads(fed.projector_.config)
    assert cfg["coverage"] == 0.8 and cfg["top_k"] == len(fed.centroids_)
    X = unit(rng, 30, 10)
    want = ref.project_federated(X, fed.centroids_, fed.W_, 0.1, fed.top_k_, 0.8)
    np.testing.assert_allclose(fed.project(X), want, rtol=1e-4, atol=1e-5)
    path = tmp_path / "fed.safetensors"
    fed.save(path, answers=A[:7], answer_texts=[f"a{i}" for i in range(7)])
    loaded = pr.load(path)
    np.testing.assert_array_equal(loaded.project(X), fed.project(X))
    index, texts = stored_index(loaded)
    assert texts == [f"a{i}" for i in range(7)] and len(index) == 7


@pytest.mark.parametrize("refine_steps", [0, 20])
def test_federated_maps_are_stored_factored_where_that_is_smaller(tmp_path, refine_steps):
    """40 questions per cluster in 160 dimensions: each map is the base plus a
    correction of rank 40, so the model serves and saves ``W.base + U_k M_k`` (64,000
    floats, not 76,800) and projects as its whole maps ``W_`` do; with 150 a cluster,
    where factors would take more, it keeps them whole."""
    from projroute.procrustes import question_span

    Q, A = piecewise_rotations(np.random.default_rng(6), K=3, per=40, d=160)
    kw = {"n_clusters": 3, "cluster_on": "questions", "shrinkage": 1.0, "refine_steps": refine_steps, "progress": False}
    fed = pr.FederatedProjection(**kw).fit(Q, A)
    assert fed.ranks_ == np.bincount(fed.labels_).tolist() and set(fed.maps_) == {"W.base", "W.U", "W.M"}
    ends = np.cumsum(fed.ranks_)
    for k, (end, r) in enumerate(zip(ends, fed.ranks_)):  # the correction lies in its questions' span
        U, M = question_span(Q[fed.labels_ == k]), fed.maps_["W.M"][end - r : end]
        np.testing.assert_allclose(fed.W_[k] - fed.maps_["W.base"], U @ M, atol=1e-5)
    X = Q[::7] + 0.05
    want = ref.project_federated(X, fed.centroids_, fed.W_, fed.temperature, fed.top_k_)
    np.testing.assert_allclose(fed.project(X), want, rtol=1e-4, atol=1e-5)
    fed.save(tmp_path / "fed.safetensors")
    assert json.loads(pr.load(tmp_path / "fed.safetensors").config)["version"] == 2
    big = pr.FederatedProjection(**kw).fit(*piecewise_rotations(np.random.default_rng(6), K=3, per=150, d=160))
    assert big.ranks_ is None and set(big.maps_) == {"W"}


def test_lda_is_the_flat_softmax_teacher():
    rng = np.random.default_rng(6)
    Q, A = unit(rng, 90, 8), unit(rng, 90, 8)
    lda = pr.LdaProjection(n_clusters=9, temperature=0.2).fit(Q, A)
    K = len(lda.centroids_)
    assert lda.top_k_ == K and lda.coverage_ is None
    np.testing.assert_allclose(np.linalg.norm(lda.answers_, axis=1), 1.0, rtol=1e-5)
    X = unit(rng, 11, 8)
    np.testing.assert_allclose(
        lda.project(X), ref.project_lda(X, lda.centroids_, lda.answers_, 0.2, K), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(lda.route(X).sum(axis=1), 1.0, rtol=1e-5)


def test_effective_rank():
    assert effective_rank(np.eye(7)) == pytest.approx(7.0)
    assert effective_rank(np.outer(np.ones(5), np.arange(1, 4))) == pytest.approx(1.0)
