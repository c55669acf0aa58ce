"""Keyed projections: one map per tree, or per node of a hierarchy, chosen by a key
that each query carries (its tree id, or its path ``a/b/c``).

Fitting, shared by both kinds: node ``""`` (the root, and the fallback of every key
that finds no node) holds the validated :class:`~projroute.GlobalProjection` fitted
on all pairs. Every other node with at least ``min_pairs`` pairs gets
``W_node = W_parent + lambda * P_node (R_node - W_parent)``
(:func:`projroute.procrustes.cluster_delta`): the node's Procrustes rotation
``R_node`` inside the span of its questions (``P_node`` projects onto it), its
parent's map outside that span, shrunk toward the parent by ``lambda``
(``shrinkage_``). Plain Procrustes on a node's pairs (fewer than the dimension, as
a rule) is arbitrary outside their span and wrecks unseen questions; the minimal
correction changes only what the node's data determine. ``lambda`` is chosen from
0, 0.1, ..., 1 by ``cv``-fold cross-validation of retrieval MRR in the ``validation``
regime (:mod:`projroute.validation`; questions served with their own keys), near-ties
to the more shrunk value, unless given as a number.

Fitted: ``nodes_`` (list of M keys, ``""`` first, parents before children), ``W_``
(M, d, d) float32, ``node_sizes_`` (M,) pairs per node, ``shrinkage_`` and
``validation_`` (cross-validated MRR per ``lambda``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from projroute._estimator import Projection, check_pairs
from projroute.procrustes import GlobalProjection, cluster_delta
from projroute.reference import project_keyed, resolve_keys
from projroute.validation import SHRINKAGE_GRID, RetrievalTask, choose_shrinkage


def check_keys(keys: Any, n: int) -> list[str]:
    """``keys`` as a list of ``n`` str; TypeError for anything but a sequence of str,
    ValueError for the wrong length."""
    if isinstance(keys, (str, bytes)):
        raise TypeError("keys must be a sequence of str (one tree id or path per item), not one str")
    keys = list(keys)
    if not all(isinstance(k, str) for k in keys):
        raise TypeError("keys must be a sequence of str (one tree id or path per item)")
    if len(keys) != n:
        raise ValueError(f"{len(keys)} keys for {n} items")
    return keys


class _KeyedProjection(Projection):
    """Fitting and serving shared by the ``tree`` and ``hierarchical`` kinds (see the
    module docstring)."""

    def __init__(
        self,
        min_pairs: int = 10,
        shrinkage: float | str = "auto",
        cv: int = 5,
        validation: str = "known-answers",
        random_state: int = 0,
    ) -> None:
        self.min_pairs = min_pairs
        self.shrinkage = shrinkage
        self.cv = cv
        self.validation = validation
        self.random_state = random_state

    def _chain(self, key: str) -> list[str]:
        """The nodes that may serve ``key``, deepest first, root excluded."""
        chain = [key]
        while self.kind == "hierarchical" and "/" in chain[-1]:
            chain.append(chain[-1].rsplit("/", 1)[0])
        return [k for k in chain if k]

    def _maps(
        self, Q: np.ndarray, A: np.ndarray, keys: list[str], lambdas: Sequence[float]
    ) -> tuple[list[str], list[int], list[np.ndarray]]:
        """Node keys (root first, parents before children), pairs per node, and the
        maps (M, d, d) for each ``lambda``."""
        members: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            for node in self._chain(key):
                members.setdefault(node, []).append(i)
        fitted = sorted(
            (n for n, rows in members.items() if len(rows) >= self.min_pairs), key=lambda n: (len(self._chain(n)), n)
        )
        nodes = ["", *fitted]
        glob = GlobalProjection(validation=self.validation, random_state=self.random_state)
        root = glob.fit(Q, A).W_.astype(np.float64)
        out = []
        for lam in lambdas:
            W = {"": root}
            for node in fitted:
                parent = W[next((a for a in self._chain(node)[1:] if a in W), "")]
                rows = members[node]
                W[node] = parent + lam * cluster_delta(Q[rows], A[rows], parent)
            out.append(np.stack([W[n] for n in nodes]).astype(np.float32))
        return nodes, [len(Q), *(len(members[n]) for n in fitted)], out

    def fit(self, Q: np.ndarray, A: np.ndarray, keys: Sequence[str]) -> _KeyedProjection:
        """Fit on pairs ``Q`` (n, d), ``A`` (n, d) and their ``keys`` (n str)."""
        Q, A = check_pairs(Q, A, same_dim=True)
        keys = check_keys(keys, len(Q))
        if not (isinstance(self.min_pairs, int) and self.min_pairs >= 1):
            raise ValueError(f"min_pairs must be an int >= 1, got {self.min_pairs!r}")
        hierarchical = self.kind == "hierarchical"
        key_array = np.array(keys, dtype=object)

        def fold_scores(train: np.ndarray, task: RetrievalTask) -> list[np.ndarray]:
            nodes, _, maps = self._maps(Q[train], A[train], [keys[i] for i in train], SHRINKAGE_GRID)
            node = resolve_keys(list(key_array[task.rows]), nodes, hierarchical)
            return [task.rr(project_keyed(task.queries, W, node)) for W in maps]

        self.shrinkage_, self.validation_ = choose_shrinkage(
            self.shrinkage, Q, A, self.cv, self.random_state, fold_scores, self.validation
        )
        self.nodes_, self.node_sizes_, (self.W_,) = self._maps(Q, A, keys, [self.shrinkage_])
        self._build(Q.shape[1], A.shape[1])
        return self

    def project(self, X: np.ndarray, keys: Sequence[str]) -> np.ndarray:  # type: ignore[override]
        """Project queries ``X`` (B, d) with their ``keys`` (B str): (B, d), float32."""
        return self._fitted().project(X, keys)

    def resolve(self, keys: Sequence[str]) -> list[str]:
        """The node serving each key: the key itself, an ancestor, or ``""`` (the global map)."""
        return self._fitted().resolve(keys)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"W": self.W_}

    def _config(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes_,
            "fit": {
                "shrinkage": self.shrinkage_,
                "validation_mrr": self.validation_,
                "min_pairs": self.min_pairs,
                "node_sizes": self.node_sizes_,
            },
        }


class TreeProjection(_KeyedProjection):
    """One map per tree: each pair and each query carries a ``tree_id`` (a str key).

    A tree with at least ``min_pairs`` pairs gets the global map corrected by its own
    Procrustes rotation within the span of its questions; smaller trees, ids never
    seen in training and the id ``""`` are served by the global map (node ``""``).
    Serving is an exact lookup of the id, one GEMM per tree in the batch. Fitting and
    ``lambda``: see :mod:`projroute.trees`.

    Parameters
    ----------
    min_pairs : int, fewest pairs for a tree of its own
    shrinkage : "auto" or float in [0, 1], the ``lambda`` of each correction
    cv, random_state : cross-validation folds and seed
    """

    kind = "tree"


class HierarchicalProjection(_KeyedProjection):
    """One map per node of a hierarchy: each pair and each query carries a path
    ``a/b/c``; its nodes are the path and each prefix (``a/b/c``, ``a/b``, ``a``).

    Every node with at least ``min_pairs`` pairs in its subtree gets a map corrected
    from its parent's (the nearest fitted ancestor, the global map at the top), so a
    node's map already carries the corrections of every ancestor: serving a query by
    its deepest fitted ancestor blends along its path at the cost of one GEMM per
    node in the batch (no weighted sum of several maps per query), and a small node
    borrows strength from its parents, deviating from them only in the span of its
    own questions. A path with no fitted prefix goes to the global map (node ``""``).
    Fitting and ``lambda``: see :mod:`projroute.trees`.

    Parameters
    ----------
    min_pairs : int, fewest pairs (in the subtree) for a node of its own
    shrinkage : "auto" or float in [0, 1], the ``lambda`` of each correction
    cv, random_state : cross-validation folds and seed
    """

    kind = "hierarchical"
