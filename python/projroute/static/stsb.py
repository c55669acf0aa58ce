"""STS Benchmark: Spearman correlation of cosine similarity against the gold scores."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from projroute import datasets

__all__ = ["TextEncoder", "read_stsb", "spearman", "stsb_spearman"]

PathLike = str | os.PathLike


class TextEncoder(Protocol):
    """Anything with ``encode(texts) -> (n, d)`` array."""

    def encode(self, texts: Sequence[str], /) -> np.ndarray: ...


def read_stsb(path: PathLike | None = None, split: str = "test") -> tuple[list[str], list[str], np.ndarray]:
    """Read an STS-B split: no header, columns ``sentence1,sentence2,score`` (score 0 to 5).

    Parameters
    ----------
    path : path-like, optional
        A csv file, or a folder holding ``<split>.csv``; default ``$PROJROUTE_DATA/stsb``.
    split : str
        ``"train"``, ``"dev"`` or ``"test"`` (used when ``path`` is a folder).

    Returns
    -------
    (sentence1, sentence2, score)
        Two lists of n texts and an (n,) float64 array of gold scores.
    """
    p = datasets.data_dir() / "stsb" if path is None else Path(path)
    if p.is_dir():
        p = p / f"{split}.csv"
    s1, s2, score = [], [], []
    with open(p, encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.reader(f), 1):
            if len(row) != 3:
                raise ValueError(f"{p}:{i}: expected 3 columns (sentence1,sentence2,score), got {len(row)}")
            s1.append(row[0])
            s2.append(row[1])
            score.append(float(row[2]))
    if not score:
        raise ValueError(f"{p}: no rows")
    return s1, s2, np.asarray(score, dtype=np.float64)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    # Start index of each run of equal values, and the mean rank of the run.
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two (n,) arrays (ties get average ranks)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape or len(a) < 2:
        raise ValueError(f"need two arrays of the same length >= 2, got {a.shape} and {b.shape}")
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra @ ra) * (rb @ rb))
    return float(ra @ rb / denom) if denom > 0 else float("nan")


def stsb_spearman(encoder: TextEncoder, path: PathLike | None = None, split: str = "test") -> float:
    """STS-B Spearman of ``encoder``: cosine(sentence1, sentence2) ranked against the gold score.

    Parameters
    ----------
    encoder : object with ``encode(texts) -> (n, d)``
        e.g. ``projroute.embed.Encoder()``, ``model2vec.StaticModel`` or ``projroute.static.load(DIR)``.
    path, split
        As in :func:`read_stsb`; default ``$PROJROUTE_DATA/stsb/test.csv``.

    Returns
    -------
    float
        Spearman's rho in [-1, 1] (all-MiniLM-L6-v2 scores 0.8203 on the test split).
    """
    s1, s2, gold = read_stsb(path, split)
    texts = list(dict.fromkeys(s1 + s2))
    X = np.asarray(encoder.encode(texts), dtype=np.float64)
    if X.ndim != 2 or len(X) != len(texts):
        raise ValueError(f"encode returned shape {X.shape} for {len(texts)} texts; expected ({len(texts)}, d)")
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    X = X / np.where(norms > 0, norms, 1.0)
    row = {t: i for i, t in enumerate(texts)}
    A, B = X[[row[t] for t in s1]], X[[row[t] for t in s2]]
    return spearman(np.einsum("ij,ij->i", A, B), gold)
