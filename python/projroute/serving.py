"""Loading any projroute model file for serving."""

from __future__ import annotations

import json
import os

from projroute import _format
from projroute._core import FlatIndex, Projector


def load(path: str | os.PathLike[str]) -> Projector:
    """Load a projroute model file (any kind) as a Rust-backed ``Projector``.

    Raises FileNotFoundError, or ModelFormatError for a foreign, truncated,
    inconsistent or newer file.
    """
    return Projector.load(os.fspath(path))


def with_weights_dtype(model: Projector, weights_dtype: str) -> Projector:
    """``model`` with its maps ``W`` stored as ``weights_dtype`` (float32, float16 or
    bfloat16; rounded to nearest even), still computed in float32. Kinds without ``W``
    are returned unchanged."""
    tensors = model.tensors()
    current = json.loads(model.config)
    config = _format.with_weights_dtype(current, tensors, weights_dtype)
    if config == current:
        return model
    return Projector.from_tensors(tensors, json.dumps(config), model.metadata)


def stored_index(model: Projector) -> tuple[FlatIndex, list[str] | None] | None:
    """The answer corpus saved with a model, as (index, texts), or None. Reads the
    index alone (``model.tensors()`` would also unpack every map)."""
    answers = model.index
    if answers is None:
        return None
    texts = model.metadata.get(_format.INDEX_TEXTS)
    return FlatIndex(answers), None if texts is None else json.loads(texts)
