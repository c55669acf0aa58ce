"""Hierarchical ensemble for large routed teachers: domain students mixed by a router.

A routed teacher (federated or lda, K clusters) is split into ``n_domains`` domains by
k-means on its normalised centroids. Each domain gets its own small
:class:`~projroute.distill.student.ProjectionTransformer`, distilled with
:func:`~projroute.distill.distill` from its
:class:`~projroute.distill.teacher.DomainTeacher` (the teacher restricted to the
domain's clusters). A router then learns, with the students frozen, to mix the
students' outputs into the full teacher output
(:class:`~projroute.distill.student.TransformerEnsemble`); optionally everything is
fine-tuned end to end. Both stages run :func:`projroute.distill.loop.train`.

Why the router has a good target: without top-k truncation in the teacher, the full
teacher output is exactly ``sum_d m_d(x) * T_d(x)`` with ``m_d`` the teacher's routing
mass on domain d and ``T_d`` the domain teacher, so besides the output loss the router
is pulled (``router_kl_weight``) toward ``softmax(logits) = m``.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from projroute.clustering import kmeans_labels
from projroute.distill import augment as augmentation
from projroute.distill.export import save_ensemble
from projroute.distill.loop import History, as_queries, kl_divergence, output_losses, split_queries, train
from projroute.distill.student import ProjectionTransformer, TransformerEnsemble, project_numpy, top_k_softmax
from projroute.distill.teacher import DomainTeacher, Teacher, domain_mass, teacher_parts
from projroute.distill.train import DistillResult, distill
from projroute.metrics import mean_cosine
from projroute.reference import route_weights, unit_rows

#: Student architecture used when ``distill_ensemble(student=None)``: one small block.
DEFAULT_STUDENT = {"d_model": 128, "n_heads": 4, "n_layers": 1, "num_keys": 32, "ffn_dim": 256}

#: Keyword defaults of :func:`distill` (the router stage reads the same settings).
_DISTILL_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(distill).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
}


@dataclass
class EnsembleResult:
    """The outcome of :func:`distill_ensemble`.

    Attributes
    ----------
    ensemble : TransformerEnsemble
        The trained ensemble (eval mode).
    domains : list of DistillResult
        One per domain student (before fine-tuning).
    domain_of_cluster : (K,) int64
        Each teacher cluster's domain.
    domain_queries : list of int
        Training queries each domain student was distilled on (before augmentation).
    n_parameters, router_parameters, student_parameters : int
        Scalars in the ensemble, its router, and each student.
    teacher_parameters : int or None
    compression : float or None
        ``teacher_parameters / n_parameters``.
    history : dict
        ``"router"`` and ``"finetune"``: per epoch ``train_loss`` and ``val_cosine``
        (mean ensemble-teacher cosine on the held-out queries).
    val_cosine : float or None
        Held-out cosine of the kept weights.
    settings : dict
        JSON-able arguments of the run.
    seconds : float
    teacher_kind : str
    """

    ensemble: TransformerEnsemble
    domains: list[DistillResult]
    domain_of_cluster: np.ndarray
    domain_queries: list[int]
    n_parameters: int
    router_parameters: int
    student_parameters: int
    teacher_parameters: int | None
    compression: float | None
    history: dict[str, dict[str, list[float]]]
    val_cosine: float | None
    settings: dict[str, Any]
    seconds: float
    teacher_kind: str

    def fit_info(self, **context: Any) -> dict[str, Any]:
        """The ensemble's ``fit`` record, stored in its model file: teacher, sizes, domains,
        held-out cosine and settings, plus ``context`` (JSON-able, e.g. the data set) as given."""
        return {
            "teacher": {"kind": self.teacher_kind, "parameters": self.teacher_parameters},
            "ensemble_parameters": self.n_parameters,
            "router_parameters": self.router_parameters,
            "student_parameters": self.student_parameters,
            "compression": self.compression,
            "domain_of_cluster": [int(d) for d in self.domain_of_cluster],
            "domain_queries": [int(n) for n in self.domain_queries],
            "domain_val_cosine": [r.best_val_cosine for r in self.domains],
            "val_cosine": self.val_cosine,
            "seconds": round(self.seconds, 2),
            "settings": self.settings,
            **context,
        }

    def save(self, path: str | os.PathLike[str], **context: Any) -> None:
        """Export the ensemble with :func:`~projroute.distill.save_ensemble` and its
        :meth:`fit_info` record (with ``context``)."""
        save_ensemble(self.ensemble, path, self.fit_info(**context))


def domain_plot(plot: str | os.PathLike[str], d: int) -> Path:
    """Where domain ``d``'s loss curve goes when the ensemble's is ``plot``: ``NAME.domain{d}.png``."""
    plot = Path(plot)
    return plot.with_name(f"{plot.stem}.domain{d}{plot.suffix}")


def with_student_outputs(ens: TransformerEnsemble, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``batch`` plus ``"S"``: every (frozen) student's output (B, M, D_out) on ``batch["x"]`` (B, D_in)."""
    ens.eval()
    with torch.no_grad():
        x = torch.from_numpy(batch["x"])
        S = torch.cat([ens.student_outputs(x[s : s + 4096]) for s in range(0, len(x), 4096)])
    return {**batch, "S": S.numpy()}


def train_stage(
    ens: TransformerEnsemble,
    stage: str,
    epochs: int,
    lr: float,
    data: augmentation.Epochs,
    val: tuple[np.ndarray, np.ndarray] | None,
    opts: Mapping[str, Any],
    rng: np.random.Generator,
    progress: bool,
) -> History:
    """Train the router (``stage="router"``, students frozen, their outputs computed once
    per epoch) or everything (``"finetune"``) on ``data`` (``x``, ``t`` and domain
    ``mass`` per query); the weights from before the stage stay a candidate."""
    router_only = stage == "router"
    for p in ens.parameters():
        p.requires_grad_(not router_only)
    for p in ens.router.parameters():
        p.requires_grad_(True)
    params = list(ens.router.parameters()) if router_only else list(ens.parameters())
    kl_weight = opts["router_kl_weight"]

    def loss(b: dict[str, torch.Tensor]) -> torch.Tensor:
        if router_only:
            logits = ens.router(b["x"])
            y = (top_k_softmax(logits, ens.top_k).unsqueeze(-1) * b["S"]).sum(dim=1)
        else:
            y, logits = ens(b["x"], return_logits=True)
        out = output_losses(y, b["t"], opts["mse_weight"], opts["cos_weight"])
        if kl_weight > 0:
            out = out + kl_weight * kl_divergence(b["mass"], torch.log_softmax(logits, dim=1))
        return out

    epoch: Callable[[], Mapping[str, np.ndarray]] = (lambda: with_student_outputs(ens, data())) if router_only else data
    history, _ = train(
        ens,
        params,
        epoch,
        data.size,
        loss,
        epochs=epochs,
        lr=lr,
        weight_decay=opts["weight_decay"],
        batch_size=opts["batch_size"],
        rng=rng,
        val=val,
        keep_start=True,
        desc=f"ensemble {stage}",
        progress=progress,
    )
    for p in ens.parameters():
        p.requires_grad_(True)
    return history


def distill_ensemble(
    teacher: Any,
    queries: np.ndarray,
    *,
    n_domains: int = 4,
    top_k: int = 2,
    router_hidden: int = 128,
    student: Mapping[str, int] | None = None,
    epochs: int = 40,
    router_epochs: int = 20,
    finetune_epochs: int = 3,
    router_lr: float = 2e-3,
    finetune_lr: float | None = None,
    router_kl_weight: float = 0.1,
    router_augment_ratio: float | None = None,
    min_domain_queries: int = 32,
    domain_mass_threshold: float = 0.25,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    **distill_kwargs: Any,
) -> EnsembleResult:
    """Distil a routed teacher into domain students mixed by a router MLP.

    Parameters
    ----------
    teacher : FederatedProjection, LdaProjection or Projector (federated/lda)
    queries : (n, D_in) float
        Training questions; ``val_fraction`` of them (seeded) are held out for the
        router and fine-tuning stages (and never seen by the domain students).
    n_domains : int
        Domains M (k-means on the normalised teacher centroids; at most K).
    top_k : int
        Domains mixed per query (capped at M; M is dense mixing).
    router_hidden : int
        Hidden width of the router MLP.
    student : dict or None
        :class:`ProjectionTransformer` arguments of every student (None: ``DEFAULT_STUDENT``).
    epochs : int
        Epochs of each domain student's :func:`distill`.
    router_epochs : int
        Epochs training the router with the students frozen (>= 1).
    finetune_epochs : int
        Epochs of end-to-end fine-tuning of everything (0 disables).
    router_lr, finetune_lr : float
        Learning rates of the two stages (``finetune_lr`` None: ``lr / 10``).
    router_kl_weight : float
        Weight of ``KL(teacher domain mass || softmax(router logits))`` added to the
        output loss in both stages (0 disables).
    router_augment_ratio : float or None
        Augmented queries per training query per epoch in the router and fine-tuning
        stages (None: ``augment_ratio``).
    min_domain_queries : int
        A domain with fewer training queries is distilled on all of them.
    domain_mass_threshold : float
        A domain trains on the queries whose teacher routing puts most of its mass, or
        at least this much, on the domain.
    val_fraction : float
        Held-out share, as in :func:`distill` (also passed to each domain's distill).
    seed : int
    progress : bool
        Progress bars (domain distillations and the two stages).
    **distill_kwargs
        Further arguments of :func:`distill` (lr, batch_size, augment, augment_ratio,
        sphere_sigma, extra_queries, mse_weight, cos_weight, ...), used for each domain
        student; the router and fine-tuning stages share batch_size, weight_decay,
        mse_weight, cos_weight and the augmentation settings.
    """
    started = time.perf_counter()
    if unknown := set(distill_kwargs) - set(_DISTILL_DEFAULTS):
        raise TypeError(f"unknown distill arguments {sorted(unknown)}")
    if router_epochs < 1:
        raise ValueError(f"router_epochs must be >= 1, got {router_epochs}")
    if finetune_epochs < 0:
        raise ValueError(f"finetune_epochs must be >= 0, got {finetune_epochs}")
    opts = {**_DISTILL_DEFAULTS, **distill_kwargs}
    arch = dict(DEFAULT_STUDENT if student is None else student)

    kind, tensors, routing = teacher_parts(teacher)
    teach = Teacher(teacher)
    centroids = tensors["centroids"]
    K = len(centroids)
    if not 1 <= n_domains <= K:
        raise ValueError(f"n_domains must lie in 1..{K} (the teacher's clusters), got {n_domains}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")

    rng = np.random.default_rng(seed)
    Q = as_queries(queries)
    train_rows, val_rows = split_queries(len(Q), val_fraction, rng)
    Q_train, Q_val = Q[train_rows], Q[val_rows]

    # Domains: k-means on the normalised centroids.
    domain_of_cluster = (
        np.zeros(K, np.int64)
        if n_domains == 1
        else kmeans_labels(unit_rows(centroids), n_domains, seed).astype(np.int64)
    )
    M = int(domain_of_cluster.max()) + 1
    top_k = min(top_k, M)

    def full_route(X: np.ndarray) -> np.ndarray:
        return route_weights(X, centroids, routing["temperature"], routing["top_k"], routing["coverage"])

    def main_domain_rows(X: np.ndarray, d: int) -> np.ndarray:
        mass = domain_mass(full_route(X), domain_of_cluster, M)
        return np.flatnonzero((mass.argmax(axis=1) == d) | (mass[:, d] >= domain_mass_threshold))

    # One student per domain, distilled from the domain teacher.
    extra = distill_kwargs.get("extra_queries")
    extra = None if extra is None else np.asarray(extra, np.float32)
    domain_results: list[DistillResult] = []
    domain_counts: list[int] = []
    for d in range(M):
        dt = DomainTeacher(kind, tensors, routing, np.flatnonzero(domain_of_cluster == d))
        rows = main_domain_rows(Q_train, d)
        Q_d = Q_train[rows] if len(rows) >= min_domain_queries else Q_train
        kwargs = dict(distill_kwargs)
        if kwargs.get("plot") is not None:
            kwargs["plot"] = domain_plot(kwargs["plot"], d)
        if extra is not None:
            erows = main_domain_rows(extra, d)
            kwargs["extra_queries"] = extra[erows] if len(erows) >= min_domain_queries else extra
        if progress:
            print(f"domain {d + 1}/{M}: {len(dt.clusters)} clusters, {len(Q_d)} queries", file=sys.stderr)
        res = distill(
            dt,
            Q_d,
            student=arch,
            epochs=epochs,
            val_fraction=val_fraction if len(Q_d) > 1 else 0.0,
            seed=seed + 1 + d,
            progress=progress,
            **kwargs,
        )
        domain_results.append(res)
        domain_counts.append(len(Q_d))

    torch.manual_seed(seed)
    # distill(student=arch) built each domain student as a ProjectionTransformer.
    dim_out = cast(ProjectionTransformer, domain_results[0].student).dim_out
    ens = TransformerEnsemble(Q.shape[1], dim_out, M, top_k, router_hidden, **arch)
    for d, res in enumerate(domain_results):
        ens.students[d].load_state_dict(res.student.state_dict())
    ens.eval()

    # Router (students frozen), then optional end-to-end fine-tuning, on the full teacher.
    kinds = augmentation.check_kinds(opts["augment"], extra)

    def label(X: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "x": np.ascontiguousarray(X, np.float32),
            "t": teach.project(X),
            "mass": domain_mass(full_route(X), domain_of_cluster, M),
        }

    ratio = opts["augment_ratio"] if router_augment_ratio is None else router_augment_ratio
    data = augmentation.Epochs(
        label, label(Q_train), kinds, augmentation.check_ratio(ratio, len(Q_train)), opts["sphere_sigma"], extra, rng
    )
    T_val = teach.project(Q_val) if len(Q_val) else None
    val = None if T_val is None else (Q_val, T_val)
    stage_opts = {
        "batch_size": opts["batch_size"],
        "weight_decay": opts["weight_decay"],
        "mse_weight": opts["mse_weight"],
        "cos_weight": opts["cos_weight"],
        "router_kl_weight": router_kl_weight,
    }
    history = {"router": train_stage(ens, "router", router_epochs, router_lr, data, val, stage_opts, rng, progress)}
    if finetune_epochs:
        ft_lr = opts["lr"] / 10 if finetune_lr is None else finetune_lr
        history["finetune"] = train_stage(ens, "finetune", finetune_epochs, ft_lr, data, val, stage_opts, rng, progress)
    else:
        history["finetune"] = {"train_loss": [], "val_cosine": []}
    val_cosine = None if T_val is None else mean_cosine(project_numpy(ens, Q_val), T_val)

    n_params = ens.n_parameters()
    teacher_params = teach.n_parameters
    settings = {
        "n_domains": M,
        "top_k": top_k,
        "router_hidden": router_hidden,
        "student": arch,
        "epochs": epochs,
        "router_epochs": router_epochs,
        "finetune_epochs": finetune_epochs,
        "router_lr": router_lr,
        "finetune_lr": finetune_lr,
        "router_kl_weight": router_kl_weight,
        "router_augment_ratio": router_augment_ratio,
        "min_domain_queries": min_domain_queries,
        "domain_mass_threshold": domain_mass_threshold,
        "val_fraction": val_fraction,
        "seed": seed,
        "n_train": len(Q_train),
        "n_val": len(Q_val),
        "distill": {
            k: os.fspath(v) if isinstance(v, os.PathLike) else list(v) if isinstance(v, tuple) else v
            for k, v in distill_kwargs.items()
            if k != "extra_queries"
        },
        "n_extra_queries": None if extra is None else len(extra),
    }
    return EnsembleResult(
        ensemble=ens,
        domains=domain_results,
        domain_of_cluster=domain_of_cluster,
        domain_queries=domain_counts,
        n_parameters=n_params,
        router_parameters=sum(p.numel() for p in ens.router.parameters()),
        student_parameters=cast(ProjectionTransformer, ens.students[0]).n_parameters(),
        teacher_parameters=teacher_params,
        compression=None if teacher_params is None else teacher_params / n_params,
        history=history,
        val_cosine=val_cosine,
        settings=settings,
        seconds=time.perf_counter() - started,
        teacher_kind=kind,
    )
