"""Loading any projroute model file for serving."""

from __future__ import annotations

import json
import os

import numpy as np

from projroute._core import FlatIndex, Projector
from projroute._estimator import INDEX_TENSOR, INDEX_TEXTS


def load(path: str | os.PathLike[str]) -> Projector:
    """Load a projroute model file (any kind) as a Rust-backed ``Projector``.

    Raises FileNotFoundError, or ModelFormatError for a foreign, truncated,
    inconsistent or newer file.
    """
    return Projector.load(os.fspath(path))


WEIGHTS_DTYPES = ("float32", "float16", "bfloat16")


def with_weights_dtype_config(config: str, tensors: dict[str, np.ndarray], weights_dtype: str) -> str:
    """The JSON ``config`` of a model with ``tensors`` with its maps ``W`` set to be
    stored as ``weights_dtype``; unchanged for kinds without ``W``. ValueError for a
    dtype other than float32, float16 or bfloat16."""
    if weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"weights_dtype must be one of {WEIGHTS_DTYPES}, got {weights_dtype!r}")
    if "W" not in tensors:
        return config
    return json.dumps({**json.loads(config), "weights_dtype": weights_dtype})


def with_weights_dtype(model: Projector, weights_dtype: str) -> Projector:
    """``model`` with its maps ``W`` stored as ``weights_dtype`` (float32, float16 or
    bfloat16; rounded to nearest even), still computed in float32. Kinds without ``W``
    are returned unchanged."""
    tensors = model.tensors()
    config = with_weights_dtype_config(model.config, tensors, weights_dtype)
    return model if config == model.config else Projector.from_tensors(tensors, config, model.metadata)


def stored_index(model: Projector) -> tuple[FlatIndex, list[str] | None] | None:
    """The answer corpus saved with a model, as (index, texts), or None."""
    tensors = model.tensors()
    if INDEX_TENSOR not in tensors:
        return None
    texts = model.metadata.get(INDEX_TEXTS)
    return FlatIndex(np.asarray(tensors[INDEX_TENSOR])), None if texts is None else json.loads(texts)
