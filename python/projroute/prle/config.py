"""The PRLE run configuration: one TOML file, read into nested dataclasses.

Every field has a default, so ``PRLEConfig()`` is a complete (small) run; a TOML file
overrides any of them. Unknown sections or keys are errors, so a typo never passes
silently. ``configs/prle_stsb.toml`` is the STS-B run.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "HEADS",
    "ROUTERS",
    "SELECTORS",
    "ExpertConfig",
    "HeadConfig",
    "KernelConfig",
    "PRLEConfig",
    "PrototypeConfig",
    "ReportConfig",
    "RouterConfig",
    "load_config",
]

HEADS = ("linear", "mlp", "residual_mlp", "rff")
SELECTORS = ("kmedoids", "kmeans++", "farthest")
ROUTERS = ("knn", "radius", "softmax", "mlp")


@dataclass
class HeadConfig:
    """Projection head from pair features to the unit value space of ``dim`` dimensions."""

    kind: str = "mlp"
    dim: int = 32
    hidden: int = 256
    #: Random Fourier features (``rff`` head): count and bandwidth (Ω ~ N(0, scale²)).
    rff_features: int = 512
    rff_scale: float = 0.5
    #: Dropout on the (standardised) inputs and before the output layer, in training.
    input_dropout: float = 0.2
    dropout: float = 0.3


@dataclass
class KernelConfig:
    """Stage 1: the metric learner. Pairwise loss ``(‖z_i − z_j‖ − scale·|y_i − y_j|/y_range)²``
    over all pairs of a batch, plus ``uniformity`` times log E exp(−2‖z_i − z_j‖²)."""

    epochs: int = 60
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 1e-2
    patience: int = 10
    scale: float = 1.0
    pairwise: float = 1.0
    uniformity: float = 0.05


@dataclass
class PrototypeConfig:
    """Prototypes: ``n`` real training examples chosen in value space by ``selector``;
    ``trainable`` ones move with the gradient and snap back to the nearest training
    example every ``snap_every`` epochs and at the end."""

    selector: str = "kmedoids"
    n: int = 32
    trainable: bool = False
    snap_every: int = 5


@dataclass
class RouterConfig:
    """Router over the prototypes. ``knn``: softmax of ``cos/T`` (= ``−‖z − p‖²/2T`` on the
    unit sphere) over the ``top_k`` nearest; ``radius``: over the prototypes within
    ``radius`` (else the nearest); ``softmax``: over all, ``T`` learnable and annealed
    from ``anneal_from·T`` down to ``T`` over the first half of training; ``mlp``: an MLP
    on the value embedding, Gumbel noise (scale ``gumbel``) in training, ``top_k``."""

    kind: str = "knn"
    top_k: int = 8
    temperature: float = 0.1
    learn_temperature: bool = True
    anneal_from: float = 5.0
    radius: float = 0.5
    hidden: int = 64
    gumbel: float = 1.0


@dataclass
class ExpertConfig:
    """Stage 2: one linear expert per prototype, router and (trainable) prototypes, the
    head frozen. Losses: task MSE, responsibility-weighted expert fit, anchor (a prototype
    routes to itself), load balance and routing entropy.

    ``init``: ``global`` starts every expert from one least-squares fit on all rows;
    ``local`` starts expert k from a fit with each row weighted by its routing weight to
    prototype k (the router as configured, before training); ``zero`` from zero. The fits
    are ridge, penalty ``ridge`` on the weights (not the bias)."""

    init: str = "global"
    ridge: float = 10.0
    epochs: int = 60
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 8
    task: float = 1.0
    expert_fit: float = 0.1
    anchor: float = 0.05
    load_balance: float = 0.01
    entropy: float = 0.0


@dataclass
class ReportConfig:
    """What ``projroute prle run`` writes under ``output``: the model, the table and plot."""

    output: str = "prle_out"
    baselines: bool = True
    oracle_clusters: int = 16
    tsne: bool = True
    tsne_points: int = 1500
    faithfulness_seed: int = 0


@dataclass
class PRLEConfig:
    """A whole PRLE run. ``data`` is the STS-B folder (default ``$PROJROUTE_DATA/stsb``);
    ``threads`` is torch's intra-op thread count while training."""

    seed: int = 0
    data: str = ""
    threads: int = 1
    head: HeadConfig = field(default_factory=HeadConfig)
    kernel: KernelConfig = field(default_factory=KernelConfig)
    prototypes: PrototypeConfig = field(default_factory=PrototypeConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    experts: ExpertConfig = field(default_factory=ExpertConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.head.kind, HEADS, "head.kind"),
            (self.prototypes.selector, SELECTORS, "prototypes.selector"),
            (self.router.kind, ROUTERS, "router.kind"),
            (self.experts.init, ("global", "local", "zero"), "experts.init"),
        ):
            if value not in allowed:
                raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
        if self.prototypes.n < 1 or self.head.dim < 1:
            raise ValueError("prototypes.n and head.dim must be >= 1")
        if not 1 <= self.router.top_k <= self.prototypes.n:
            raise ValueError(f"router.top_k must be in 1..prototypes.n ({self.prototypes.n}), got {self.router.top_k}")
        if self.experts.ridge < 0:
            raise ValueError(f"experts.ridge must be >= 0, got {self.experts.ridge}")
        if self.router.temperature <= 0 or self.router.radius <= 0:
            raise ValueError("router.temperature and router.radius must be > 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PRLEConfig:
        """From nested dicts (a parsed TOML file); unknown keys are ValueErrors."""
        return _build(cls, d, "")

    def to_dict(self) -> dict[str, Any]:
        """Nested dicts, JSON- and TOML-able."""
        return dataclasses.asdict(self)


def _build(cls: Any, d: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise ValueError(f"unknown config key(s) {sorted(unknown)} in [{where or 'top level'}]")
    kwargs: dict[str, Any] = {}
    for name, value in d.items():
        sub = _SECTIONS.get(name) if not where else None
        if sub is not None:
            if not isinstance(value, dict):
                raise ValueError(f"[{name}] must be a table")
            kwargs[name] = _build(sub, value, name)
        else:
            default = getattr(cls(), name) if where else getattr(PRLEConfig, name, None)
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if default is not None and type(value) is not type(default):
                raise ValueError(
                    f"{where + '.' if where else ''}{name} must be {type(default).__name__}, got {value!r}"
                )
            kwargs[name] = value
    return cls(**kwargs)


_SECTIONS: dict[str, Any] = {
    "head": HeadConfig,
    "kernel": KernelConfig,
    "prototypes": PrototypeConfig,
    "router": RouterConfig,
    "experts": ExpertConfig,
    "report": ReportConfig,
}


def load_config(path: str | os.PathLike[str]) -> PRLEConfig:
    """Read a PRLE run from a TOML file."""
    with open(path, "rb") as f:
        return PRLEConfig.from_dict(tomllib.load(f))
