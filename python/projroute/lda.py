"""LDA multi-head projection: the flat-softmax teacher."""

from __future__ import annotations

from typing import Any

import numpy as np

from projroute._estimator import (
    RoutedProjection,
    check_pairs,
    check_temperature,
    check_top_k,
    resolve_top_k,
    top_k_record,
)
from projroute.clustering import cluster_pairs
from projroute.reference import unit_rows


class LdaProjection(RoutedProjection):
    """One head per k-means cluster, each with a centroid and an answer embedding.

    ``p = sum_k softmax(cos(q, c_k) / T)_k a_k`` over all heads (``top_k=None``, the
    flat softmax) or the ``top_k`` best, renormalised. ``c_k`` is the normalised mean
    question of cluster k, ``a_k`` its normalised mean answer. Clusters come from
    k-means on the answers (or questions); ``n_clusters="auto"`` uses the effective
    rank of the answer embeddings. An int ``top_k`` above an int ``n_clusters`` is a
    ValueError; with ``n_clusters="auto"`` it is clamped and the fit record says so.
    """

    kind = "lda"

    def __init__(
        self,
        n_clusters: int | str = "auto",
        temperature: float = 0.1,
        top_k: int | float | str | None = None,
        cluster_on: str = "answers",
        random_state: int = 0,
    ) -> None:
        self.n_clusters = n_clusters
        self.temperature = temperature
        self.top_k = top_k
        self.cluster_on = cluster_on
        self.random_state = random_state

    def fit(self, Q: np.ndarray, A: np.ndarray) -> LdaProjection:
        """Fit on pairs ``Q`` (n, d_q), ``A`` (n, d_a) of question and answer embeddings."""
        Q, A = check_pairs(Q, A)
        check_temperature(self.temperature)
        check_top_k(self.top_k, self.n_clusters)
        labels = cluster_pairs(Q, A, self.n_clusters, self.cluster_on, self.random_state)
        K = int(labels.max()) + 1
        Qn, An = unit_rows(Q), unit_rows(A)
        onehot = np.zeros((K, len(Q)), np.float32)
        onehot[labels, np.arange(len(Q))] = 1.0
        self.centroids_ = unit_rows(onehot @ Qn)
        self.answers_ = unit_rows(onehot @ An)
        self.top_k_, self.coverage_ = resolve_top_k(self.top_k, K)
        self._build(Q.shape[1], A.shape[1])
        return self

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"centroids": self.centroids_, "answers": self.answers_}

    def _config(self) -> dict[str, Any]:
        fit = {"cluster_on": self.cluster_on, **top_k_record(self.top_k, len(self.centroids_))}
        return {**self._routing_config(), "fit": fit}
