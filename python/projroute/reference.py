"""Plain numpy reference of every projection mode.

This module defines what each mode computes; the Rust core is tested against it.
Arrays are float32; ``X`` is a batch of query embeddings of shape (B, D_in).

Routing: with cosine scores ``s_i = cos(x, point_i)`` and optional prior weights
``p_i > 0``, the logits are ``z_i = s_i / T + ln p_i``. Centroid routing scores the
K centroids; the weights are ``softmax(z)`` over the selected clusters, renormalised.
Per-question routing scores all N training questions instead: a cluster's mass is
the sum of ``softmax(z)`` over its questions, optionally passed through a second
``softmax(mass / T2)``, and the selected clusters' masses are renormalised. Selected
are the ``top_k`` largest (ties to the lower index) or, given ``coverage``, the
smallest prefix of that order whose share of the total reaches ``coverage``, capped
at ``top_k``.
"""

from __future__ import annotations

import math

import numpy as np


def unit_rows(X: np.ndarray, dtype: type | None = np.float32) -> np.ndarray:
    """Rows of ``X`` (n, d) scaled to unit L2 norm; all-zero rows stay zero. The
    result is ``dtype``, or with ``dtype=None`` the floating dtype of ``X`` (float64
    for integers). The one row normaliser of the package."""
    X = np.asarray(X, dtype=dtype)
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float64)
    norms = np.linalg.norm(X, axis=-1, keepdims=True)
    return X / np.where(norms > 0, norms, 1).astype(X.dtype)


def routing_entropy(W: np.ndarray) -> np.ndarray:
    """Normalised entropy ``H(w) / ln K`` of each row of routing weights ``W`` (B, K):
    (B,) float64 in [0, 1], 0 for a one-hot row and for K = 1, 1 for a uniform row."""
    K = W.shape[1]
    p = np.clip(W, 0.0, None).astype(np.float64)
    H = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
    return H / math.log(K) if K > 1 else np.zeros(len(W))


def select_weights(Z: np.ndarray, top_k: int, coverage: float | None = None) -> np.ndarray:
    """Dense weights (B, K), rows summing to 1: ``softmax(Z)`` over the selected entries
    of each row of logits ``Z`` (B, K) (``-inf`` allowed, as long as not all)."""
    order = np.argsort(-Z, axis=1, kind="stable")
    z_sorted = np.take_along_axis(Z, order, axis=1)
    with np.errstate(invalid="ignore"):
        e = np.exp(z_sorted - z_sorted[:, :1])
    K = Z.shape[1]
    if coverage is None:
        keep = np.full(len(Z), min(top_k, K))
    else:
        cum = np.cumsum(e, axis=1)
        reached = cum >= np.float32(coverage) * cum[:, -1:]
        keep = np.minimum(reached.argmax(axis=1) + 1, top_k)
    e = np.where(np.arange(K)[None, :] < keep[:, None], e, 0.0).astype(np.float32)
    e /= e.sum(axis=1, keepdims=True)
    weights = np.zeros(Z.shape, np.float32)
    np.put_along_axis(weights, order, e, axis=1)
    return weights


def _logits(X: np.ndarray, points: np.ndarray, temperature: float, prior: np.ndarray | None) -> np.ndarray:
    Z = (unit_rows(X) @ unit_rows(points).T) * np.float32(1.0 / temperature)
    return Z if prior is None else Z + np.log(np.asarray(prior, np.float32))


def route_weights(
    X: np.ndarray,
    centroids: np.ndarray,
    temperature: float,
    top_k: int,
    coverage: float | None = None,
    prior: np.ndarray | None = None,
) -> np.ndarray:
    """Centroid routing: dense weights (B, K), float32; each row sums to 1.

    X : (B, D) queries; centroids : (K, D), any norm; temperature > 0; prior : (K,) > 0.
    """
    return select_weights(_logits(X, centroids, temperature, prior), top_k, coverage)


def route_questions(
    X: np.ndarray,
    questions: np.ndarray,
    counts: np.ndarray,
    temperature: float,
    top_k: int,
    coverage: float | None = None,
    prior: np.ndarray | None = None,
    cluster_temperature: float | None = None,
) -> np.ndarray:
    """Per-question routing: dense weights (B, K), float32; each row sums to 1.

    questions : (N, D) sorted by cluster, ``counts[k]`` (>= 1) of them in cluster k;
    prior : (N,) > 0; cluster_temperature : optional second softmax over the masses.
    """
    Z = _logits(X, questions, temperature, prior)
    P = np.exp(Z - Z.max(axis=1, keepdims=True))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    mass = np.add.reduceat(P, starts, axis=1)
    mass /= mass.sum(axis=1, keepdims=True)
    if cluster_temperature is not None:
        return select_weights(mass / np.float32(cluster_temperature), top_k, coverage)
    with np.errstate(divide="ignore"):
        return select_weights(np.log(mass), top_k, coverage)


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


def resolve_keys(keys: list[str], nodes: list[str], hierarchical: bool) -> np.ndarray:
    """Index into ``nodes`` of the node serving each query's key: int64 (B,).

    ``tree`` (``hierarchical=False``): the node whose key equals the query's tree id.
    ``hierarchical``: the deepest fitted ancestor of the query's path: the key itself,
    else the key with its last ``/``-component dropped, repeatedly (``a/b/c``, ``a/b``,
    ``a``). A key that finds no node goes to the root node ``""``.
    """
    index = {key: i for i, key in enumerate(nodes)}

    def node(key: str) -> int:
        while key not in index and hierarchical and "/" in key:
            key = key.rsplit("/", 1)[0]
        return index.get(key, index[""])

    return np.array([node(k) for k in keys], dtype=np.int64)


def project_keyed(X: np.ndarray, W: np.ndarray, node_index: np.ndarray) -> np.ndarray:
    """``out_i = X[i] @ W[node_index[i]]``, grouped: one GEMM per node used.

    X (B, D_in), W (M, D_in, D_out), node_index (B,) ints in [0, M) -> (B, D_out).
    """
    X = np.asarray(X, dtype=np.float32)
    out = np.zeros((len(X), W.shape[2]), dtype=np.float32)
    for m in np.unique(node_index):
        rows = np.flatnonzero(node_index == m)
        out[rows] = X[rows] @ W[m]
    return out
