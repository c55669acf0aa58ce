"""Asymmetric search on StackFAQ and TREC QA (issue 10, part 3): Hit@1 and MRR of held-out
questions against the answers, for MiniLM raw, MiniLM with the federated projection,
and for each static model: static raw (both sides static), static queries through the
corpus bridge alone, and through the bridge plus a federated model (BridgedProjection),
the last two against MiniLM answers.

    PROJROUTE_DATA=../shared/data .venv/bin/python scripts/bridge_retrieval.py \\
        --static /tmp/projroute-static/corpus-256-fold-v0-1 --out bridge.json

The models validate in the regime each test measures: known answers on StackFAQ
(paraphrases of the training questions), new answers on TREC QA. The static folders
come from `projroute static distill` (or scripts/static_stsb.py). The
bridge is fitted on --bridge-sentences sentences of $PROJROUTE_DATA/corpus/sentences.txt
(the same seeded sample as `projroute fit --query-encoder`); MiniLM embeddings are cached
by projroute.embed.Encoder. Prints the CPU and a table; writes --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from projroute import kernel_info

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REGIME = {"stackfaq": "known-answers", "trecqa": "new-answers"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--static", nargs="+", required=True, metavar="DIR", help="static model folders")
    ap.add_argument("--bridge-sentences", type=int, default=50_000)
    ap.add_argument("--data", nargs="+", default=["stackfaq", "trecqa"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bridge_retrieval.json")
    args = ap.parse_args()
    cpu = kernel_info()["cpu_model"]

    import numpy as np

    import projroute as pr
    from projroute import datasets, static
    from projroute.embed import Encoder, embed_pairs
    from projroute.metrics import retrieval_metrics

    print(f"CPU: {cpu}; bridge corpus: {args.bridge_sentences} sentences", flush=True)
    minilm = Encoder()
    sentences = static.read_corpus([static.default_corpus()])
    order = np.random.default_rng(args.seed).permutation(len(sentences))[: args.bridge_sentences]
    sentences = [sentences[i] for i in order]
    M = minilm.encode(sentences)
    encoders = {Path(d).name: pr.StaticEncoder.load(d) for d in args.static}
    corpus = {name: (enc.encode(sentences), M) for name, enc in encoders.items()}

    rows = []
    for data in args.data:
        pairs, ev = datasets.load_pairs(data), datasets.load_eval(data)
        Q, A, _, _ = embed_pairs(pairs, minilm)
        queries, answers = minilm.encode(ev.queries), minilm.encode(ev.corpus)

        def row(model: str, P: np.ndarray, C: np.ndarray, data: str = data, gold: list = ev.gold) -> None:
            m = retrieval_metrics(P, C, gold)
            rows.append({"data": data, "model": model, "hit@1": m["hit@1"], "mrr": m["mrr"]})
            print(f"{data:9s} {model:55s} Hit@1 {m['hit@1']:.3f}  MRR {m['mrr']:.3f}", flush=True)

        row("MiniLM raw", queries, answers)
        fed = pr.FederatedProjection(validation=REGIME[data], random_state=args.seed).fit(Q, A)
        row("MiniLM + federated", fed.project(queries), answers)
        for name, enc in encoders.items():
            sq = enc.encode(ev.queries)
            row(f"static raw ({name})", sq, enc.encode(ev.corpus))
            bridged = pr.BridgedProjection(validation=REGIME[data], random_state=args.seed)
            bridged.fit(enc.encode(pairs.questions), A, corpus[name])
            row(f"static ({name}) + corpus bridge", sq @ bridged.W_in_ + bridged.b_in_, answers)
            row(f"static ({name}) + bridge + federated", bridged.project(sq), answers)
    Path(args.out).write_text(json.dumps({"cpu": cpu, "args": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
