"""Plain numpy reference of every projection mode.

This module defines what each mode computes; the Rust core is tested against it.
Arrays are float32; ``X`` is a batch of query embeddings of shape (B, D_in).

Routing: with cosine scores ``s = cos(x, c_k)`` against K centroids, the weights are
``softmax(s / T)`` restricted to the selected clusters and renormalised. Selected are
the ``top_k`` highest scores (ties to the lower index) or, given ``coverage``, the
smallest prefix of that order whose full-softmax weight reaches ``coverage``, capped
at ``top_k``.
"""

from __future__ import annotations

import numpy as np


def unit_rows(X: np.ndarray) -> np.ndarray:
    """Rows of ``X`` (n, d) scaled to unit L2 norm, float32."""
    X = np.asarray(X, dtype=np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def route_weights(
    X: np.ndarray,
    centroids: np.ndarray,
    temperature: float,
    top_k: int,
    coverage: float | None = None,
) -> np.ndarray:
    """Dense routing weights of shape (B, K), float32; each row sums to 1.

    X : (B, D) queries; centroids : (K, D), any norm; temperature > 0.
    """
    S = unit_rows(X) @ unit_rows(centroids).T
    order = np.argsort(-S, axis=1, kind="stable")
    s_sorted = np.take_along_axis(S, order, axis=1)
    e = np.exp((s_sorted - s_sorted[:, :1]) / np.float32(temperature))
    K = S.shape[1]
    if coverage is None:
        keep = np.full(len(S), min(top_k, K))
    else:
        cum = np.cumsum(e, axis=1)
        reached = cum >= np.float32(coverage) * cum[:, -1:]
        keep = np.minimum(reached.argmax(axis=1) + 1, top_k)
    e = np.where(np.arange(K)[None, :] < keep[:, None], e, 0.0).astype(np.float32)
    e /= e.sum(axis=1, keepdims=True)
    weights = np.zeros_like(S)
    np.put_along_axis(weights, order, e, axis=1)
    return weights


def project_global(X: np.ndarray, W: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """``X @ W + bias``: X (B, D_in), W (D_in, D_out), bias (D_out,) -> (B, D_out)."""
    P = np.asarray(X, dtype=np.float32) @ W
    return P if bias is None else P + bias


def blend_maps(X: np.ndarray, weights: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``out_i = sum_k weights[i, k] * X[i] @ W[k]``, grouped: one GEMM per used cluster.

    X (B, D_in), weights (B, K), W (K, D_in, D_out) -> (B, D_out).
    """
    X = np.asarray(X, dtype=np.float32)
    out = np.zeros((len(X), W.shape[2]), dtype=np.float32)
    for k in np.flatnonzero(weights.any(axis=0)):
        rows = np.flatnonzero(weights[:, k])
        out[rows] += (X[rows] * weights[rows, k, None]) @ W[k]
    return out


def project_federated(
    X: np.ndarray,
    centroids: np.ndarray,
    W: np.ndarray,
    temperature: float,
    top_k: int,
    coverage: float | None = None,
) -> np.ndarray:
    """Federated projection ``sum_k w_k(x) * x @ W[k]``; W (K, D_in, D_out) -> (B, D_out)."""
    return blend_maps(X, route_weights(X, centroids, temperature, top_k, coverage), W)


def project_lda(
    X: np.ndarray,
    centroids: np.ndarray,
    answers: np.ndarray,
    temperature: float,
    top_k: int,
    coverage: float | None = None,
) -> np.ndarray:
    """LDA multi-head projection ``sum_k w_k(x) * answers[k]``; answers (K, D_out) -> (B, D_out)."""
    return route_weights(X, centroids, temperature, top_k, coverage) @ answers
