"""Held-out retrieval of the federated routing modes on a real data set, beside raw
cosine: centroid routing, per-question routing (with and without a second softmax),
and prior-weighted softmax (cluster sizes, routing entropy).

    .venv/bin/python scripts/routing_modes.py [stackfaq|trecqa]

Fits on the data set's training pairs (shrinkage by cross-validation, as `projroute
fit` does) and scores Hit@1 / MRR on its held-out queries against its answer corpus.
"""

from __future__ import annotations

import sys

import projroute as pr
from projroute import datasets
from projroute.cli import embed_pairs
from projroute.embed import Encoder
from projroute.metrics import retrieval_metrics

VARIANTS = {
    "centroids": {},
    "centroids, prior=sizes": {"prior": "sizes"},
    "centroids, prior=entropy": {"prior": "entropy"},
    "questions": {"routing": "questions"},
    "questions, T2=0.05": {"routing": "questions", "cluster_temperature": 0.05},
    "questions, prior=entropy": {"routing": "questions", "prior": "entropy"},
}


def main(name: str) -> None:
    encoder = Encoder()
    pairs, ev = datasets.load_pairs(name), datasets.load_eval(name)
    Q, A, _, _ = embed_pairs(pairs, encoder)
    E = encoder.encode(ev.queries + ev.corpus)
    X, C = E[: len(ev)], E[len(ev) :]
    m = retrieval_metrics(X, C, ev.gold)
    print(f"{name}: {len(pairs)} pairs, {len(ev)} held-out queries\n")
    print(f"{'model':36s} {'hit@1':>6s} {'mrr':>6s}  shrinkage")
    print(f"{'raw cosine':36s} {m['hit@1']:6.3f} {m['mrr']:6.3f}")
    for label, options in VARIANTS.items():
        est = pr.FederatedProjection(progress=False, **options).fit(Q, A)
        m = retrieval_metrics(est.project(X), C, ev.gold)
        print(f"{'federated, ' + label:36s} {m['hit@1']:6.3f} {m['mrr']:6.3f}  {est.shrinkage_}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "stackfaq")
