"""Federated projection: k-means clusters, one minimal map per cluster (a Procrustes
rotation or a ridge least-squares correction), softmax routing over the clusters'
question centroids."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from projroute import _format
from projroute._estimator import (
    RoutedProjection,
    check_pairs,
    check_temperature,
    check_top_k,
    resolve_top_k,
    top_k_record,
)
from projroute.clustering import cluster_pairs
from projroute.contrastive import BATCH_SIZE, LEARNING_RATE, STEPS_GRID, TEMPERATURE, infonce_federated_steps
from projroute.procrustes import GlobalProjection, cluster_delta, question_span
from projroute.reference import blend_maps, route_questions, route_weights, routing_entropy, unit_rows
from projroute.ridge import SpanRidge
from projroute.validation import (
    RIDGE_GRID,
    SHRINKAGE_GRID,
    RetrievalTask,
    choose_alpha,
    choose_shrinkage,
    select,
)


class FederatedProjection(RoutedProjection):
    """Per-cluster Procrustes maps blended by softmax routing.

    Fitting: k-means on the answers (or questions) into ``n_clusters`` clusters
    (``"auto"``: the effective rank of the answer embeddings). Each cluster's
    routing centroid is its normalised mean question. Its map is
    ``W_k = B + lambda * P_k (R_k - B)``: equal to the base map ``B`` (the validated
    global map, or the identity) outside the span of the cluster's questions, the
    cluster's Procrustes rotation ``R_k`` inside it, shrunk toward ``B`` by
    ``lambda`` (``shrinkage_``), chosen by ``cv``-fold cross-validation of retrieval MRR
    in the ``validation`` regime, ``"new-answers"`` or ``"known-answers"`` (see
    :mod:`projroute.validation`). With ``cluster_map="ridge"`` the correction is
    instead the least-squares map toward ``B`` inside that span, with a ridge
    ``alpha`` (``alpha_``) chosen the same way (:class:`~projroute.ridge.SpanRidge`): it
    can also rescale directions, where a rotation cannot. Clusters
    with fewer than ``min_cluster_size`` pairs keep ``B``.

    ``refine_steps`` (default 0: off) refines the fitted maps contrastively, as the
    served blend: InfoNCE of ``Σ_k w_k(q) q W_k`` against every distinct training answer
    (:func:`~projroute.contrastive.infonce_federated_steps`), the common base map for
    every query and each cluster's correction only inside its questions' span.
    ``"auto"`` chooses the number of Adam steps from
    :data:`~projroute.contrastive.STEPS_GRID` by the same cross-validation (0 keeps the
    fitted maps, so the refinement stays only where it raises the validation MRR).

    Serving: ``p = sum_k w_k(q) q @ W_k`` with ``w = softmax(cos(q, c_k) / T)`` over the
    ``top_k`` best clusters, renormalised (``top_k`` in (0, 1) is a coverage target;
    ``"auto"``: 10, or all clusters when there are fewer). An int ``top_k`` above an int
    ``n_clusters`` is a ValueError; with ``n_clusters="auto"`` it is clamped to the
    clusters found, and the fit record notes it (``top_k_requested``).
    With ``routing="questions"`` the softmax runs over all training questions and a
    cluster's weight is the sum over its questions, optionally sharpened by a second
    softmax at ``cluster_temperature``. ``prior`` weights the softmax,
    ``w_i ∝ p_i exp(s_i / T)``: an array (n,) with one weight > 0 per training pair,
    ``"sizes"`` (ones: a centroid's prior is its cluster size) or ``"entropy"``
    (``1 - H_i / ln K`` of each pair's question under centroid routing, floored at 1e-3:
    confident questions count more). Centroid routing sums the pairs' priors per
    cluster. See :mod:`projroute.reference` for the exact definitions.

    Fitted: ``centroids_`` (K, d), ``W_`` (K, d, d), ``labels_`` (n,) the cluster of
    each training pair, ``shrinkage_`` (Procrustes) or ``alpha_`` (ridge), and
    ``validation_`` (mean validation MRR per grid value), ``refine_steps_`` and
    ``refine_validation_``. Every map is the base plus a correction inside its
    cluster's question span, so it is served and saved factored, ``W_k = B + U_k M_k``
    (``maps_``: the tensors ``W.base``, ``W.U``, ``W.M``; ``ranks_`` (K,) the r_k), where
    that stores fewer floats than ``W_`` (``ranks_`` None: ``W`` whole). A query then
    reads ``D^2 + Σ_k r_k 2D`` floats of maps, not ``top_k D^2``.
    """

    kind = "federated"

    def __init__(
        self,
        n_clusters: int | str = "auto",
        temperature: float = 0.1,
        top_k: int | float | str | None = "auto",
        cluster_on: str = "answers",
        routing: str = "centroids",
        cluster_temperature: float | None = None,
        prior: str | np.ndarray | None = None,
        base: str = "global",
        shrinkage: float | str = "auto",
        cluster_map: str = "procrustes",
        alpha: float | str = "auto",
        min_cluster_size: int = 2,
        refine_steps: int | str = 0,
        cv: int = 5,
        validation: str = "known-answers",
        random_state: int = 0,
        progress: bool = True,
    ) -> None:
        self.n_clusters = n_clusters
        self.temperature = temperature
        self.top_k = top_k
        self.cluster_on = cluster_on
        self.routing = routing
        self.cluster_temperature = cluster_temperature
        self.prior = prior
        self.base = base
        self.shrinkage = shrinkage
        self.cluster_map = cluster_map
        self.alpha = alpha
        self.min_cluster_size = min_cluster_size
        self.refine_steps = refine_steps
        self.cv = cv
        self.validation = validation
        self.random_state = random_state
        self.progress = progress

    def _check_params(self) -> None:
        check_temperature(self.temperature)
        check_top_k(self.top_k, self.n_clusters)
        if self.base not in ("global", "identity"):
            raise ValueError(f"base must be 'global' or 'identity', got {self.base!r}")
        if self.cluster_map not in ("procrustes", "ridge"):
            raise ValueError(f"cluster_map must be 'procrustes' or 'ridge', got {self.cluster_map!r}")
        if self.routing not in ("centroids", "questions"):
            raise ValueError(f"routing must be 'centroids' or 'questions', got {self.routing!r}")
        if self.cluster_temperature is not None:
            if self.routing != "questions":
                raise ValueError("cluster_temperature applies to routing='questions' only")
            check_temperature(self.cluster_temperature)
        if isinstance(self.prior, str) and self.prior not in ("sizes", "entropy"):
            raise ValueError(f"prior must be None, 'sizes', 'entropy' or an array, got {self.prior!r}")
        if isinstance(self.prior, str) and self.prior == "sizes" and self.routing == "questions":
            raise ValueError(
                "prior='sizes' applies to centroid routing; per-question routing "
                "already weighs each cluster by its questions"
            )

    def _pair_prior(self, Q: np.ndarray, centroids: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
        """The prior of each training pair ``rows`` (n,), or None."""
        if self.prior is None:
            return None
        if isinstance(self.prior, str) and self.prior == "sizes":
            return np.ones(len(rows), np.float32)
        if isinstance(self.prior, str):  # "entropy"
            w = route_weights(Q, centroids, self.temperature, len(centroids))
            return np.maximum(1.0 - routing_entropy(w), 1e-3).astype(np.float32)
        return np.asarray(self.prior, np.float32)[rows]

    def _routing_tensors(
        self, Q: np.ndarray, labels: np.ndarray, centroids: np.ndarray, rows: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Routing tensors beyond the centroids, for pairs ``rows`` of Q (n, d) with
        cluster ``labels`` (n,): the questions sorted by cluster and the prior."""
        prior = self._pair_prior(Q, centroids, rows)
        if self.routing == "centroids":
            return {} if prior is None else {"prior": np.bincount(labels, prior, len(centroids)).astype(np.float32)}
        order = np.argsort(labels, kind="stable")
        tensors = {"questions": unit_rows(Q[order])}
        if prior is not None:
            tensors["prior"] = prior[order]
        return tensors

    def _weights(
        self, X: np.ndarray, centroids: np.ndarray, labels: np.ndarray, routing: dict[str, np.ndarray]
    ) -> np.ndarray:
        """Routing weights (B, K) of queries X (B, d), by the numpy reference."""
        K = len(centroids)
        top_k, coverage = resolve_top_k(self.top_k, K)
        if self.routing == "questions":
            return route_questions(
                X,
                routing["questions"],
                np.bincount(labels, minlength=K),
                self.temperature,
                top_k,
                coverage,
                routing.get("prior"),
                self.cluster_temperature,
            )
        return route_weights(X, centroids, self.temperature, top_k, coverage, routing.get("prior"))

    def _fit_parts(
        self, Q: np.ndarray, A: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, Callable[[float], np.ndarray], np.ndarray]:
        """Base map (d, d), centroids (K, d), the cluster corrections (K, d, d) as a
        function of the strength (shrinkage or alpha) and the cluster label of each
        pair (n,)."""
        from tqdm.auto import tqdm

        d = Q.shape[1]
        if self.base == "global":
            glob = GlobalProjection(validation=self.validation, random_state=self.random_state)
            base = glob.fit(Q, A).W_.astype(np.float64)
        else:
            base = np.eye(d)
        labels = cluster_pairs(Q, A, self.n_clusters, self.cluster_on, self.random_state)
        K = int(labels.max()) + 1
        Qn = unit_rows(Q)
        centroids = np.zeros((K, d), np.float32)
        deltas = np.zeros((K, d, d), np.float32)
        ridges: dict[int, SpanRidge] = {}
        for k in tqdm(range(K), desc="fitting cluster maps", disable=not self.progress, leave=False):
            rows = labels == k
            centroids[k] = Qn[rows].mean(axis=0)
            if rows.sum() < self.min_cluster_size:
                continue
            if self.cluster_map == "ridge":
                ridges[k] = SpanRidge(Q[rows], A[rows], base)
            else:
                deltas[k] = cluster_delta(Q[rows], A[rows], base)

        def corrections(strength: float) -> np.ndarray:
            if self.cluster_map == "procrustes":
                return np.float32(strength) * deltas
            out = np.zeros_like(deltas)
            for k, ridge in ridges.items():
                out[k] = ridge.delta(strength)
            return out

        return base.astype(np.float32), unit_rows(centroids), corrections, labels

    def _refine(
        self,
        Q: np.ndarray,
        A: np.ndarray,
        train: np.ndarray,
        parts: tuple[np.ndarray, np.ndarray, Callable[[float], np.ndarray], np.ndarray],
        strength: float,
        steps: tuple[int, ...],
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The base (d, d) and maps (K, d, d) fitted on the pairs ``train`` (``parts`` at
        ``strength``) after each count in ``steps`` of contrastive refinement on those
        pairs."""
        base, centroids, corrections, labels = parts
        Qt, At = Q[train], A[train]
        w = self._weights(Qt, centroids, labels, self._routing_tensors(Qt, labels, centroids, train))
        spans = [
            question_span(Qt[labels == k]) if (labels == k).sum() >= self.min_cluster_size else None
            for k in range(len(centroids))
        ]
        return infonce_federated_steps(
            Qt, At, w, base, corrections(strength), spans, steps, TEMPERATURE, LEARNING_RATE, BATCH_SIZE,
            self.random_state, self.progress,
        )  # fmt: skip

    def fit(self, Q: np.ndarray, A: np.ndarray) -> FederatedProjection:
        """Fit on pairs ``Q`` (n, d), ``A`` (n, d) of question and answer embeddings."""
        Q, A = check_pairs(Q, A, same_dim=True)
        if self.prior is not None and not isinstance(self.prior, str):
            prior = np.asarray(self.prior)
            if prior.shape != (len(Q),) or not (np.isfinite(prior).all() and (prior > 0).all()):
                raise ValueError(
                    f"a prior array needs one finite weight > 0 per pair ({len(Q)},), got shape {prior.shape}"
                )
        self._check_params()

        ridge = self.cluster_map == "ridge"
        # Known-answers validation fits on every pair: that fit is the final one too.
        on_all_pairs: list[tuple[np.ndarray, np.ndarray, Callable[[float], np.ndarray], np.ndarray]] = []

        def fold_scores(train: np.ndarray, task: RetrievalTask) -> list[np.ndarray]:
            parts = self._fit_parts(Q[train], A[train])
            if len(train) == len(Q):
                on_all_pairs.append(parts)
            base, centroids, corrections, labels = parts
            X = task.queries
            w = self._weights(X, centroids, labels, self._routing_tensors(Q[train], labels, centroids, train))
            if ridge:
                return [task.rr(X @ base + blend_maps(X, w, corrections(a))) for a in RIDGE_GRID]
            # Procrustes corrections are linear in lambda: blend them once.
            base_part, delta_part = X @ base, blend_maps(X, w, corrections(1.0))
            return [task.rr(base_part + lam * delta_part) for lam in SHRINKAGE_GRID]

        choose_strength = choose_alpha if ridge else choose_shrinkage
        strength, self.validation_ = choose_strength(
            self.alpha if ridge else self.shrinkage, Q, A, self.cv, self.random_state, fold_scores, self.validation
        )
        if ridge:
            self.alpha_ = strength
        else:
            self.shrinkage_ = strength

        def parts_on(train: np.ndarray) -> tuple[np.ndarray, np.ndarray, Callable[[float], np.ndarray], np.ndarray]:
            return on_all_pairs[0] if on_all_pairs and len(train) == len(Q) else self._fit_parts(Q[train], A[train])

        def refine_scores(train: np.ndarray, task: RetrievalTask) -> list[np.ndarray]:
            parts = parts_on(train)
            _, centroids, _, labels = parts
            X = task.queries
            w = self._weights(X, centroids, labels, self._routing_tensors(Q[train], labels, centroids, train))
            return [task.rr(blend_maps(X, w, W)) for _, W in self._refine(Q, A, train, parts, strength, STEPS_GRID)]

        steps, self.refine_validation_ = select(
            self.refine_steps, STEPS_GRID, lambda v: isinstance(v, int) and v >= 0,
            "refine_steps must be 'auto' or an int >= 0", Q, A, self.cv, self.random_state, refine_scores,
            self.validation,
        )  # fmt: skip
        self.refine_steps_ = int(steps)
        all_rows = np.arange(len(Q))
        parts = parts_on(all_rows)
        base, self.centroids_, corrections, self.labels_ = parts
        self.routing_ = self._routing_tensors(Q, self.labels_, self.centroids_, all_rows)
        if self.refine_steps_:
            ((base, W),) = self._refine(Q, A, all_rows, parts, strength, (self.refine_steps_,))
            self.W_ = W.astype(np.float32)
        else:
            self.W_ = base[None] + corrections(strength)
        self._store_maps(Q, base)
        self.top_k_, self.coverage_ = resolve_top_k(self.top_k, len(self.centroids_))
        self._build(Q.shape[1], A.shape[1])
        return self

    def _store_maps(self, Q: np.ndarray, base: np.ndarray) -> None:
        """Keep the maps factored, ``W_k = base + U_k M_k`` with ``U_k`` the span of
        cluster k's questions (empty for a cluster that keeps the base), where that
        stores fewer floats than ``W_`` (so also reads fewer per query); else whole."""
        d = Q.shape[1]
        counts = np.bincount(self.labels_, minlength=len(self.centroids_))
        spans = [
            question_span(Q[self.labels_ == k]) if n >= self.min_cluster_size else np.zeros((d, 0))
            for k, n in enumerate(counts)
        ]
        factors, ranks = _format.factor_maps(self.W_, base, spans)
        smaller = sum(t.size for t in factors.values()) < self.W_.size
        self.maps_ = factors if smaller else {_format.WEIGHTS_TENSOR: self.W_}
        self.ranks_ = ranks if smaller else None

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"centroids": self.centroids_, **self.maps_, **self.routing_}

    def _config(self) -> dict[str, Any]:
        questions = (
            {"question_counts": np.bincount(self.labels_).tolist(), "cluster_temperature": self.cluster_temperature}
            if self.routing == "questions"
            else {}
        )
        return {
            **self._routing_config(),
            **{k: v for k, v in questions.items() if v is not None},
            **({"ranks": self.ranks_} if self.ranks_ is not None else {}),
            "fit": {
                "cluster_map": self.cluster_map,
                **({"alpha": self.alpha_} if self.cluster_map == "ridge" else {"shrinkage": self.shrinkage_}),
                "refine_steps": self.refine_steps_,
                **({"refine_validation_mrr": self.refine_validation_} if self.refine_validation_ else {}),
                "validation": self.validation,
                "validation_mrr": self.validation_,
                "base": self.base,
                "cluster_on": self.cluster_on,
                "min_cluster_size": self.min_cluster_size,
                "cluster_sizes": np.bincount(self.labels_, minlength=len(self.centroids_)).tolist(),
                **top_k_record(self.top_k, len(self.centroids_)),
            },
        }
