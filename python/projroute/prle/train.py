"""The two training stages: the kernel (head) first, then prototypes, router and
experts with the head frozen. Each stops early on the dev split."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from projroute.prle.config import PRLEConfig
from projroute.prle.model import PRLE
from projroute.prle.prototypes import nearest_examples, select_prototypes

__all__ = ["History", "distance_correlation", "embed", "train_experts", "train_kernel"]


@dataclass
class History:
    """Per epoch: training loss and the dev metric; the epoch whose weights were kept."""

    train_loss: list[float] = field(default_factory=list)
    dev: list[float] = field(default_factory=list)
    best_epoch: int = -1


def _batches(n: int, size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=gen)
    for s in range(0, n, size):
        yield order[s : s + size]


def _early_stopping(
    epochs: int, patience: int, step: Callable[[int], float], score: Callable[[], float], state: Callable
) -> History:
    """Run ``step(epoch)`` (returns the training loss) up to ``epochs`` times; keep the
    state of the best ``score()`` (higher is better); stop after ``patience`` epochs
    without improvement. ``state(None)`` returns a snapshot, ``state(snapshot)`` restores it."""
    h = History()
    best, snapshot, since = -float("inf"), state(None), 0
    for epoch in range(epochs):
        h.train_loss.append(step(epoch))
        h.dev.append(score())
        if h.dev[-1] > best:
            best, snapshot, since, h.best_epoch = h.dev[-1], state(None), 0, epoch
        else:
            since += 1
            if since >= patience:
                break
    state(snapshot)
    return h


def _snapshot(module: torch.nn.Module) -> Callable:
    def state(s):
        if s is None:
            return copy.deepcopy(module.state_dict())
        module.load_state_dict(s)
        return s

    return state


@torch.no_grad()
def embed(model: PRLE, X: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Value embeddings (n, dim) float32 of features X (n, D_in), head in eval mode."""
    was = model.training
    model.eval()
    out = [model.head(torch.from_numpy(X[s : s + batch])) for s in range(0, len(X), batch)]
    model.train(was)
    return torch.cat(out).numpy()


def distance_correlation(
    Z: np.ndarray,
    y: np.ndarray,
    n_pairs: int = 200_000,
    seed: int = 0,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """Pearson correlation of |y_i − y_j| and ‖z_i − z_j‖ over ``n_pairs`` random pairs.

    Without ``reference``, i ≠ j are both rows of Z (n, d) with scores y (n,). With
    ``reference = (Z_ref (m, d), y_ref (m,))``, i is a row of Z and j one of Z_ref: the
    distances from held-out rows to training rows, the ones prototype routing measures.
    """
    rng = np.random.default_rng(seed)
    Z_ref, y_ref = reference if reference is not None else (Z, y)
    i = rng.integers(len(Z), size=n_pairs)
    j = rng.integers(len(Z_ref), size=n_pairs)
    if reference is None:
        keep = i != j
        i, j = i[keep], j[keep]
    d = np.linalg.norm(Z[i] - Z_ref[j], axis=1)
    return float(np.corrcoef(np.abs(y[i] - y_ref[j]), d)[0, 1])


def _pair_loss(z: torch.Tensor, y: torch.Tensor, cfg: PRLEConfig, y_range: float) -> torch.Tensor:
    iu = torch.triu_indices(len(z), len(z), 1)
    sq = (2.0 - 2.0 * (z @ z.T))[iu[0], iu[1]].clamp_min(1e-8)
    d = sq.sqrt()
    target = cfg.kernel.scale * (y[iu[0]] - y[iu[1]]).abs() / y_range
    uniformity = torch.logsumexp(-2.0 * sq, 0) - np.log(len(sq))
    return cfg.kernel.pairwise * F.mse_loss(d, target) + cfg.kernel.uniformity * uniformity


def train_kernel(model: PRLE, X: np.ndarray, y: np.ndarray, X_dev: np.ndarray, y_dev: np.ndarray, cfg: PRLEConfig):
    """Stage 1: fit the head so that value-space distance tracks |Δy| (pairwise loss plus
    uniformity); early stopping on corr(|Δy|, distance) from dev rows to training rows,
    the distances a prototype router measures. Sets the head's
    standardisation from X. Returns the :class:`History`."""
    k = cfg.kernel
    model.head.mean.copy_(torch.from_numpy(X.mean(0)))
    model.head.std.copy_(torch.from_numpy(X.std(0) + 1e-6))
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.float32))
    y_range = float(y.max() - y.min()) or 1.0
    params = [p for p in model.head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=k.lr, weight_decay=k.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)

    def step(epoch: int) -> float:
        model.head.train()
        total, count = 0.0, 0
        for idx in _batches(len(X), k.batch_size, gen):
            if len(idx) < 2:
                continue
            loss = _pair_loss(model.head(Xt[idx]), yt[idx], cfg, y_range)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        return total / max(count, 1)

    def score() -> float:
        Z_dev, Z = embed(model, X_dev), embed(model, X)
        return distance_correlation(Z_dev, y_dev, n_pairs=100_000, seed=cfg.seed, reference=(Z, y))

    return _early_stopping(k.epochs, k.patience, step, score, _snapshot(model.head))


def _ridge_fits(Z: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One weighted ridge fit of y (n,) on Z (n, d) per column of the row weights w (n, m):
    minimises ``Σ_i w_ik (y_i − e_k·z_i − b_k)² + alpha‖e_k‖²``. Returns e (m, d) and
    b (m,), float32."""
    A = np.hstack([Z, np.ones((len(Z), 1))]).astype(np.float64)
    penalty = np.diag(np.r_[np.full(Z.shape[1], alpha), 0.0]) + 1e-9 * np.eye(A.shape[1])  # always solvable
    coef = np.stack([np.linalg.solve(A.T @ (A * wk[:, None]) + penalty, A.T @ (wk * y)) for wk in w.T])
    return coef[:, :-1].astype(np.float32), coef[:, -1].astype(np.float32)


def train_experts(
    model: PRLE, X: np.ndarray, y: np.ndarray, X_dev: np.ndarray, y_dev: np.ndarray, cfg: PRLEConfig
) -> History:
    """Stage 2, head frozen: choose the prototypes among the training examples, initialise
    the experts (``experts.init``), and fit router, experts and (trainable)
    prototypes; early stopping on dev MSE. Returns the :class:`History`."""
    e, pc = cfg.experts, cfg.prototypes
    model.head.requires_grad_(False)
    Z = embed(model, X)
    Zt, yt = torch.from_numpy(Z), torch.from_numpy(y.astype(np.float32))
    Zd, yd = torch.from_numpy(embed(model, X_dev)), torch.from_numpy(y_dev.astype(np.float32))
    idx = select_prototypes(Z, pc.n, pc.selector, cfg.seed)
    with torch.no_grad():
        model.prototype_index.copy_(torch.from_numpy(idx))
        model.prototypes.copy_(Zt[idx])
        model.prototypes.requires_grad_(pc.trainable)
        if e.init != "zero":
            model.eval()  # no Gumbel noise in the MLP router's weights
            w = np.ones((len(Z), 1)) if e.init == "global" else model.router(Zt, model.P).numpy()
            W, b = _ridge_fits(Z, y, w, e.ridge)
            model.expert_weight.copy_(torch.from_numpy(W).expand_as(model.expert_weight))
            model.expert_bias.copy_(torch.from_numpy(b).expand_as(model.expert_bias))
    params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    opt = torch.optim.AdamW(params, lr=e.lr, weight_decay=e.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    torch.manual_seed(cfg.seed + 2)  # Gumbel noise
    k = pc.n
    anchors = torch.arange(k)

    def anneal(epoch: int) -> float:
        if model.router.kind != "softmax":
            return 1.0
        frac = min(epoch / max(e.epochs / 2, 1), 1.0)
        return float(cfg.router.anneal_from ** (1.0 - frac))

    def step(epoch: int) -> float:
        model.train()
        total = 0.0
        a = anneal(epoch)
        for b in _batches(len(Z), e.batch_size, gen):
            z, target = Zt[b], yt[b]
            yhat, w, local = model.mix(z, a)
            loss = e.task * F.mse_loss(yhat, target)
            if e.expert_fit:
                loss = loss + e.expert_fit * (w * (local - target[:, None]) ** 2).sum(1).mean()
            if e.anchor:
                loss = loss + e.anchor * F.cross_entropy(model.router.logits(model.P, model.P, a), anchors)
            if e.load_balance:
                loss = loss + e.load_balance * k * (w.mean(0) ** 2).sum()
            if e.entropy:
                loss = loss + e.entropy * -(w * torch.log(w.clamp_min(1e-12))).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        if pc.trainable and (epoch + 1) % pc.snap_every == 0:
            snap()
        return total / len(Z)

    def snap() -> None:
        with torch.no_grad():
            new = nearest_examples(model.P.numpy(), Z)
            model.prototype_index.copy_(torch.from_numpy(new))
            model.prototypes.copy_(Zt[new])

    @torch.no_grad()
    def score() -> float:
        model.eval()
        return -float(F.mse_loss(model.mix(Zd)[0], yd))

    h = _early_stopping(e.epochs, e.patience, step, score, _snapshot(model))
    if pc.trainable:
        snap()
    model.eval()
    return h
