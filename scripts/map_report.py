"""Every map beside raw cosine, per data set and validation regime (issue 11): Hit@1 and
MRR on each data set's held-out questions, with the strength cross-validation chose.

    PROJROUTE_DATA=../shared/data .venv/bin/python scripts/map_report.py --out maps.json

StackFAQ's test asks paraphrases of the training questions, whose answers are in
training (the known-answers regime); TREC QA's test asks new questions with new answers
(new-answers); the demo set's held-out questions are paraphrases of known ones. Both
regimes are run on every set; the table marks the regime that matches each test.
MiniLM embeddings are cached by projroute.embed.Encoder. Prints the CPU; writes --out.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from projroute import kernel_info

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: The regime each data set's test measures.
MATCHING = {"stackfaq": "known-answers", "trecqa": "new-answers", "demo": "known-answers"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=["stackfaq", "trecqa", "demo"])
    ap.add_argument("--models", nargs="+", help="only the maps whose names contain one of these")
    ap.add_argument("--regimes", nargs="+", default=["known-answers", "new-answers"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="maps.json")
    args = ap.parse_args()
    cpu = kernel_info()["cpu_model"]

    import projroute as pr
    from projroute import datasets
    from projroute.embed import Encoder, embed_pairs
    from projroute.metrics import retrieval_metrics

    def maps(validation: str) -> dict:
        kw = {"validation": validation, "random_state": args.seed}
        return {
            "global (rotation)": pr.GlobalProjection(**kw),
            "ridge toward identity": pr.RidgeProjection(base="identity", **kw),
            "ridge toward global": pr.RidgeProjection(base="global", **kw),
            "contrastive from global": pr.ContrastiveProjection(progress=False, **kw),
            "federated (rotations)": pr.FederatedProjection(progress=False, **kw),
            "federated (ridge)": pr.FederatedProjection(cluster_map="ridge", progress=False, **kw),
            "federated + contrastive": pr.FederatedProjection(refine_steps="auto", progress=False, **kw),
        }

    print(f"CPU: {cpu}", flush=True)
    encoder, rows = Encoder(), []
    for data in args.data:
        pairs, ev = datasets.load_pairs(data), datasets.load_eval(data)
        Q, A, _, _ = embed_pairs(pairs, encoder)
        X, C = encoder.encode(ev.queries), encoder.encode(ev.corpus)

        def row(model: str, validation: str, P, chosen, data: str = data, C=C, gold: list = ev.gold) -> None:
            m = retrieval_metrics(P, C, gold)
            match = "*" if validation == MATCHING.get(data) else " "
            rows.append({"data": data, "model": model, "validation": validation, "chosen": chosen, **m})
            print(f"{data:9s} {model:24s} {validation:14s}{match} {chosen!s:6s} "
                  f"Hit@1 {m['hit@1']:.3f}  MRR {m['mrr']:.3f}", flush=True)  # fmt: skip

        row("raw cosine", "-", X, None)
        for validation in args.regimes:
            for name, est in maps(validation).items():
                if args.models and not any(m in name for m in args.models):
                    continue
                est.fit(Q, A)
                chosen = next(getattr(est, a) for a in ("shrinkage_", "alpha_", "steps_") if hasattr(est, a))
                if getattr(est, "refine_steps_", 0):
                    chosen = f"{chosen}, {est.refine_steps_} steps"
                row(name, validation, est.project(X), chosen)
    Path(args.out).write_text(json.dumps({"cpu": cpu, "args": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
