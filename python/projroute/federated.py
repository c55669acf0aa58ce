"""Federated projection: k-means clusters, one minimal Procrustes map per cluster,
softmax routing over the clusters' question centroids."""

from __future__ import annotations

from typing import Any

import numpy as np

from projroute._estimator import Projection, check_pairs, check_temperature, resolve_top_k
from projroute.clustering import cluster_pairs
from projroute.procrustes import SHRINKAGE_GRID, GlobalProjection
from projroute.reference import blend_maps, route_weights, unit_rows
from projroute.validation import RetrievalTask, choose, cross_validate


def cluster_delta(Qc: np.ndarray, Ac: np.ndarray, base: np.ndarray) -> np.ndarray:
    """The minimal correction ``P (R - base)`` of one cluster, shape (d, d).

    ``R`` is the Procrustes rotation of the cluster's pairs Qc, Ac (n_c, d) and ``P``
    projects onto the span of its questions, so ``base + delta`` equals ``base``
    outside that span: only the directions the cluster's data determine are changed.
    Computed in the span (rank r <= n_c): ``U_q (u v^T - U_q^T base)``.
    """
    U, s, _ = np.linalg.svd(np.asarray(Qc, np.float64).T, full_matrices=False)
    Uq = U[:, : int((s > s[0] * 1e-6).sum())]
    u, _, vt = np.linalg.svd((np.asarray(Qc, np.float64) @ Uq).T @ Ac, full_matrices=False)
    return Uq @ (u @ vt - Uq.T @ base)


class FederatedProjection(Projection):
    """Per-cluster Procrustes maps blended by softmax routing.

    Fitting: k-means on the answers (or questions) into ``n_clusters`` clusters
    (``"auto"``: the effective rank of the answer embeddings). Each cluster's
    routing centroid is its normalised mean question. Its map is
    ``W_k = B + lambda * P_k (R_k - B)``: equal to the base map ``B`` (the validated
    global map, or the identity) outside the span of the cluster's questions, the
    cluster's Procrustes rotation ``R_k`` inside it, shrunk toward ``B`` by
    ``lambda`` (``shrinkage_``), chosen by the mean MRR of held-out questions in
    ``cv``-fold cross-validation over the distinct questions. Clusters
    with fewer than ``min_cluster_size`` pairs keep ``B``.

    Serving: ``p = sum_k w_k(q) q @ W_k`` with ``w = softmax(cos(q, c_k) / T)`` over the
    ``top_k`` best clusters, renormalised (``top_k`` in (0, 1) is a coverage target).

    Fitted: ``centroids_`` (K, d), ``W_`` (K, d, d), ``labels_`` (n,) the cluster of
    each training pair, ``shrinkage_`` and ``validation_``.
    """

    kind = "federated"

    def __init__(
        self,
        n_clusters: int | str = "auto",
        temperature: float = 0.1,
        top_k: int | float | None = 10,
        cluster_on: str = "answers",
        base: str = "global",
        shrinkage: float | str = "auto",
        min_cluster_size: int = 2,
        cv: int = 5,
        random_state: int = 0,
        progress: bool = True,
    ) -> None:
        self.n_clusters = n_clusters
        self.temperature = temperature
        self.top_k = top_k
        self.cluster_on = cluster_on
        self.base = base
        self.shrinkage = shrinkage
        self.min_cluster_size = min_cluster_size
        self.cv = cv
        self.random_state = random_state
        self.progress = progress

    def _check_params(self) -> None:
        check_temperature(self.temperature)
        if self.base not in ("global", "identity"):
            raise ValueError(f"base must be 'global' or 'identity', got {self.base!r}")
        if self.shrinkage != "auto" and not (
            isinstance(self.shrinkage, (int, float)) and 0.0 <= self.shrinkage <= 1.0
        ):
            raise ValueError(f"shrinkage must be 'auto' or in [0, 1], got {self.shrinkage!r}")

    def _fit_parts(self, Q: np.ndarray, A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Base map (d, d), centroids (K, d), cluster corrections (K, d, d) and the
        cluster label of each pair (n,)."""
        from tqdm.auto import tqdm

        d = Q.shape[1]
        if self.base == "global":
            base = GlobalProjection(random_state=self.random_state).fit(Q, A).W_.astype(np.float64)
        else:
            base = np.eye(d)
        labels = cluster_pairs(Q, A, self.n_clusters, self.cluster_on, self.random_state)
        K = int(labels.max()) + 1
        Qn = unit_rows(Q)
        centroids = np.zeros((K, d), np.float32)
        deltas = np.zeros((K, d, d), np.float32)
        for k in tqdm(range(K), desc="fitting cluster maps", disable=not self.progress, leave=False):
            rows = labels == k
            centroids[k] = Qn[rows].mean(axis=0)
            if rows.sum() >= self.min_cluster_size:
                deltas[k] = cluster_delta(Q[rows], A[rows], base)
        return base.astype(np.float32), unit_rows(centroids), deltas, labels

    def fit(self, Q: np.ndarray, A: np.ndarray) -> FederatedProjection:
        """Fit on pairs ``Q`` (n, d), ``A`` (n, d) of question and answer embeddings."""
        Q, A = check_pairs(Q, A)
        if Q.shape[1] != A.shape[1]:
            raise ValueError(f"Procrustes maps need equal dimensions, got {Q.shape[1]} and {A.shape[1]}")
        self._check_params()
        self.validation_: dict[float, float] = {}
        if self.shrinkage == "auto":

            def fold_scores(train: np.ndarray, task: RetrievalTask) -> list[float]:
                # W_k is linear in lambda: project the base and the corrections once.
                base, centroids, deltas, _ = self._fit_parts(Q[train], A[train])
                X = task.queries
                w = route_weights(X, centroids, self.temperature, *resolve_top_k(self.top_k, len(centroids)))
                base_part, delta_part = X @ base, blend_maps(X, w, deltas)
                return [task.mrr(base_part + lam * delta_part) for lam in SHRINKAGE_GRID]

            scores = cross_validate(Q, A, self.cv, self.random_state, fold_scores)
            self.validation_ = dict(zip(SHRINKAGE_GRID, scores.tolist()))
            self.shrinkage_ = choose(SHRINKAGE_GRID, scores)
        else:
            self.shrinkage_ = float(self.shrinkage)
        base, self.centroids_, deltas, self.labels_ = self._fit_parts(Q, A)
        self.W_ = base[None] + np.float32(self.shrinkage_) * deltas
        self.top_k_, self.coverage_ = resolve_top_k(self.top_k, len(self.centroids_))
        self._build(Q.shape[1], A.shape[1])
        return self

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"centroids": self.centroids_, "W": self.W_}

    def _config(self) -> dict[str, Any]:
        return {
            **self._routing_config(),
            "fit": {"shrinkage": self.shrinkage_, "validation_mrr": self.validation_,
                    "base": self.base, "cluster_on": self.cluster_on,
                    "min_cluster_size": self.min_cluster_size,
                    "cluster_sizes": np.bincount(self.labels_, minlength=len(self.centroids_)).tolist()},
        }
