"""A general linear map fitted by least squares with a ridge penalty.

Unlike the Procrustes maps it needs no equal dimensions, so it can carry queries from
one embedding space into another (static-model queries into MiniLM answer space).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from projroute._estimator import LinearProjection, check_pairs
from projroute.validation import RetrievalTask, choose, cross_validate

#: Ridge strengths tried by cross-validation, in units of the mean eigenvalue of
#: ``Q^T Q`` (scale-free), strongest first so that near-ties go to the stronger ridge.
RIDGE_GRID = (100.0, 10.0, 1.0, 0.3, 0.1, 0.03, 0.01, 0.001)


def ridge_solve(gram: np.ndarray, cross: np.ndarray, alpha: float) -> np.ndarray:
    """``W = (G + alpha * m * I)^-1 C`` (float64) from ``G = Q^T Q`` (d_q, d_q) and
    ``C = Q^T A`` (d_q, d_a), ``m`` the mean eigenvalue of ``G``."""
    G = np.array(gram, dtype=np.float64)
    G[np.diag_indices_from(G)] += alpha * np.trace(G) / len(G)
    return np.linalg.solve(G, np.asarray(cross, np.float64))


def ridge_map(Q: np.ndarray, A: np.ndarray, alpha: float) -> np.ndarray:
    """``W`` (d_q, d_a) minimising ``||Q W - A||^2 + alpha * m * ||W||^2``, with ``m``
    the mean eigenvalue of ``Q^T Q`` (so ``alpha`` is relative). Computed in float64."""
    Q64, A64 = np.asarray(Q, np.float64), np.asarray(A, np.float64)
    return ridge_solve(Q64.T @ Q64, Q64.T @ A64, alpha)


class RidgeProjection(LinearProjection):
    """``p = q @ W + b``: least squares with a ridge penalty, any dimensions.

    With ``center=True`` (the default) ``W`` is fitted on centred pairs and the bias
    ``b = mean_A - mean_Q @ W`` restores the offset. ``alpha`` (``alpha_``) is chosen
    from :data:`RIDGE_GRID` by the mean MRR of held-out questions in ``cv``-fold
    cross-validation over the distinct questions (ties to the stronger ridge), unless
    given as a number > 0. Served as a ``global`` model.

    Fitted: ``W_`` (d_q, d_a) float32, ``bias_`` (d_a,) or None, ``alpha_``, ``validation_``.
    """

    def __init__(self, alpha: float | str = "auto", center: bool = True, cv: int = 5, random_state: int = 0) -> None:
        self.alpha = alpha
        self.center = center
        self.cv = cv
        self.random_state = random_state

    def _solve(self, Q: np.ndarray, A: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray | None]:
        if not self.center:
            return ridge_map(Q, A, alpha), None
        mu_q, mu_a = Q.mean(axis=0, dtype=np.float64), A.mean(axis=0, dtype=np.float64)
        W = ridge_map(Q - mu_q, A - mu_a, alpha)
        return W, mu_a - mu_q @ W

    def fit(self, Q: np.ndarray, A: np.ndarray) -> RidgeProjection:
        """Fit on pairs ``Q`` (n, d_q) and ``A`` (n, d_a) of query and answer embeddings."""
        Q, A = check_pairs(Q, A)
        if self.alpha == "auto":

            def fold_scores(train: np.ndarray, task: RetrievalTask) -> list[float]:
                scores = []
                for alpha in RIDGE_GRID:
                    W, b = self._solve(Q[train], A[train], alpha)
                    scores.append(task.mrr(task.queries @ W + (0.0 if b is None else b)))
                return scores

            mrr = cross_validate(Q, A, self.cv, self.random_state, fold_scores)
            self.alpha_, self.validation_ = choose(RIDGE_GRID, mrr), dict(zip(RIDGE_GRID, mrr.tolist()))
        elif isinstance(self.alpha, (int, float)) and self.alpha > 0:
            self.alpha_, self.validation_ = float(self.alpha), {}
        else:
            raise ValueError(f"alpha must be 'auto' or a number > 0, got {self.alpha!r}")
        W, b = self._solve(Q, A, self.alpha_)
        self.W_ = W.astype(np.float32)
        self.bias_ = None if b is None else b.astype(np.float32)
        self._build(Q.shape[1], A.shape[1])
        return self

    def _config(self) -> dict[str, Any]:
        return {
            "fit": {"method": "ridge", "alpha": self.alpha_, "validation_mrr": self.validation_, "center": self.center}
        }
