"""Query augmentation: new unlabelled queries near the training questions, labelled
by the teacher on the fly. Arrays are float32."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from projroute.reference import unit_rows

KINDS = ("sphere", "mix", "extra")


def sphere(Q: np.ndarray, n: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``normalize(q + sigma * e)`` for n random rows q of ``Q`` (m, D) and e a random
    unit direction: noise of norm ``sigma`` relative to the unit query. -> (n, D)."""
    E = unit_rows(rng.standard_normal((n, Q.shape[1])))
    return unit_rows(unit_rows(Q[rng.integers(len(Q), size=n)]) + np.float32(sigma) * E)


def mix(Q: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``normalize(l * q_i + (1 - l) * q_j)`` for random pairs of rows of ``Q`` (m, D),
    ``l ~ U(0, 1)``. -> (n, D)."""
    lam = rng.random((n, 1), dtype=np.float32)
    i, j = rng.integers(len(Q), size=(2, n))
    return unit_rows(lam * Q[i] + (1 - lam) * Q[j])


def sample(
    kinds: Sequence[str],
    Q: np.ndarray,
    n: int,
    rng: np.random.Generator,
    sigma: float,
    extra: np.ndarray | None,
) -> np.ndarray:
    """``n`` augmented queries (n, D), split evenly over ``kinds`` ("sphere", "mix",
    "extra": rows of ``extra`` (m', D) drawn with replacement, as given); empty for no kinds."""
    parts = []
    for kind, count in zip(kinds, np.diff(np.linspace(0, n, len(kinds) + 1).round().astype(int))):
        if kind == "sphere":
            parts.append(sphere(Q, count, sigma, rng))
        elif kind == "mix":
            parts.append(mix(Q, count, rng))
        else:
            parts.append(extra[rng.integers(len(extra), size=count)])
    return np.concatenate(parts) if parts else np.zeros((0, Q.shape[1]), np.float32)
