"""Bridged projection: queries from a cheap encoder, answers from a strong one.

Asymmetric search embeds the answers once, offline, with a strong encoder (MiniLM)
and the queries at serving time with a cheap one (a static model). A bridge carries
the cheap space into the strong one: a ridge map fitted on a corpus of sentences
embedded by both encoders, not on the few training pairs (which overfit). A model of
any keyless kind (federated by default) is then fitted on the bridged training
questions and their answers, so it corrects what the bridge misses for this data.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from projroute._estimator import Projection, check_pairs
from projroute.federated import FederatedProjection
from projroute.metrics import mean_cosine
from projroute.ridge import RIDGE_GRID, RidgeSystem
from projroute.validation import check_validation, choose

BRIDGE_W = "bridge.W"
BRIDGE_BIAS = "bridge.bias"
HEADER_FIELDS = ("format", "version", "kind", "dim_in", "dim_out")


class Estimator(Protocol):
    """An unfitted keyless estimator (``GlobalProjection``, ``FederatedProjection``, ...)."""

    kind: str
    config_: dict[str, Any]

    def fit(self, Q: np.ndarray, A: np.ndarray) -> Any: ...

    def _tensors(self) -> dict[str, np.ndarray]: ...


def bridge_map(system: RidgeSystem, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` float32 of a centred, baseless :class:`~projroute.ridge.RidgeSystem`
    from the query encoder's space to the answer encoder's, at ``alpha``."""
    W, b = system.solve(alpha)
    assert b is not None  # centred
    return W.astype(np.float32), b.astype(np.float32)


def corpus_folds(n: int, n_folds: int, random_state: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_folds`` (train, validation) index pairs over ``n`` corpus sentences, seeded."""
    if n_folds < 2 or n < 2 * n_folds:
        raise ValueError(f"cannot cross-validate {n} corpus sentences in {n_folds} folds")
    fold = np.random.default_rng(random_state).permutation(n) % n_folds
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(n_folds)]


class BridgedProjection(Projection):
    """``p = model.project(q @ W_in_ + b_in_)``: a ridge bridge, then a fitted model.

    The bridge minimises ``||(S - mean_S) W - (M - mean_M)||^2 + alpha * m * ||W||^2``
    over a corpus embedded by both encoders (``S`` by the query encoder, ``M`` by the
    answer encoder; ``m`` the mean eigenvalue of the centred ``S^T S``), with
    ``b_in_ = mean_M - mean_S @ W_in_``. ``alpha`` (``alpha_``) is chosen from
    :data:`~projroute.ridge.RIDGE_GRID` by ``cv``-fold cross-validation over the corpus
    sentences: the mean cosine between held-out sentences' bridged and strong
    embeddings (ties to the stronger ridge), unless given as a number > 0. ``model``
    (an unfitted estimator of a keyless kind; default ``FederatedProjection``) is then
    fitted, in place, on the bridged questions and the answers; the default one
    validates in the ``validation`` regime (:mod:`projroute.validation`).

    Saved as the model's kind with ``input_dim`` in its config and the bridge as the
    tensors ``bridge.W`` (d_q, d_a) and ``bridge.bias`` (d_a,); the Rust core applies
    it before routing and projecting.

    Fitted: ``W_in_`` (d_q, d_a), ``b_in_`` (d_a,) float32, ``alpha_``,
    ``validation_`` (mean held-out cosine per alpha), ``model_``.
    """

    def __init__(
        self,
        model: Estimator | None = None,
        alpha: float | str = "auto",
        cv: int = 5,
        validation: str = "known-answers",
        random_state: int = 0,
    ) -> None:
        self.model = model
        self.alpha = alpha
        self.cv = cv
        self.validation = validation
        self.random_state = random_state

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.model_.kind

    def fit(self, Q: np.ndarray, A: np.ndarray, corpus: tuple[np.ndarray, np.ndarray]) -> BridgedProjection:
        """Fit on questions ``Q`` (n, d_q) embedded by the query encoder, their answers
        ``A`` (n, d_a) embedded by the answer encoder, and ``corpus = (S, M)``: the same
        m sentences embedded by each, (m, d_q) and (m, d_a)."""
        Q, A = check_pairs(Q, A)
        S, M = check_pairs(*corpus)
        check_validation(self.validation)
        if (S.shape[1], M.shape[1]) != (Q.shape[1], A.shape[1]):
            raise ValueError(
                f"the corpus is {S.shape[1]} -> {M.shape[1]} dimensions, the pairs {Q.shape[1]} -> {A.shape[1]}"
            )
        if self.alpha == "auto":
            scores = []
            for train, val in corpus_folds(len(S), self.cv, self.random_state):
                system = RidgeSystem(S[train], M[train], None, center=True)
                maps = [bridge_map(system, alpha) for alpha in RIDGE_GRID]
                scores.append([mean_cosine(S[val] @ W + b, M[val]) for W, b in maps])
            self.alpha_ = choose(RIDGE_GRID, np.array(scores))
            self.validation_ = dict(zip(RIDGE_GRID, np.mean(scores, axis=0).tolist()))
        elif isinstance(self.alpha, (int, float)) and self.alpha > 0:
            self.alpha_, self.validation_ = float(self.alpha), {}
        else:
            raise ValueError(f"alpha must be 'auto' or a number > 0, got {self.alpha!r}")
        self.W_in_, self.b_in_ = bridge_map(RidgeSystem(S, M, None, center=True), self.alpha_)
        self.n_corpus_ = len(S)
        self.model_: Estimator = self.model or FederatedProjection(
            validation=self.validation, random_state=self.random_state
        )
        if self.model_.kind in ("tree", "hierarchical"):
            raise ValueError(f"a {self.model_.kind} model needs keys; bridge a keyless kind")
        self.model_.fit(Q @ self.W_in_ + self.b_in_, A)
        self._build(A.shape[1], A.shape[1])
        return self

    def _tensors(self) -> dict[str, np.ndarray]:
        return {**self.model_._tensors(), BRIDGE_W: self.W_in_, BRIDGE_BIAS: self.b_in_}

    def _config(self) -> dict[str, Any]:
        inner = {k: v for k, v in self.model_.config_.items() if k not in HEADER_FIELDS}
        bridge = {"alpha": self.alpha_, "validation_mrr": self.validation_, "corpus_sentences": self.n_corpus_}
        return {**inner, "input_dim": int(self.W_in_.shape[0]), "fit": {**inner.get("fit", {}), "bridge": bridge}}
