"""The one training loop of distillation, used for a single student and for both stages
of an ensemble: output losses, a warm-up/cosine learning-rate schedule, early stopping
on held-out queries, and the per-epoch history."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from projroute.distill import parallel
from projroute.distill.student import project_numpy
from projroute.metrics import mean_cosine

WARMUP = 0.05  # share of the optimiser steps with a linear learning-rate warm-up

History = dict[str, list[float]]


def output_losses(y: torch.Tensor, t: torch.Tensor, mse_weight: float, cos_weight: float) -> torch.Tensor:
    """Per-sample loss (B,) of outputs y against targets t (B, D_out):
    ``mse_weight * |y - t|^2 + cos_weight * (1 - cos(y, t))``.

    The squared error is summed over the output dimensions (the MSE times D_out), on
    the scale of ``1 - cos`` for unit outputs.
    """
    return mse_weight * (y - t).pow(2).sum(dim=1) + cos_weight * (1 - F.cosine_similarity(y, t, dim=1))


def kl_divergence(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(p || q)`` (B,) of distributions p (B, K) and log q (B, K)."""
    return (torch.xlogy(p, p) - p * log_q).sum(dim=1)


def warmup_cosine(optim: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first ``WARMUP`` share of ``total`` steps, then cosine decay to 0."""
    warmup = max(1, int(WARMUP * total))
    return torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    )


def as_queries(queries: Any) -> np.ndarray:
    """``queries`` as a contiguous float32 (n, D) array; ValueError if empty or not 2-D."""
    Q = np.ascontiguousarray(queries, dtype=np.float32)
    if Q.ndim != 2 or not len(Q):
        raise ValueError(f"queries must be a non-empty 2-D array, got shape {Q.shape}")
    return Q


def split_queries(n: int, val_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, validation) row indices of n queries; no validation for fraction 0."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    n_val = 0 if val_fraction == 0 else max(1, round(val_fraction * n))
    if n - n_val < 1:
        raise ValueError(f"{n} queries leave nothing to train on with val_fraction={val_fraction}")
    order = rng.permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class EarlyStopper:
    """Keeps the weights of the best validation score seen and says when to stop.

    Parameters
    ----------
    module : nn.Module
        The trained module; its starting weights are kept until a score beats ``best``.
    patience : int or None
        Stop after this many epochs without a better score (None: never).
    best : float
        Score to beat: -inf, or the starting weights' own score to keep them as a candidate.
    """

    def __init__(self, module: nn.Module, patience: int | None, best: float = -math.inf) -> None:
        self.patience, self.best = patience, best
        self.best_epoch = -1  # -1: the starting weights
        self.state = copy.deepcopy(module.state_dict())
        self.scored = False

    def __call__(self, epoch: int, module: nn.Module, score: float | None) -> bool:
        """Record the score of ``module`` after ``epoch`` (None: no validation, the last
        epoch is the best); True when training should stop."""
        if score is None:
            self.best_epoch = epoch
        else:
            self.scored = True
            if score > self.best:
                self.best_epoch, self.best, self.state = epoch, score, copy.deepcopy(module.state_dict())
        return self.patience is not None and epoch - self.best_epoch >= self.patience

    def restore(self, module: nn.Module) -> None:
        """Load the best weights into ``module`` (the last ones when nothing was scored)."""
        if self.scored:
            module.load_state_dict(self.state)


def train(
    module: nn.Module,
    params: Iterable[nn.Parameter],
    data: Callable[[], Mapping[str, np.ndarray]],
    size: int,
    loss: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    rng: np.random.Generator,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    patience: int | None = None,
    keep_start: bool = False,
    distributed: bool = False,
    desc: str = "distilling",
    progress: bool = True,
) -> tuple[History, int]:
    """Train ``params`` of ``module`` with AdamW under :func:`warmup_cosine`; keep the
    weights of the best validation epoch; leave ``module`` in eval mode.

    Parameters
    ----------
    data : callable
        Each epoch's training data: a dict of arrays with ``size`` rows each (B, ...).
    loss : callable
        Per-sample loss (B,) of a shuffled mini-batch of ``data`` (as tensors).
    val : (Q_val (n, D_in), T_val (n, D_out)) or None
        Held-out queries and teacher outputs scored by mean cosine after each epoch
        (None: no validation, keep the last weights).
    patience : int or None
        Stop after this many epochs without a better validation cosine.
    keep_start : bool
        The starting weights stay a candidate (scored before the first epoch).
    distributed : bool
        Each process of the torch process group runs the same ``data``, ``rng`` and
        ``val`` and takes its share of each global mini-batch (see
        :mod:`projroute.distill.parallel`); ``loss`` runs the DistributedDataParallel
        wrapper of ``module``, which averages the gradients. The loss is scaled so that
        a step is the single-process step on the global batch.

    Returns
    -------
    history : dict
        Per epoch ``"train_loss"`` (mean loss) and ``"val_cosine"`` (empty without ``val``).
    best_epoch : int
        Index into ``history`` of the kept weights (-1: the starting weights).
    """
    from tqdm.auto import tqdm

    def score() -> float | None:
        return None if val is None else mean_cosine(project_numpy(module, val[0]), val[1])

    start = score() if keep_start else None
    stopper = EarlyStopper(module, patience, -math.inf if start is None else start)
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = warmup_cosine(optim, max(1, epochs * math.ceil(size / batch_size)))
    history: History = {"train_loss": [], "val_cosine": []}
    device = next(module.parameters()).device
    world = parallel.rank_and_size()[1] if distributed else 1
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress)
    for epoch in bar:
        batch = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in data().items()}
        order = torch.from_numpy(rng.permutation(size)).to(device)
        module.train()
        total = 0.0
        for s in range(0, size, batch_size):
            idx = order[s : s + batch_size]
            if distributed:
                # This process's rows; the DDP mean over processes then gives the global mean.
                losses = loss({k: v[parallel.local_rows(idx)] for k, v in batch.items()})
                step = losses.sum() * (world / len(idx))
            else:
                losses = loss({k: v[idx] for k, v in batch.items()})
                step = losses.mean()
            optim.zero_grad(set_to_none=True)
            step.backward()
            optim.step()
            sched.step()
            total += losses.sum().item()
        history["train_loss"].append((parallel.sum_over_group(total) if distributed else total) / size)
        postfix = {"loss": f"{history['train_loss'][-1]:.4f}"}
        cosine = score()
        if cosine is not None:
            history["val_cosine"].append(cosine)
            postfix["val_cos"] = f"{cosine:.4f}"
        bar.set_postfix(postfix)
        if stopper(epoch, module, cosine):
            break
    bar.close()
    stopper.restore(module)
    module.eval()
    return history, stopper.best_epoch


def plot_history(history: Mapping[str, Sequence[float]], best_epoch: int, path: str | os.PathLike[str]) -> None:
    """Save a PNG of the train loss (log scale) and the validation cosine per epoch."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    ax.plot(epochs, history["train_loss"], color="tab:blue", label="train loss")
    ax.set(xlabel="epoch", ylabel="train loss", yscale="log")
    if history["val_cosine"]:
        ax2 = ax.twinx()
        ax2.plot(epochs, history["val_cosine"], color="tab:orange", label="val cosine")
        ax2.axvline(best_epoch + 1, color="gray", linestyle=":", label="best epoch")
        ax2.set_ylabel("validation cosine to teacher")
        fig.legend(loc="outside upper center", ncols=3)
    fig.savefig(os.fspath(path), dpi=120)
