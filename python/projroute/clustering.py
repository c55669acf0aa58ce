"""Cluster-count suggestion and k-means over embeddings."""

from __future__ import annotations

import numpy as np

from projroute.reference import unit_rows


def effective_rank(X: np.ndarray) -> float:
    """``(sum s)^2 / sum s^2`` of the singular values ``s`` of ``X`` (n, d)."""
    s = np.linalg.svd(np.asarray(X, dtype=np.float64), compute_uv=False)
    return float(s.sum() ** 2 / (s**2).sum())


def resolve_n_clusters(n_clusters: int | str, X: np.ndarray) -> int:
    """An int as given, or ``"auto"``: the rounded effective rank of ``X``, at most n."""
    if n_clusters == "auto":
        return int(max(1, min(len(X), round(effective_rank(X)))))
    if not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1:
        raise ValueError(f"n_clusters must be a positive int or 'auto', got {n_clusters!r}")
    if n_clusters > len(X):
        raise ValueError(f"n_clusters={n_clusters} is more than the {len(X)} training pairs")
    return int(n_clusters)


def cluster_pairs(
    Q: np.ndarray, A: np.ndarray, n_clusters: int | str, cluster_on: str, random_state: int
) -> np.ndarray:
    """k-means labels 0..K-1 of the pairs (Q, A) (n, d), clustered on the normalised
    answers or questions; ``n_clusters="auto"`` is the effective rank of those."""
    if cluster_on not in ("answers", "questions"):
        raise ValueError(f"cluster_on must be 'answers' or 'questions', got {cluster_on!r}")
    X = unit_rows(A if cluster_on == "answers" else Q)
    return kmeans_labels(X, resolve_n_clusters(n_clusters, X), random_state)


def kmeans_labels(X: np.ndarray, n_clusters: int, random_state: int = 0) -> np.ndarray:
    """k-means (scikit-learn, k-means++) labels of the rows of ``X`` (n, d), relabelled
    0..K'-1 over the non-empty clusters."""
    try:
        from sklearn.cluster import KMeans
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("fitting needs scikit-learn: pip install 'projroute[fit]'") from err
    km = KMeans(n_clusters=n_clusters, n_init=3, random_state=random_state)
    labels = km.fit_predict(np.asarray(X, dtype=np.float32))
    return np.unique(labels, return_inverse=True)[1]
