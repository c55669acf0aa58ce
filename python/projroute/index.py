"""Answer index files for text search (``projroute-index``, see ``docs/format.md``).

Serving needs only numpy and the wheel: :class:`projroute.Searcher` reads an index
file, embeds queries with a static (Model2Vec) model in Rust, optionally projects
them, and searches by cosine: exactly, or through an approximate (HNSW) graph stored
in the same file when the index was built with ``approximate=True``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from projroute import _core
from projroute.datasets import utf8_lines

PathLike = str | os.PathLike[str]


def read_corpus(path: PathLike) -> list[str]:
    """The answers of a UTF-8 text file: one per non-blank line, stripped, in order."""
    texts = [s.strip() for _, s in utf8_lines(path) if s.strip()]
    if not texts:
        raise ValueError(f"{path}: no answers (the file has no non-blank line)")
    return texts


def _absolute(path: PathLike) -> str:
    return str(Path(path).resolve())


def build_index(
    texts: Sequence[str],
    output: PathLike,
    *,
    encoder: PathLike,
    model: PathLike | None = None,
    embeddings: np.ndarray | None = None,
    ids: Sequence[int] | None = None,
    approximate: bool = False,
    ann: Mapping[str, int] | None = None,
) -> int:
    """Write an answer index file for ``texts`` and return its size N.

    Parameters
    ----------
    texts : sequence of str, length N
        The answers.
    output : path-like
        Index file to write.
    encoder : path-like
        The static model folder that embeds queries (recorded in the file). Without
        ``embeddings`` it also embeds the answers, in Rust.
    model : path-like, optional
        A projroute model file that projects queries into answer space (recorded in
        the file; the answers are not projected). Checked now: keyless kinds only, its
        ``dim_in`` the encoder's dimension, its ``dim_out`` the answers' dimension.
    embeddings : np.ndarray of shape (N, D), float, optional
        The answers' vectors when another encoder made them (for example MiniLM, with
        a model that bridges static queries into its space).
    ids : sequence of int, length N, optional
        Answer ids (int64); default 0..N-1.
    approximate : bool, default False
        Also build an approximate (HNSW, usearch) graph over the answers and store it in
        the file: searches then go through it (about 3 ms over 10^6 answers instead of
        about 50 ms, at a recall@10 against exact search of about 0.95 with the default
        parameters; see the README); ``Searcher.search(..., exact=True)`` still searches
        exactly.
    ann : mapping, optional
        The graph's parameters (implies ``approximate``): ``connectivity`` (HNSW's M,
        default 32), ``ef_construction`` (default 128) and ``ef_search`` (candidates per
        query, default 128; ``Searcher.search(..., ef=N)`` overrides it).

    Raises FileNotFoundError for a missing folder or file, ModelFormatError for a bad
    one, ValueError for mismatched inputs.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of str, not one str")
    texts = list(texts)
    ids_list = None if ids is None else [int(i) for i in ids]
    model_path = None if model is None else _absolute(model)
    graph = dict(ann) if ann is not None else {} if approximate else None
    # Written beside ``output`` and checked there (opening it checks the encoder, model
    # and index against each other), then renamed over it: a failed build leaves an
    # earlier file at ``output`` intact.
    out = Path(output)
    staged = os.fspath(out.with_name(f".{out.name}.{os.getpid()}.building"))
    try:
        if embeddings is None:
            n = _core.build_index(staged, _absolute(encoder), texts, ids_list, model_path, graph)
        else:
            _core.save_index(staged, embeddings, texts, ids_list, _absolute(encoder), model_path, graph)
            n = len(texts)
        _core.Searcher.open_index(staged)
        os.replace(staged, out)
    finally:
        Path(staged).unlink(missing_ok=True)
    return n


def read_header(path: PathLike) -> dict[str, Any]:
    """The JSON header of an index file (format, version, count, dim, encoder, model, and
    ann: the approximate graph's parameters, when it has one)."""
    header: dict[str, Any] = json.loads(_core.read_index_header(os.fspath(path)))
    return header
