"""Students as projroute model files: kind ``"transformer"`` (one student) and kind
``"transformer_ensemble"`` (students mixed by a router).

One safetensors file: every ``state_dict`` tensor as contiguous float32 under its own
name (``input.weight``, ``layers.0.keys``, ...; the ensemble's ``router.0.*``,
``router.2.*``, ``students.{d}.*``) and the config, written and checked by
:mod:`projroute._format`: its header (format, version, kind, dim_in, dim_out) plus::

    "transformer": {"d_model", "n_heads", "n_layers", "num_keys", "ffn_dim", "layer_norm_eps"},
    "ensemble": {"n_domains", "top_k", "router_hidden"},      (ensemble only)
    "fit": {...}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar

from safetensors import safe_open
from torch import nn

from projroute import _format
from projroute.distill.student import LAYER_NORM_EPS, ProjectionTransformer, TransformerEnsemble

STUDENT = "transformer"
ENSEMBLE = "transformer_ensemble"

PathLike = str | os.PathLike[str]
Module = TypeVar("Module", bound=nn.Module)


def write(module: ProjectionTransformer | TransformerEnsemble, path: PathLike, kind: str, **fields: Any) -> None:
    """Write ``module``'s ``state_dict`` as float32 under a config of ``kind`` with ``fields``."""
    tensors = {k: v.detach().cpu().float().contiguous().numpy() for k, v in module.state_dict().items()}
    _format.save(path, tensors, _format.header(kind, module.dim_in, module.dim_out, **fields))


def load_state(module: Module, path: PathLike) -> Module:
    """Load every tensor of ``path`` into ``module`` (strict); returns it in eval mode."""
    with safe_open(os.fspath(path), framework="pt") as f:
        names = f.keys()
        module.load_state_dict({k: f.get_tensor(k) for k in names}, strict=True)
    return module.eval()


def architecture(config: Mapping[str, Any]) -> dict[str, int]:
    """The student keyword arguments stored in a config's ``transformer`` section."""
    return {k: v for k, v in config["transformer"].items() if k != "layer_norm_eps"}


def save_student(student: nn.Module, path: PathLike, fit: Mapping[str, Any]) -> None:
    """Write ``student`` as one model file of kind ``"transformer"``; ``fit`` is the
    JSON-able record stored as the config's ``fit`` field (see ``DistillResult.fit_info``)."""
    if not isinstance(student, ProjectionTransformer):
        raise TypeError(f"only a ProjectionTransformer can be exported, got {type(student).__name__}")
    write(
        student,
        path,
        STUDENT,
        transformer={**student.config(), "layer_norm_eps": LAYER_NORM_EPS},
        fit={"student_parameters": student.n_parameters(), **fit},
    )


def load_student(path: PathLike) -> ProjectionTransformer:
    """Read a file written by :func:`save_student` back as a torch module (eval mode)."""
    config = _format.read_config(path, STUDENT)
    return load_state(ProjectionTransformer(config["dim_in"], config["dim_out"], **architecture(config)), path)


def save_ensemble(ens: TransformerEnsemble, path: PathLike, fit: Mapping[str, Any]) -> None:
    """Write ``ens`` as one model file of kind ``"transformer_ensemble"``; ``fit`` is the
    JSON-able record stored as the config's ``fit`` field (see ``EnsembleResult.fit_info``)."""
    if not isinstance(ens, TransformerEnsemble):
        raise TypeError(f"only a TransformerEnsemble can be exported, got {type(ens).__name__}")
    write(
        ens,
        path,
        ENSEMBLE,
        transformer={**ens.student_config(), "layer_norm_eps": LAYER_NORM_EPS},
        ensemble=ens.config(),
        fit={"ensemble_parameters": ens.n_parameters(), **fit},
    )


def load_ensemble(path: PathLike) -> TransformerEnsemble:
    """Read a file written by :func:`save_ensemble` back as a torch module (eval mode)."""
    config = _format.read_config(path, ENSEMBLE)
    e = config["ensemble"]
    ens = TransformerEnsemble(
        config["dim_in"], config["dim_out"], e["n_domains"], e["top_k"], e["router_hidden"], **architecture(config)
    )
    return load_state(ens, path)
