"""Orthogonal Procrustes and the global projection.

Convention everywhere: row vectors, ``p = q @ W (+ bias)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from projroute._estimator import LinearProjection, check_pairs
from projroute.validation import SHRINKAGE_GRID, RetrievalTask, choose_shrinkage


def procrustes(Q: np.ndarray, A: np.ndarray, allow_reflection: bool = False) -> np.ndarray:
    """The orthogonal ``R`` (d, d) minimising ``||Q @ R - A||_F``.

    Q, A : (n, d). A proper rotation (det +1) unless ``allow_reflection``.
    """
    U, _, Vt = np.linalg.svd(np.asarray(Q, np.float64).T @ np.asarray(A, np.float64))
    if not allow_reflection and np.linalg.det(U) * np.linalg.det(Vt) < 0:
        U[:, -1] = -U[:, -1]
    return U @ Vt


def least_squares_scale(Q: np.ndarray, A: np.ndarray, R: np.ndarray) -> float:
    """The isotropic ``s`` minimising ``||s * Q @ R - A||_F`` for a fixed ``R``."""
    return float(np.sum((Q @ R) * A) / np.sum(Q * Q))


def cluster_delta(Qc: np.ndarray, Ac: np.ndarray, base: np.ndarray) -> np.ndarray:
    """The minimal correction ``P (R - base)`` of one cluster, shape (d, d).

    ``R`` is the Procrustes rotation of the cluster's pairs Qc, Ac (n_c, d) and ``P``
    projects onto the span of its questions, so ``base + delta`` equals ``base``
    outside that span: only the directions the cluster's data determine are changed.
    Computed in the span (rank r <= n_c): ``U_q (u v^T - U_q^T base)``.
    """
    Uq = question_span(Qc)
    u, _, vt = np.linalg.svd((np.asarray(Qc, np.float64) @ Uq).T @ Ac, full_matrices=False)
    return Uq @ (u @ vt - Uq.T @ base)


def question_span(Qc: np.ndarray) -> np.ndarray:
    """An orthonormal basis (d, r) of the span of the questions Qc (n_c, d): the left
    singular vectors of Qc^T above 1e-6 of the largest singular value. float64."""
    U, s, _ = np.linalg.svd(np.asarray(Qc, np.float64).T, full_matrices=False)
    return U[:, : int((s > s[0] * 1e-6).sum())]


class GlobalProjection(LinearProjection):
    """One orthogonal Procrustes map for every query, shrunk toward the identity.

    ``W = (1 - alpha) * I + alpha * s * R`` where ``R`` is the Procrustes rotation,
    ``s`` an optional least-squares scale, and ``alpha`` (``shrinkage_``) is chosen by
    ``cv``-fold cross-validation of retrieval MRR in the ``validation`` regime (see
    :mod:`projroute.validation`), unless given as a number. With ``center=True`` the map is fitted on centred data
    and the translation is kept as a bias: ``p = q @ W + (mean_A - mean_Q @ W)``.

    Parameters
    ----------
    shrinkage : "auto" or float in [0, 1]
    allow_reflection : bool, allow det(R) = -1
    scale : bool, fit the isotropic scale ``s`` (else 1)
    center : bool, centre Q and A before fitting and keep a bias
    """

    def __init__(
        self,
        shrinkage: float | str = "auto",
        allow_reflection: bool = False,
        scale: bool = False,
        center: bool = False,
        cv: int = 5,
        validation: str = "known-answers",
        random_state: int = 0,
    ) -> None:
        self.shrinkage = shrinkage
        self.allow_reflection = allow_reflection
        self.scale = scale
        self.center = center
        self.cv = cv
        self.validation = validation
        self.random_state = random_state

    def _solve(self, Q: np.ndarray, A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Full-strength map ``s * R`` and the means it was fitted around."""
        d = Q.shape[1]
        mu_q = Q.mean(axis=0) if self.center else np.zeros(d, np.float32)
        mu_a = A.mean(axis=0) if self.center else np.zeros(d, np.float32)
        Qc, Ac = Q - mu_q, A - mu_a
        R = procrustes(Qc, Ac, self.allow_reflection)
        s = least_squares_scale(Qc, Ac, R) if self.scale else 1.0
        return s * R, mu_q, mu_a

    @staticmethod
    def _shrunk(M: np.ndarray, alpha: float) -> np.ndarray:
        return (1.0 - alpha) * np.eye(len(M)) + alpha * M

    def fit(self, Q: np.ndarray, A: np.ndarray) -> GlobalProjection:
        """Fit on pairs ``Q`` (n, d), ``A`` (n, d) of question and answer embeddings."""
        Q, A = check_pairs(Q, A, same_dim=True)

        def fold_scores(train: np.ndarray, task: RetrievalTask) -> list[np.ndarray]:
            M, mu_q, mu_a = self._solve(Q[train], A[train])
            return [task.rr((task.queries - mu_q) @ self._shrunk(M, a) + mu_a) for a in SHRINKAGE_GRID]

        self.shrinkage_, self.validation_ = choose_shrinkage(
            self.shrinkage, Q, A, self.cv, self.random_state, fold_scores, self.validation
        )
        M, mu_q, mu_a = self._solve(Q, A)
        self.W_ = self._shrunk(M, self.shrinkage_).astype(np.float32)
        self.bias_ = (mu_a - mu_q @ self.W_).astype(np.float32) if self.center else None
        self._build(Q.shape[1], A.shape[1])
        return self

    def _config(self) -> dict[str, Any]:
        return {
            "fit": {
                "shrinkage": self.shrinkage_,
                "validation": self.validation,
                "validation_mrr": self.validation_,
                "scale": self.scale,
                "center": self.center,
                "allow_reflection": self.allow_reflection,
            }
        }
