"""Student networks: a cross-attention transformer over learned keys, an ensemble of
them mixed by a router (both exported to Rust), and an MLP baseline (for comparison only).

A student maps one query embedding (B, D_in) to (B, D_out) as ``skip(x) + residual(x)``:
a bias-free linear path, since the teachers are close to linear, plus a non-linear
correction. The ensemble mixes M such students::

    logits = router(x)                      router = Linear -> GELU -> Linear
    w      = softmax(top_k(logits))         others 0; top_k = M mixes all
    y      = sum_d w_d * students[d](x)
"""

from __future__ import annotations

import itertools
import math
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: LayerNorm epsilon of every norm in the transformer (written to the exported config).
LAYER_NORM_EPS = 1e-5


@torch.no_grad()
def zero_init_(layer: nn.Linear) -> None:
    """Zero a layer's weight and bias: the non-linear branch starts switched off, so a
    new student is exactly its linear ``skip`` path."""
    layer.weight.zero_()
    layer.bias.zero_()


class CrossAttentionBlock(nn.Module):
    """Pre-norm block: the query attends over ``num_keys`` learned (key, value) pairs,
    then a GELU feed-forward layer; both added residually.

    Parameters
    ----------
    d_model : int
        Width of the hidden state; divisible by ``n_heads``.
    n_heads : int
    num_keys : int
        Learned keys and values ("compressed clusters"), each (num_keys, d_model).
    ffn_dim : int
        Hidden width of the feed-forward layer.
    """

    def __init__(self, d_model: int, n_heads: int, num_keys: int, ffn_dim: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.num_keys = num_keys
        self.norm1 = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS)
        self.query = nn.Linear(d_model, d_model)
        self.keys = nn.Parameter(torch.randn(num_keys, d_model) * 0.02)
        self.values = nn.Parameter(torch.randn(num_keys, d_model) * 0.02)
        self.out = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS)
        self.ffn1 = nn.Linear(d_model, ffn_dim)
        self.ffn2 = nn.Linear(ffn_dim, d_model)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, d_model) -> (h (B, d_model), attention (B, n_heads, num_keys))."""
        B, d_model = h.shape
        H, nk = self.n_heads, self.num_keys
        dh = d_model // H
        q = self.query(self.norm1(h))
        qh = q.view(B, H, dh).transpose(0, 1)  # (H, B, dh)
        kh = self.keys.view(nk, H, dh).transpose(0, 1)  # (H, nk, dh)
        vh = self.values.view(nk, H, dh).transpose(0, 1)  # (H, nk, dh)
        att = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(dh), dim=-1)  # (H, B, nk)
        o = (att @ vh).transpose(0, 1).reshape(B, d_model)
        h = h + self.out(o)
        h = h + self.ffn2(F.gelu(self.ffn1(self.norm2(h))))
        return h, att.transpose(0, 1)


class ProjectionTransformer(nn.Module):
    """``y = skip(x) + output(norm(blocks(input(x))))``: the distillation student.

    The parameter names (``input``, ``layers.{i}.*``, ``norm``, ``output``, ``skip``)
    are the tensor names of the exported file; the Rust core loads them as they are.

    Parameters
    ----------
    dim_in, dim_out : int
        Query and output embedding dimensions.
    d_model, n_heads, n_layers, num_keys, ffn_dim : int
        Hidden width, attention heads, blocks, learned keys per block, feed-forward width.
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        d_model: int = 256,
        n_heads: int = 4,
        n_layers: int = 2,
        num_keys: int = 64,
        ffn_dim: int = 512,
    ) -> None:
        super().__init__()
        self.dim_in, self.dim_out = dim_in, dim_out
        self.d_model, self.n_heads, self.n_layers = d_model, n_heads, n_layers
        self.num_keys, self.ffn_dim = num_keys, ffn_dim
        self.input = nn.Linear(dim_in, d_model)
        self.layers = nn.ModuleList([CrossAttentionBlock(d_model, n_heads, num_keys, ffn_dim) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS)
        self.output = nn.Linear(d_model, dim_out)
        self.skip = nn.Linear(dim_in, dim_out, bias=False)
        zero_init_(self.output)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, dim_in) -> y (B, dim_out), and with ``return_attention`` the first
        block's attention (B, n_heads, num_keys) (None when ``n_layers`` is 0)."""
        h = self.input(x)
        first: torch.Tensor | None = None
        for layer in self.layers:
            h, att = layer(h)
            first = att if first is None else first
        y = self.skip(x) + self.output(self.norm(h))
        return (y, first) if return_attention else y

    def config(self) -> dict[str, int]:
        """The architecture: d_model, n_heads, n_layers, num_keys, ffn_dim."""
        return {
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "n_layers": self.n_layers,
            "num_keys": self.num_keys,
            "ffn_dim": self.ffn_dim,
        }

    def n_parameters(self) -> int:
        """Number of scalar parameters."""
        return sum(p.numel() for p in self.parameters())


class MLPBaseline(nn.Module):
    """``y = skip(x) + output(MLP(x))`` with ``n_layers`` Linear+GELU layers of width
    ``hidden``: an encoder over a one-token sequence reduces to this. Not exportable.

    Parameters
    ----------
    dim_in, dim_out : int
    hidden : int
    n_layers : int, >= 1
    """

    def __init__(self, dim_in: int, dim_out: int, hidden: int = 512, n_layers: int = 2) -> None:
        super().__init__()
        self.dim_in, self.dim_out, self.hidden, self.n_layers = dim_in, dim_out, hidden, n_layers
        widths = [dim_in] + [hidden] * n_layers
        self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in itertools.pairwise(widths)])
        self.output = nn.Linear(hidden, dim_out)
        self.skip = nn.Linear(dim_in, dim_out, bias=False)
        zero_init_(self.output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, dim_in) -> (B, dim_out)."""
        h = x
        for layer in self.layers:
            h = F.gelu(layer(h))
        return self.skip(x) + self.output(h)

    def config(self) -> dict[str, int]:
        """The architecture: hidden, n_layers."""
        return {"hidden": self.hidden, "n_layers": self.n_layers}

    def n_parameters(self) -> int:
        """Number of scalar parameters."""
        return sum(p.numel() for p in self.parameters())


def top_k_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask (B, M) of the ``k`` largest logits of each row, ties to the lower index."""
    M = logits.shape[1]
    if k >= M:
        return torch.ones_like(logits, dtype=torch.bool)
    order = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :k]
    mask = torch.zeros_like(logits, dtype=torch.bool)
    return mask.scatter_(1, order, True)


def top_k_softmax(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Weights (B, M): softmax over each row's ``k`` largest logits, 0 elsewhere."""
    if k >= logits.shape[1]:
        return torch.softmax(logits, dim=1)
    kept = logits.masked_fill(~top_k_mask(logits, k), -math.inf)
    return torch.softmax(kept, dim=1)


class TransformerEnsemble(nn.Module):
    """``y = sum_d w_d(x) * students[d](x)``, ``w = softmax(top_k(router(x)))``.

    Parameters
    ----------
    dim_in, dim_out : int
        Query and output embedding dimensions.
    n_domains : int
        Number of domain students M.
    top_k : int
        Domains mixed per query, 1..M (M: dense mixing).
    router_hidden : int
        Hidden width of the router MLP ``Linear(dim_in, H) -> GELU -> Linear(H, M)``.
    **student_arch
        Keyword arguments of every :class:`ProjectionTransformer` student.
    """

    def __init__(
        self, dim_in: int, dim_out: int, n_domains: int, top_k: int, router_hidden: int = 128, **student_arch: int
    ) -> None:
        super().__init__()
        if n_domains < 1:
            raise ValueError(f"n_domains must be >= 1, got {n_domains}")
        if not 1 <= top_k <= n_domains:
            raise ValueError(f"top_k must lie in 1..n_domains={n_domains}, got {top_k}")
        if router_hidden < 1:
            raise ValueError(f"router_hidden must be >= 1, got {router_hidden}")
        self.dim_in, self.dim_out = dim_in, dim_out
        self.n_domains, self.top_k, self.router_hidden = n_domains, top_k, router_hidden
        self.router = nn.Sequential(nn.Linear(dim_in, router_hidden), nn.GELU(), nn.Linear(router_hidden, n_domains))
        self.students = nn.ModuleList(
            [ProjectionTransformer(dim_in, dim_out, **student_arch) for _ in range(n_domains)]
        )

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Mixing weights (B, M) of queries x (B, dim_in): ``top_k`` nonzero per row, summing to 1."""
        return top_k_softmax(self.router(x), self.top_k)

    def student_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Every student's output (B, M, dim_out)."""
        return torch.stack([s(x) for s in self.students], dim=1)

    def forward(self, x: torch.Tensor, return_logits: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, dim_in) -> y (B, dim_out), and with ``return_logits`` the router logits (B, M).

        Only the rows a student is selected for are run through it (as the Rust core does).
        """
        logits = self.router(x)
        w = top_k_softmax(logits, self.top_k)
        if self.top_k >= self.n_domains:
            y = (w.unsqueeze(-1) * self.student_outputs(x)).sum(dim=1)
        else:
            y = x.new_zeros(len(x), self.dim_out)
            for d, student in enumerate(self.students):
                rows = torch.nonzero(w[:, d] > 0).squeeze(1)
                if len(rows):
                    y = y.index_add(0, rows, w[rows, d, None] * student(x[rows]))
        return (y, logits) if return_logits else y

    def student_config(self) -> dict[str, int]:
        """The students' architecture (``ProjectionTransformer.config()``)."""
        # Every student is a ProjectionTransformer (built in __init__).
        return cast(ProjectionTransformer, self.students[0]).config()

    def config(self) -> dict[str, int]:
        """The ensemble section: n_domains, top_k, router_hidden."""
        return {"n_domains": self.n_domains, "top_k": self.top_k, "router_hidden": self.router_hidden}

    def n_parameters(self) -> int:
        """Number of scalar parameters."""
        return sum(p.numel() for p in self.parameters())


@torch.no_grad()
def project_numpy(student: nn.Module, X: Any, batch_size: int = 4096) -> np.ndarray:
    """Run ``student`` on query embeddings ``X`` (B, dim_in) without gradients.

    Returns (B, dim_out) float32 numpy, in batches of ``batch_size`` rows.
    """
    X = torch.as_tensor(np.asarray(X, dtype=np.float32))
    device = next(student.parameters()).device
    was_training = student.training
    student.eval()
    try:
        out = [student(X[s : s + batch_size].to(device)).cpu() for s in range(0, len(X), batch_size)]
    finally:
        student.train(was_training)
    # A student has an int ``dim_out`` (as ProjectionTransformer, MLPBaseline, TransformerEnsemble do).
    return torch.cat(out).numpy() if out else np.zeros((0, cast(int, student.dim_out)), np.float32)
