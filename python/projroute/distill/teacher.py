"""What distillation asks of a teacher: a uniform view of a fitted projroute estimator,
a loaded ``Projector`` of any kind, or any object with ``project`` (and optionally
``route``); and, for an ensemble, a routed teacher restricted to a domain of its clusters."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from projroute._core import FlatIndex
from projroute._format import INDEX_TENSOR, dense_maps
from projroute.reference import blend_maps, route_weights

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
                raise ValueError(
                    f"a `{self.kind}` teacher picks its map by a key per query: give the keys "
                    "of the training queries (distill(..., keys=...))"
                )
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


def teacher_parts(teacher: Any) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
    """(kind, tensors, routing) of a routed projroute teacher: a fitted
    ``FederatedProjection``/``LdaProjection`` or a ``Projector`` of kind federated/lda.
    ``routing`` holds temperature, top_k and coverage."""
    core = getattr(teacher, "projector_", teacher)
    kind = getattr(core, "kind", None)
    if kind not in ("federated", "lda") or not hasattr(core, "tensors") or not hasattr(core, "config"):
        raise ValueError(
            "an ensemble needs a routed projroute teacher (federated or lda estimator or Projector), "
            f"got {type(teacher).__name__} of kind {kind!r}"
        )
    tensors, config = dense_maps(core.tensors(), json.loads(core.config))
    tensors = {
        k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items() if k in ("centroids", "W", "answers")
    }
    routing = {
        "temperature": float(config["temperature"]),
        "top_k": int(config["top_k"]),
        "coverage": config.get("coverage"),
    }
    return kind, tensors, routing


class DomainTeacher:
    """The teacher restricted to some of its clusters (numpy, :mod:`projroute.reference`):
    routing ``softmax(cos / T)`` over those clusters only, ``top_k`` capped at their
    number, then the federated blend or the lda answer mix.

    Parameters
    ----------
    kind : "federated" or "lda"
    tensors : dict
        The full teacher's ``centroids`` (K, D_in) and ``W`` (K, D_in, D_out) or ``answers`` (K, D_out).
    routing : dict
        temperature, top_k, coverage of the full teacher.
    clusters : (K_d,) int
        The domain's cluster indices.
    """

    def __init__(
        self,
        kind: str,
        tensors: Mapping[str, np.ndarray],
        routing: Mapping[str, Any],
        clusters: Sequence[int] | np.ndarray,
    ) -> None:
        idx = np.asarray(clusters, dtype=np.int64)
        if not len(idx):
            raise ValueError("a domain needs at least one cluster")
        self.kind = kind
        self.clusters = idx
        self._tensors = {k: np.ascontiguousarray(v[idx]) for k, v in tensors.items()}
        self.temperature = float(routing["temperature"])
        self.top_k = min(int(routing["top_k"]), len(idx))
        self.coverage = routing.get("coverage")

    def tensors(self) -> dict[str, np.ndarray]:
        """The domain's sliced tensors (``centroids`` and ``W`` or ``answers``)."""
        return dict(self._tensors)

    def route(self, X: np.ndarray) -> np.ndarray:
        """Routing weights (B, K_d) over the domain's clusters, rows summing to 1."""
        return route_weights(X, self._tensors["centroids"], self.temperature, self.top_k, self.coverage)

    def project(self, X: np.ndarray) -> np.ndarray:
        """Domain-teacher outputs (B, D_out) float32."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        w = self.route(X)
        if self.kind == "federated":
            return blend_maps(X, w, self._tensors["W"])
        return (w @ self._tensors["answers"]).astype(np.float32)


def domain_mass(route: np.ndarray, domain_of_cluster: np.ndarray, n_domains: int) -> np.ndarray:
    """Teacher routing (B, K) summed per domain: (B, M) float32."""
    mass = np.zeros((len(route), n_domains), np.float32)
    np.add.at(mass.T, domain_of_cluster, np.asarray(route, np.float32).T)
    return mass
