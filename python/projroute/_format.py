"""The projroute model file, Python side: the config header, the names of the optional
answer index, and the storage types of the maps. Rust serialises and checks
(``projroute._core.save_file``, ``read_config``); the layout is in ``docs/format.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from projroute import _core
from projroute._core import FORMAT_VERSION, ModelFormatError

FORMAT = "projroute"
INDEX_TENSOR = "index.embeddings"
INDEX_TEXTS = "index.texts"
WEIGHTS_TENSOR = "W"
# Factored federated maps W_k = base + U_k M_k (config ``ranks``, format version 2).
BASE, SPANS, CORRECTIONS = "W.base", "W.U", "W.M"
WEIGHTS_DTYPES = ("float32", "float16", "bfloat16")

PathLike = str | os.PathLike[str]


def header(kind: str, dim_in: int, dim_out: int, **fields: Any) -> dict[str, Any]:
    """The config of a model of ``kind`` mapping ``dim_in`` to ``dim_out`` dimensions,
    with the kind's own ``fields`` (routing parameters, ``fit`` record, ...). The
    version is the lowest that holds them: 2 with factored maps (``ranks``), else 1."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION if "ranks" in fields else 1,
        "kind": kind,
        "dim_in": int(dim_in),
        "dim_out": int(dim_out),
        **fields,
    }


def with_weights_dtype(config: Mapping[str, Any], tensors: Mapping[str, Any], weights_dtype: str) -> dict[str, Any]:
    """``config`` with its maps ``W`` stored as ``weights_dtype`` (unchanged for kinds
    without ``W``); ValueError for a dtype other than float32, float16 or bfloat16."""
    if weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"weights_dtype must be one of {WEIGHTS_DTYPES}, got {weights_dtype!r}")
    if not any(is_weights(name) for name in tensors):
        return dict(config)
    return {**config, "weights_dtype": weights_dtype}


def is_weights(name: str) -> bool:
    """Whether tensor ``name`` holds maps (``W`` or a factor ``W.*``), stored at the
    config's ``weights_dtype``."""
    return name == WEIGHTS_TENSOR or name.startswith("W.")


def factor_maps(W: np.ndarray, base: np.ndarray, spans: list[np.ndarray]) -> tuple[dict[str, np.ndarray], list[int]]:
    """Maps ``W`` (K, D_in, D_out) that equal ``base`` (D_in, D_out) outside the span of
    each cluster's orthonormal ``spans[k]`` (D_in, r_k), as the tensors ``W.base``,
    ``W.U`` (D_in, R) and ``W.M`` (R, D_out) with ``M_k = U_k^T (W_k - base)``, and the
    ranks (K,)."""
    base64 = np.asarray(base, np.float64)
    M = [U.T @ (np.asarray(Wk, np.float64) - base64) for U, Wk in zip(spans, W)]
    tensors = {
        BASE: base64.astype(np.float32),
        SPANS: np.concatenate(spans, axis=1).astype(np.float32),
        CORRECTIONS: np.concatenate(M, axis=0).astype(np.float32),
    }
    return tensors, [U.shape[1] for U in spans]


def dense_maps(
    tensors: Mapping[str, np.ndarray], config: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``tensors`` and ``config`` with factored maps multiplied out into ``W`` (K, D_in,
    D_out), float32, and the file version 1; unchanged when the maps are whole."""
    tensors, config = dict(tensors), dict(config)
    if "ranks" not in config:
        return tensors, config
    base, U, M = (np.asarray(tensors.pop(n), np.float64) for n in (BASE, SPANS, CORRECTIONS))
    ranks = config.pop("ranks")
    ends = np.cumsum(ranks)
    tensors[WEIGHTS_TENSOR] = np.stack([base + U[:, e - r : e] @ M[e - r : e] for e, r in zip(ends, ranks)]).astype(
        np.float32
    )
    return tensors, {**config, "version": 1}


def save(
    path: PathLike,
    tensors: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
    *,
    answers: np.ndarray | None = None,
    answer_texts: list[str] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write one model file: ``tensors`` (name -> float array) under ``config`` (a
    :func:`header`), optionally with a searchable answer corpus ``answers`` (N, dim_out)
    and its texts. One call into the Rust serialiser, which checks everything."""
    tensors = dict(tensors)
    metadata = dict(metadata or {})
    if answers is not None:
        tensors[INDEX_TENSOR] = np.asarray(answers, dtype=np.float32)
        if answer_texts is not None:
            if len(answer_texts) != len(answers):
                raise ValueError("answer_texts and answers differ in length")
            metadata[INDEX_TEXTS] = json.dumps(list(answer_texts))
    _core.save_file(tensors, json.dumps(config), os.fspath(path), metadata)


def read_config(path: PathLike, kind: str | None = None) -> dict[str, Any]:
    """The config of a model file (its header only), checked by Rust; with ``kind``,
    ModelFormatError unless the file is of that kind."""
    config: dict[str, Any] = json.loads(_core.read_config(os.fspath(path)))
    if kind is not None and config["kind"] != kind:
        raise ModelFormatError(f"{path}: a {config['kind']!r} model, not a {kind!r} one")
    return config
