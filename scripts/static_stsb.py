"""STS-B test Spearman of MiniLM and of the static models distilled from it (issue 10, part 1).

Runs, in order (each folder is reused when it already exists, unless --fresh):
  MiniLM itself (all-MiniLM-L6-v2, the teacher);
  the vocabulary model at PCA 256 and without PCA (384-d);
  the corpus model (tokenlearn) at PCA 256 on each --fractions share of the corpus,
  initialised from the vocabulary model;
  the corpus model without PCA (384-d, MiniLM's own space) on the largest share.

    PROJROUTE_DATA=../shared/data .venv/bin/python scripts/static_stsb.py --out /tmp/projroute-static

Teacher embeddings of the corpus are cached by projroute.embed.Encoder ($PROJROUTE_CACHE,
default ~/.cache/projroute), so later runs only train. Prints the CPU and a table; writes
<out>/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from projroute import kernel_info

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def embed_until(deadline: str, chunk: int = 10_000) -> float:
    """Embed the default corpus in distill_corpus's order (seed 0) until ``deadline`` (UTC HH:MM);
    returns the share embedded (whole chunks)."""
    import datetime as dt

    import numpy as np

    from projroute import static
    from projroute.embed import Encoder

    now = dt.datetime.now(dt.timezone.utc)
    hh, mm = map(int, deadline.split(":"))
    end = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    sentences = static.read_corpus([static.default_corpus()])
    order = np.random.default_rng(0).permutation(len(sentences))
    encoder, done = Encoder(), 0
    for s in range(0, len(sentences), chunk):
        if dt.datetime.now(dt.timezone.utc) >= end:
            break
        encoder.encode([sentences[i] for i in order[s : s + chunk]])
        done = min(s + chunk, len(sentences))
        print(f"embedded {done} of {len(sentences)} corpus sentences", flush=True)
    return done / len(sentences)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/projroute-static", help="folder for the models and results.json")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3, 1.0], help="corpus shares")
    ap.add_argument(
        "--no-pca-fraction",
        type=float,
        default=None,
        help="share for the 384-d corpus model (default: the largest of --fractions; 0 skips it)",
    )
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--head", choices=["fold", "drop"], default="fold")
    ap.add_argument("--vocab-size", type=int, default=0, help="corpus words added to the vocabulary")
    ap.add_argument(
        "--deadline",
        metavar="HH:MM",
        help="first embed the corpus (in its training order) until this UTC time, then use the share embedded "
        "as the largest fraction (for slow machines: the teacher embedding is the long part)",
    )
    ap.add_argument("--skip-minilm", action="store_true", help="do not score MiniLM itself")
    ap.add_argument("--fresh", action="store_true", help="re-distil even when a model folder exists")
    args = ap.parse_args()
    cpu = kernel_info()["cpu_model"]

    import torch

    from projroute import static
    from projroute.embed import Encoder

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu} ({os.cpu_count()} logical cores visible, torch threads {torch.get_num_threads()})")
    print(f"data: {static.default_corpus().parent.parent}", flush=True)
    results: list[dict] = []
    results_path = out / "results.json"

    def record(name: str, folder: Path | None, score: float, seconds: float, **extra: object) -> None:
        results.append(
            {
                "model": name,
                "folder": None if folder is None else str(folder),
                "stsb_test": score,
                "seconds": round(seconds, 1),
                **extra,
            }
        )
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{name:38s} STS-B test Spearman {score:.4f}  ({seconds:.0f} s)", flush=True)

    if not args.skip_minilm:
        t = time.perf_counter()
        record("all-MiniLM-L6-v2 (teacher)", None, static.stsb_spearman(Encoder()), time.perf_counter() - t)

    def vocab(pca: int | None) -> Path:
        folder = out / f"vocab-{pca or 384}"
        t = time.perf_counter()
        if args.fresh or not (folder / "model.safetensors").is_file():
            static.distill_vocab(folder, pca_dims=pca)
        record(
            f"vocab, PCA {pca}" if pca else "vocab, no PCA (384)",
            folder,
            static.stsb_spearman(static.load(folder)),
            time.perf_counter() - t,
        )
        return folder

    init = {256: vocab(256), None: vocab(None)}

    def corpus(pca: int | None, frac: float) -> None:
        folder = out / f"corpus-{pca or 384}-{args.head}-v{args.vocab_size}-{frac:g}"
        t = time.perf_counter()
        if args.fresh or not (folder / "model.safetensors").is_file():
            static.distill_corpus(
                folder,
                fraction=frac,
                pca_dims=pca,
                head=args.head,
                epochs=args.epochs,
                patience=args.patience,
                vocab_size=args.vocab_size,
                init=None if args.vocab_size else init[pca],
            )
        info = json.loads((folder / "distill.json").read_text())
        name = f"corpus {frac:.0%}, " + (f"PCA {pca}" if pca else "no PCA (384)")
        record(
            name,
            folder,
            static.stsb_spearman(static.load(folder)),
            time.perf_counter() - t,
            sentences=info["sentences"],
            epochs=info["epochs"],
            best_epoch=info["best_epoch"],
            val_loss=info["val_loss"],
            train_seconds=info["seconds"],
        )

    fractions = sorted(args.fractions)
    if args.deadline:
        fractions = [f for f in fractions if f < 1.0] + [embed_until(args.deadline)]
    for frac in fractions:
        corpus(256, frac)
    no_pca = max(fractions) if args.no_pca_fraction is None else args.no_pca_fraction
    if no_pca:
        corpus(None, no_pca)
    print(f"\nwrote {results_path}")


if __name__ == "__main__":
    main()
