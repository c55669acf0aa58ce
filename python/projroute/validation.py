"""Cross-validation that holds out whole questions, and the retrieval score used to
choose shrinkage: MRR of the held-out questions against all answers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from projroute.metrics import retrieval_metrics


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


class RetrievalTask:
    """Held-out questions (one row per distinct question) against every distinct answer.

    Q, A : (n, d) float32 pairs; val : row indices of the held-out pairs.
    """

    def __init__(self, Q: np.ndarray, A: np.ndarray, val: np.ndarray) -> None:
        corpus, answer_id = np.unique(A, axis=0, return_inverse=True)
        groups = question_groups(Q[val])
        first = np.unique(groups, return_index=True)[1]
        self.queries = Q[val][first]
        self.corpus = corpus.astype(np.float32)
        answer_id = answer_id.ravel()[val]
        self.gold = [sorted(set(answer_id[groups == g].tolist())) for g in range(len(first))]

    def mrr(self, P: np.ndarray) -> float:
        """MRR of projected queries ``P`` (m, d) over the corpus."""
        return retrieval_metrics(P, self.corpus, self.gold)["mrr"]


def cross_validate(
    Q: np.ndarray,
    A: np.ndarray,
    n_folds: int,
    random_state: int,
    fold_scores: Callable[[np.ndarray, RetrievalTask], Sequence[float]],
) -> np.ndarray:
    """Mean over folds of ``fold_scores(train_rows, held_out_task)`` (one score per
    candidate setting); folds hold out whole questions."""
    folds = group_folds(question_groups(Q), n_folds, random_state)
    return np.mean([fold_scores(train, RetrievalTask(Q, A, val)) for train, val in folds], axis=0)


def choose(grid: Sequence[float], scores: Sequence[float] | np.ndarray) -> float:
    """The grid value with the best score; ties go to the earliest (most shrunk)."""
    return float(grid[int(np.argmax(scores))])


#: Shrinkage values tried by cross-validation: 0 (the base map) to 1 (the fitted map).
SHRINKAGE_GRID = tuple(round(float(a), 2) for a in np.linspace(0.0, 1.0, 11))


def choose_shrinkage(
    shrinkage: float | str,
    Q: np.ndarray,
    A: np.ndarray,
    n_folds: int,
    random_state: int,
    fold_scores: Callable[[np.ndarray, RetrievalTask], Sequence[float]],
) -> tuple[float, dict[float, float]]:
    """(shrinkage, validation MRR per grid value): a number in [0, 1] as given (no
    validation), or for ``"auto"`` the :data:`SHRINKAGE_GRID` value whose
    ``fold_scores`` (one per grid value) are best in cross-validation."""
    if shrinkage == "auto":
        scores = cross_validate(Q, A, n_folds, random_state, fold_scores)
        return choose(SHRINKAGE_GRID, scores), dict(zip(SHRINKAGE_GRID, scores.tolist()))
    if isinstance(shrinkage, (int, float)) and 0.0 <= shrinkage <= 1.0:
        return float(shrinkage), {}
    raise ValueError(f"shrinkage must be 'auto' or in [0, 1], got {shrinkage!r}")
