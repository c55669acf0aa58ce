"""Regime-aware cross-validation and the one-standard-error choice (projroute.validation)."""

from __future__ import annotations

import numpy as np
import pytest

import projroute as pr
from projroute.reference import unit_rows
from projroute.validation import (
    N_PARAPHRASES,
    PARAPHRASE_COSINE,
    SHRINKAGE_GRID,
    RetrievalTask,
    choose,
    group_folds,
    paraphrase,
    question_groups,
)

from helpers import unit


def test_choose_takes_the_simplest_value_within_one_paired_standard_error():
    # Candidate 2 is best on average, but candidate 1 trails it by less than the
    # spread of their paired difference over the folds: 1 is chosen.
    scores = np.array([[0.50, 0.80, 0.81], [0.50, 0.82, 0.80], [0.50, 0.79, 0.82], [0.50, 0.81, 0.81]])
    assert choose((0.0, 0.5, 1.0), scores) == 0.5
    # The best wins on every fold by the same clear margin: its paired error is 0.
    scores = np.array([[0.50, 0.70, 0.80], [0.60, 0.72, 0.82], [0.40, 0.69, 0.79]])
    assert choose((0.0, 0.5, 1.0), scores) == 1.0


def test_choose_is_stable_under_tiny_perturbations():
    """Near-flat curves (the StackFAQ shape): 1e-6 noise never changes the choice."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        curve = np.cumsum(rng.uniform(0.0, 2e-3, size=11))
        scores = curve + rng.normal(0, 2e-3, size=(5, 1)) + rng.normal(0, 5e-4, size=(5, 11))
        chosen = choose(SHRINKAGE_GRID, scores)
        for _ in range(5):
            assert choose(SHRINKAGE_GRID, scores + rng.normal(0, 1e-6, size=scores.shape)) == chosen


@pytest.mark.parametrize("validation", ["new-answers", "known-answers"])
def test_a_fit_with_maps_perturbed_by_1e6_chooses_the_same_shrinkage(validation):
    rng = np.random.default_rng(1)
    Q = unit(rng, 240, 16)
    A = unit_rows(Q @ np.linalg.qr(rng.normal(size=(16, 16)))[0] + 0.8 * rng.normal(size=(240, 16)))
    fit = pr.FederatedProjection(n_clusters=6, validation=validation, progress=False)
    base = fit.fit(Q, A).shrinkage_
    for seed in range(3):
        noise = np.random.default_rng(seed + 10).normal(0, 1e-6, size=(2,) + Q.shape).astype(np.float32)
        again = pr.FederatedProjection(n_clusters=6, validation=validation, progress=False)
        assert again.fit(Q + noise[0], A + noise[1]).shrinkage_ == base


def test_paraphrases_sit_at_the_stated_cosine_inside_the_questions_span():
    rng = np.random.default_rng(2)
    Q = unit_rows(rng.normal(size=(300, 8)) @ rng.normal(size=(8, 32)))  # rank 8 in 32-d
    P = paraphrase(Q, 3, random_state=0)
    assert P.shape == (900, 32) and P.dtype == np.float32
    cos = np.sum(P * np.repeat(Q, 3, axis=0), axis=1)
    assert abs(cos.mean() - PARAPHRASE_COSINE) < 0.03
    span = np.linalg.pinv(Q.astype(np.float64), rcond=1e-6) @ Q  # projector onto the questions' span
    residual = P - P @ span
    assert np.abs(residual).max() < 1e-4
    np.testing.assert_array_equal(paraphrase(Q, 3, random_state=0), P)  # seeded


def test_known_answers_tasks_ask_every_question_again_with_its_answers_as_gold():
    rng = np.random.default_rng(3)
    Qd, Ad = unit(rng, 40, 8), unit(rng, 100, 8)
    which = np.repeat(np.arange(40), [2, 3] * 20)  # 100 pairs: 2 or 3 answers per question
    Q, A = Qd[which], Ad
    folds = [val for _, val in group_folds(question_groups(Q), 5, 0)]
    task = RetrievalTask.paraphrased(Q, A, folds, random_state=0)
    assert len(task.queries) == 40 * N_PARAPHRASES and len(task.corpus) == 100
    for query_row, gold, fold in zip(task.rows, task.gold, task.fold):
        expected = A[which == which[query_row]]
        np.testing.assert_array_equal(np.sort(task.corpus[gold], axis=0), np.sort(expected, axis=0))
        assert query_row in folds[fold]


def test_the_regimes_disagree_where_answers_are_memorised_not_predicted():
    """Answers = a global rotation of the questions plus noise: the cluster corrections
    can only memorise the noise. That does not predict new answers (new-answers keeps
    the global base), but it finds known answers from close paraphrases (known-answers
    keeps the corrections)."""
    rng = np.random.default_rng(4)
    Q = unit(rng, 300, 24)
    A = unit_rows(Q @ np.linalg.qr(rng.normal(size=(24, 24)))[0] + 0.5 * rng.normal(size=(300, 24)))
    new = pr.FederatedProjection(n_clusters=30, validation="new-answers", progress=False)
    known = pr.FederatedProjection(n_clusters=30, validation="known-answers", progress=False)
    assert new.fit(Q, A).shrinkage_ <= 0.2
    assert known.fit(Q, A).shrinkage_ >= 0.8
    assert known.config_["fit"]["validation"] == "known-answers"


@pytest.mark.parametrize(
    "make",
    [
        lambda v: pr.GlobalProjection(validation=v),
        lambda v: pr.FederatedProjection(validation=v, progress=False),
        lambda v: pr.RidgeProjection(validation=v),
    ],
)
def test_an_unknown_regime_is_a_value_error(make):
    rng = np.random.default_rng(5)
    Q = unit(rng, 40, 8)
    with pytest.raises(ValueError, match="validation must be one of"):
        make("paraphrases").fit(Q, Q)
