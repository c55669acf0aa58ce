"""What every fitted projection shares: serving through the Rust core and saving."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from projroute import _format
from projroute._core import Projector


def check_pairs(Q: Any, A: Any, same_dim: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Training pairs as float32 arrays of shape (n, d_q) and (n, d_a); with
    ``same_dim`` (Procrustes maps), d_q must equal d_a."""
    Q = np.asarray(Q, dtype=np.float32)
    A = np.asarray(A, dtype=np.float32)
    if Q.ndim != 2 or A.ndim != 2 or len(Q) != len(A):
        raise ValueError(f"Q and A must be 2-D with the same number of rows, got {Q.shape} and {A.shape}")
    if len(Q) == 0:
        raise ValueError("cannot fit on zero pairs")
    if not (np.isfinite(Q).all() and np.isfinite(A).all()):
        raise ValueError("Q and A must be finite (found NaN or infinity)")
    if same_dim and Q.shape[1] != A.shape[1]:
        raise ValueError(f"Procrustes maps need equal dimensions, got {Q.shape[1]} and {A.shape[1]}")
    return Q, A


AUTO_TOP_K = 10


def check_top_k(top_k: Any, n_clusters: Any) -> None:
    """Raise ValueError unless ``top_k`` is ``"auto"``, an int >= 1, a coverage in
    (0, 1) or None, or if it is an int above an explicit int ``n_clusters``."""
    if top_k is None or top_k == "auto" or (isinstance(top_k, float) and 0.0 < top_k < 1.0):
        return
    if not (isinstance(top_k, (int, np.integer)) and not isinstance(top_k, bool) and top_k >= 1):
        raise ValueError(f"top_k must be an int >= 1, a coverage in (0, 1), 'auto' or None; got {top_k!r}")
    if isinstance(n_clusters, (int, np.integer)) and top_k > n_clusters:
        raise ValueError(f"top_k={top_k} is more than n_clusters={n_clusters}")


def resolve_top_k(top_k: int | float | str | None, n_clusters: int) -> tuple[int, float | None]:
    """``top_k`` (checked by :func:`check_top_k`) as (top_k, coverage) for ``n_clusters``
    fitted clusters: an int caps the clusters (clamped to them), a float in (0, 1) is a
    coverage target, ``"auto"`` means 10 or all clusters when there are fewer, None all."""
    if top_k is None:
        return n_clusters, None
    if isinstance(top_k, float):
        return n_clusters, top_k
    return min(AUTO_TOP_K if top_k == "auto" else int(top_k), n_clusters), None


def top_k_record(top_k: int | float | str | None, n_clusters: int) -> dict[str, Any]:
    """The fit record's note of an int ``top_k`` clamped to the ``n_clusters`` that
    ``n_clusters="auto"`` found, or nothing."""
    if isinstance(top_k, (int, np.integer)) and top_k > n_clusters:
        return {"top_k_requested": int(top_k), "top_k_clamped_to": n_clusters}
    return {}


def check_temperature(temperature: Any) -> None:
    """Raise ValueError unless ``temperature`` is a number > 0."""
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")


class Projection:
    """Base of the estimators: ``fit`` builds the model's config and tensors once and
    ``projector_`` (the Rust core) from them; ``project`` and ``route`` use the
    projector, ``save`` writes the same config and tensors."""

    kind: str
    projector_: Projector
    config_: dict[str, Any]

    def _tensors(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        raise NotImplementedError

    def _build(self, dim_in: int, dim_out: int) -> None:
        self.config_ = _format.header(self.kind, dim_in, dim_out, **self._config())
        self.projector_ = Projector.from_tensors(self._tensors(), json.dumps(self.config_))

    def _fitted(self) -> Projector:
        if not hasattr(self, "projector_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet; call fit(Q, A) first")
        return self.projector_

    def project(self, X: np.ndarray) -> np.ndarray:
        """Project queries ``X`` (B, D_in) into answer space: (B, D_out), float32."""
        return self._fitted().project(X)

    def route(self, X: np.ndarray) -> np.ndarray | None:
        """Routing weights (B, K), float32, or None for a global map."""
        return self._fitted().route(X)

    def save(
        self,
        path: str | os.PathLike[str],
        answers: np.ndarray | None = None,
        answer_texts: list[str] | None = None,
        weights_dtype: str = "float32",
    ) -> None:
        """Write the model as one safetensors file; optionally with a searchable answer
        corpus ``answers`` (N, D_out) and its texts, and the maps stored as
        ``weights_dtype`` (``"float16"`` or ``"bfloat16"`` halve the file and the memory
        traffic; computation stays float32)."""
        self._fitted()
        tensors = self._tensors()
        config = _format.with_weights_dtype(self.config_, tensors, weights_dtype)
        _format.save(path, tensors, config, answers=answers, answer_texts=answer_texts)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.endswith("_"))
        return f"{type(self).__name__}({params})"


class LinearProjection(Projection):
    """Base of the kinds served as one linear map, ``p = q @ W_ + bias_`` (``global``)."""

    kind = "global"
    W_: np.ndarray
    bias_: np.ndarray | None

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"W": self.W_} if self.bias_ is None else {"W": self.W_, "bias": self.bias_}


class RoutedProjection(Projection):
    """Base of the kinds that route a query over K clusters by softmax (federated, lda)."""

    temperature: float
    centroids_: np.ndarray
    top_k_: int
    coverage_: float | None

    def _routing_config(self) -> dict[str, Any]:
        """The config fields every routed kind shares."""
        return {
            "n_clusters": len(self.centroids_),
            "temperature": float(self.temperature),
            "top_k": self.top_k_,
            "coverage": self.coverage_,
        }
