"""Batch projection on Ray Data: Parquet or JSONL of texts or embeddings in, Parquet out.

Needs the ``ray`` extra. Each Ray worker is an actor that loads the model file (and
the static encoder) once and runs the Rust core on each batch; batches reach it as
Arrow tables, and an embedding column of fixed-size lists (or Ray tensors) becomes a
numpy view of the Arrow buffer without a copy, as does the output column. The same
batch function runs without Ray in :func:`project_table`.

On a cluster, call ``ray.init(address=...)`` first, or set ``RAY_ADDRESS``: every path
(inputs, output, model, encoder, index folder) must then name the same files on every
node (a shared file system or object storage that Ray Data reads).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    import pyarrow as pa
    import ray
except ImportError as err:
    raise ImportError(
        f"projroute.distributed needs Ray Data ({err.name} is missing): pip install 'projroute[ray]'"
    ) from err

import projroute
from projroute import _core

PathLike = str | os.PathLike[str]
#: Rows per batch handed to an actor (each batch is also one index shard).
BATCH_SIZE = 16384
FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


def as_matrix(column: pa.ChunkedArray | pa.Array, name: str) -> np.ndarray:
    """An Arrow column of equal-length float lists (or Ray tensors) as an (n, D) numpy
    array: a view of the Arrow buffer for a fixed-size list or tensor column without
    nulls in one chunk, else a copy. ValueError for nulls, ragged rows or non-floats."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if isinstance(column.type, pa.ExtensionType):  # Ray's tensor column: its own zero-copy view
        X = np.asarray(column.to_numpy())
        if X.dtype == object:
            raise ValueError(f"column {name!r} holds tensors of different shapes")
        return X.reshape(len(X), -1)
    if column.null_count:
        raise ValueError(f"column {name!r} has {column.null_count} null rows")
    if pa.types.is_fixed_size_list(column.type):
        width = column.type.list_size
    elif pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        lengths = np.diff(np.asarray(column.offsets))
        width = int(lengths[0]) if len(lengths) else 0
        if np.any(lengths != width):
            raise ValueError(f"column {name!r} has rows of different lengths ({lengths.min()} to {lengths.max()})")
    else:
        raise ValueError(f"column {name!r} is {column.type}, not a list of floats")
    values = column.flatten()  # the rows' values only (honours the array's offset)
    if not pa.types.is_floating(values.type):
        raise ValueError(f"column {name!r} holds {values.type}, not floats")
    if values.null_count:
        raise ValueError(f"column {name!r} has null values inside its rows")
    return values.to_numpy(zero_copy_only=False).reshape(len(column), width)


def as_column(X: np.ndarray) -> pa.FixedSizeListArray:
    """An (n, D) float32 array as an Arrow fixed-size-list column over the same buffer."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1])


class BatchProjector:
    """Embeds, projects and optionally indexes one Arrow batch at a time; loads the model
    file and the static encoder once (a Ray Data actor, or called directly).

    Parameters
    ----------
    model : path-like or None
        Any projroute model file (keyless kinds); None: the vectors are written as read
        (or as encoded).
    encoder : path-like or None
        A static (model2vec) folder: embed ``text_column`` instead of reading ``column``.
    column, text_column, output_column : str
        Input vectors (n, D_in) float, input texts, and the output vectors (n, D_out)
        float32 (they replace ``column`` in the output).
    index_dir : path-like or None
        Also write each batch as an answer index shard here, ``shard-<first id>.index``
        (its vectors are the output vectors; it records the encoder and the model, so that
        ``Searcher.open_index`` embeds and projects text queries the same way). Needs
        ``id_column``.
    id_column : str or None
        Unique int64 row ids: the shards' answer ids.
    threads : int
        Threads of the Rust core per batch (0: its default, one per core).
    """

    def __init__(
        self,
        model: PathLike | None,
        encoder: PathLike | None = None,
        *,
        column: str = "embedding",
        text_column: str = "text",
        output_column: str = "projection",
        index_dir: PathLike | None = None,
        id_column: str | None = None,
        threads: int = 0,
    ) -> None:
        if model is None and encoder is None:
            raise ValueError("give a model file, a static encoder, or both")
        if index_dir is not None and id_column is None:
            raise ValueError("index shards need an id column (the answers' ids)")
        self.model_path = None if model is None else str(Path(model).resolve())
        self.encoder_path = None if encoder is None else str(Path(encoder).resolve())
        self.model = None if model is None else projroute.load(model)
        self.encoder = None if encoder is None else projroute.StaticEncoder.load(encoder)
        self.column, self.text_column, self.output_column = column, text_column, output_column
        self.index_dir, self.id_column, self.threads = index_dir, id_column, threads

    def vectors(self, batch: pa.Table) -> np.ndarray:
        """The batch's output vectors (n, D_out) float32: read or encoded, then projected."""
        if self.encoder is not None:
            X = self.encoder.encode(column(batch, self.text_column).to_pylist())
        else:
            X = as_matrix(column(batch, self.column), self.column)
        return X if self.model is None else self.model.project(X)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """``batch`` with its input vector column replaced by ``output_column``."""
        if self.threads and projroute.get_num_threads() != self.threads:
            projroute.set_num_threads(self.threads)  # on the thread that runs the batches
        P = self.vectors(batch)
        if self.index_dir is not None:
            self.write_shard(batch, P)
        keep = batch.drop_columns([c for c in (self.column, self.output_column) if c in batch.column_names])
        return keep.append_column(self.output_column, as_column(P))

    def write_shard(self, batch: pa.Table, P: np.ndarray) -> None:
        """Save ``P`` (n, D) with the batch's ids and texts as one answer index shard."""
        assert self.id_column is not None and self.index_dir is not None
        ids = column(batch, self.id_column).to_pylist()
        if not ids:
            return
        texts = (
            column(batch, self.text_column).to_pylist() if self.text_column in batch.column_names else [""] * len(ids)
        )
        model = self.model_path if self.encoder_path is not None else None
        path = Path(self.index_dir) / f"shard-{ids[0]:012d}.index"
        _core.save_index(os.fspath(path), P, texts, ids, self.encoder_path, model, None)


def column(batch: pa.Table, name: str) -> pa.ChunkedArray:
    """Column ``name`` of ``batch``; ValueError naming the columns there are."""
    if name not in batch.column_names:
        raise ValueError(f"no column {name!r} in the input (columns: {', '.join(batch.column_names)})")
    return batch.column(name)


def absolute(path: PathLike) -> str:
    """``path`` made absolute when it is a local path; a URI (``s3://...``) as given."""
    return os.fspath(path) if "://" in os.fspath(path) else str(Path(path).resolve())


def input_format(paths: Sequence[PathLike]) -> str:
    """Format of the inputs, "parquet" or "json" (JSON lines), from the files' suffixes (a
    local folder: the files in it)."""
    suffixes = set()
    for raw in (os.fspath(p) for p in paths):
        p = Path(raw)
        if "://" not in raw and not p.exists():
            raise FileNotFoundError(f"no such file or directory: {p}")
        files = [f for f in p.iterdir() if f.is_file() and not f.name.startswith((".", "_"))] if p.is_dir() else [p]
        suffixes |= {f.suffix for f in files}
    kinds = {FORMATS.get(s) for s in suffixes}
    if len(kinds) != 1 or None in kinds:
        raise ValueError(f"expected .parquet or .jsonl inputs of one kind, got suffixes {sorted(suffixes)}")
    return kinds.pop()  # type: ignore[return-value]


def project_table(table: pa.Table, model: PathLike | None, **options: Any) -> pa.Table:
    """:class:`BatchProjector` on a whole in-memory table in one process (no Ray)."""
    return BatchProjector(model, **options)(table)


def project(
    inputs: PathLike | Sequence[PathLike],
    output: PathLike,
    model: PathLike | None,
    *,
    encoder: PathLike | None = None,
    column: str = "embedding",
    text_column: str = "text",
    output_column: str | None = None,
    index_dir: PathLike | None = None,
    id_column: str | None = None,
    batch_size: int = BATCH_SIZE,
    actors: int = 1,
    cpus_per_actor: float = 1.0,
    threads: int = 0,
) -> dict[str, Any]:
    """Project Parquet or JSONL files on Ray Data and write Parquet files into ``output``.

    Parameters
    ----------
    inputs : path-like or sequence of them
        ``.parquet`` or ``.jsonl`` files, or folders of them; rows hold ``column`` (a list
        of D_in floats) or, with ``encoder``, ``text_column`` (str).
    output : path-like
        Folder of Parquet files: the input columns, with ``column`` replaced by
        ``output_column`` (default "projection", or "embedding" without a model), a
        fixed-size list of D_out float32.
    model, encoder, index_dir, id_column, threads
        As in :class:`BatchProjector`.
    batch_size : int
        Rows per actor call (and per index shard).
    actors, cpus_per_actor : int, float
        Size of the actor pool and the CPUs Ray reserves for each actor (leave CPUs for
        Ray's read and write tasks).

    Uses the running Ray instance, or starts one with ``ray.init()`` (which joins the
    cluster at ``RAY_ADDRESS`` when that is set). Returns the inputs, format, output,
    rows written, output columns and index folder. Raises ValueError (bad columns or shapes, also from the workers),
    FileNotFoundError, or projroute's errors.
    """
    # Absolute paths: Ray's workers do not run in the caller's folder.
    paths = [absolute(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    fmt = input_format(paths)
    model = None if model is None else absolute(model)
    encoder = None if encoder is None else absolute(encoder)
    output = absolute(output)
    output_column = output_column or ("projection" if model is not None else "embedding")
    options: dict[str, Any] = {
        "column": column,
        "text_column": text_column,
        "output_column": output_column,
        "index_dir": None if index_dir is None else absolute(index_dir),
        "id_column": id_column,
        "threads": threads,
    }
    BatchProjector(model, encoder, **options)  # checks the files and options here, not in a worker
    if index_dir is not None:
        Path(index_dir).mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    error = None
    try:
        read = ray.data.read_parquet if fmt == "parquet" else ray.data.read_json
        read(paths).map_batches(
            BatchProjector,
            fn_constructor_args=(model, encoder),
            fn_constructor_kwargs=options,
            batch_size=batch_size,
            batch_format="pyarrow",
            zero_copy_batch=True,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cpus_per_actor,
        ).write_parquet(output)
    except ray.exceptions.RayTaskError as e:
        error = worker_error(e)
    if error is not None:
        raise error  # outside the except block: Ray's exception (and its job) is not kept alive
    written = ray.data.read_parquet(output)
    schema = written.schema()
    return {
        "inputs": paths,
        "format": fmt,
        "output": output,
        "rows": written.count(),
        "columns": list(schema.names) if schema is not None else [],
        "output_column": output_column,
        "index_dir": None if index_dir is None else os.fspath(index_dir),
    }


#: Errors a worker raises for bad input, as Python prints their names in a traceback.
USER_ERRORS: dict[str, type[Exception]] = {
    "ValueError": ValueError,
    "TypeError": TypeError,
    "projroute._core.ProjrouteError": projroute.ProjrouteError,
    "projroute._core.ModelFormatError": projroute.ModelFormatError,
}


def worker_error(e: ray.exceptions.RayTaskError) -> Exception:
    """The user error (ValueError, TypeError, projroute's) that a worker raised, rebuilt
    from the traceback text that Ray passes on; else a RuntimeError with Ray's message.
    (Ray's option to re-raise the original exception leaves the failed job's actor
    holding its CPUs, which stalls the next job on a small instance.)"""
    for line in reversed(str(e).splitlines()):
        name, sep, message = line.strip().partition(": ")
        if sep and name in USER_ERRORS:
            return USER_ERRORS[name](message)
    return RuntimeError(str(e))
