"""Prototype selection: k real training examples, chosen in value space."""

from __future__ import annotations

import numpy as np

__all__ = ["nearest_examples", "select_prototypes"]


def select_prototypes(Z: np.ndarray, k: int, method: str, seed: int = 0) -> np.ndarray:
    """Indices (k,) int64 of k distinct rows of ``Z`` (n, d), float32 unit rows.

    ``kmedoids``: FasterPAM (the ``kmedoids`` package) on Euclidean distances;
    ``kmeans++``: k-means (k-means++ seeding) centres, each snapped to its nearest unused
    example; ``farthest``: farthest-first traversal from a seeded random start.
    """
    Z = np.asarray(Z, dtype=np.float32)
    n = len(Z)
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n examples ({n}), got k={k}")
    if method == "kmedoids":
        import kmedoids

        D = _distances(Z, Z)
        result = kmedoids.fasterpam(D, k, random_state=seed, n_cpu=1)
        return np.sort(np.asarray(result.medoids, dtype=np.int64))
    if method == "kmeans++":
        from sklearn.cluster import KMeans

        centres = KMeans(k, init="k-means++", n_init=1, random_state=seed).fit(Z).cluster_centers_
        return nearest_examples(centres.astype(np.float32), Z)
    if method == "farthest":
        rng = np.random.default_rng(seed)
        chosen = [int(rng.integers(n))]
        dist = _distances(Z, Z[chosen])[:, 0]
        for _ in range(k - 1):
            chosen.append(int(np.argmax(dist)))
            dist = np.minimum(dist, _distances(Z, Z[chosen[-1:]])[:, 0])
        return np.asarray(chosen, dtype=np.int64)
    raise ValueError(f"unknown prototype selector {method!r}")


def nearest_examples(points: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """For each of ``points`` (k, d), the index of its nearest row of ``Z`` (n, d) not
    already taken by an earlier point: (k,) int64, distinct (needs k <= n)."""
    D = _distances(points, Z)
    taken: set[int] = set()
    out = []
    for row in D:
        for j in np.argsort(row, kind="stable"):
            if int(j) not in taken:
                taken.add(int(j))
                out.append(int(j))
                break
    return np.asarray(out, dtype=np.int64)


def _distances(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(A), len(B)), float32."""
    sq = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * (A @ B.T)
    return np.sqrt(np.maximum(sq, 0.0)).astype(np.float32)
