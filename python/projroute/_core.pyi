"""Type stub of the Rust extension module ``projroute._core``."""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str
FORMAT_VERSION: int

class ProjrouteError(Exception):
    """Base class of projroute's own errors."""

class ModelFormatError(ProjrouteError):
    """A model file is foreign, truncated, inconsistent, or from a newer format version."""

def save_file(
    tensors: dict[str, npt.NDArray[Any]],
    config: str,
    path: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a model file from tensors, a JSON config and metadata; no model is built."""

def read_config(path: str | os.PathLike[str]) -> str:
    """The JSON config string of a model file, reading only its header."""

class Projector:
    """A loaded projroute model of any kind (global, federated, lda, tree, hierarchical,
    transformer, transformer_ensemble, prle)."""

    @staticmethod
    def load(path: str | os.PathLike[str]) -> Projector: ...
    @staticmethod
    def from_tensors(
        tensors: dict[str, npt.NDArray[Any]], config: str, metadata: dict[str, str] | None = None
    ) -> Projector: ...
    def save(self, path: str | os.PathLike[str]) -> None: ...
    def project(
        self, x: npt.NDArray[np.floating[Any]], keys: Sequence[str] | None = None
    ) -> npt.NDArray[np.float32]: ...
    def resolve(self, keys: Sequence[str]) -> list[str]: ...
    def route(self, x: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32] | None: ...
    def tensors(self) -> dict[str, npt.NDArray[np.float32]]: ...
    @property
    def kind(self) -> str: ...
    @property
    def dim_in(self) -> int: ...
    @property
    def dim_out(self) -> int: ...
    @property
    def n_clusters(self) -> int | None: ...
    @property
    def config(self) -> str: ...
    @property
    def metadata(self) -> dict[str, str]: ...
    @property
    def index(self) -> npt.NDArray[np.float32] | None: ...

class FlatIndex:
    """Exact cosine search over the rows of an embedding matrix."""

    def __init__(self, embeddings: npt.NDArray[np.floating[Any]]) -> None: ...
    def search(
        self, x: npt.NDArray[np.floating[Any]], k: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
    @property
    def dim(self) -> int: ...
    def __len__(self) -> int: ...

class StaticEncoder:
    """A static (Model2Vec) text encoder with the semantics of ``model2vec.StaticModel.encode``."""

    @staticmethod
    def load(path: str | os.PathLike[str]) -> StaticEncoder: ...
    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]: ...
    @property
    def dim(self) -> int: ...
    @property
    def normalize(self) -> bool: ...
    @property
    def max_length(self) -> int | None: ...

class Searcher:
    """Text search: a static encoder, an optional projection, cosine top-k over an index file
    (exact, or approximate when the file holds an HNSW graph)."""

    @staticmethod
    def open(
        encoder: str | os.PathLike[str], model: str | os.PathLike[str] | None, index: str | os.PathLike[str]
    ) -> Searcher: ...
    @staticmethod
    def open_index(
        index: str | os.PathLike[str],
        *,
        encoder: str | os.PathLike[str] | None = None,
        model: str | os.PathLike[str] | None = None,
    ) -> Searcher: ...
    def search(
        self, texts: Sequence[str], k: int = 10, *, exact: bool = False, ef: int | None = None
    ) -> list[list[tuple[int, float, str]]]: ...
    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...
    def route(self, texts: Sequence[str]) -> npt.NDArray[np.float32] | None: ...
    @property
    def dim(self) -> int: ...
    @property
    def kind(self) -> str | None: ...
    @property
    def ann(self) -> dict[str, str | int] | None: ...
    def __len__(self) -> int: ...

def save_index(
    path: str | os.PathLike[str],
    embeddings: npt.NDArray[np.floating[Any]],
    texts: Sequence[str],
    ids: Sequence[int] | None = None,
    encoder: str | None = None,
    model: str | None = None,
    ann: Mapping[str, int] | None = None,
) -> None:
    """Write an answer index file from vectors, texts and ids."""

def build_index(
    path: str | os.PathLike[str],
    encoder: str | os.PathLike[str],
    texts: Sequence[str],
    ids: Sequence[int] | None = None,
    model: str | None = None,
    ann: Mapping[str, int] | None = None,
) -> int:
    """Embed texts with a static model folder and write them as an answer index file."""

def read_index_header(path: str | os.PathLike[str]) -> str:
    """The JSON header of an index file, reading only the file's header."""

def file_kind(path: str | os.PathLike[str]) -> str:
    """Which projroute file ``path`` holds, by its header: ``"model"`` or ``"index"``."""

def set_num_threads(n: int) -> None:
    """Use ``n`` threads for each call into the core from now on, on each calling
    Python thread (its own pool of ``n``); ``n = 0`` restores the default:
    ``RAYON_NUM_THREADS``, or one thread per core, shared by all callers."""

def get_num_threads() -> int:
    """Threads a call into the core uses (see ``set_num_threads``)."""

def kernel_info() -> dict[str, Any]:
    """``{"cpu_model": str, "kernel": str, "features": [str, ...]}``: the CPU's model, the
    path the packed GEMM kernel takes on it (``"avx2+fma+f16c"`` or ``"portable"``) and
    the SIMD features it has."""

def serve(argv: Sequence[str]) -> int:
    """Run ``projroute serve`` with the command line ``argv`` (the first item names the
    program): serves a model or index file over HTTP until SIGINT or SIGTERM, with the
    GIL released, and returns the exit status (0 after a clean shutdown or ``--help``,
    2 for a usage or start-up error, 1 if serving failed)."""
