"""Type stub of the Rust extension module ``projroute._core``."""

import os
from collections.abc import Sequence
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
    transformer, transformer_ensemble)."""

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

class FlatIndex:
    """Exact cosine search over the rows of an embedding matrix."""

    def __init__(self, embeddings: npt.NDArray[np.floating[Any]]) -> None: ...
    def search(
        self, x: npt.NDArray[np.floating[Any]], k: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
    @property
    def dim(self) -> int: ...
    def __len__(self) -> int: ...
