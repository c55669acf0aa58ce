"""The student as a projroute model file of kind ``"transformer"``.

One safetensors file: every ``state_dict`` tensor as contiguous float32 under its
own name (``input.weight``, ``layers.0.keys``, ...), and ``__metadata__["projroute"]``,
the JSON config::

    {"format": "projroute", "version": FORMAT_VERSION, "kind": "transformer",
     "dim_in": D_in, "dim_out": D_out,
     "transformer": {"d_model", "n_heads", "n_layers", "num_keys", "ffn_dim", "layer_norm_eps"},
     "fit": {...}}
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from safetensors.torch import save_file

from projroute import FORMAT_VERSION, ModelFormatError
from projroute.distill.student import LAYER_NORM_EPS, ProjectionTransformer

KIND = "transformer"


def write_model(module: nn.Module, path: str | os.PathLike[str], kind: str, config: dict[str, Any]) -> None:
    """Write ``module``'s ``state_dict`` (float32) as a projroute model file of ``kind``
    whose config is ``config`` plus the format fields and dimensions."""
    full = {"format": "projroute", "version": FORMAT_VERSION, "kind": kind,
            "dim_in": module.dim_in, "dim_out": module.dim_out, **config}
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, os.fspath(path), metadata={"projroute": json.dumps(full)})


def read_config(path: str | os.PathLike[str], kind: str = KIND) -> dict[str, Any]:
    """The ``projroute`` config of a model file of ``kind``; ModelFormatError otherwise."""
    with safe_open(os.fspath(path), framework="pt") as f:
        raw = (f.metadata() or {}).get("projroute")
    config = json.loads(raw) if raw else {}
    if config.get("format") != "projroute":
        raise ModelFormatError(f"{path}: not a projroute model file")
    if config.get("kind") != kind:
        raise ModelFormatError(f"{path}: a {config.get('kind')!r} model, not a {kind!r} one")
    if config.get("version", FORMAT_VERSION + 1) > FORMAT_VERSION:
        raise ModelFormatError(f"{path}: format version {config.get('version')} is newer than this projroute")
    return config


def load_state(module: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load every tensor of ``path`` into ``module`` (strict); returns it in eval mode."""
    with safe_open(os.fspath(path), framework="pt") as f:
        module.load_state_dict({k: f.get_tensor(k) for k in f.keys()}, strict=True)
    return module.eval()


def architecture(config: dict[str, Any]) -> dict[str, int]:
    """The student keyword arguments stored in a config's ``transformer`` section."""
    return {k: v for k, v in config["transformer"].items() if k != "layer_norm_eps"}


def save_student(student: ProjectionTransformer, path: str | os.PathLike[str], teacher_info: dict[str, Any]) -> None:
    """Write ``student`` as one safetensors model file.

    Parameters
    ----------
    student : ProjectionTransformer
    path : path-like
    teacher_info : dict
        JSON-able record stored as the config's ``fit`` field (teacher kind and size,
        compression, training summary; see ``DistillResult.fit_info``).
    """
    if not isinstance(student, ProjectionTransformer):
        raise TypeError(f"only a ProjectionTransformer can be exported, got {type(student).__name__}")
    write_model(student, path, KIND, {
        "transformer": {**student.config(), "layer_norm_eps": LAYER_NORM_EPS},
        "fit": {"student_parameters": student.n_parameters(), **teacher_info},
    })


def load_student(path: str | os.PathLike[str]) -> ProjectionTransformer:
    """Read a file written by :func:`save_student` back as a torch module (eval mode)."""
    config = read_config(path)
    return load_state(ProjectionTransformer(config["dim_in"], config["dim_out"], **architecture(config)), path)
