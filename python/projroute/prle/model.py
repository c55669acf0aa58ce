"""The PRLE network (PyTorch): projection head, prototypes, router and linear experts.

For pair features x (B, D_in): ``z = normalise(head(standardise(x)))`` (B, d), routing
weights ``w = router(z, P)`` (B, K) over the unit prototypes P (K, d), local predictions
``l = z Eᵀ + b`` (B, K), and ``ŷ = Σ_k w_k l_k`` (B,).
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from projroute.prle.config import HeadConfig, RouterConfig

__all__ = ["PRLE", "Head", "Router"]


class Head(nn.Module):
    """Pair features (B, D_in) -> unit value embeddings (B, dim).

    ``linear``: ``out(x)``; ``mlp``: ``out(relu(hidden(x)))``; ``residual_mlp``:
    ``skip(x) + out(relu(hidden(x)))``; ``rff``: ``out(√(2/m) cos(hidden(x)))`` with
    ``hidden`` fixed random Fourier features (Ω ~ N(0, scale²/D_in), phase ~ U(0, 2π)).
    Inputs are standardised by the buffers ``mean`` and ``std`` first; dropout on the
    inputs and before ``out`` in training.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, cfg: HeadConfig, d_in: int) -> None:
        super().__init__()
        self.kind = cfg.kind
        self.register_buffer("mean", torch.zeros(d_in))
        self.register_buffer("std", torch.ones(d_in))
        self.hidden: nn.Linear | None = None
        self.skip: nn.Linear | None = None
        width = d_in
        if cfg.kind in ("mlp", "residual_mlp"):
            self.hidden = nn.Linear(d_in, cfg.hidden)
            width = cfg.hidden
        elif cfg.kind == "rff":
            self.hidden = nn.Linear(d_in, cfg.rff_features)
            with torch.no_grad():
                self.hidden.weight.normal_(0.0, cfg.rff_scale / math.sqrt(d_in))
                self.hidden.bias.uniform_(0.0, 2 * math.pi)
            self.hidden.requires_grad_(False)
            width = cfg.rff_features
        if cfg.kind == "residual_mlp":
            self.skip = nn.Linear(d_in, cfg.dim)
        self.out = nn.Linear(width, cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.input_dropout = nn.Dropout(cfg.input_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_dropout((x - self.mean) / self.std)
        h = x
        if self.hidden is not None:
            a = self.hidden(x)
            h = math.sqrt(2.0 / a.shape[1]) * torch.cos(a) if self.kind == "rff" else torch.relu(a)
        z = self.out(self.dropout(h))
        if self.skip is not None:
            z = z + self.skip(x)
        return F.normalize(z, dim=1)

    def folded(self) -> dict[str, torch.Tensor]:
        """The layers as ``head.<layer>.weight`` (out, in) and ``.bias``, with the
        standardisation folded into the layers that read x."""
        out = {}
        for name in ("hidden", "skip", "out"):
            layer = getattr(self, name)
            if layer is None:
                continue
            w, b = layer.weight.detach(), layer.bias.detach()
            if name != "out" or self.hidden is None:
                w = w / self.std
                b = b - w @ self.mean
            out[f"head.{name}.weight"], out[f"head.{name}.bias"] = w.clone(), b.clone()
        return out


class Router(nn.Module):
    """Routing weights (B, K) of unit value embeddings z (B, d) over unit prototypes P.

    Scores are cosines ``s = z Pᵀ``; on the unit sphere ``‖z − p‖² = 2 − 2s``, so a
    softmax of ``s/T`` is a softmax of ``−‖z − p‖²/2T``. See :class:`RouterConfig`.
    """

    log_t: torch.Tensor

    def __init__(self, cfg: RouterConfig, dim: int, k: int) -> None:
        super().__init__()
        self.kind, self.k, self.top_k = cfg.kind, k, min(cfg.top_k, k)
        self.radius, self.gumbel = cfg.radius, cfg.gumbel
        log_t = torch.tensor(math.log(cfg.temperature))
        if cfg.learn_temperature and cfg.kind != "mlp":
            self.log_t = nn.Parameter(log_t)
        else:
            self.register_buffer("log_t", log_t)
        self.mlp = (
            nn.Sequential(nn.Linear(dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, k))
            if cfg.kind == "mlp"
            else None
        )

    def mlp_layers(self) -> dict[str, nn.Linear]:
        """The MLP router's layers by file name (``hidden``, ``out``); empty for other kinds."""
        if self.mlp is None:
            return {}
        return {"hidden": cast(nn.Linear, self.mlp[0]), "out": cast(nn.Linear, self.mlp[2])}

    @property
    def temperature(self) -> float:
        return float(self.log_t.detach().exp())

    def logits(self, z: torch.Tensor, P: torch.Tensor, anneal: float = 1.0) -> torch.Tensor:
        """Logits (B, K) before selection: ``s / (T·anneal)``, or the MLP's output."""
        if self.mlp is not None:
            return self.mlp(z)
        return (z @ P.T) / (self.log_t.exp() * anneal)

    def forward(
        self, z: torch.Tensor, P: torch.Tensor, anneal: float = 1.0, exclude: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Weights (B, K), rows summing to 1; prototypes where ``exclude`` (K,) bool is set
        get none (as if removed). Gumbel noise only in training mode."""
        logits = self.logits(z, P, anneal)
        if self.mlp is not None and self.training and self.gumbel > 0:
            u = torch.rand_like(logits).clamp_(1e-9, 1 - 1e-9)
            logits = logits - self.gumbel * torch.log(-torch.log(u))
        if exclude is not None:
            logits = logits.masked_fill(exclude, float("-inf"))
        if self.kind in ("knn", "mlp") and self.top_k < self.k:
            kth = logits.topk(self.top_k, dim=1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        elif self.kind == "radius":
            s = z @ P.T
            if exclude is not None:
                s = s.masked_fill(exclude, float("-inf"))
            inside = s >= 1.0 - self.radius**2 / 2.0
            nearest = F.one_hot(s.argmax(1), self.k).bool()
            keep = torch.where(inside.any(1, keepdim=True), inside, nearest)
            logits = logits.masked_fill(~keep, float("-inf"))
        return torch.softmax(logits, dim=1)


class PRLE(nn.Module):
    """Head, prototypes (K, dim) in value space, router and K linear experts."""

    prototype_index: torch.Tensor

    def __init__(self, head_cfg: HeadConfig, router_cfg: RouterConfig, d_in: int, k: int) -> None:
        super().__init__()
        self.head = Head(head_cfg, d_in)
        self.router = Router(router_cfg, head_cfg.dim, k)
        self.prototypes = nn.Parameter(torch.zeros(k, head_cfg.dim), requires_grad=False)
        self.register_buffer("prototype_index", torch.zeros(k, dtype=torch.long))
        self.expert_weight = nn.Parameter(torch.zeros(k, head_cfg.dim))
        self.expert_bias = nn.Parameter(torch.zeros(k))

    @property
    def P(self) -> torch.Tensor:
        """Unit prototypes (K, dim)."""
        return F.normalize(self.prototypes, dim=1)

    def local(self, z: torch.Tensor) -> torch.Tensor:
        """Each expert's prediction (B, K)."""
        return z @ self.expert_weight.T + self.expert_bias

    def mix(self, z: torch.Tensor, anneal: float = 1.0, exclude: torch.Tensor | None = None):
        """(ŷ (B,), weights (B, K), local predictions (B, K)) of value embeddings z."""
        w = self.router(z, self.P, anneal, exclude)
        local = self.local(z)
        return (w * local).sum(1), w, local

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions (B,) of pair features x (B, D_in)."""
        return self.mix(self.head(x))[0]
