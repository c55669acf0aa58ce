"""Contrastive refinement of a linear map: InfoNCE over the distinct training answers.

The least-squares and Procrustes maps move each question onto its answer. Retrieval
asks for something else: the gold answer ranked above the other answers. This map
starts from a fitted one and descends that objective directly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from projroute._estimator import LinearProjection, check_pairs
from projroute.procrustes import GlobalProjection
from projroute.reference import unit_rows
from projroute.validation import RetrievalTask, select

#: Optimiser steps tried by cross-validation (early stopping), fewest first; 0 keeps
#: the starting map.
STEPS_GRID = (0, 50, 100, 200, 400, 800)


def infonce(
    Q: np.ndarray, C: np.ndarray, gold: np.ndarray, W: np.ndarray, temperature: float
) -> tuple[float, np.ndarray]:
    """Mean InfoNCE loss ``-log softmax_j(cos(q_i W, c_j) / temperature)[gold_i]`` of
    queries Q (b, d_q) against unit answers C (m, d_a), with ``gold`` (b,) indices into
    C, and its gradient (d_q, d_a) with respect to W. float64."""
    P = Q @ W
    norm = np.maximum(np.linalg.norm(P, axis=1, keepdims=True), 1e-12)
    Ph = P / norm
    S = Ph @ C.T / temperature
    S -= S.max(axis=1, keepdims=True)
    prob = np.exp(S)
    prob /= prob.sum(axis=1, keepdims=True)
    rows = np.arange(len(Q))
    loss = float(np.mean(-np.log(prob[rows, gold])))
    prob[rows, gold] -= 1.0  # d loss / d S, times the batch size
    dPh = prob @ C / (temperature * len(Q))
    return loss, Q.T @ ((dPh - Ph * np.sum(Ph * dPh, axis=1, keepdims=True)) / norm)


def infonce_steps(
    Q: np.ndarray,
    A: np.ndarray,
    W0: np.ndarray,
    steps: tuple[int, ...],
    temperature: float,
    learning_rate: float,
    batch_size: int,
    random_state: int,
    progress: bool = False,
) -> list[np.ndarray]:
    """The map ``W`` (d_q, d_a) after each count in ``steps`` of Adam on :func:`infonce`
    over seeded batches of the pairs Q (n, d_q), A (n, d_a), from ``W0``. The softmax
    runs over every distinct answer of ``A``, so each batch sees its in-batch negatives
    and the hardest ones. float64."""
    from tqdm.auto import tqdm

    corpus, gold = np.unique(A, axis=0, return_inverse=True)
    C, gold = unit_rows(corpus, dtype=np.float64), gold.ravel()
    Q64, W = np.asarray(Q, np.float64), np.array(W0, np.float64)
    m, v = np.zeros_like(W), np.zeros_like(W)
    rng, batch = np.random.default_rng(random_state), min(batch_size, len(Q))
    out = [W.copy()] if 0 in steps else []
    for t in tqdm(range(1, max(steps) + 1), desc="contrastive steps", disable=not progress, leave=False):
        rows = rng.choice(len(Q), batch, replace=False)
        _, grad = infonce(Q64[rows], C, gold[rows], W, temperature)
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad**2
        W -= learning_rate * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        if t in steps:
            out.append(W.copy())
    return out


class ContrastiveProjection(LinearProjection):
    """``p = q @ W``: a starting map refined by InfoNCE (:func:`infonce_steps`).

    ``init="global"`` starts from the :class:`~projroute.procrustes.GlobalProjection`
    validated in the same regime, ``"identity"`` from raw cosine. The number of steps
    (``steps_``) is chosen from :data:`STEPS_GRID` by ``cv``-fold cross-validation of
    retrieval MRR in the ``validation`` regime (:mod:`projroute.validation`; near-ties
    to fewer steps, and 0 keeps the start, so the refinement stays only where it
    raises the validation MRR), unless given as an int >= 0. Equal dimensions only
    with ``init="identity"``. Served as a ``global`` model.

    Fitted: ``W_`` (d_q, d_a) float32, ``steps_``, ``validation_``.
    """

    bias_ = None

    def __init__(
        self,
        init: str = "global",
        steps: int | str = "auto",
        temperature: float = 0.05,
        learning_rate: float = 1e-3,
        batch_size: int = 128,
        cv: int = 5,
        validation: str = "known-answers",
        random_state: int = 0,
        progress: bool = True,
    ) -> None:
        self.init = init
        self.steps = steps
        self.temperature = temperature
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.cv = cv
        self.validation = validation
        self.random_state = random_state
        self.progress = progress

    def _start(self, Q: np.ndarray, A: np.ndarray) -> np.ndarray:
        if self.init == "identity":
            return np.eye(Q.shape[1])
        return GlobalProjection(validation=self.validation, random_state=self.random_state).fit(Q, A).W_

    def _refine(self, Q: np.ndarray, A: np.ndarray, steps: tuple[int, ...]) -> list[np.ndarray]:
        return infonce_steps(
            Q, A, self._start(Q, A), steps, self.temperature, self.learning_rate, self.batch_size,
            self.random_state, self.progress,
        )  # fmt: skip

    def fit(self, Q: np.ndarray, A: np.ndarray) -> ContrastiveProjection:
        """Fit on pairs ``Q`` (n, d), ``A`` (n, d) of question and answer embeddings."""
        Q, A = check_pairs(Q, A, same_dim=True)
        if self.init not in ("global", "identity"):
            raise ValueError(f"init must be 'global' or 'identity', got {self.init!r}")
        if not (self.temperature > 0 and self.learning_rate > 0 and self.batch_size >= 1):
            raise ValueError("temperature and learning_rate must be > 0 and batch_size >= 1")

        def fold_scores(train: np.ndarray, task: RetrievalTask) -> list[np.ndarray]:
            return [task.rr(task.queries @ W) for W in self._refine(Q[train], A[train], STEPS_GRID)]

        steps, self.validation_ = select(
            self.steps, STEPS_GRID, lambda v: isinstance(v, int) and v >= 0, "steps must be 'auto' or an int >= 0",
            Q, A, self.cv, self.random_state, fold_scores, self.validation,
        )  # fmt: skip
        self.steps_ = int(steps)
        (W,) = self._refine(Q, A, (self.steps_,))
        self.W_ = W.astype(np.float32)
        self._build(Q.shape[1], A.shape[1])
        return self

    def _config(self) -> dict[str, Any]:
        return {
            "fit": {
                "method": "contrastive",
                "init": self.init,
                "steps": self.steps_,
                "temperature": self.temperature,
                "learning_rate": self.learning_rate,
                "validation": self.validation,
                "validation_mrr": self.validation_,
            }
        }
