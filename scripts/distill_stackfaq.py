"""Distil a federated StackFAQ teacher into a ProjectionTransformer and measure fidelity.

The teacher is a ``FederatedProjection()`` fitted on the StackFAQ training pairs; the
student trains on the distinct training questions (labelled by the teacher, plus
augmentation) and is evaluated on the held-out paraphrases against all answers.
Prints one JSON object: per run, student size, compression, held-out cosine and
top-10 overlap to the teacher, and Hit@1/MRR of teacher and student. Options left
out take the defaults of ``projroute.distill.distill``.

    python scripts/distill_stackfaq.py                   # distill() defaults
    python scripts/distill_stackfaq.py --grid            # augmentation x importance
    python scripts/distill_stackfaq.py --epochs 20 --out student.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import projroute as pr
from projroute import datasets
from projroute.distill import distill, fidelity
from projroute.embed import Encoder

ARCH = ("d_model", "n_heads", "n_layers", "num_keys", "ffn_dim")
TRAIN = (
    "epochs",
    "lr",
    "batch_size",
    "augment_ratio",
    "sphere_sigma",
    "routing_weight",
    "val_fraction",
    "patience",
    "seed",
)


def teacher_model(Q: np.ndarray, A: np.ndarray, cache: Path | None) -> Any:
    """The federated teacher: loaded from ``cache`` if that file exists, else fitted
    (and saved there)."""
    if cache is not None and cache.is_file():
        return pr.load(cache)
    est = pr.FederatedProjection(progress=False).fit(Q, A)
    if cache is not None:
        est.save(cache)
    return est


def run(
    args: argparse.Namespace,
    teacher: Any,
    Q: np.ndarray,
    X: np.ndarray,
    C: np.ndarray,
    gold: list[list[int]],
    augment: tuple[str, ...],
    importance: str,
    tag: str,
) -> dict[str, Any]:
    """One distillation and its fidelity on the held-out paraphrases."""
    options = {k: getattr(args, k) for k in TRAIN if getattr(args, k) is not None}
    student = {k: getattr(args, k) for k in ARCH if getattr(args, k) is not None}
    plot = None if args.plot_dir is None else Path(args.plot_dir) / f"{tag}.png"
    result = distill(
        teacher,
        Q,
        student=student,
        augment=augment,
        importance=importance,
        progress=not args.quiet,
        plot=plot,
        **options,
    )
    if args.out is not None:
        result.save(Path(args.out).with_suffix(f".{tag}.safetensors") if args.grid else args.out)
    fid = fidelity(teacher, result.student, X, C, gold, k=10)
    return {
        "run": tag,
        "augment": list(augment),
        "importance": importance,
        "student": result.student.config(),
        "student_parameters": result.n_parameters,
        "teacher_parameters": result.teacher_parameters,
        "compression": round(result.compression, 2),
        "settings": result.settings,
        "epochs_run": len(result.history["train_loss"]),
        "best_epoch": result.best_epoch,
        "best_val_cosine": result.best_val_cosine,
        "train_seconds": round(result.seconds, 1),
        "heldout_cosine": round(fid["cosine"], 5),
        "heldout_mse": fid["mse"],
        "overlap@10": round(fid["overlap@10"], 4),
        "teacher_hit@1": round(fid["teacher"]["hit@1"], 4),
        "student_hit@1": round(fid["student"]["hit@1"], 4),
        "teacher_mrr": round(fid["teacher"]["mrr"], 4),
        "student_mrr": round(fid["student"]["mrr"], 4),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="StackFAQ file or folder (default: the shared data folder)")
    p.add_argument("--teacher-cache", type=Path, help="save the fitted teacher here, or load it if the file exists")
    for name in ARCH:
        p.add_argument("--" + name.replace("_", "-"), type=int, help="student architecture")
    for name, kind in [
        ("epochs", int),
        ("lr", float),
        ("batch_size", int),
        ("sphere_sigma", float),
        ("routing_weight", float),
        ("val_fraction", float),
        ("patience", int),
        ("seed", int),
    ]:
        p.add_argument("--" + name.replace("_", "-"), type=kind)
    p.add_argument("--augment-ratio", type=lambda s: s if s == "auto" else float(s))
    p.add_argument("--augment", default="sphere,mix", help='comma list of sphere, mix; "none" for none')
    p.add_argument("--importance", choices=["uniform", "entropy"], default="uniform")
    p.add_argument(
        "--grid", action="store_true", help="run augmentation on/off x uniform/entropy importance instead of one run"
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", help="save the student as this .safetensors file (--grid: one per run)")
    p.add_argument("--plot-dir", help="save a loss curve per run in this folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train, test = datasets.stackfaq(args.data)
    enc = Encoder()
    embed = lambda texts: enc.encode(texts, progress=not args.quiet)  # noqa: E731
    Q_pairs, A_pairs = embed(train.questions), embed(train.answers)
    Q = embed(list(dict.fromkeys(train.questions)))
    X, C = embed(test.queries), embed(test.corpus)
    loaded = args.teacher_cache is not None and args.teacher_cache.is_file()
    started = time.perf_counter()
    teacher = teacher_model(Q_pairs, A_pairs, args.teacher_cache)
    fit_seconds = time.perf_counter() - started

    augment = () if args.augment == "none" else tuple(a for a in args.augment.split(",") if a)
    augments = [augment, ()] if augment else [()]
    variants = [(a, i) for a in augments for i in ("uniform", "entropy")] if args.grid else [(augment, args.importance)]
    runs = [run(args, teacher, Q, X, C, test.gold, a, i, f"{'aug' if a else 'noaug'}-{i}") for a, i in variants]
    print(
        json.dumps(
            {
                "data": "stackfaq",
                "train_pairs": len(train),
                "train_questions": len(Q),
                "heldout_queries": len(X),
                "corpus": len(C),
                "teacher": {"kind": "federated", "loaded_from_cache": loaded, "seconds": round(fit_seconds, 1)},
                "threads": torch.get_num_threads(),
                "runs": runs,
            },
            indent=2,
            default=str,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
