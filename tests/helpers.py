"""Small builders shared by the tests: random models written straight to the Rust core."""

from __future__ import annotations

import json

import numpy as np

import projroute as pr
from projroute._format import header


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """(n, d) float32 rows on the unit sphere."""
    X = rng.normal(size=(n, d)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def config(kind: str, d_in: int, d_out: int, **routing) -> str:
    """A model config JSON string."""
    return json.dumps(header(kind, d_in, d_out, **routing))


def random_model(
    kind: str,
    rng: np.random.Generator,
    d: int = 16,
    K: int = 6,
    T: float = 0.1,
    top_k: int | None = None,
    coverage: float | None = None,
):
    """(Projector, tensors, routing kwargs) of a random model of ``kind``."""
    routing = {"n_clusters": K, "temperature": T, "top_k": top_k or K, "coverage": coverage}
    if kind == "global":
        tensors = {"W": rng.normal(size=(d, d)).astype(np.float32), "bias": rng.normal(size=d).astype(np.float32)}
        return pr.Projector.from_tensors(tensors, config(kind, d, d)), tensors, {}
    tensors = {"centroids": unit(rng, K, d)}
    if kind == "federated":
        tensors["W"] = rng.normal(size=(K, d, d)).astype(np.float32) / np.sqrt(d)
    else:
        tensors["answers"] = unit(rng, K, d)
    return pr.Projector.from_tensors(tensors, config(kind, d, d, **routing)), tensors, routing


def assert_one_se_choice(chosen: float, validation: dict[float, float]) -> None:
    """``chosen`` is what :func:`projroute.validation.choose` may pick from the mean
    validation scores per grid value (grid order, simplest first): no later than the
    best, and every simpler value lost by more than a tie."""
    from projroute.validation import TIE_TOLERANCE

    grid, scores = list(validation), list(validation.values())
    best, at = max(scores), grid.index(chosen)
    assert at <= scores.index(best)
    assert all(best - v > TIE_TOLERANCE for v in scores[:at])
