"""``projroute distill``: distil a teacher file on a data set (into one student, or into
domain students mixed by a router) and report, on held-out queries, how close the
student is and what it costs (both served by the Rust core)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

import projroute
from projroute import datasets
from projroute.distill.ensemble import EnsembleResult, distill_ensemble, domain_plot
from projroute.distill.evaluate import fidelity
from projroute.distill.train import DistillResult, distill
from projroute.embed import Encoder
from projroute.metrics import retrieval_metrics


def latency_ms(model: Any, X: np.ndarray, batch: int, rounds: int) -> float:
    """Median wall time (ms) of ``model.project`` on ``batch`` rows of ``X`` (n, D)."""
    x = np.ascontiguousarray(X[np.arange(batch) % len(X)])
    model.project(x)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        model.project(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def distill_report(
    teacher_path: str,
    data: str,
    output: str,
    *,
    epochs: int | None = None,
    augment: bool = True,
    importance: str = "uniform",
    domains: int | None = None,
    plot: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Distil the model file ``teacher_path`` on the questions of ``data`` into
    ``output``: one student, or with ``domains`` that many domain students mixed by a
    router (:func:`~projroute.distill.distill_ensemble`); evaluate on the held-out
    queries of ``data`` (never trained on)."""
    teacher = projroute.load(teacher_path)
    if teacher.kind in ("tree", "hierarchical"):
        raise ValueError(f"{teacher_path}: a {teacher.kind} teacher needs a key per query; distil it from Python")
    if domains is not None and teacher.kind not in ("federated", "lda"):
        raise ValueError(f"{teacher_path}: a {teacher.kind} teacher; --domains takes a federated or lda teacher")
    folder = Path(output).absolute().parent
    if not folder.is_dir():
        raise FileNotFoundError(f"no such directory for the student file: {folder}")
    pairs, held = datasets.load_pairs(data), datasets.load_eval(data)
    encoder = Encoder()
    Q = encoder.encode(list(dict.fromkeys(pairs.questions)), progress=progress)
    X = encoder.encode(held.queries, progress=progress)
    C = encoder.encode(held.corpus, progress=progress)
    options: dict[str, Any] = {"importance": importance, "seed": seed, "progress": progress, "plot": plot}
    if epochs is not None:
        options["epochs"] = epochs
    if not augment:
        options["augment"] = ()
    result: DistillResult | EnsembleResult
    training: dict[str, Any]
    if domains is None:
        single = distill(teacher, Q, **options)
        training = {"epochs": len(single.history["train_loss"]), "best_epoch": single.best_epoch}
        result = single
    else:
        ens = distill_ensemble(teacher, Q, n_domains=domains, **options)
        training = {
            "domains": ens.ensemble.n_domains,
            "domain_queries": ens.domain_queries,
            "val_cosine": ens.val_cosine,
        }
        if plot is not None:
            training["domain_plots"] = [str(domain_plot(plot, d)) for d in range(ens.ensemble.n_domains)]
        result = ens
    result.save(output, teacher_file=Path(teacher_path).name, data=data)
    student = projroute.load(output)
    fid = fidelity(teacher, student, X, C, held.gold, k=10)
    return {
        "teacher": {"path": teacher_path, "kind": teacher.kind, "parameters": result.teacher_parameters},
        "student": {"path": output, "kind": student.kind, "parameters": result.n_parameters},
        "compression": result.compression,
        "data": data,
        "train_queries": len(Q),
        "held_out_queries": len(X),
        "corpus": len(C),
        "cosine": fid["cosine"],
        "mse": fid["mse"],
        "overlap@10": fid["overlap@10"],
        "retrieval": {"raw": retrieval_metrics(X, C, held.gold), "teacher": fid["teacher"], "student": fid["student"]},
        "latency_ms": {
            name: {"b1": latency_ms(m, X, 1, 200), "b1024": latency_ms(m, X, 1024, 10)}
            for name, m in (("teacher", teacher), ("student", student))
        },
        "training": {**training, "seconds": result.seconds, "plot": plot},
    }


def show(r: dict[str, Any]) -> str:
    """The report as text."""
    ret, lat = r["retrieval"], r["latency_ms"]
    rows = [
        ("raw cosine", ret["raw"], None),
        (f"teacher ({r['teacher']['kind']})", ret["teacher"], lat["teacher"]),
        (f"student ({r['student']['kind']})", ret["student"], lat["student"]),
    ]
    lines = [
        f"{r['data']}: trained on {r['train_queries']} questions; evaluated on {r['held_out_queries']} "
        f"held-out queries against {r['corpus']} answers",
        f"parameters: teacher {r['teacher']['parameters']:,}, student {r['student']['parameters']:,} "
        f"(compression {r['compression']:.1f}x)",
        f"student vs teacher: mean cosine {r['cosine']:.4f}, MSE {r['mse']:.2e}, top-10 overlap {r['overlap@10']:.3f}",
        "",
        f"{'model':30s} {'hit@1':>6s} {'mrr':>6s} {'ms @B=1':>9s} {'ms @B=1024':>11s}",
    ]
    for name, m, t in rows:
        timing = f"{t['b1']:9.3f} {t['b1024']:11.2f}" if t else f"{'-':>9s} {'-':>11s}"
        lines.append(f"{name:30s} {m['hit@1']:6.3f} {m['mrr']:6.3f} {timing}")
    curves = r["training"].get("domain_plots", [r["training"]["plot"]] if r["training"]["plot"] else [])
    saved = f"student saved to {r['student']['path']}"
    lines += ["", saved + (f"; loss curves in {', '.join(curves)}" if curves else "")]
    return "\n".join(lines)
