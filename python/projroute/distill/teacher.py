"""A uniform view of a teacher: a fitted projroute estimator, a loaded ``Projector``
of any kind, or any object with ``project`` (and optionally ``route``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from projroute._core import FlatIndex
from projroute._estimator import INDEX_TENSOR

KEYED_KINDS = ("tree", "hierarchical")


class Teacher:
    """What distillation needs from a teacher.

    Parameters
    ----------
    model : object
        Has ``project(X) -> (B, D_out)``; optionally ``route(X) -> (B, K) or None``.
        A projroute estimator (``projector_``) or ``Projector`` (``tensors()``,
        ``kind``) also gives its kind, centroids and parameter count.
    keys, key_queries : sequence of str, (n, D_in) float
        For keyed teachers (``tree``, ``hierarchical``), which pick a map by a key per
        query: the keys of known queries. Any query is then served with the key of its
        nearest known query (cosine), so the teacher is a function of the query alone,
        which is what a student can learn.
    """

    def __init__(self, model: Any, keys: Sequence[str] | None = None, key_queries: np.ndarray | None = None) -> None:
        self.model = model
        core = getattr(model, "projector_", model)
        tensors = core.tensors() if hasattr(core, "tensors") else {}
        #: Model tensors without a stored answer index: name -> float32 array.
        self.tensors: dict[str, np.ndarray] = {k: v for k, v in tensors.items() if k != INDEX_TENSOR}
        self.kind: str = getattr(core, "kind", type(model).__name__)
        self.keys: list[str] | None = None
        if self.kind in KEYED_KINDS:
            if keys is None or key_queries is None:
                raise ValueError(f"a `{self.kind}` teacher picks its map by a key per query: give the keys "
                                 "of the training queries (distill(..., keys=...))")
            if len(keys) != len(key_queries):
                raise ValueError(f"{len(keys)} keys for {len(key_queries)} queries")
            self.keys, self._key_index = list(keys), FlatIndex(np.asarray(key_queries, np.float32))

    def project(self, X: np.ndarray) -> np.ndarray:
        """Teacher outputs (B, D_out) float32 for queries ``X`` (B, D_in)."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        if self.keys is None:
            return np.asarray(self.model.project(X), dtype=np.float32)
        nearest = self._key_index.search(X, 1)[0][:, 0]
        return np.asarray(self.model.project(X, [self.keys[i] for i in nearest]), dtype=np.float32)

    def route(self, X: np.ndarray) -> np.ndarray | None:
        """Routing weights (B, K) float32 (rows sum to 1), or None without routing."""
        route = getattr(self.model, "route", None)
        w = None if route is None else route(np.ascontiguousarray(X, dtype=np.float32))
        return None if w is None else np.asarray(w, dtype=np.float32)

    @property
    def centroids(self) -> np.ndarray | None:
        """Routing centroids (K, D_in), or None."""
        return self.tensors.get("centroids")

    @property
    def n_parameters(self) -> int | None:
        """Scalars in the model's tensors (federated: K*D_in*D_out + K*D_in; global:
        D_in*D_out, plus D_out with a bias; lda: K*(D_in + D_out)), or None if unknown."""
        return sum(int(v.size) for v in self.tensors.values()) if self.tensors else None
