"""How faithfully a student reproduces its teacher on held-out queries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from projroute.distill.student import project_numpy
from projroute.distill.teacher import Teacher
from projroute.metrics import mean_cosine, retrieval_metrics
from projroute.reference import unit_rows


def top_k_ids(P: np.ndarray, corpus: np.ndarray, k: int) -> np.ndarray:
    """Indices (n, k) of the k corpus rows (m, D) most cosine-similar to each row of P (n, D)."""
    S = unit_rows(P) @ unit_rows(corpus).T
    return np.argpartition(-S, k - 1, axis=1)[:, :k]


def fidelity(
    teacher: Any,
    student: Any,
    queries: np.ndarray,
    corpus: np.ndarray,
    gold: Sequence[Sequence[int]] | None = None,
    k: int = 10,
) -> dict[str, Any]:
    """Compare student and teacher projections of held-out ``queries``.

    Parameters
    ----------
    teacher : object with ``project``
    student : torch module (run without gradients, float32) or object with ``project``
    queries : (n, D_in) float
    corpus : (m, D_out) float
        Answer embeddings to retrieve from.
    gold : n sequences of corpus indices, optional
    k : int
        Cut-off of the retrieval overlap (capped at m; the key keeps the ``k`` given).

    Returns
    -------
    dict
        ``cosine`` (mean row cosine), ``mse`` (mean squared difference per element),
        ``overlap@k`` (mean ``|top_k(teacher) & top_k(student)| / k`` over the rows) and with ``gold``
        ``teacher`` and ``student``: :func:`projroute.metrics.retrieval_metrics`.
    """
    T = Teacher(teacher).project(queries)
    S = project_numpy(student, queries) if isinstance(student, nn.Module) else Teacher(student).project(queries)
    k_used = min(k, len(corpus))
    top_t, top_s = top_k_ids(T, corpus, k_used), top_k_ids(S, corpus, k_used)
    overlap = np.mean([len(np.intersect1d(a, b)) / k_used for a, b in zip(top_t, top_s)])
    out: dict[str, Any] = {
        "cosine": mean_cosine(S, T),
        "mse": float(np.mean((S - T) ** 2)),
        f"overlap@{k}": float(overlap),
        "n": len(T),
    }
    if gold is not None:
        out["teacher"] = retrieval_metrics(T, corpus, gold)
        out["student"] = retrieval_metrics(S, corpus, gold)
    return out
