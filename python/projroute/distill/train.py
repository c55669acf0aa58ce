"""Distil a teacher into a student network with labels made on the fly.

Each epoch trains on the training queries plus freshly augmented queries, all
labelled by the teacher (projection, and routing where used); a held-out part of
the queries drives early stopping on the mean student-teacher cosine. The epochs run
in :func:`projroute.distill.loop.train`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from projroute.clustering import kmeans_labels
from projroute.distill import augment as augmentation
from projroute.distill import parallel
from projroute.distill.loop import as_queries, kl_divergence, output_losses, plot_history, split_queries, train
from projroute.distill.student import CrossAttentionBlock, ProjectionTransformer
from projroute.distill.teacher import Teacher
from projroute.reference import routing_entropy, unit_rows

IMPORTANCE = ("uniform", "entropy")


@dataclass
class DistillResult:
    """The outcome of :func:`distill`.

    Attributes
    ----------
    student : nn.Module
        The student with the weights of its best validation epoch.
    history : dict
        Per epoch: ``"train_loss"`` (mean weighted loss) and ``"val_cosine"``
        (mean student-teacher cosine on the held-out queries; empty without validation).
    best_epoch : int
        Index into ``history`` of the kept weights.
    n_parameters, teacher_parameters : int and int or None
        Scalars in the student and the teacher (None when the teacher's size is unknown).
    compression : float or None
        ``teacher_parameters / n_parameters``.
    settings : dict
        The arguments of the run (arrays left out), JSON-able.
    seconds : float
        Wall-clock training time.
    teacher_kind : str
    """

    student: nn.Module
    history: dict[str, list[float]]
    best_epoch: int
    n_parameters: int
    teacher_parameters: int | None
    compression: float | None
    settings: dict[str, Any]
    seconds: float
    teacher_kind: str

    @property
    def best_val_cosine(self) -> float | None:
        """Validation cosine of the kept weights, or None without validation."""
        val = self.history["val_cosine"]
        return val[self.best_epoch] if val else None

    def fit_info(self, **context: Any) -> dict[str, Any]:
        """The student's ``fit`` record, stored in its model file: teacher, sizes, training
        summary and settings, plus ``context`` (JSON-able, e.g. the data set) as given."""
        return {
            "teacher": {"kind": self.teacher_kind, "parameters": self.teacher_parameters},
            "student_parameters": self.n_parameters,
            "compression": self.compression,
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history["train_loss"]),
            "best_val_cosine": self.best_val_cosine,
            "final_train_loss": self.history["train_loss"][self.best_epoch],
            "seconds": round(self.seconds, 2),
            "settings": self.settings,
            **context,
        }

    def save(self, path: str | os.PathLike[str], **context: Any) -> None:
        """Export the student with :func:`projroute.distill.save_student` and its
        :meth:`fit_info` record (with ``context``)."""
        from projroute.distill.export import save_student

        save_student(self.student, path, self.fit_info(**context))


def key_groups(centroids: np.ndarray, num_keys: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Meta-cluster the teacher's K centroids (K, D) into at most ``num_keys`` groups.

    Returns
    -------
    group : (K,) int64, each centroid's group in 0..G-1
    group_centroids : (G, D) float32, normalised mean centroid of each group
    """
    C = unit_rows(centroids)
    group = np.arange(len(C)) if len(C) <= num_keys else kmeans_labels(C, num_keys, seed)
    onehot = np.zeros((int(group.max()) + 1, len(C)), np.float32)
    onehot[group, np.arange(len(C))] = 1.0
    return group.astype(np.int64), unit_rows(onehot @ C)


def importance_weights(route: np.ndarray) -> np.ndarray:
    """Un-normalised importance ``0.5 + H(w) / log K`` of routing rows ``route`` (B, K):
    (B,) float64 in [0.5, 1.5]; 0.5 (no entropy) for K = 1."""
    return 0.5 + routing_entropy(route)


def entropy_weights(route: np.ndarray) -> np.ndarray:
    """:func:`importance_weights` of ``route`` (B, K) scaled to mean 1: (B,) float32."""
    w = importance_weights(route)
    return (w / w.mean()).astype(np.float32)


@torch.no_grad()
def initialise_keys(student: ProjectionTransformer, group_centroids: np.ndarray) -> None:
    """Set the first block's first G keys to the group centroids (G, D_in) mapped the
    way a query is (``query(norm1(input(c)))``), rescaled to the keys' mean row norm,
    so that at initialisation a query near a centroid attends to that centroid's key."""
    layer = cast(CrossAttentionBlock, student.layers[0])
    G = min(len(group_centroids), layer.num_keys)
    c = torch.as_tensor(group_centroids[:G])
    k = layer.query(layer.norm1(student.input(c)))
    scale = layer.keys.norm(dim=1).mean()
    layer.keys[:G] = k / k.norm(dim=1, keepdim=True).clamp_min(1e-12) * scale


@torch.no_grad()
def fit_skip(student: nn.Module, X: np.ndarray, T: np.ndarray) -> None:
    """Set ``student.skip`` (a bias-free Linear) to the least-squares linear map from
    queries X (n, D_in) to teacher outputs T (n, D_out).

    Directions the queries do not span keep a prior: the identity when D_in = D_out
    (projroute maps are near it), else zero; i.e. ``W = P + lstsq(X, T - X @ P)``
    with the minimum-norm solution.
    """
    X, T = X.astype(np.float64), T.astype(np.float64)
    prior = np.eye(X.shape[1]) if X.shape[1] == T.shape[1] else np.zeros((X.shape[1], T.shape[1]))
    W = prior + np.linalg.lstsq(X, T - X @ prior, rcond=None)[0]
    skip = cast(nn.Linear, student.skip)
    skip.weight.copy_(torch.from_numpy(W.T.astype(np.float32)))


def build_student(student: nn.Module | Mapping[str, Any] | None, dim_in: int, dim_out: int) -> nn.Module:
    """The given module, or a ProjectionTransformer from keyword arguments (or defaults)."""
    if isinstance(student, nn.Module):
        return student
    return ProjectionTransformer(dim_in, dim_out, **dict(student or {}))


def sample_losses(
    student: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    group_route: torch.Tensor | None,
    weights: Mapping[str, float],
) -> torch.Tensor:
    """Per-sample loss (B,) of queries x (B, D_in) against teacher outputs t (B, D_out):
    :func:`~projroute.distill.loop.output_losses` ``+ routing * KL``.

    ``group_route`` (B, num_keys) is the teacher's routing summed per key group; the KL
    is against the first block's attention averaged over heads.
    """
    kl: float | torch.Tensor
    if group_route is None:
        s = student(x)
        kl = 0.0
    else:
        s, att = student(x, return_attention=True)
        kl = kl_divergence(group_route, att.mean(dim=1).clamp_min(1e-12).log())
    return output_losses(s, t, weights["mse"], weights["cos"]) + weights["routing"] * kl


class Labeller:
    """Teacher labels of a batch of queries: outputs, routing summed per key group
    (when ``group`` is given) and importance weights.

    Parameters
    ----------
    teacher : Teacher
    group : (K,) int or None
        Key group of each teacher cluster; None: no routing targets.
    num_keys : int
        Width of the grouped routing targets.
    entropy : bool
        Importance from routing entropy (un-normalised, see :func:`importance_weights`;
        else uniform ones).
    """

    def __init__(self, teacher: Teacher, group: np.ndarray | None, num_keys: int, entropy: bool) -> None:
        self.teacher, self.group, self.num_keys, self.entropy = teacher, group, num_keys, entropy

    def __call__(self, X: np.ndarray, T: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``{"x": X (B, D_in), "t": (B, D_out), "w": (B,)[, "route": (B, num_keys)]}``;
        ``T`` gives known teacher outputs."""
        out = {"x": X, "t": self.teacher.project(X) if T is None else T}
        route = self.teacher.route(X) if (self.group is not None or self.entropy) else None
        if self.group is not None:
            if route is None:
                raise ValueError("routing targets need a teacher with routing")
            g = np.zeros((len(X), self.num_keys), np.float32)
            np.add.at(g.T, self.group, route.T)
            out["route"] = g
        if self.entropy:
            if route is None:
                raise ValueError('importance="entropy" needs a teacher with routing')
            out["w"] = importance_weights(route).astype(np.float32)
        else:
            out["w"] = np.ones(len(X), np.float32)
        return out


def distill(
    teacher: Any,
    queries: np.ndarray,
    *,
    student: nn.Module | Mapping[str, Any] | None = None,
    epochs: int = 40,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    mse_weight: float = 0.3,
    cos_weight: float = 0.7,
    routing_weight: float = 0.0,
    augment: Sequence[str] = ("sphere", "mix"),
    extra_queries: np.ndarray | None = None,
    sphere_sigma: float = 0.8,
    augment_ratio: float | str = "auto",
    importance: str = "uniform",
    init_keys: bool = True,
    init_skip: bool = True,
    val_fraction: float = 0.1,
    patience: int = 20,
    seed: int = 0,
    progress: bool = True,
    plot: str | os.PathLike[str] | None = None,
    keys: Sequence[str] | None = None,
    distributed: bool = False,
) -> DistillResult:
    """Train a student to reproduce ``teacher.project`` (and optionally its routing).

    Parameters
    ----------
    teacher : object
        Has ``project(X) -> (B, D_out)`` on float32 (B, D_in) arrays: a fitted
        projroute estimator or a loaded ``Projector`` of any kind. Its ``route(X)``
        (B, K) weights, if any, feed ``routing_weight`` and ``importance="entropy"``.
    queries : (n, D_in) float
        Training questions; ``val_fraction`` of them (seeded) are held out.
    student : nn.Module, dict or None
        A module mapping (B, D_in) to (B, D_out), or keyword arguments of
        :class:`ProjectionTransformer` (None: its defaults).
    epochs, batch_size, lr, weight_decay
        AdamW with a linear warm-up over the first 5 % of the steps, then cosine decay.
    mse_weight, cos_weight, routing_weight : float
        Loss weights (see :func:`sample_losses`); routing needs a routed teacher and a
        ProjectionTransformer student.
    augment : sequence of "sphere", "mix", "extra"
        Augmentations; ``extra_queries`` (m, D_in) adds "extra" when given.
    sphere_sigma : float
        Noise norm of "sphere", relative to the unit query.
    augment_ratio : float or "auto"
        Augmented queries per training query per epoch (fresh each epoch); "auto":
        enough for about ``augment.AUTO_EPOCH_SIZE`` queries per epoch, at least 1 per query.
    importance : "uniform" or "entropy"
        Per-sample weights; "entropy" weighs by normalised routing entropy (mean 1).
    init_keys : bool
        Initialise the first block's keys from the meta-clustered teacher centroids.
    init_skip : bool
        Start the student's linear ``skip`` path at the least-squares fit of the teacher
        on the training queries and one round of augmentation (see :func:`fit_skip`).
    val_fraction, patience
        Held-out share of ``queries``; stop after ``patience`` epochs without a better
        validation cosine and keep the best weights (0: no validation, keep the last).
    seed : int
        Seeds the student's initialisation (torch) and the data (numpy).
    progress : bool
        Show a tqdm bar over epochs.
    plot : path or None
        Where to save a PNG of the loss and validation curves.
    keys : sequence of str, optional
        One key per training query, for keyed teachers (``tree``, ``hierarchical``):
        every query, augmented ones included, is labelled with the key of its nearest
        training query (see :class:`~projroute.distill.teacher.Teacher`).
    distributed : bool
        Train with torch DistributedDataParallel in each process of a ``torchrun`` group
        (gloo on the CPU, NCCL where GPUs exist; see :mod:`projroute.distill.torchrun`):
        every process passes the same arguments, computes the same epochs, and trains on
        its share of each global batch of ``batch_size`` rows, so that the run follows
        the single-process one with the same seed up to float rounding. Every process
        returns the same student (on the CPU); save it from rank 0.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if importance not in IMPORTANCE:
        raise ValueError(f"importance must be one of {IMPORTANCE}, got {importance!r}")
    kinds = augmentation.check_kinds(augment, extra_queries)
    settings = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "mse_weight": mse_weight,
        "cos_weight": cos_weight,
        "routing_weight": routing_weight,
        "augment": list(kinds),
        "sphere_sigma": sphere_sigma,
        "augment_ratio": augment_ratio,
        "importance": importance,
        "init_keys": init_keys,
        "init_skip": init_skip,
        "val_fraction": val_fraction,
        "patience": patience,
        "seed": seed,
        "n_extra_queries": None if extra_queries is None else len(extra_queries),
    }
    device = parallel.init() if distributed else None
    if distributed:
        settings["processes"] = parallel.rank_and_size()[1]

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    Q = as_queries(queries)
    train_rows, val_rows = split_queries(len(Q), val_fraction, rng)
    Q_train, Q_val = Q[train_rows], Q[val_rows]
    settings["augment_ratio"] = ratio = augmentation.check_ratio(augment_ratio, len(Q_train))
    teach = Teacher(teacher, keys, queries if keys is not None else None)
    torch.manual_seed(seed)
    extra = None if extra_queries is None else np.ascontiguousarray(extra_queries, dtype=np.float32)
    T_train = teach.project(Q_train)
    T_val = teach.project(Q_val) if len(Q_val) else None
    settings["n_train"], settings["n_val"] = len(Q_train), len(Q_val)

    net = build_student(student, Q.shape[1], T_train.shape[1])
    has_route = teach.route(Q_train[:1]) is not None
    if routing_weight > 0 and not isinstance(net, ProjectionTransformer):
        raise ValueError("routing_weight > 0 needs a ProjectionTransformer student (its attention)")
    if importance == "entropy" and not has_route:
        raise ValueError('importance="entropy" needs a teacher with routing')
    use_routing = routing_weight > 0 and has_route
    group = None
    if teach.centroids is not None and isinstance(net, ProjectionTransformer) and (use_routing or init_keys):
        group, group_centroids = key_groups(teach.centroids, net.num_keys, seed)
        if init_keys:
            initialise_keys(net, group_centroids)
    label = Labeller(teach, group if use_routing else None, getattr(net, "num_keys", 0), importance == "entropy")
    data = augmentation.Epochs(label, label(Q_train, T_train), kinds, ratio, sphere_sigma, extra, rng)
    if init_skip and isinstance(getattr(net, "skip", None), nn.Linear):
        X_fit = np.concatenate([Q_train, data.augmented()])
        fit_skip(net, X_fit, teach.project(X_fit))

    loss_weights = {"mse": mse_weight, "cos": cos_weight, "routing": routing_weight}
    forward = net if device is None else parallel.wrap(net, device)

    def loss(b: dict[str, torch.Tensor]) -> torch.Tensor:
        return b["w"] * sample_losses(forward, b["x"], b["t"], b.get("route"), loss_weights)

    history, best_epoch = train(
        net,
        net.parameters(),
        data,
        data.size,
        loss,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        batch_size=batch_size,
        rng=rng,
        val=None if T_val is None else (Q_val, T_val),
        patience=patience,
        distributed=distributed,
        progress=progress,
    )
    net.cpu()
    n_params = sum(p.numel() for p in net.parameters())
    if plot is not None:
        plot_history(history, best_epoch, plot)
    return DistillResult(
        student=net,
        history=history,
        best_epoch=best_epoch,
        n_parameters=n_params,
        teacher_parameters=teach.n_parameters,
        compression=None if teach.n_parameters is None else teach.n_parameters / n_params,
        settings=settings,
        seconds=time.perf_counter() - started,
        teacher_kind=teach.kind,
    )
