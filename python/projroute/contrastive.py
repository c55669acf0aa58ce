"""Contrastive refinement of a linear map: InfoNCE over the distinct training answers.

The least-squares and Procrustes maps move each question onto its answer. Retrieval
asks for something else: the gold answer ranked above the other answers. This map
starts from a fitted one and descends that objective directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from projroute._estimator import LinearProjection, check_pairs
from projroute.procrustes import GlobalProjection
from projroute.reference import unit_rows
from projroute.validation import RetrievalTask, select

#: Optimiser steps tried by cross-validation (early stopping), fewest first; 0 keeps
#: the starting map.
STEPS_GRID = (0, 50, 100, 200, 400, 800)
#: Defaults of the refinement: softmax temperature, Adam's learning rate, pairs a step.
TEMPERATURE, LEARNING_RATE, BATCH_SIZE = 0.05, 1e-3, 128


def infonce_at(P: np.ndarray, C: np.ndarray, gold: np.ndarray, temperature: float) -> tuple[float, np.ndarray]:
    """Mean InfoNCE loss ``-log softmax_j(cos(p_i, c_j) / temperature)[gold_i]`` of
    projected queries P (b, d_a) against unit answers C (m, d_a), with ``gold`` (b,)
    indices into C, and its gradient (b, d_a) with respect to P. float64."""
    norm = np.maximum(np.linalg.norm(P, axis=1, keepdims=True), 1e-12)
    Ph = P / norm
    S = Ph @ C.T / temperature
    S -= S.max(axis=1, keepdims=True)
    prob = np.exp(S)
    prob /= prob.sum(axis=1, keepdims=True)
    rows = np.arange(len(P))
    loss = float(np.mean(-np.log(prob[rows, gold])))
    prob[rows, gold] -= 1.0  # d loss / d S, times the batch size
    dPh = prob @ C / (temperature * len(P))
    return loss, (dPh - Ph * np.sum(Ph * dPh, axis=1, keepdims=True)) / norm


def infonce(
    Q: np.ndarray, C: np.ndarray, gold: np.ndarray, W: np.ndarray, temperature: float
) -> tuple[float, np.ndarray]:
    """:func:`infonce_at` of ``P = Q @ W`` (Q (b, d_q)), with its gradient (d_q, d_a)
    with respect to W. float64."""
    loss, dP = infonce_at(Q @ W, C, gold, temperature)
    return loss, Q.T @ dP


def adam_steps(
    params: list[np.ndarray],
    grads: Callable[[np.ndarray], list[np.ndarray]],
    n: int,
    steps: tuple[int, ...],
    learning_rate: float,
    batch_size: int,
    random_state: int,
    progress: bool = False,
) -> list[list[np.ndarray]]:
    """Adam on ``params`` (updated in place) over seeded batches of ``n`` rows without
    replacement; ``grads(rows)`` gives each parameter's gradient on those rows. Returns
    copies of the parameters after each count in ``steps`` (0: the start)."""
    from tqdm.auto import tqdm

    m, v = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    rng, batch = np.random.default_rng(random_state), min(batch_size, n)
    out = [[p.copy() for p in params]] if 0 in steps else []
    for t in tqdm(range(1, max(steps) + 1), desc="contrastive steps", disable=not progress, leave=False):
        for p, g, mp, vp in zip(params, grads(rng.choice(n, batch, replace=False)), m, v):
            mp *= 0.9
            mp += 0.1 * g
            vp *= 0.999
            vp += 0.001 * g**2
            p -= learning_rate * (mp / (1 - 0.9**t)) / (np.sqrt(vp / (1 - 0.999**t)) + 1e-8)
        if t in steps:
            out.append([p.copy() for p in params])
    return out


def answer_targets(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct answers of A (n, d_a) as unit rows (m, d_a) float64, and the index
    (n,) of each pair's answer among them: the softmax of every InfoNCE step runs over
    all of them, so each batch sees its in-batch negatives and the hardest ones."""
    corpus, gold = np.unique(A, axis=0, return_inverse=True)
    return unit_rows(corpus, dtype=np.float64), gold.ravel()


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
    over seeded batches of the pairs Q (n, d_q), A (n, d_a), from ``W0``, against every
    distinct answer (:func:`answer_targets`). float64."""
    C, gold = answer_targets(A)
    Q64, W = np.asarray(Q, np.float64), np.array(W0, np.float64)
    grads = lambda rows: [infonce(Q64[rows], C, gold[rows], W, temperature)[1]]  # noqa: E731
    return [W for (W,) in adam_steps([W], grads, len(Q), steps, learning_rate, batch_size, random_state, progress)]


def infonce_federated(
    Q: np.ndarray,
    weights: np.ndarray,
    C: np.ndarray,
    gold: np.ndarray,
    params: list[np.ndarray],
    spans: list[np.ndarray],
    temperature: float,
) -> tuple[float, list[np.ndarray]]:
    """:func:`infonce_at` of the blend ``p_i = q_i B + Σ_k weights[i, k] (q_i U_k) M_k``
    of queries Q (b, d_q), ``params = [B, M_1, ...]`` (B (d_q, d_a), M_k (r_k, d_a)),
    ``spans = [U_1, ...]`` (d_q, r_k), ``weights`` (b, len(spans)) summing to 1 a row;
    and the gradients of the loss with respect to each parameter. float64."""
    P, parts = Q @ params[0], []
    for k, (U, M) in enumerate(zip(spans, params[1:])):
        on = np.flatnonzero(weights[:, k])
        zw = (Q[on] @ U) * weights[on, k, None]  # weighted coordinates in the span
        P[on] += zw @ M
        parts.append((on, zw))
    loss, dP = infonce_at(P, C, gold, temperature)
    return loss, [Q.T @ dP, *[zw.T @ dP[on] for on, zw in parts]]


def infonce_federated_steps(
    Q: np.ndarray,
    A: np.ndarray,
    weights: np.ndarray,
    base: np.ndarray,
    deltas: np.ndarray,
    spans: list[np.ndarray | None],
    steps: tuple[int, ...],
    temperature: float,
    learning_rate: float,
    batch_size: int,
    random_state: int,
    progress: bool = False,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The base ``B`` and the federated maps ``W_k = B + U_k M_k`` (K, d_q, d_a), as a
    pair, after each count in ``steps`` of Adam on the InfoNCE loss of the blended
    projection ``p_i = Σ_k weights[i, k] q_i W_k`` of the pairs Q (n, d_q), A (n, d_a)
    routed by ``weights`` (n, K), against every distinct answer (:func:`answer_targets`).

    The base ``B`` (d_q, d_a) is refined for every query; each cluster's correction only
    inside the span of its questions, ``U_k`` (d_q, r_k) orthonormal (``None``: the
    cluster keeps ``B``), starting from ``M_k = U_k^T deltas[k]``: the fitted corrections
    (K, d_q, d_a), which lie in those spans. float64."""
    C, gold = answer_targets(A)
    Q64 = np.asarray(Q, np.float64)
    live = [(k, U) for k, U in enumerate(spans) if U is not None]
    U_live = [U for _, U in live]
    params = [np.array(base, np.float64), *[U.T @ np.asarray(deltas[k], np.float64) for k, U in live]]
    W_live = np.asarray(weights)[:, [k for k, _ in live]]
    grads = lambda rows: infonce_federated(Q64[rows], W_live[rows], C, gold[rows], params, U_live, temperature)[1]  # noqa: E731
    out = []
    for b, *M in adam_steps(params, grads, len(Q), steps, learning_rate, batch_size, random_state, progress):
        W = np.repeat(b[None], len(spans), axis=0)
        for (k, U), Mk in zip(live, M):
            W[k] += U @ Mk
        out.append((b.copy(), W))
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
        temperature: float = TEMPERATURE,
        learning_rate: float = LEARNING_RATE,
        batch_size: int = BATCH_SIZE,
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
