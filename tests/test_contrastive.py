"""ContrastiveProjection: InfoNCE refinement of a linear map, early-stopped by
cross-validation. Tolerances: the gradient to 1e-6 relative (finite differences in
float64); the served map to 1e-5 against numpy."""

import numpy as np
import pytest

import projroute as pr
from projroute.contrastive import STEPS_GRID, infonce, infonce_steps
from projroute.metrics import retrieval_metrics
from projroute.reference import unit_rows

from helpers import assert_one_se_choice, unit


def test_the_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    Q, C = rng.normal(size=(7, 5)), unit_rows(rng.normal(size=(11, 4)), dtype=np.float64)
    gold, W = rng.integers(0, 11, size=7), rng.normal(size=(5, 4))
    _, grad = infonce(Q, C, gold, W, 0.1)
    numeric = np.zeros_like(W)
    for idx in np.ndindex(W.shape):
        step = np.zeros_like(W)
        step[idx] = 1e-6
        numeric[idx] = (infonce(Q, C, gold, W + step, 0.1)[0] - infonce(Q, C, gold, W - step, 0.1)[0]) / 2e-6
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


@pytest.fixture
def pairs():
    """Answers a general linear map (not a rotation) of the questions, plus noise."""
    rng = np.random.default_rng(1)
    Q = unit(rng, 300, 16)
    A = unit_rows(Q @ (np.eye(16) + 0.8 * rng.normal(size=(16, 16))) + 0.3 * rng.normal(size=(300, 16)))
    return Q, A


def test_refinement_ranks_the_training_answers_higher(pairs):
    Q, A = pairs
    corpus, gold = np.unique(A, axis=0, return_inverse=True)
    start, *refined = infonce_steps(Q, A, np.eye(16), (0, 100, 400), 0.05, 1e-2, 64, random_state=0)
    mrr = [retrieval_metrics(Q @ W, corpus, [[g] for g in gold.ravel()])["mrr"] for W in (start, *refined)]
    np.testing.assert_array_equal(start, np.eye(16))
    assert mrr[0] + 0.1 < mrr[1] < mrr[2], mrr
    again = infonce_steps(Q, A, np.eye(16), (400,), 0.05, 1e-2, 64, random_state=0)[0]
    np.testing.assert_array_equal(again, refined[1])  # seeded


def test_auto_stops_early_by_cross_validation_and_is_served(pairs, tmp_path):
    Q, A = pairs
    model = pr.ContrastiveProjection(init="identity", learning_rate=1e-2, progress=False).fit(Q, A)
    assert list(model.validation_) == list(STEPS_GRID)
    assert_one_se_choice(model.steps_, model.validation_)
    assert model.steps_ > 0 and model.validation_[model.steps_] > model.validation_[0] + 0.05
    assert model.config_["fit"]["steps"] == model.steps_
    X = unit(np.random.default_rng(2), 20, 16)
    np.testing.assert_allclose(model.project(X), X @ model.W_, rtol=1e-5, atol=1e-5)
    model.save(tmp_path / "c.safetensors")
    np.testing.assert_array_equal(pr.load(tmp_path / "c.safetensors").project(X), model.project(X))


def test_zero_steps_keeps_the_starting_map(pairs):
    Q, A = pairs
    model = pr.ContrastiveProjection(steps=0).fit(Q, A)
    np.testing.assert_array_equal(model.W_, pr.GlobalProjection().fit(Q, A).W_)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"init": "ridge"}, "init must be"),
        ({"steps": -1}, "steps must be"),
        ({"temperature": 0.0}, "temperature and learning_rate"),
        ({"validation": "paraphrase"}, "validation must be one of"),
    ],
)
def test_bad_parameters_are_value_errors(pairs, kwargs, match):
    Q, A = pairs
    with pytest.raises(ValueError, match=match):
        pr.ContrastiveProjection(**kwargs).fit(Q, A)


def test_the_federated_gradient_matches_finite_differences():
    from projroute.contrastive import infonce_federated
    from projroute.procrustes import question_span

    rng = np.random.default_rng(3)
    Q, C = rng.normal(size=(9, 6)), unit_rows(rng.normal(size=(13, 5)), dtype=np.float64)
    gold = rng.integers(0, 13, size=9)
    spans = [question_span(rng.normal(size=(r, 6))) for r in (2, 3, 6)]
    weights = rng.random(size=(9, 4)) * (rng.random(size=(9, 4)) < 0.6)
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
    weights = weights[:, :3]  # the fourth cluster keeps the base map
    params = [rng.normal(size=(6, 5)), *[rng.normal(size=(U.shape[1], 5)) for U in spans]]
    _, grads = infonce_federated(Q, weights, C, gold, params, spans, 0.1)
    for p, g in zip(params, grads):
        numeric = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + 1e-6
            up = infonce_federated(Q, weights, C, gold, params, spans, 0.1)[0]
            p[idx] = old - 1e-6
            down = infonce_federated(Q, weights, C, gold, params, spans, 0.1)[0]
            p[idx] = old
            numeric[idx] = (up - down) / 2e-6
        # The central difference carries rounding of about eps * |loss| / h (float64,
        # h = 1e-6, a loss near ln 13: some 1e-9, more or less with the BLAS's summation
        # order on the CPU at hand), hence the absolute tolerance.
        np.testing.assert_allclose(g, numeric, rtol=1e-6, atol=1e-8)


@pytest.fixture
def clustered():
    """Two topics whose answers follow different general linear maps of the questions."""
    rng = np.random.default_rng(4)
    Q, A = [], []
    for _ in range(2):
        center = unit(rng, 1, 16) * 2.0
        Qt = unit_rows(center + rng.normal(size=(150, 16)))
        A.append(unit_rows(Qt @ (np.eye(16) + 0.8 * rng.normal(size=(16, 16))) + 0.2 * rng.normal(size=(150, 16))))
        Q.append(Qt)
    return np.vstack(Q).astype(np.float32), np.vstack(A).astype(np.float32)


def test_federated_refinement_ranks_answers_higher_and_keeps_each_correction_in_its_span(clustered):
    from projroute.contrastive import infonce_federated_steps
    from projroute.procrustes import question_span
    from projroute.reference import blend_maps

    Q, A = clustered
    labels = np.repeat([0, 1, 2], [150, 149, 1])  # the third "cluster" has no span: it keeps the base
    spans = [question_span(Q[labels == 0]), question_span(Q[labels == 1]), None]
    rng = np.random.default_rng(5)
    weights = np.eye(3)[labels] * 0.7 + rng.dirichlet(np.ones(3), size=len(Q)) * 0.3
    base = np.eye(16)
    deltas = np.stack([U @ (0.1 * rng.normal(size=(U.shape[1], 16))) for U in spans[:2]] + [np.zeros((16, 16))])
    (_, start), *refined = infonce_federated_steps(Q, A, weights, base, deltas, spans, (0, 100, 400), 0.05, 1e-2, 64, 0)
    refined = [W for _, W in refined]
    np.testing.assert_allclose(start, base[None] + deltas, atol=1e-12)
    corpus, gold = np.unique(A, axis=0, return_inverse=True)
    mrr = [
        retrieval_metrics(blend_maps(Q, weights, W.astype(np.float32)), corpus, [[g] for g in gold.ravel()])["mrr"]
        for W in (start, *refined)
    ]
    assert mrr[0] + 0.5 < mrr[1] <= mrr[2], mrr
    b, W = infonce_federated_steps(Q, A, weights, base, deltas, spans, (400,), 0.05, 1e-2, 64, 0)[0]
    np.testing.assert_array_equal(W, refined[-1])  # seeded
    np.testing.assert_array_equal(W[2], b)  # no span: the refined base
    for k in (0, 1):  # a cluster's map differs from the base only inside its questions' span
        outside = (np.eye(16) - spans[k] @ spans[k].T) @ (W[k] - b)
        np.testing.assert_allclose(outside, 0.0, atol=1e-10)


@pytest.mark.parametrize("validation", ["known-answers", "new-answers"])
def test_federated_refine_steps_auto_is_chosen_by_cross_validation_and_served(clustered, validation, tmp_path):
    from projroute.reference import project_federated

    Q, A = clustered
    kwargs = {"n_clusters": 2, "top_k": 2, "validation": validation, "progress": False}
    plain = pr.FederatedProjection(**kwargs).fit(Q, A)
    model = pr.FederatedProjection(refine_steps="auto", **kwargs).fit(Q, A)
    assert list(model.refine_validation_) == list(STEPS_GRID)
    assert_one_se_choice(model.refine_steps_, model.refine_validation_)
    assert model.config_["fit"]["refine_steps"] == model.refine_steps_
    if model.refine_steps_ == 0:
        np.testing.assert_array_equal(model.W_, plain.W_)
    else:
        assert model.refine_validation_[model.refine_steps_] > model.refine_validation_[0]
    assert plain.refine_steps_ == 0 and "refine_validation_mrr" not in plain.config_["fit"]
    X = unit(np.random.default_rng(6), 30, 16)
    want = project_federated(X, model.centroids_, model.W_, model.temperature, model.top_k_)
    np.testing.assert_allclose(model.project(X), want, rtol=1e-4, atol=1e-5)
    model.save(tmp_path / "f.safetensors")
    np.testing.assert_array_equal(pr.load(tmp_path / "f.safetensors").project(X), model.project(X))


def test_federated_refine_steps_must_be_auto_or_a_count(clustered):
    Q, A = clustered
    with pytest.raises(ValueError, match="refine_steps must be"):
        pr.FederatedProjection(n_clusters=2, refine_steps=-1, progress=False).fit(Q, A)
