"""Held-out retrieval evaluation and its table, shared by ``projroute eval`` and ``projroute demo``."""

from __future__ import annotations

from typing import Any

import numpy as np

from projroute.datasets import EvalSet
from projroute.embed import Encoder
from projroute.metrics import retrieval_metrics

METRICS = ("hit@1", "hit@5", "hit@10", "mrr")
DELTAS = ("hit@1", "mrr")
RAW = "raw cosine"


def evaluate(models: list[tuple[str, Any]], ev: EvalSet, encoder: Encoder) -> list[dict[str, Any]]:
    """Hit@1/5/10 and MRR of ``ev``'s queries against its corpus: raw cosine first, then
    each ``(label, model)`` in order; model rows also hold ``delta_hit@1`` and
    ``delta_mrr`` against raw cosine (None on the raw row).

    ``model.project`` maps the query embeddings (n, D) to (n, D) (a fitted estimator
    or a loaded model). Queries and corpus are embedded in one ``encoder.encode`` call.
    """
    if not len(ev) or not ev.corpus:
        raise ValueError("the evaluation set has no queries or no answers")
    X = encoder.encode(ev.queries + ev.corpus)
    queries, corpus = X[: len(ev)], X[len(ev) :]

    def row(label: str, P: np.ndarray) -> dict[str, Any]:
        m = retrieval_metrics(P, corpus, ev.gold)
        return {"model": label, **{k: m[k] for k in METRICS}}

    raw = row(RAW, queries)
    rows = [{**raw, **{f"delta_{k}": None for k in DELTAS}}]
    for label, model in models:
        r = row(label, model.project(queries))
        rows.append({**r, **{f"delta_{k}": r[k] - raw[k] for k in DELTAS}})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows from :func:`evaluate` as aligned text columns, one line per row after a header."""
    width = max(len("model"), *(len(r["model"]) for r in rows))
    header = ["model".ljust(width), *METRICS, *(f"Δ{k}" for k in DELTAS)]

    def cells(r: dict[str, Any]) -> list[str]:
        deltas = [r[f"delta_{k}"] for k in DELTAS]
        return [
            r["model"].ljust(width),
            *(f"{r[k]:.3f}" for k in METRICS),
            *("-" if d is None else f"{d:+.3f}" for d in deltas),
        ]

    return "\n".join(c[0] + "".join(f"{v:>8}" for v in c[1:]) for c in [header, *map(cells, rows)])
