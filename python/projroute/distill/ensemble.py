"""Hierarchical ensemble for large routed teachers: domain students mixed by a router.

A routed teacher (federated or lda, K clusters) is split into ``n_domains`` domains by
k-means on its normalised centroids. Each domain gets its own small
:class:`ProjectionTransformer`, distilled (with :func:`projroute.distill.distill`) from
the *domain teacher*: the teacher restricted to the domain's clusters (routing
``softmax(cos / T)`` over those clusters only, then the usual blend). A router MLP
then learns, with the students frozen, to mix the students' outputs into the full
teacher output; optionally everything is fine-tuned end to end::

    logits = router(x)                      router = Linear -> GELU -> Linear
    w      = softmax(top_k(logits))         others 0; top_k = n_domains mixes all
    y      = sum_d w_d * students[d](x)

The model is saved as one safetensors file of kind ``"transformer_ensemble"`` that the
Rust core serves like any other projroute model (tensor names as in ``state_dict``:
``router.0.*``, ``router.2.*``, ``students.{d}.*``)::

    {"format": "projroute", "version": FORMAT_VERSION, "kind": "transformer_ensemble",
     "dim_in": D_in, "dim_out": D_out,
     "transformer": {"d_model", "n_heads", "n_layers", "num_keys", "ffn_dim", "layer_norm_eps"},
     "ensemble": {"n_domains", "top_k", "router_hidden"},
     "fit": {...}}

Why the router has a good target: without top-k truncation in the teacher, the full
teacher output is exactly ``sum_d m_d(x) * T_d(x)`` with ``m_d`` the teacher's routing
mass on domain d and ``T_d`` the domain teacher, so besides the output loss the router
is pulled (``router_kl_weight``) toward ``softmax(logits) = m``.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from projroute.clustering import kmeans_labels
from projroute.distill import augment as augmentation
from projroute.distill.export import architecture, load_state, read_config, write_model
from projroute.distill.student import LAYER_NORM_EPS, ProjectionTransformer, project_numpy
from projroute.distill.teacher import Teacher
from projroute.distill.train import DistillResult, distill, split_queries
from projroute.metrics import mean_cosine
from projroute.reference import blend_maps, route_weights, unit_rows

KIND = "transformer_ensemble"

#: Student architecture used when ``distill_ensemble(student=None)``: one small block.
DEFAULT_STUDENT = {"d_model": 128, "n_heads": 4, "n_layers": 1, "num_keys": 32, "ffn_dim": 256}

#: Keyword defaults of :func:`distill` (the router stage reads the same settings).
_DISTILL_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(distill).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
}


# --------------------------------------------------------------------------- module


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
        self.students = nn.ModuleList([ProjectionTransformer(dim_in, dim_out, **student_arch) for _ in range(n_domains)])

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Mixing weights (B, M) of queries x (B, dim_in): ``top_k`` nonzero per row, summing to 1."""
        return top_k_softmax(self.router(x), self.top_k)

    def student_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Every student's output (B, M, dim_out)."""
        return torch.stack([s(x) for s in self.students], dim=1)

    def forward(
        self, x: torch.Tensor, return_logits: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
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
        return self.students[0].config()

    def config(self) -> dict[str, int]:
        """The ensemble section: n_domains, top_k, router_hidden."""
        return {"n_domains": self.n_domains, "top_k": self.top_k, "router_hidden": self.router_hidden}

    def n_parameters(self) -> int:
        """Number of scalar parameters."""
        return sum(p.numel() for p in self.parameters())


# --------------------------------------------------------------------------- teachers


def teacher_parts(teacher: Any) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
    """(kind, tensors, routing) of a routed projroute teacher: a fitted
    ``FederatedProjection``/``LdaProjection`` or a ``Projector`` of kind federated/lda.
    ``routing`` holds temperature, top_k and coverage."""
    core = getattr(teacher, "projector_", teacher)
    kind = getattr(core, "kind", None)
    if kind not in ("federated", "lda") or not hasattr(core, "tensors") or not hasattr(core, "config"):
        raise ValueError(
            "an ensemble needs a routed projroute teacher (federated or lda estimator or Projector), "
            f"got {type(teacher).__name__} of kind {kind!r}"
        )
    config = json.loads(core.config)
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in core.tensors().items()
               if k in ("centroids", "W", "answers")}
    routing = {"temperature": float(config["temperature"]), "top_k": int(config["top_k"]),
               "coverage": config.get("coverage")}
    return kind, tensors, routing


class DomainTeacher:
    """The teacher restricted to some of its clusters (numpy, :mod:`projroute.reference`):
    routing ``softmax(cos / T)`` over those clusters only, ``top_k`` capped at their
    number, then the federated blend or the lda answer mix.

    Parameters
    ----------
    kind : "federated" or "lda"
    tensors : dict
        The full teacher's ``centroids`` (K, D_in) and ``W`` (K, D_in, D_out) or ``answers`` (K, D_out).
    routing : dict
        temperature, top_k, coverage of the full teacher.
    clusters : (K_d,) int
        The domain's cluster indices.
    """

    def __init__(self, kind: str, tensors: Mapping[str, np.ndarray], routing: Mapping[str, Any],
                 clusters: Sequence[int]) -> None:
        idx = np.asarray(clusters, dtype=np.int64)
        if not len(idx):
            raise ValueError("a domain needs at least one cluster")
        self.kind = kind
        self.clusters = idx
        self._tensors = {k: np.ascontiguousarray(v[idx]) for k, v in tensors.items()}
        self.temperature = float(routing["temperature"])
        self.top_k = min(int(routing["top_k"]), len(idx))
        self.coverage = routing.get("coverage")

    def tensors(self) -> dict[str, np.ndarray]:
        """The domain's sliced tensors (``centroids`` and ``W`` or ``answers``)."""
        return dict(self._tensors)

    def route(self, X: np.ndarray) -> np.ndarray:
        """Routing weights (B, K_d) over the domain's clusters, rows summing to 1."""
        return route_weights(X, self._tensors["centroids"], self.temperature, self.top_k, self.coverage)

    def project(self, X: np.ndarray) -> np.ndarray:
        """Domain-teacher outputs (B, D_out) float32."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        w = self.route(X)
        if self.kind == "federated":
            return blend_maps(X, w, self._tensors["W"])
        return (w @ self._tensors["answers"]).astype(np.float32)


def domain_mass(route: np.ndarray, domain_of_cluster: np.ndarray, n_domains: int) -> np.ndarray:
    """Teacher routing (B, K) summed per domain: (B, M) float32."""
    mass = np.zeros((len(route), n_domains), np.float32)
    np.add.at(mass.T, domain_of_cluster, np.asarray(route, np.float32).T)
    return mass


# --------------------------------------------------------------------------- result


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
    extra: dict[str, Any] = field(default_factory=dict)

    def fit_info(self) -> dict[str, Any]:
        """JSON-able record of the run, stored as the ``fit`` field of an exported file."""
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
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Export the ensemble with :func:`save_ensemble`."""
        save_ensemble(self.ensemble, path, self.fit_info())


# --------------------------------------------------------------------------- training


def _output_losses(y: torch.Tensor, t: torch.Tensor, mse_weight: float, cos_weight: float) -> torch.Tensor:
    """Per-sample ``mse * |y - t|^2 + cos * (1 - cos(y, t))`` (as in train.py)."""
    return mse_weight * (y - t).pow(2).sum(dim=1) + cos_weight * (1 - F.cosine_similarity(y, t, dim=1))


def _kl_to_mass(logits: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(mass || softmax(logits)) over the domains (dense)."""
    return (torch.xlogy(mass, mass) - mass * torch.log_softmax(logits, dim=1)).sum(dim=1)


def _schedule(optim: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over 5 % of the steps, then cosine decay (as in train.py)."""
    warmup = max(1, int(0.05 * total))
    return torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    )


def _train_stage(
    ens: TransformerEnsemble,
    stage: str,
    epochs: int,
    lr: float,
    sample: Any,
    Q_val: np.ndarray,
    T_val: np.ndarray | None,
    opts: Mapping[str, Any],
    rng: np.random.Generator,
    progress: bool,
) -> dict[str, list[float]]:
    """Train the router (``stage="router"``, students frozen, their outputs precomputed)
    or everything (``"finetune"``); keep the weights of the best validation epoch."""
    from tqdm.auto import tqdm

    router_only = stage == "router"
    params = list(ens.router.parameters()) if router_only else list(ens.parameters())
    for p in ens.parameters():
        p.requires_grad_(not router_only)
    for p in ens.router.parameters():
        p.requires_grad_(True)

    batch_size = opts["batch_size"]
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=opts["weight_decay"])
    n_per_epoch = sample.n_per_epoch
    sched = _schedule(optim, max(1, epochs * math.ceil(n_per_epoch / batch_size)))
    history: dict[str, list[float]] = {"train_loss": [], "val_cosine": []}

    def validate() -> float | None:
        return None if T_val is None else mean_cosine(project_numpy(ens, Q_val), T_val)

    best_val = validate()
    best_state = copy.deepcopy(ens.state_dict())
    bar = tqdm(range(epochs), desc=f"ensemble {stage}", unit="epoch", disable=not progress)
    for _ in bar:
        batch = sample()
        x, t, m = (torch.from_numpy(batch[k]) for k in ("x", "t", "mass"))
        if router_only:
            ens.eval()
            with torch.no_grad():
                S = torch.cat([ens.student_outputs(x[s : s + 4096]) for s in range(0, len(x), 4096)])
        ens.train()
        order = torch.from_numpy(rng.permutation(len(x)))
        total = 0.0
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            if router_only:
                logits = ens.router(x[idx])
                y = (top_k_softmax(logits, ens.top_k).unsqueeze(-1) * S[idx]).sum(dim=1)
            else:
                y, logits = ens(x[idx], return_logits=True)
            loss = _output_losses(y, t[idx], opts["mse_weight"], opts["cos_weight"])
            if opts["router_kl_weight"] > 0:
                loss = loss + opts["router_kl_weight"] * _kl_to_mass(logits, m[idx])
            loss = loss.mean()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
            total += loss.item() * len(idx)
        history["train_loss"].append(total / len(order))
        val = validate()
        if val is not None:
            history["val_cosine"].append(val)
            if best_val is None or val > best_val:
                best_val, best_state = val, copy.deepcopy(ens.state_dict())
            bar.set_postfix(loss=f"{history['train_loss'][-1]:.4f}", val_cos=f"{val:.4f}")
        else:
            best_state = copy.deepcopy(ens.state_dict())
    bar.close()
    ens.load_state_dict(best_state)
    for p in ens.parameters():
        p.requires_grad_(True)
    ens.eval()
    return history


class _Sampler:
    """Fresh labelled training data per call: the training queries plus augmentations,
    with full-teacher outputs and per-domain routing mass."""

    def __init__(self, label: Any, Q: np.ndarray, kinds: tuple[str, ...], ratio: float, sigma: float,
                 extra: np.ndarray | None, rng: np.random.Generator) -> None:
        self.label, self.Q, self.kinds, self.sigma, self.extra, self.rng = label, Q, kinds, sigma, extra, rng
        self.n_aug = int(round(ratio * len(Q))) if kinds else 0
        self.real = label(Q)
        self.n_per_epoch = len(Q) + self.n_aug

    def __call__(self) -> dict[str, np.ndarray]:
        if not self.n_aug:
            return self.real
        aug = self.label(augmentation.sample(self.kinds, self.Q, self.n_aug, self.rng, self.sigma, self.extra))
        return {k: np.concatenate([self.real[k], aug[k]]) for k in self.real}


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
    Q = np.ascontiguousarray(queries, dtype=np.float32)
    if Q.ndim != 2 or not len(Q):
        raise ValueError(f"queries must be a non-empty 2-D array, got shape {Q.shape}")
    train_rows, val_rows = split_queries(len(Q), val_fraction, rng)
    Q_train, Q_val = Q[train_rows], Q[val_rows]

    # Domains: k-means on the normalised centroids.
    domain_of_cluster = (np.zeros(K, np.int64) if n_domains == 1
                         else kmeans_labels(unit_rows(centroids), n_domains, seed).astype(np.int64))
    M = int(domain_of_cluster.max()) + 1
    top_k = min(top_k, M)

    def full_route(X: np.ndarray) -> np.ndarray:
        return route_weights(X, centroids, routing["temperature"], routing["top_k"], routing["coverage"])

    def main_domain_rows(X: np.ndarray, d: int) -> np.ndarray:
        mass = domain_mass(full_route(X), domain_of_cluster, M)
        return np.flatnonzero((mass.argmax(axis=1) == d) | (mass[:, d] >= domain_mass_threshold))

    # One student per domain, distilled from the domain teacher.
    extra = distill_kwargs.get("extra_queries")
    domain_results: list[DistillResult] = []
    domain_counts: list[int] = []
    for d in range(M):
        dt = DomainTeacher(kind, tensors, routing, np.flatnonzero(domain_of_cluster == d))
        rows = main_domain_rows(Q_train, d)
        Q_d = Q_train[rows] if len(rows) >= min_domain_queries else Q_train
        kwargs = dict(distill_kwargs)
        if kwargs.get("plot") is not None:
            plot = Path(kwargs["plot"])
            kwargs["plot"] = plot.with_name(f"{plot.stem}.domain{d}{plot.suffix}")
        if extra is not None:
            extra = np.asarray(extra, np.float32)
            erows = main_domain_rows(extra, d)
            kwargs["extra_queries"] = extra[erows] if len(erows) >= min_domain_queries else extra
        if progress:
            print(f"domain {d + 1}/{M}: {len(dt.clusters)} clusters, {len(Q_d)} queries")
        res = distill(dt, Q_d, student=arch, epochs=epochs, val_fraction=val_fraction if len(Q_d) > 1 else 0.0,
                      seed=seed + 1 + d, progress=progress, **kwargs)
        domain_results.append(res)
        domain_counts.append(len(Q_d))

    torch.manual_seed(seed)
    ens = TransformerEnsemble(Q.shape[1], domain_results[0].student.dim_out, M, top_k, router_hidden, **arch)
    for d, res in enumerate(domain_results):
        ens.students[d].load_state_dict(res.student.state_dict())
    ens.eval()

    # Router (students frozen), then optional end-to-end fine-tuning, on the full teacher.
    kinds = tuple(opts["augment"])
    if extra is not None and "extra" not in kinds:
        kinds += ("extra",)

    def label(X: np.ndarray) -> dict[str, np.ndarray]:
        return {"x": np.ascontiguousarray(X, np.float32), "t": teach.project(X),
                "mass": domain_mass(full_route(X), domain_of_cluster, M)}

    ratio = opts["augment_ratio"] if router_augment_ratio is None else router_augment_ratio
    sampler = _Sampler(label, Q_train, kinds, ratio, opts["sphere_sigma"],
                       None if extra is None else np.asarray(extra, np.float32), rng)
    T_val = teach.project(Q_val) if len(Q_val) else None
    stage_opts = {"batch_size": opts["batch_size"], "weight_decay": opts["weight_decay"],
                  "mse_weight": opts["mse_weight"], "cos_weight": opts["cos_weight"],
                  "router_kl_weight": router_kl_weight}
    history = {"router": _train_stage(ens, "router", router_epochs, router_lr, sampler, Q_val, T_val,
                                      stage_opts, rng, progress)}
    if finetune_epochs:
        ft_lr = opts["lr"] / 10 if finetune_lr is None else finetune_lr
        history["finetune"] = _train_stage(ens, "finetune", finetune_epochs, ft_lr, sampler, Q_val, T_val,
                                           stage_opts, rng, progress)
    else:
        history["finetune"] = {"train_loss": [], "val_cosine": []}
    val_cosine = None if T_val is None else mean_cosine(project_numpy(ens, Q_val), T_val)

    n_params = ens.n_parameters()
    teacher_params = teach.n_parameters
    settings = {
        "n_domains": M, "top_k": top_k, "router_hidden": router_hidden, "student": arch,
        "epochs": epochs, "router_epochs": router_epochs, "finetune_epochs": finetune_epochs,
        "router_lr": router_lr, "finetune_lr": finetune_lr, "router_kl_weight": router_kl_weight,
        "router_augment_ratio": router_augment_ratio, "min_domain_queries": min_domain_queries,
        "domain_mass_threshold": domain_mass_threshold, "val_fraction": val_fraction, "seed": seed,
        "n_train": len(Q_train), "n_val": len(Q_val),
        "distill": {k: os.fspath(v) if isinstance(v, os.PathLike) else list(v) if isinstance(v, tuple) else v
                    for k, v in distill_kwargs.items() if k != "extra_queries"},
        "n_extra_queries": None if extra is None else len(extra),
    }
    return EnsembleResult(
        ensemble=ens,
        domains=domain_results,
        domain_of_cluster=domain_of_cluster,
        domain_queries=domain_counts,
        n_parameters=n_params,
        router_parameters=sum(p.numel() for p in ens.router.parameters()),
        student_parameters=ens.students[0].n_parameters(),
        teacher_parameters=teacher_params,
        compression=None if teacher_params is None else teacher_params / n_params,
        history=history,
        val_cosine=val_cosine,
        settings=settings,
        seconds=time.perf_counter() - started,
        teacher_kind=kind,
    )


# --------------------------------------------------------------------------- export


def save_ensemble(ens: TransformerEnsemble, path: str | os.PathLike[str], teacher_info: dict[str, Any]) -> None:
    """Write ``ens`` as one safetensors model file of kind ``"transformer_ensemble"``.

    Parameters
    ----------
    ens : TransformerEnsemble
    path : path-like
    teacher_info : dict
        JSON-able record stored as the config's ``fit`` field (see ``EnsembleResult.fit_info``).
    """
    if not isinstance(ens, TransformerEnsemble):
        raise TypeError(f"only a TransformerEnsemble can be exported, got {type(ens).__name__}")
    write_model(ens, path, KIND, {
        "transformer": {**ens.student_config(), "layer_norm_eps": LAYER_NORM_EPS},
        "ensemble": ens.config(),
        "fit": {"ensemble_parameters": ens.n_parameters(), **teacher_info},
    })


def read_ensemble_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``projroute`` config of an ensemble model file; ModelFormatError otherwise."""
    return read_config(path, KIND)


def load_ensemble(path: str | os.PathLike[str]) -> TransformerEnsemble:
    """Read a file written by :func:`save_ensemble` back as a torch module (eval mode)."""
    config = read_ensemble_config(path)
    e = config["ensemble"]
    ens = TransformerEnsemble(config["dim_in"], config["dim_out"], e["n_domains"], e["top_k"], e["router_hidden"],
                              **architecture(config))
    return load_state(ens, path)
