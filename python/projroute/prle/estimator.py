"""``PRLERegressor``: fit in PyTorch, serve from the Rust core, explain by prototypes."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

from projroute import _format
from projroute._core import ModelFormatError, Projector
from projroute.prle.config import PRLEConfig
from projroute.prle.model import PRLE
from projroute.prle.train import History, embed, train_experts, train_kernel

__all__ = ["KIND", "PRLERegressor", "load"]

KIND = "prle"
#: Metadata key: JSON list, per prototype, of its training pair and gold score.
PROTOTYPES_KEY = "prle.prototypes"


class PRLERegressor:
    """Prototype regression with local experts.

    Parameters
    ----------
    config : PRLEConfig, optional
        The run (head, kernel stage, prototypes, router, experts); default ``PRLEConfig()``.

    Attributes (after ``fit``)
    --------------------------
    model_ : PRLE
        The torch network, in eval mode.
    projector_ : projroute.Projector
        The same model served by the Rust core (``predict`` uses it).
    prototype_index_ : np.ndarray of shape (K,), int64
        The training rows that are the prototypes.
    prototype_pairs_ : list of (str, str) or None
        Their sentence pairs, when ``fit`` was given ``pairs``.
    prototype_scores_ : np.ndarray of shape (K,)
        Their gold scores.
    kernel_history_, expert_history_ : History
        The two stages' per-epoch losses and dev metrics.
    """

    def __init__(self, config: PRLEConfig | None = None) -> None:
        self.config = config or PRLEConfig()

    def fit(
        self,
        X: Any,
        y: Any,
        X_dev: Any = None,
        y_dev: Any = None,
        pairs: list[tuple[str, str]] | None = None,
    ) -> PRLERegressor:
        """Fit on features X (n, D_in) and scores y (n,); early stopping on (X_dev, y_dev),
        default a seeded tenth of the training rows. ``pairs``: the n training sentence pairs,
        kept for the prototypes' explanations. Returns self."""
        X, y = _check_xy(X, y)
        cfg = self.config
        if X_dev is None:
            perm = np.random.default_rng(cfg.seed).permutation(len(X))
            dev, train = perm[: max(len(X) // 10, 2)], perm[max(len(X) // 10, 2) :]
            X, X_dev, y, y_dev = X[train], X[dev], y[train], y[dev]
            pairs = [pairs[i] for i in train] if pairs is not None else None
        X_dev, y_dev = _check_xy(X_dev, y_dev)
        if X_dev.shape[1] != X.shape[1]:
            raise ValueError(f"X_dev has {X_dev.shape[1]} features, X has {X.shape[1]}")
        if pairs is not None and len(pairs) != len(X):
            raise ValueError(f"{len(pairs)} pairs for {len(X)} rows")
        if cfg.prototypes.n > len(X):
            raise ValueError(f"prototypes.n={cfg.prototypes.n} is more than the {len(X)} training rows")
        threads = torch.get_num_threads()
        torch.set_num_threads(cfg.threads)
        try:
            torch.manual_seed(cfg.seed)
            model = PRLE(cfg.head, cfg.router, X.shape[1], cfg.prototypes.n)
            self.kernel_history_: History = train_kernel(model, X, y, X_dev, y_dev, cfg)
            self.expert_history_: History = train_experts(model, X, y, X_dev, y_dev, cfg)
        finally:
            torch.set_num_threads(threads)
        self.model_ = model
        self.prototype_index_ = model.prototype_index.numpy().copy()
        self.prototype_scores_ = y[self.prototype_index_].astype(np.float64)
        self.prototype_pairs_ = [pairs[i] for i in self.prototype_index_] if pairs is not None else None
        self.projector_ = Projector.from_tensors(self.tensors(), json.dumps(self.header()), self.metadata())
        return self

    # --- export ---------------------------------------------------------------------

    def tensors(self) -> dict[str, np.ndarray]:
        """The model file's tensors (see ``docs/format.md``, kind ``prle``)."""
        m = self.model_
        t = {k: v.numpy() for k, v in m.head.folded().items()}
        t["prototypes"] = m.P.detach().numpy()
        t["experts.weight"] = m.expert_weight.detach().numpy()
        t["experts.bias"] = m.expert_bias.detach().numpy()
        for name, layer in m.router.mlp_layers().items():
            t[f"router.{name}.weight"] = layer.weight.detach().numpy()
            t[f"router.{name}.bias"] = layer.bias.detach().numpy()
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in t.items()}

    def header(self) -> dict[str, Any]:
        """The model file's config."""
        m, r = self.model_, self.model_.router
        return _format.header(
            KIND,
            m.head.mean.shape[0],
            1,
            n_clusters=r.k,
            temperature=1.0 if r.mlp is not None else r.temperature,
            top_k=r.top_k if r.kind in ("knn", "mlp") else r.k,
            prle={"head": m.head.kind, "router": r.kind, "radius": r.radius},
            fit={"config": self.config.to_dict()},
        )

    def metadata(self) -> dict[str, str]:
        """Metadata strings: the prototypes' training pairs and gold scores."""
        pairs = self.prototype_pairs_ or [None] * len(self.prototype_index_)
        rows = [
            {"row": int(i), "score": float(s), "pair": list(p) if p else None}
            for i, s, p in zip(self.prototype_index_, self.prototype_scores_, pairs)
        ]
        return {PROTOTYPES_KEY: json.dumps(rows)}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the projroute model file (kind ``prle``)."""
        _format.save(path, self.tensors(), self.header(), metadata=self.metadata())

    # --- inference ------------------------------------------------------------------

    def predict(self, X: Any) -> np.ndarray:
        """Predicted scores (n,) float32 of features X (n, D_in), from the Rust core."""
        return self.projector_.project(np.asarray(X, dtype=np.float32))[:, 0]

    @torch.no_grad()
    def predict_torch(self, X: Any) -> np.ndarray:
        """The same predictions (n,) from the torch network."""
        return self.model_(torch.from_numpy(np.asarray(X, dtype=np.float32))).numpy()

    def transform(self, X: Any) -> np.ndarray:
        """Value embeddings (n, dim) float32 of features X (n, D_in)."""
        return embed(self.model_, np.ascontiguousarray(X, dtype=np.float32))

    @torch.no_grad()
    def explain(self, X: Any, top: int = 3) -> list[dict[str, Any]]:
        """Per row of X (n, D_in): the prediction and its ``top`` prototypes by weight,
        each with its weight, local (expert) prediction, training row, gold score and pair."""
        z = torch.from_numpy(self.transform(X))
        yhat, w, local = self.model_.mix(z)
        out = []
        for i in range(len(z)):
            order = torch.argsort(w[i], descending=True)[:top]
            protos = [
                {
                    "prototype": int(k),
                    "weight": float(w[i, k]),
                    "local_prediction": float(local[i, k]),
                    "row": int(self.prototype_index_[k]),
                    "score": float(self.prototype_scores_[k]),
                    "pair": list(self.prototype_pairs_[k]) if self.prototype_pairs_ else None,
                }
                for k in order.tolist()
                if w[i, k] > 0
            ]
            out.append({"prediction": float(yhat[i]), "prototypes": protos})
        return out


def load(path: str | os.PathLike[str]) -> PRLERegressor:
    """A saved PRLE model file as a fitted :class:`PRLERegressor` (torch network rebuilt
    from the file, standardisation folded in; Rust projector for ``predict``)."""
    projector = Projector.load(os.fspath(path))
    if projector.kind != KIND:
        raise ModelFormatError(f"{path}: a {projector.kind!r} model, not a {KIND!r} one")
    config = json.loads(projector.config)
    record = config.get("fit", {}).get("config")
    if record is None or PROTOTYPES_KEY not in projector.metadata:
        raise ModelFormatError(
            f"{path}: no PRLE fit record or prototype list to rebuild the torch network from; "
            "serve it with projroute.load(path) instead"
        )
    cfg = PRLEConfig.from_dict(record)
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in projector.tensors().items()}
    d_in, k = config["dim_in"], config["n_clusters"]
    model = PRLE(cfg.head, cfg.router, d_in, k).eval()
    with torch.no_grad():
        for name in ("hidden", "skip", "out"):
            layer = getattr(model.head, name)
            if layer is not None:
                layer.weight.copy_(t[f"head.{name}.weight"])
                layer.bias.copy_(t[f"head.{name}.bias"])
        model.prototypes.copy_(t["prototypes"])
        model.expert_weight.copy_(t["experts.weight"])
        model.expert_bias.copy_(t["experts.bias"])
        model.router.log_t.copy_(torch.tensor(float(np.log(config["temperature"]))))
        for name, layer in model.router.mlp_layers().items():
            layer.weight.copy_(t[f"router.{name}.weight"])
            layer.bias.copy_(t[f"router.{name}.bias"])
    rows = json.loads(projector.metadata[PROTOTYPES_KEY])
    est = PRLERegressor(cfg)
    est.model_, est.projector_ = model, projector
    est.prototype_index_ = np.array([r["row"] for r in rows], dtype=np.int64)
    est.prototype_scores_ = np.array([r["score"] for r in rows])
    est.prototype_pairs_ = [tuple(r["pair"]) for r in rows] if rows and rows[0]["pair"] else None
    model.prototype_index.copy_(torch.from_numpy(est.prototype_index_))
    return est


def _check_xy(X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"X must be (n, d) and y (n,), got {X.shape} and {y.shape}")
    if len(X) < 4:
        raise ValueError(f"need at least 4 rows, got {len(X)}")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ValueError("X and y must be finite (found NaN or infinity)")
    return X, y
