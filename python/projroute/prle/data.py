"""STS-B pairs as PRLE inputs: the symmetric pair feature map and the embedded splits."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from projroute.embed import Encoder
from projroute.static.stsb import read_stsb

__all__ = ["SPLITS", "Split", "load_stsb", "pair_features"]

SPLITS = ("train", "dev", "test")


def pair_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The symmetric pair feature map ``[u + v, |u − v|, u∘v, cos(u, v)]``.

    u, v : np.ndarray of shape (n, d), float
        The two sentences' embeddings (normalised here).

    Returns np.ndarray of shape (n, 3d + 1), float32. Swapping u and v gives the same
    row. ``|u − v|``, ``u∘v`` and the cosine say how similar the two are; ``u + v`` says
    what the pair is about, which lets the scores be calibrated per topic.
    """
    u = np.asarray(u, dtype=np.float32)
    v = np.asarray(v, dtype=np.float32)
    if u.ndim != 2 or u.shape != v.shape:
        raise ValueError(f"u and v must be 2-D of the same shape, got {u.shape} and {v.shape}")
    u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    cos = np.sum(u * v, axis=1, keepdims=True)
    return np.concatenate([u + v, np.abs(u - v), u * v, cos], axis=1).astype(np.float32)


@dataclass
class Split:
    """One embedded STS-B split of n pairs: sentences, gold scores (n,) in [0, 5],
    sentence embeddings u, v (n, 384) and features X (n, 1153)."""

    s1: list[str]
    s2: list[str]
    y: np.ndarray
    u: np.ndarray
    v: np.ndarray

    @property
    def X(self) -> np.ndarray:
        return pair_features(self.u, self.v)

    @property
    def cosine(self) -> np.ndarray:
        """Raw cosine of the two sentence embeddings (n,)."""
        return np.sum(self.u * self.v, axis=1)


def load_stsb(path: str | os.PathLike[str] | None = None, encoder=None) -> dict[str, Split]:
    """The three STS-B splits from ``path`` (default ``$PROJROUTE_DATA/stsb``), embedded with
    the bundled MiniLM (``projroute.embed.Encoder``, cached on disk)."""
    encoder = encoder or Encoder()
    out = {}
    for split in SPLITS:
        s1, s2, y = read_stsb(path or None, split)
        e = encoder.encode(s1 + s2, progress=False)
        out[split] = Split(s1, s2, y.astype(np.float32), e[: len(s1)], e[len(s1) :])
    return out
