"""Query augmentation: new unlabelled queries near the training questions, labelled
by the teacher on the fly, fresh each epoch. Arrays are float32."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from projroute.reference import unit_rows

KINDS = ("sphere", "mix", "extra")
AUTO_EPOCH_SIZE = 8192  # queries per epoch that ratio="auto" aims at

Batch = dict[str, np.ndarray]


def check_kinds(augment: Sequence[str], extra: np.ndarray | None) -> tuple[str, ...]:
    """The augmentation kinds to use: ``augment``, plus "extra" when ``extra`` queries are given."""
    kinds = tuple(augment)
    if extra is not None and "extra" not in kinds:
        kinds += ("extra",)
    if unknown := set(kinds) - set(KINDS):
        raise ValueError(f"unknown augmentation {sorted(unknown)}; expected {KINDS}")
    if "extra" in kinds and extra is None:
        raise ValueError('augmentation "extra" needs extra_queries')
    return kinds


def check_ratio(ratio: float | str, n: int) -> float:
    """Augmented queries per training query: ``ratio`` (>= 0), or for "auto" enough for
    about ``AUTO_EPOCH_SIZE`` queries per epoch with ``n`` training queries, at least 1."""
    if ratio == "auto":
        return float(max(1, round(AUTO_EPOCH_SIZE / n)))
    if not (isinstance(ratio, (int, float)) and ratio >= 0):
        raise ValueError(f'augment_ratio must be "auto" or >= 0, got {ratio!r}')
    return ratio


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
            if extra is None:
                raise ValueError('augmentation "extra" needs extra_queries')
            parts.append(extra[rng.integers(len(extra), size=count)])
    return np.concatenate(parts) if parts else np.zeros((0, Q.shape[1]), np.float32)


class Epochs:
    """Labelled training data, fresh each epoch: the training queries plus
    ``ratio * n`` newly augmented ones, all labelled by ``label``.

    Parameters
    ----------
    label : callable
        Queries (B, D) -> labelled batch, a dict of (B, ...) arrays holding ``"x"``; an
        importance weight ``"w"`` (B,), if any, is scaled to mean 1 over each epoch.
    real : dict
        The training queries ``real["x"]`` (n, D), labelled.
    kinds, ratio, sigma, extra
        Augmentation kinds (:func:`check_kinds`), augmented queries per training query,
        noise norm of "sphere", the queries of "extra" (m', D) or None.
    rng : numpy Generator
    """

    def __init__(
        self,
        label: Callable[[np.ndarray], Batch],
        real: Batch,
        kinds: Sequence[str],
        ratio: float,
        sigma: float,
        extra: np.ndarray | None,
        rng: np.random.Generator,
    ) -> None:
        self.label, self.real, self.kinds, self.sigma, self.extra, self.rng = label, real, kinds, sigma, extra, rng
        self.queries = real["x"]
        self.n_aug = round(ratio * len(self.queries)) if kinds else 0
        self.size = len(self.queries) + self.n_aug

    def augmented(self) -> np.ndarray:
        """``n_aug`` new unlabelled queries (n_aug, D)."""
        return sample(self.kinds, self.queries, self.n_aug, self.rng, self.sigma, self.extra)

    def __call__(self) -> Batch:
        """One epoch's labelled data: ``size`` rows, the training queries first."""
        batch = dict(self.real)
        if self.n_aug:
            aug = self.label(self.augmented())
            batch = {k: np.concatenate([self.real[k], aug[k]]) for k in self.real}
        if "w" in batch:
            batch["w"] = batch["w"] / batch["w"].mean()
        return batch
