"""Distil a federated StackFAQ teacher into a ProjectionTransformer and measure fidelity.

The teacher is a ``FederatedProjection`` fitted on the StackFAQ training pairs; the
student trains on the distinct training questions (labelled by the teacher, plus
augmentation) and is evaluated on the held-out paraphrases against all answers.
Prints one JSON object: per run, student size, compression, held-out cosine and
top-10 overlap to the teacher, and Hit@1/MRR of teacher and student.

    python scripts/distill_stackfaq.py                       # default settings
    python scripts/distill_stackfaq.py --grid                # augmentation x importance
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

import projroute as pr
from projroute import datasets
from projroute.distill import distill, fidelity
from projroute.embed import Encoder


def teacher_model(Q: np.ndarray, A: np.ndarray, cache: Path | None) -> Any:
    """The fitted federated teacher: loaded from ``cache`` if it exists, else fitted (and saved there)."""
    if cache is not None and cache.is_file():
        return pr.load(cache)
    est = pr.FederatedProjection(progress=False).fit(Q, A)
    if cache is not None:
        est.save(cache)
    return est


def run(args: argparse.Namespace, teacher: Any, Q: np.ndarray, X: np.ndarray, C: np.ndarray,
        gold: list[list[int]], augment: tuple[str, ...], importance: str, tag: str) -> dict[str, Any]:
    """One distillation with the given augmentation and importance, and its fidelity figures."""
    student = {"d_model": args.d_model, "n_heads": args.n_heads, "n_layers": args.n_layers,
               "num_keys": args.num_keys, "ffn_dim": args.ffn_dim}
    plot = None if args.plot_dir is None else Path(args.plot_dir) / f"{tag}.png"
    result = distill(teacher, Q, student=student, epochs=args.epochs, lr=args.lr,
                     batch_size=args.batch_size, augment=augment, augment_ratio=args.augment_ratio,
                     sphere_sigma=args.sphere_sigma, importance=importance,
                     routing_weight=args.routing_weight, seed=args.seed, progress=not args.quiet,
                     plot=plot)
    if args.out is not None:
        result.save(Path(args.out) if not args.grid else Path(args.out).with_suffix(f".{tag}.safetensors"))
    fid = fidelity(teacher, result.student, X, C, gold, k=10)
    return {
        "run": tag,
        "augment": list(augment),
        "importance": importance,
        "student_parameters": result.n_parameters,
        "teacher_parameters": result.teacher_parameters,
        "compression": round(result.compression, 2),
        "epochs_run": len(result.history["train_loss"]),
        "best_epoch": result.best_epoch,
        "best_val_cosine": round(result.best_val_cosine, 5),
        "train_seconds": round(result.seconds, 1),
        "heldout_cosine": round(fid["cosine"], 5),
        "heldout_mse": fid["mse"],
        "overlap@10": round(fid["overlap@10"], 4),
        "teacher_hit@1": round(fid["teacher"]["hit@1"], 4),
        "student_hit@1": round(fid["student"]["hit@1"], 4),
        "teacher_mrr": round(fid["teacher"]["mrr"], 4),
        "student_mrr": round(fid["student"]["mrr"], 4),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="StackFAQ file or folder (default: the shared data folder)")
    p.add_argument("--teacher-cache", type=Path,
                   help="save the fitted teacher here, or load it if the file exists")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--num-keys", type=int, default=64)
    p.add_argument("--ffn-dim", type=int, default=512)
    p.add_argument("--augment", default="sphere,mix", help='comma list of sphere, mix; "none" for none')
    p.add_argument("--augment-ratio", type=float, default=32.0)
    p.add_argument("--sphere-sigma", type=float, default=0.5)
    p.add_argument("--importance", choices=["uniform", "entropy"], default="uniform")
    p.add_argument("--routing-weight", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", action="store_true",
                   help="run augmentation on/off x uniform/entropy instead of one run")
    p.add_argument("--out", help="save the student(s) as .safetensors here")
    p.add_argument("--plot-dir", help="save a loss curve per run in this folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)

    train, test = datasets.stackfaq(args.data)
    enc = Encoder()
    embed = lambda texts: enc.encode(texts, progress=not args.quiet)  # noqa: E731
    Q_pairs, A_pairs = embed(train.questions), embed(train.answers)
    Q = embed(list(dict.fromkeys(train.questions)))
    X, C = embed(test.queries), embed(test.corpus)
    started = time.perf_counter()
    teacher = teacher_model(Q_pairs, A_pairs, args.teacher_cache)
    fit_seconds = time.perf_counter() - started

    augment = () if args.augment == "none" else tuple(a for a in args.augment.split(",") if a)
    if args.grid:
        variants = [(a, imp) for a in (augment, ()) for imp in ("uniform", "entropy")]
    else:
        variants = [(augment, args.importance)]
    runs = [run(args, teacher, Q, X, C, test.gold, a, imp, f"{'aug' if a else 'noaug'}-{imp}")
            for a, imp in variants]
    summary = {
        "data": "stackfaq",
        "train_pairs": len(train),
        "train_questions": len(Q),
        "heldout_queries": len(X),
        "corpus": len(C),
        "teacher": {"kind": "federated", "fit_seconds": round(fit_seconds, 1)},
        "settings": {k: v for k, v in vars(args).items() if k not in ("quiet",)},
        "runs": runs,
    }
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
