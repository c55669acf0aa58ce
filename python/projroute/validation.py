"""Cross-validation for choosing a map's strength, in the regime the user deploys in,
and the retrieval score it uses: MRR of validation questions against all answers.

Two regimes (``validation=``):

- ``"new-answers"``: new questions whose answers are not in training. Each fold holds
  out whole questions with their answers; the map is fitted on the other folds.
- ``"known-answers"``: new phrasings of known questions, whose answers are in the index
  and in training (a FAQ). The map is fitted on every pair once; each training question
  is asked again as :data:`N_PARAPHRASES` augmented copies (:func:`paraphrase`), and the
  folds group those copies by question.

Every estimator defaults to ``"known-answers"``: a fitted model stores its training
answers as its search index (``save(path, answers=...)``, ``projroute fit``), so by
default it is searched for answers it was trained on. Say ``"new-answers"`` when the
index holds answers the training never saw.

The choice between grid values follows a paired one-standard-error rule over the
folds (:func:`choose`), so that near-ties do not flip with floating-point noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from projroute.metrics import query_ranks
from projroute.reference import unit_rows

VALIDATIONS = ("new-answers", "known-answers")

#: Known-answers regime: augmented copies per training question, and their mean cosine
#: to the original (a close paraphrase under a sentence encoder).
N_PARAPHRASES = 4
PARAPHRASE_COSINE = 0.85

#: Score differences below this are ties whatever the folds say (MRR units).
TIE_TOLERANCE = 1e-4


def check_validation(validation: str) -> None:
    if validation not in VALIDATIONS:
        raise ValueError(f"validation must be one of {VALIDATIONS}, got {validation!r}")


def question_groups(Q: np.ndarray) -> np.ndarray:
    """Group id per row of ``Q`` (n, d): identical question embeddings share a group."""
    return np.unique(np.asarray(Q), axis=0, return_inverse=True)[1].ravel()


def group_folds(groups: np.ndarray, n_folds: int, random_state: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_folds`` (train, validation) row-index pairs; each group is held out once, whole."""
    ids = np.unique(groups)
    if n_folds < 2 or len(ids) < 2 * n_folds:
        raise ValueError(
            f"cannot cross-validate {len(ids)} distinct questions in {n_folds} folds; "
            "give more data or a fixed shrinkage instead of 'auto'"
        )
    fold_of = np.empty(len(ids), dtype=np.int64)
    fold_of[np.random.default_rng(random_state).permutation(len(ids))] = np.arange(len(ids)) % n_folds
    fold = fold_of[np.searchsorted(ids, groups)]
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(n_folds)]


def paraphrase(Q: np.ndarray, n_copies: int, random_state: int) -> np.ndarray:
    """``n_copies`` augmented copies of each unit question (m, d) -> (m * n_copies, d),
    copies of a question adjacent: ``unit(q + s * z)`` with ``z`` Gaussian with the
    covariance of the questions themselves (drawn as a random mix of the centred
    questions, so it stays in their span) and ``s`` set so that the expected cosine to
    ``q`` is :data:`PARAPHRASE_COSINE`."""
    Qn = unit_rows(Q, dtype=np.float64)
    centred = Qn - Qn.mean(axis=0)
    spread = np.sum(centred**2) / len(Qn)  # trace of the covariance
    s = np.sqrt((PARAPHRASE_COSINE**-2 - 1.0) / max(spread, 1e-12))
    g = np.random.default_rng(random_state).standard_normal((len(Qn) * n_copies, len(Qn)))
    z = g @ centred / np.sqrt(len(Qn))
    return unit_rows(np.repeat(Qn, n_copies, axis=0) + s * z).astype(np.float32)


def first_rows(Q: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The first of ``rows`` for each distinct question among ``Q[rows]``."""
    return rows[np.unique(question_groups(Q[rows]), return_index=True)[1]]


class RetrievalTask:
    """Validation queries (m, d) against every distinct training answer.

    ``rows`` (m,): the training pair whose question each query stands for;
    ``fold`` (m,): the fold each query belongs to.
    """

    def __init__(self, Q: np.ndarray, A: np.ndarray, queries: np.ndarray, rows: np.ndarray, fold: np.ndarray) -> None:
        corpus, answer_id = np.unique(A, axis=0, return_inverse=True)
        answer_id, groups = answer_id.ravel(), question_groups(Q)
        answers = {g: sorted(set(answer_id[groups == g].tolist())) for g in np.unique(groups[rows])}
        self.queries, self.rows, self.fold = queries, rows, fold
        self.corpus = corpus.astype(np.float32)
        self.gold = [answers[g] for g in groups[rows]]

    @classmethod
    def held_out(cls, Q: np.ndarray, A: np.ndarray, val: np.ndarray) -> RetrievalTask:
        """The held-out pairs ``val``: one query per distinct question, all in fold 0."""
        first = first_rows(Q, val)
        return cls(Q, A, Q[first], first, np.zeros(len(first), np.int64))

    @classmethod
    def paraphrased(cls, Q: np.ndarray, A: np.ndarray, folds: Sequence[np.ndarray], random_state: int) -> RetrievalTask:
        """Augmented copies (:func:`paraphrase`) of each fold's distinct questions."""
        firsts = [first_rows(Q, val) for val in folds]
        rows = np.repeat(np.concatenate(firsts), N_PARAPHRASES)
        fold = np.repeat(np.arange(len(folds)), [len(f) * N_PARAPHRASES for f in firsts])
        queries = paraphrase(Q[np.concatenate(firsts)], N_PARAPHRASES, random_state)
        return cls(Q, A, queries, rows, fold)

    def rr(self, P: np.ndarray) -> np.ndarray:
        """Reciprocal rank (m,) of each projected query ``P`` (m, d) over the corpus."""
        return 1.0 / query_ranks(P, self.corpus, self.gold)


#: ``fold_scores(train_rows, task)``: one reciprocal-rank vector (m,) per candidate.
FoldScores = Callable[[np.ndarray, RetrievalTask], Sequence[np.ndarray]]


def cross_validate(
    Q: np.ndarray, A: np.ndarray, n_folds: int, random_state: int, fold_scores: FoldScores, validation: str
) -> np.ndarray:
    """MRR (n_folds, n_candidates) of each candidate on each fold, in the given regime
    (see the module docstring); ``fold_scores`` fits on ``train_rows`` and scores
    ``task``. Folds group whole questions."""
    folds = group_folds(question_groups(Q), n_folds, random_state)
    if validation == "new-answers":
        tasks = [(train, RetrievalTask.held_out(Q, A, val)) for train, val in folds]
        return np.array([np.mean(fold_scores(train, task), axis=1) for train, task in tasks])
    task = RetrievalTask.paraphrased(Q, A, [val for _, val in folds], random_state)
    rr = np.asarray(fold_scores(np.arange(len(Q)), task))
    return np.stack([rr[:, task.fold == f].mean(axis=1) for f in range(n_folds)])


def choose(grid: Sequence[float], scores: np.ndarray) -> float:
    """The first grid value (order grids simplest first) whose mean score is within one
    standard error of the best's, the error taken over the folds of the paired
    difference to the best, or within :data:`TIE_TOLERANCE`. ``scores``: (n_folds, len(grid))."""
    scores = np.asarray(scores, np.float64)
    mean = scores.mean(axis=0)
    best = int(np.argmax(mean))
    diff = scores[:, [best]] - scores
    se = diff.std(axis=0, ddof=1) / np.sqrt(len(scores)) if len(scores) > 1 else np.zeros(len(grid))
    return float(grid[int(np.flatnonzero(mean[best] - mean <= se + TIE_TOLERANCE)[0])])


#: Shrinkage values tried by cross-validation: 0 (the base map) to 1 (the fitted map).
SHRINKAGE_GRID = tuple(round(float(a), 2) for a in np.linspace(0.0, 1.0, 11))

#: Ridge strengths tried by cross-validation, relative to the mean eigenvalue of the
#: questions' Gram matrix (scale-free), strongest first.
RIDGE_GRID = (100.0, 10.0, 1.0, 0.3, 0.1, 0.03, 0.01, 0.001)


def select(
    value: float | str,
    grid: Sequence[float],
    allowed: Callable[[float], bool],
    expected: str,
    Q: np.ndarray,
    A: np.ndarray,
    n_folds: int,
    random_state: int,
    fold_scores: FoldScores,
    validation: str,
) -> tuple[float, dict[float, float]]:
    """(value, validation MRR per grid value): ``value`` as given (no validation) when
    ``allowed``, else for ``"auto"`` the ``grid`` value chosen by :func:`choose` from
    ``fold_scores`` (one per grid value) in cross-validation; anything else is a
    ValueError saying what was ``expected``."""
    check_validation(validation)
    if value == "auto":
        scores = cross_validate(Q, A, n_folds, random_state, fold_scores, validation)
        return choose(grid, scores), dict(zip(grid, scores.mean(axis=0).tolist()))
    if isinstance(value, (int, float)) and allowed(value):
        return float(value), {}
    raise ValueError(f"{expected}, got {value!r}")


def choose_shrinkage(
    shrinkage: float | str,
    Q: np.ndarray,
    A: np.ndarray,
    n_folds: int,
    random_state: int,
    fold_scores: FoldScores,
    validation: str,
) -> tuple[float, dict[float, float]]:
    """(shrinkage, validation MRR per grid value): a number in [0, 1] as given (no
    validation), or for ``"auto"`` the :data:`SHRINKAGE_GRID` value chosen by
    :func:`choose` from ``fold_scores`` (one per grid value) in cross-validation."""
    return select(
        shrinkage, SHRINKAGE_GRID, lambda v: 0.0 <= v <= 1.0, "shrinkage must be 'auto' or in [0, 1]",
        Q, A, n_folds, random_state, fold_scores, validation,
    )  # fmt: skip


def choose_alpha(
    alpha: float | str,
    Q: np.ndarray,
    A: np.ndarray,
    n_folds: int,
    random_state: int,
    fold_scores: FoldScores,
    validation: str,
) -> tuple[float, dict[float, float]]:
    """(ridge alpha, validation MRR per grid value): a number > 0 as given, or for
    ``"auto"`` the :data:`RIDGE_GRID` value chosen as in :func:`choose_shrinkage`."""
    return select(
        alpha, RIDGE_GRID, lambda v: v > 0.0, "alpha must be 'auto' or a number > 0",
        Q, A, n_folds, random_state, fold_scores, validation,
    )  # fmt: skip
