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
