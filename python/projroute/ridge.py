"""A general linear map fitted by least squares with a ridge penalty.

Unlike the Procrustes maps it needs no equal dimensions, so it can carry queries from
one embedding space into another (static-model queries into MiniLM answer space).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from projroute._estimator import LinearProjection, check_pairs
from projroute.procrustes import GlobalProjection
from projroute.validation import RIDGE_GRID, RetrievalTask, choose_alpha


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


class SpanRidge:
    """A cluster's ridge correction toward a base, for any ``alpha``: the ``delta``
    (d, d) minimising ``||Qc (B + delta) - Ac||^2 + alpha * m * ||delta||^2``, with ``m``
    the mean squared norm of the questions Qc (n_c, d). It lies in the span of the
    questions, so ``B + delta`` equals ``B`` outside it. Solved in that span (the dual):
    ``delta = Qc^T (Qc Qc^T + alpha m I)^-1 (Ac - Qc B)``, one eigendecomposition of the
    (n_c, n_c) kernel for every ``alpha``."""

    def __init__(self, Qc: np.ndarray, Ac: np.ndarray, base: np.ndarray) -> None:
        Q64 = np.asarray(Qc, np.float64)
        s, U = np.linalg.eigh(Q64 @ Q64.T)
        self.eig, self.m = np.maximum(s, 0.0), float(np.trace(Q64 @ Q64.T)) / len(Q64)
        self.left, self.right = Q64.T @ U, U.T @ (np.asarray(Ac, np.float64) - Q64 @ base)

    def delta(self, alpha: float) -> np.ndarray:
        """The correction (d, d) at ``alpha`` > 0, float64."""
        return (self.left / (self.eig + alpha * self.m)) @ self.right


class RidgeSystem:
    """The centred (or raw) normal equations of a ridge map toward a base, solved for
    any ``alpha``: ``W = B + (G + alpha * m * I)^-1 Qc^T (Ac - Qc B)``, ``B = 0`` without
    a base."""

    def __init__(self, Q: np.ndarray, A: np.ndarray, base: np.ndarray | None, center: bool) -> None:
        Q64, A64 = np.asarray(Q, np.float64), np.asarray(A, np.float64)
        d_q, d_a = Q64.shape[1], A64.shape[1]
        self.mu_q: np.ndarray = Q64.mean(axis=0) if center else np.zeros(d_q)
        self.mu_a: np.ndarray = A64.mean(axis=0) if center else np.zeros(d_a)
        self.center, self.base = center, base
        Qc, Ac = Q64 - self.mu_q, A64 - self.mu_a
        self.gram, self.cross = Qc.T @ Qc, Qc.T @ (Ac if base is None else Ac - Qc @ base)

    def solve(self, alpha: float) -> tuple[np.ndarray, np.ndarray | None]:
        """``(W, b)`` float64; ``b`` is None without centring."""
        W = ridge_solve(self.gram, self.cross, alpha)
        if self.base is not None:
            W += self.base
        return W, self.mu_a - self.mu_q @ W if self.center else None


class RidgeProjection(LinearProjection):
    """``p = q @ W + b``: least squares with a ridge penalty toward a base map.

    ``W`` minimises ``||Q W - A||^2 + alpha * m * ||W - B||^2`` (``m`` the mean
    eigenvalue of ``Q^T Q``): ``base="zero"`` (``B = 0``, any dimensions: the bridge
    between two encoders), ``"identity"`` (raw cosine) or ``"global"`` (the
    :class:`~projroute.procrustes.GlobalProjection` validated in the same regime); the
    last two need equal dimensions. A strong ridge keeps the base, so the map departs
    from it only as far as cross-validation finds it helps. With ``center=True`` (the
    default) ``W`` is fitted on centred pairs and the bias ``b = mean_A - mean_Q @ W``
    restores the offset. ``alpha`` (``alpha_``) is chosen from :data:`RIDGE_GRID` by
    ``cv``-fold cross-validation of retrieval MRR in the ``validation`` regime
    (near-ties to the stronger ridge), unless given as a number > 0. Served as a
    ``global`` model.

    Fitted: ``W_`` (d_q, d_a) float32, ``bias_`` (d_a,) or None, ``alpha_``, ``validation_``.
    """

    def __init__(
        self,
        alpha: float | str = "auto",
        base: str = "zero",
        center: bool = True,
        cv: int = 5,
        validation: str = "known-answers",
        random_state: int = 0,
    ) -> None:
        self.alpha = alpha
        self.base = base
        self.center = center
        self.cv = cv
        self.validation = validation
        self.random_state = random_state

    def _system(self, Q: np.ndarray, A: np.ndarray) -> RidgeSystem:
        if self.base == "zero":
            return RidgeSystem(Q, A, None, self.center)
        if self.base == "identity":
            return RidgeSystem(Q, A, np.eye(Q.shape[1]), self.center)
        B = GlobalProjection(validation=self.validation, random_state=self.random_state).fit(Q, A).W_
        return RidgeSystem(Q, A, B.astype(np.float64), self.center)

    def fit(self, Q: np.ndarray, A: np.ndarray) -> RidgeProjection:
        """Fit on pairs ``Q`` (n, d_q) and ``A`` (n, d_a) of query and answer embeddings."""
        Q, A = check_pairs(Q, A, same_dim=self.base != "zero")
        if self.base not in ("zero", "identity", "global"):
            raise ValueError(f"base must be 'zero', 'identity' or 'global', got {self.base!r}")

        def fold_scores(train: np.ndarray, task: RetrievalTask) -> list[np.ndarray]:
            system = self._system(Q[train], A[train])
            maps = [system.solve(alpha) for alpha in RIDGE_GRID]
            return [task.rr(task.queries @ W + (0.0 if b is None else b)) for W, b in maps]

        self.alpha_, self.validation_ = choose_alpha(
            self.alpha, Q, A, self.cv, self.random_state, fold_scores, self.validation
        )
        W, b = self._system(Q, A).solve(self.alpha_)
        self.W_ = W.astype(np.float32)
        self.bias_ = None if b is None else b.astype(np.float32)
        self._build(Q.shape[1], A.shape[1])
        return self

    def _config(self) -> dict[str, Any]:
        return {
            "fit": {
                "method": "ridge",
                "alpha": self.alpha_,
                "base": self.base,
                "validation": self.validation,
                "validation_mrr": self.validation_,
                "center": self.center,
            }
        }
