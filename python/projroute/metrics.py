"""Retrieval metrics for projected queries against an answer corpus (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from projroute.reference import unit_rows

__all__ = ["mean_cosine", "query_ranks", "retrieval_metrics"]

# Upper bound on score-matrix entries computed at once (~32 MB of float64).
_CHUNK_ENTRIES = 1 << 22


def _gold_matrix(gold: Sequence[Sequence[int]], m: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad gold lists into an (n, g) index matrix plus a validity mask."""
    lengths = np.fromiter((len(g) for g in gold), dtype=np.intp, count=len(gold))
    if lengths.size and lengths.min() == 0:
        raise ValueError(f"query {int(np.argmin(lengths))} has no gold answers")
    width = int(lengths.max()) if lengths.size else 0
    idx = np.zeros((len(gold), width), dtype=np.intp)
    mask = np.arange(width) < lengths[:, None]
    if width:
        flat = (j for g in gold for j in g)
        idx[mask] = np.fromiter(flat, dtype=np.intp, count=int(lengths.sum()))
    if idx.size and (idx[mask].min() < 0 or idx[mask].max() >= m):
        raise ValueError(f"gold index out of range for a corpus of {m}")
    return idx, mask


def query_ranks(P: np.ndarray, corpus: np.ndarray, gold: Sequence[Sequence[int]]) -> np.ndarray:
    """Rank of each query's best gold answer under cosine similarity.

    Parameters
    ----------
    P : array_like of shape (n, D)
        Projected queries, any scale.
    corpus : array_like of shape (m, D)
        Answer embeddings, any scale.
    gold : sequence of n non-empty sequences of int
        Indices into ``corpus`` of each query's correct answers.

    Returns
    -------
    np.ndarray of shape (n,), int64
        ``1 +`` the number of corpus items scoring strictly higher than the
        query's best-scoring gold item (ties count in the query's favour; an
        all-zero query ties with everything and gets rank 1).
    """
    Q, C = unit_rows(P, dtype=None), unit_rows(corpus, dtype=None)
    if Q.ndim != 2 or C.ndim != 2 or Q.shape[1] != C.shape[1]:
        raise ValueError(f"P {Q.shape} and corpus {C.shape} must be 2-D with equal widths")
    if len(gold) != len(Q):
        raise ValueError(f"{len(gold)} gold lists for {len(Q)} queries")
    idx, mask = _gold_matrix(gold, len(C))
    dtype = np.result_type(Q.dtype, C.dtype)
    Q, C = Q.astype(dtype, copy=False), C.astype(dtype, copy=False)
    ranks = np.empty(len(Q), dtype=np.int64)
    step = max(1, _CHUNK_ENTRIES // max(len(C), 1))
    for s in range(0, len(Q), step):
        S = Q[s : s + step] @ C.T
        best = np.where(mask[s : s + step], np.take_along_axis(S, idx[s : s + step], 1), -np.inf)
        ranks[s : s + step] = 1 + (best.max(axis=1, keepdims=True) < S).sum(axis=1)
    return ranks


def retrieval_metrics(
    P: np.ndarray,
    corpus: np.ndarray,
    gold: Sequence[Sequence[int]],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Hit@k and MRR of cosine retrieval over the whole corpus.

    Parameters
    ----------
    P : array_like of shape (n, D)
        Projected queries, any scale.
    corpus : array_like of shape (m, D)
        Answer embeddings, any scale.
    gold : sequence of n non-empty sequences of int
        Indices into ``corpus`` of each query's correct answers.
    ks : sequence of int
        Cut-offs for hit@k.

    Returns
    -------
    dict
        ``"hit@k"`` (fraction of queries with rank <= k) for each k, ``"mrr"``
        (mean of 1/rank) and ``"n"`` (number of queries); ranks as in
        :func:`query_ranks`. Empty input gives NaN rates.
    """
    ranks = query_ranks(P, corpus, gold)
    nan = float("nan")
    out = {f"hit@{k}": float(np.mean(ranks <= k)) if ranks.size else nan for k in ks}
    out["mrr"] = float(np.mean(1.0 / ranks)) if ranks.size else nan
    out["n"] = len(ranks)
    return out


def mean_cosine(P: np.ndarray, T: np.ndarray) -> float:
    """Mean row-wise cosine similarity.

    Parameters
    ----------
    P, T : array_like of shape (n, D)

    Returns
    -------
    float
        Mean over rows of cos(P[i], T[i]); zero rows count as cosine 0.
    """
    P, T = np.asarray(P), np.asarray(T)
    if P.shape != T.shape or P.ndim != 2:
        raise ValueError(f"shapes {P.shape} and {T.shape} must be equal and 2-D")
    if len(P) == 0:
        raise ValueError("mean_cosine of empty arrays")
    return float(np.mean(np.sum(unit_rows(P, dtype=None) * unit_rows(T, dtype=None), axis=1, dtype=np.float64)))
