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
from safetensors.torch import save_file

from projroute import FORMAT_VERSION, ModelFormatError
from projroute.distill.student import LAYER_NORM_EPS, ProjectionTransformer

KIND = "transformer"


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
    config = {
        "format": "projroute",
        "version": FORMAT_VERSION,
        "kind": KIND,
        "dim_in": student.dim_in,
        "dim_out": student.dim_out,
        "transformer": {**student.config(), "layer_norm_eps": LAYER_NORM_EPS},
        "fit": {"student_parameters": student.n_parameters(), **teacher_info},
    }
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in student.state_dict().items()}
    save_file(tensors, os.fspath(path), metadata={"projroute": json.dumps(config)})


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``projroute`` config of a transformer model file; ModelFormatError otherwise."""
    with safe_open(os.fspath(path), framework="pt") as f:
        raw = (f.metadata() or {}).get("projroute")
    config = json.loads(raw) if raw else {}
    if config.get("format") != "projroute":
        raise ModelFormatError(f"{path}: not a projroute model file")
    if config.get("kind") != KIND:
        raise ModelFormatError(f"{path}: a {config.get('kind')!r} model, not a {KIND!r} one")
    if config.get("version", FORMAT_VERSION + 1) > FORMAT_VERSION:
        raise ModelFormatError(f"{path}: format version {config.get('version')} is newer than this projroute")
    return config


def load_student(path: str | os.PathLike[str]) -> ProjectionTransformer:
    """Read a file written by :func:`save_student` back as a torch module (eval mode)."""
    config = read_config(path)
    arch = {k: v for k, v in config["transformer"].items() if k != "layer_norm_eps"}
    student = ProjectionTransformer(config["dim_in"], config["dim_out"], **arch)
    with safe_open(os.fspath(path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    student.load_state_dict(state, strict=True)
    return student.eval()
