"""The ``projroute`` command: fit, project, search, eval and demo, thin over the public API.

Each command returns a JSON-able dict: ``--json`` prints it as one object on stdout,
otherwise it is rendered as short text. Progress bars go to stderr. User errors (a
missing file, bad data, a foreign model file) print one ``projroute: error:`` line
on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import projroute
from projroute import datasets, index, serving
from projroute._atomic import atomic_write
from projroute._estimator import Projection
from projroute.bridge import BridgedProjection, Estimator
from projroute.embed import Encoder, embed_pairs
from projroute.evaluation import evaluate, format_table
from projroute.federated import FederatedProjection
from projroute.lda import LdaProjection
from projroute.procrustes import GlobalProjection
from projroute.validation import VALIDATIONS

ESTIMATORS: dict[str, type[GlobalProjection | FederatedProjection | LdaProjection]] = {
    "global": GlobalProjection,
    "federated": FederatedProjection,
    "lda": LdaProjection,
}
SHOWN_ROUTES = 5
#: Corpus sentences that fit a bridge by default (MiniLM embeds them once; cached).
BRIDGE_SENTENCES = 50_000
USER_ERRORS = (OSError, ValueError, ImportError, projroute.ProjrouteError)


# --- helpers ------------------------------------------------------------------------


def read_questions(path: Path) -> list[str]:
    """Questions from a .txt file (one per non-blank line) or a .jsonl file ("question" fields)."""
    lines = [(i, s) for i, s in datasets.utf8_lines(path) if s.strip()]
    if path.suffix == ".txt":
        questions = [s.strip() for _, s in lines]
    else:
        questions = []
        for i, s in lines:
            rec = datasets.parse_json(s, f"{path}:{i}")
            if not isinstance(rec, dict) or not isinstance(rec.get("question"), str):
                raise ValueError(f'{path}:{i}: expected an object with a string "question" field')
            questions.append(rec["question"])
    if not questions:
        raise ValueError(f"{path}: no questions")
    return questions


def read_queries(path: Path) -> np.ndarray:
    """Query embeddings (n, D) from a .npy array, or embedded questions of a .jsonl/.txt file."""
    if path.suffix == ".npy":
        try:
            X = np.load(path, allow_pickle=False)
        except (EOFError, ValueError) as e:
            raise ValueError(f"{path}: not a readable .npy array ({e})") from None
        if not isinstance(X, np.ndarray) or X.ndim != 2 or X.dtype.kind != "f":
            raise ValueError(f"{path}: expected a 2-D float array (n, D), got {X.dtype} {X.shape}")
        return X
    if path.suffix in (".jsonl", ".txt"):
        return Encoder().encode(read_questions(path))
    raise ValueError(f"{path}: expected a .npy, .jsonl or .txt file")


def human_size(n: float) -> str:
    """A byte count as e.g. "1.4 MiB"."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def one_line(text: str, width: int = 100) -> str:
    """``text`` on one line, cut to ``width`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


# --- fit ------------------------------------------------------------------------------


def make_estimator(args: argparse.Namespace) -> GlobalProjection | FederatedProjection | LdaProjection:
    """The estimator of ``--kind`` with the options given; an option the kind does not take is an error."""
    cls = ESTIMATORS[args.kind]
    given = {
        "--n-clusters": ("n_clusters", args.n_clusters),
        "--temperature": ("temperature", args.temperature),
        "--top-k": ("top_k", args.top_k),
        "--coverage": ("top_k", args.coverage),
        "--shrinkage": ("shrinkage", args.shrinkage),
        "--validation": ("validation", args.validation),
        "--cluster-map": ("cluster_map", args.cluster_map),
        "--refine-steps": ("refine_steps", args.refine_steps),
    }
    takes = inspect.signature(cls).parameters
    params = {"random_state": args.seed}
    for flag, (name, value) in given.items():
        if value is None:
            continue
        if name not in takes:
            raise ValueError(f"{flag} does not apply to a {args.kind} model")
        params[name] = value
    return cls(**params)


def cmd_fit(args: argparse.Namespace) -> dict[str, Any]:
    model = make_estimator(args)
    folder = Path(args.output).absolute().parent
    if not folder.is_dir():
        raise FileNotFoundError(f"no such directory for the model file: {folder}")
    pairs = datasets.load_pairs(args.data)
    encoder = Encoder()
    Q, A, texts, C = embed_pairs(pairs, encoder)
    est: Projection = fit_bridge(args, model, pairs, A, encoder) if args.query_encoder else model.fit(Q, A)
    if args.no_index:
        est.save(args.output, weights_dtype=args.weights_dtype)
    else:
        est.save(args.output, answers=C, answer_texts=texts, weights_dtype=args.weights_dtype)
    config = est.config_
    return {
        "kind": args.kind,
        "data": args.data,
        "pairs": len(pairs),
        "n_clusters": config.get("n_clusters"),
        "temperature": config.get("temperature"),
        "top_k": config.get("top_k"),
        "coverage": config.get("coverage"),
        "shrinkage": config["fit"].get("shrinkage"),
        "alpha": config["fit"].get("alpha"),
        "validation": config["fit"].get("validation"),
        "query_encoder": args.query_encoder,
        "bridge": config["fit"].get("bridge"),
        "index": 0 if args.no_index else len(texts),
        "path": args.output,
        "bytes": Path(args.output).stat().st_size,
    }


def fit_bridge(
    args: argparse.Namespace, model: Estimator, pairs: datasets.Pairs, A: np.ndarray, encoder: Encoder
) -> BridgedProjection:
    """``model`` behind a bridge from ``--query-encoder`` (a static model) into MiniLM's space,
    fitted on the first ``--bridge-sentences`` of the shuffled ``--bridge-corpus`` lines."""
    from projroute.static import default_corpus, read_corpus  # reads text only; no model2vec

    static = projroute.StaticEncoder.load(args.query_encoder)
    sentences = read_corpus(args.bridge_corpus or [default_corpus()])
    order = np.random.default_rng(args.seed).permutation(len(sentences))[: args.bridge_sentences]
    sentences = [sentences[i] for i in order]
    corpus = (static.encode(sentences), encoder.encode(sentences))
    return BridgedProjection(model, random_state=args.seed).fit(static.encode(pairs.questions), A, corpus)


def show_fit(r: dict[str, Any]) -> str:
    details = [
        f"{k}={r[k]}"
        for k in ("n_clusters", "temperature", "top_k", "coverage", "shrinkage", "alpha", "validation")
        if r[k] is not None
    ]
    index = f"an index of {r['index']} answers" if r["index"] else "no answer index"
    bridge = r["bridge"]
    bridged = (
        f"queries from {r['query_encoder']}, bridged into MiniLM's space "
        f"(ridge alpha={bridge['alpha']:g} on {bridge['corpus_sentences']} corpus sentences)\n"
        if bridge
        else ""
    )
    return (
        f"fitted {r['kind']} on {r['pairs']} pairs from {r['data']} ({', '.join(details)})\n{bridged}"
        f"wrote {r['path']} ({human_size(r['bytes'])}) with {index}"
    )


# --- project --------------------------------------------------------------------------


RAY_OPTIONS = ("encoder", "column", "text_column", "output_column", "index_dir", "id_column", "batch_size", "actors")


def cmd_project(args: argparse.Namespace) -> dict[str, Any]:
    if args.ray:
        return project_ray(args)
    if len(args.input) != 1:
        raise ValueError("one INPUT without --ray")
    if given := [f"--{o.replace('_', '-')}" for o in RAY_OPTIONS if getattr(args, o) is not None]:
        raise ValueError(f"{', '.join(given)} apply with --ray")
    args.input = args.input[0]
    model = projroute.load(args.model)
    P = np.asarray(model.project(read_queries(Path(args.input))), dtype=np.float32)
    with atomic_write(args.output) as f:
        np.save(f, P)
    return {
        "model": args.model,
        "input": args.input,
        "output": args.output,
        "shape": list(P.shape),
        "dtype": str(P.dtype),
    }


def project_ray(args: argparse.Namespace) -> dict[str, Any]:
    """``projroute project --ray``: Parquet/JSONL in, a folder of Parquet out, on Ray Data."""
    from projroute import distributed

    model = None if args.model == "none" else args.model
    given = {o: getattr(args, o) for o in RAY_OPTIONS if getattr(args, o) is not None}
    started = time.perf_counter()
    result = distributed.project(args.input, args.output, model, **given)
    return {**result, "model": model, "encoder": args.encoder, "seconds": time.perf_counter() - started}


def show_project(r: dict[str, Any]) -> str:
    if "rows" in r:
        shards = f"; index shards in {r['index_dir']}" if r["index_dir"] else ""
        return (
            f"wrote {r['rows']} rows to {r['output']} (Parquet, columns {', '.join(r['columns'])}) "
            f"in {r['seconds']:.1f} s on Ray{shards}"
        )
    n, d = r["shape"]
    return f"wrote {r['output']}: {n} x {d} {r['dtype']} ({r['input']} projected by {r['model']})"


# --- search ---------------------------------------------------------------------------


def is_index(path: str) -> bool:
    """Whether ``path`` is an answer index file (by its header; anything else is left to the model path)."""
    try:
        return projroute._core.file_kind(path) == "index"
    except projroute.ModelFormatError:
        return False


def cmd_search(args: argparse.Namespace) -> dict[str, Any]:
    if is_index(args.model):
        return search_index(args)
    if args.encoder or args.model_file:
        raise ValueError("--encoder and --model apply to an index file; a model file is searched with MiniLM queries")
    model = projroute.load(args.model)
    encoder = Encoder()
    texts: list[str] | None
    if args.data:
        texts = list(dict.fromkeys(datasets.load_pairs(args.data).answers))
        index = projroute.FlatIndex(encoder.encode(texts))
    else:
        stored = serving.stored_index(model)
        if stored is None:
            raise ValueError(f"{args.model} has no stored answer index; pass --data DATA")
        index, texts = stored
    x = encoder.encode([args.question], progress=False)
    ids, scores = index.search(model.project(x), min(args.k, len(index)))
    result = {
        "query": args.question,
        "model": args.model,
        "kind": model.kind,
        "results": [
            {"rank": r, "id": int(i), "score": float(s), "text": None if texts is None else texts[i]}
            for r, (i, s) in enumerate(zip(ids[0], scores[0]), 1)
        ],
    }
    if args.routing:
        w = model.route(x)
        result["routing"] = (
            None
            if w is None
            else [
                {"cluster": int(k), "weight": float(w[0, k])}
                for k in np.argsort(-w[0], kind="stable")[:SHOWN_ROUTES]
                if w[0, k] > 0
            ]
        )
    return result


def search_index(args: argparse.Namespace) -> dict[str, Any]:
    """``projroute search INDEX "text"``: static queries, in Rust; needs numpy and the wheel only."""
    if args.data:
        raise ValueError("--data applies to a model file; an index file holds its answers")
    searcher = projroute.Searcher.open_index(args.model, encoder=args.encoder, model=args.model_file)
    k = min(args.k, len(searcher))
    if args.ef is not None and (args.exact or searcher.ann is None):
        raise ValueError("--ef applies to an index built with --approximate, searched without --exact")
    hits = searcher.search([args.question], k, exact=args.exact, ef=args.ef)[0]
    model = args.model_file or index.read_header(args.model).get("model")
    result: dict[str, Any] = {
        "query": args.question,
        "index": args.model,
        "model": model,
        "kind": searcher.kind,
        "search": "exact" if args.exact or searcher.ann is None else "approximate",
        "results": [{"rank": r, "id": i, "score": s, "text": t} for r, (i, s, t) in enumerate(hits, 1)],
    }
    if args.routing:
        w = searcher.route([args.question])
        result["routing"] = None if w is None else top_routes(w[0])
    return result


def top_routes(w: np.ndarray) -> list[dict[str, Any]]:
    """The largest nonzero routing weights of one query, at most ``SHOWN_ROUTES``, as clusters and weights."""
    order = np.argsort(-w, kind="stable")[:SHOWN_ROUTES]
    return [{"cluster": int(c), "weight": float(w[c])} for c in order if w[c] > 0]


def show_search(r: dict[str, Any]) -> str:
    lines = [f"{h['rank']:>3}  {h['score']:.3f}  " + one_line(h["text"] or f"answer #{h['id']}") for h in r["results"]]
    if "routing" in r:
        if r["routing"] is None:
            what = "no model" if r["kind"] is None else f"{r['kind']} model: one map for every query"
            lines.append(f"routing: none ({what})")
        else:
            routes = (f"cluster {c['cluster']} {c['weight']:.3f}" for c in r["routing"])
            lines.append("routing: " + ", ".join(routes))
    return "\n".join(lines)


# --- index ----------------------------------------------------------------------------


def cmd_index_build(args: argparse.Namespace) -> dict[str, Any]:
    texts = index.read_corpus(args.corpus)
    # MiniLM answers (train extra) for a model that bridges static queries into MiniLM's space.
    embeddings = Encoder().encode(texts) if args.answers == "minilm" else None
    given = {"connectivity": args.connectivity, "ef_construction": args.ef_construction, "ef_search": args.ef_search}
    ann = {k: v for k, v in given.items() if v is not None}
    if ann and not args.approximate:
        raise ValueError("--connectivity, --ef-construction and --ef-search apply with --approximate")
    started = time.perf_counter()
    n = index.build_index(
        texts,
        args.output,
        encoder=args.encoder,
        model=args.model,
        embeddings=embeddings,
        ann=ann if args.approximate else None,
    )
    seconds = time.perf_counter() - started
    header = index.read_header(args.output)
    return {
        "corpus": args.corpus,
        "answers": n,
        "dim": header["dim"],
        "encoder": header["encoder"],
        "model": header.get("model"),
        "answers_by": args.answers,
        "ann": header.get("ann"),
        "seconds": seconds,
        "path": args.output,
        "bytes": Path(args.output).stat().st_size,
    }


def show_index_build(r: dict[str, Any]) -> str:
    model = f", queries projected by {r['model']}" if r["model"] else ""
    by = "the static model" if r["answers_by"] == "static" else "MiniLM"
    graph = ""
    if r["ann"]:
        a = r["ann"]
        graph = (
            f" with an approximate (HNSW) graph: connectivity {a['connectivity']}, "
            f"ef_construction {a['ef_construction']}, ef_search {a['ef_search']}"
        )
    return (
        f"embedded {r['answers']} answers from {r['corpus']} with {by} ({r['dim']}-d; queries: static model "
        f"{r['encoder']}{model})\n"
        f"wrote {r['path']} ({human_size(r['bytes'])}){graph} in {r['seconds']:.1f} s"
    )


# --- eval and demo --------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    models = [(f"{m.kind} ({Path(p).name})", m) for p, m in ((p, projroute.load(p)) for p in args.models)]
    ev = datasets.load_eval(args.data)
    rows = evaluate(models, ev, Encoder())
    for row, path in zip(rows, [None, *args.models]):
        row["path"] = path
    return {"data": args.data, "queries": len(ev), "corpus": len(ev.corpus), "rows": rows}


def show_eval(r: dict[str, Any]) -> str:
    return f"{r['data']}: {r['queries']} queries against {r['corpus']} answers\n\n{format_table(r['rows'])}"


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm.auto import tqdm

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="projroute-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    pairs, ev = datasets.demo()
    encoder = Encoder()
    Q, A, texts, C = embed_pairs(pairs, encoder)
    fitted, paths = [], {}
    for kind, cls in tqdm(ESTIMATORS.items(), desc="fitting", unit="model"):
        est = cls().fit(Q, A)
        paths[kind] = str(out / f"{kind}.safetensors")
        est.save(paths[kind], answers=C, answer_texts=texts)
        fitted.append((kind, est))
    return {
        "dir": str(out),
        "models": paths,
        "pairs": len(pairs),
        "queries": len(ev),
        "corpus": len(ev.corpus),
        "rows": evaluate(fitted, ev, encoder),
    }


def show_demo(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"demo data: fitted on {r['pairs']} question/answer pairs; "
            f"evaluated on {r['queries']} held-out paraphrases against {r['corpus']} answers",
            "",
            format_table(r["rows"]),
            "",
            f"models saved in {r['dir']}: {', '.join(Path(p).name for p in r['models'].values())}",
            f'try: projroute search {r["models"]["federated"]} "how do I install it?" --routing',
        ]
    )


def cmd_distill(args: argparse.Namespace) -> dict[str, Any]:
    from projroute.distill.report import distill_report

    return distill_report(
        args.teacher,
        args.data,
        args.output,
        epochs=args.epochs,
        augment=not args.no_augment,
        importance=args.importance,
        domains=args.domains,
        plot=args.plot,
        seed=args.seed,
        progress=True,
    )


def show_distill(r: dict[str, Any]) -> str:
    from projroute.distill.report import show

    return show(r)


# --- analyze --------------------------------------------------------------------------


def cmd_analyze(args: argparse.Namespace) -> dict[str, Any]:
    from projroute import analysis

    return analysis.analyze(
        args.model,
        args.data,
        plot=args.plot,
        meta=args.meta,
        method=args.method,
        merge=args.merge,
        output=args.output,
        seed=args.seed,
    )


def show_analyze(r: dict[str, Any]) -> str:
    s, g, m = r["suggestion"], r["granularity"], r["meta"]
    cos = g["centroid_cosine"]
    k = g["mean_k"]
    lines = [
        f"{r['data']}: {r['pairs']} training pairs; {r['queries']} held-out queries against {r['corpus']} answers",
        f"{r['model']}: {r['kind']}, K={g['n_clusters']}, temperature {g['temperature']}, top_k {g['top_k']}",
        "",
        f"cluster count ({s['n']} {r['cluster_on'][:-1]} embeddings, {s['dim']}-d):",
        f"  effective rank {s['effective_rank']:.1f}; {s['variance']:.0%} of the variance in r={s['r']} "
        f"dimensions, 2^r={s['two_pow_r']}{' (capped at N)' if s['two_pow_r_capped'] else ''}; "
        f"sqrt(N)={s['sqrt_n']:.1f}",
        f"  recommended K={s['recommended']} (effective rank clipped to [{s['bounds'][0]}, {s['bounds'][1]}])",
        "",
        f"routing granularity ({g['queries']} held-out queries, full softmax at T={g['temperature']}):",
        f"  mean k for 50% / 80% / 95% of the weight: {k['50%']:.1f} / {k['80%']:.1f} / {k['95%']:.1f}",
        f"  mean top-1 weight {g['top1']:.3f}; the served top-{g['top_k']} hold {g['top_k_weight']:.3f}",
        "  centroid cosine: "
        + (
            "none (one cluster)"
            if cos is None
            else f"min {cos['min']:.3f}, mean {cos['mean']:.3f}, max {cos['max']:.3f}; "
            f"{g['duplicate_centroids']} duplicate an earlier centroid"
        ),
    ]
    if r["plot"]:
        lines.append(f"coverage plot: {r['plot']}")
    if r["precision"]:
        lines += ["", "reduced-precision W (computed in float32; cos: mean cosine to the float32 model's outputs):"]
        lines += [
            f"  {dtype:9s} W {human_size(p['w_bytes'])} (float32 {human_size(2 * p['w_bytes'])}): "
            f"1 - cos {1 - p['cosine']:.1e}, hit@1 {p['hit@1']:.3f}, mrr {p['mrr']:.3f}"
            for dtype, p in r["precision"].items()
        ]
    if m is None:
        return "\n".join(lines)
    rule = "mean top-1 >= 0.5 or k80 <= 10" + ("" if m["met"] else "; no candidate met it, so the smallest")
    lines += ["", f"meta-clustering ({m['method']}, {m['merge']} merge): suggested K'={m['suggested']} ({rule})"]
    if m["pair_labels"] == "nearest centroid":
        lines.append("  refit pairs go to their nearest centroid by question cosine (the file stores no labels)")
    header = f"{'model':12s} {'K':>5s} {'top-1':>6s} {'k80':>6s} {'cos':>6s} {'hit@1':>6s} {'mrr':>6s}"
    rows = [
        f"{'raw cosine':12s} {'-':>5s} {'-':>6s} {'-':>6s} {'-':>6s} {m['raw']['hit@1']:6.3f} {m['raw']['mrr']:6.3f}",
        f"{'original':12s} {g['n_clusters']:5d} {g['top1']:6.3f} {k['80%']:6.1f} {1:6.3f} "
        f"{m['original']['hit@1']:6.3f} {m['original']['mrr']:6.3f}",
    ]
    rows += [
        f"{'merged' + (' *' if row['n_meta'] == m['suggested'] else ''):12s} {row['n_meta']:5d} "
        f"{row['top1']:6.3f} {row['mean_k']['80%']:6.1f} {row['cosine']:6.3f} "
        f"{row['hit@1']:6.3f} {row['mrr']:6.3f}"
        for row in m["rows"]
    ]
    lines += [header, *rows, "(K: clusters; cos: mean cosine to the original model's outputs; * suggested)"]
    if m["output"]:
        lines.append(f"wrote the merged model (K'={m['suggested']}) to {m['output']}")
    return "\n".join(lines)


# --- static ---------------------------------------------------------------------------


def cmd_static_distill(args: argparse.Namespace) -> dict[str, Any]:
    from projroute import static

    if args.vocab_only and (args.corpus or args.no_default_corpus):
        raise ValueError("--vocab-only takes no corpus (--corpus, --no-default-corpus)")
    if not args.vocab_only and args.no_default_corpus and not args.corpus:
        raise ValueError("--no-default-corpus needs --corpus FILE")
    if args.vocab_only:
        model = static.distill_vocab(
            args.output, teacher=args.teacher, pca_dims=args.pca_dims, sif_coefficient=args.sif
        )
    else:
        model = static.distill_corpus(
            args.output,
            args.corpus or (),
            use_default_corpus=not args.no_default_corpus,
            fraction=args.fraction,
            pca_dims=args.pca_dims,
            sif_coefficient=args.sif,
            teacher=args.teacher,
            vocab_size=args.vocab_size,
            head=args.head,
            epochs=args.epochs,
            seed=args.seed,
        )
    info = json.loads((Path(args.output) / "distill.json").read_text("utf-8"))
    info.pop("history", None)
    return {**info, "output": args.output, "stsb": static.stsb_spearman(model) if args.stsb else None}


def show_static_distill(r: dict[str, Any]) -> str:
    pca = "no PCA" if r["pca_dims"] is None else f"PCA {r['pca_dims']}"
    what = (
        f"from {r['sentences']} corpus sentences ({r['epochs']} epochs, best {r['best_epoch']}, "
        f"validation MSE {r['val_loss']:.3g}, head {r['head']})"
        if r["method"] == "corpus"
        else "vocabulary only"
    )
    lines = [
        f"distilled a static model {what}: {r['vocab_size']} tokens x {r['dim']} ({pca}, "
        f"SIF {r['sif_coefficient']}) in {r['seconds']:.0f} s",
        f"wrote {r['output']} (loads with model2vec.StaticModel.from_pretrained)",
    ]
    if r["stsb"] is not None:
        lines.append(f"STS-B test Spearman: {r['stsb']:.4f}")
    return "\n".join(lines)


# --- prle -----------------------------------------------------------------------------


def cmd_prle_run(args: argparse.Namespace) -> dict[str, Any]:
    from projroute.prle import load_config
    from projroute.prle.report import run

    return run(load_config(args.config))


def show_prle_run(r: dict[str, Any]) -> str:
    from projroute.prle.report import show

    return show(r)


def cmd_prle_explain(args: argparse.Namespace) -> dict[str, Any]:
    from projroute.embed import Encoder
    from projroute.prle import load, pair_features

    model = load(args.model)
    u, v = Encoder().encode([args.sentence1, args.sentence2], progress=False)
    return {
        "sentences": [args.sentence1, args.sentence2],
        **model.explain(pair_features(u[None], v[None]), args.top)[0],
    }


def show_prle_explain(r: dict[str, Any]) -> str:
    lines = [f"predicted similarity {r['prediction']:.3f} (0 to 5); top prototypes:"]
    for p in r["prototypes"]:
        pair = f" {p['pair'][0]!r} / {p['pair'][1]!r}" if p["pair"] else ""
        lines.append(
            f"  weight {p['weight']:.3f}  local prediction {p['local_prediction']:.3f}  "
            f"gold {p['score']:.2f}  train row {p['row']}:{pair}"
        )
    return "\n".join(lines)


# --- parser ---------------------------------------------------------------------------


def auto_or(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type accepting "auto" or a value of ``kind``."""

    def parse(s: str) -> Any:
        return s if s == "auto" else kind(s)

    parse.__name__ = f"auto or {kind.__name__}"
    return parse


def positive_int(s: str) -> int:
    """An argparse type: an integer >= 1."""
    if not s.isdigit() or int(s) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {s!r}")
    return int(s)


def fraction(s: str) -> float:
    """An argparse type: a number in (0, 1)."""
    try:
        value = float(s)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {s!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="projroute", description="Map question embeddings into answer space, then search by cosine."
    )
    parser.add_argument("--version", action="version", version=f"projroute {projroute.__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable, show: Callable, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(run=run, show=show)
        return p

    data_help = '"demo", "stackfaq", "trecqa", a StackFAQ or TREC QA directory, or a .jsonl file'
    p = command("fit", cmd_fit, show_fit, "fit a projection on question/answer pairs and save it")
    p.add_argument("data", metavar="DATA", help=data_help)
    p.add_argument("-o", "--output", required=True, metavar="MODEL", help="model file to write")
    p.add_argument("--kind", required=True, choices=list(ESTIMATORS), help="which projection to fit")
    p.add_argument(
        "--n-clusters", type=auto_or(positive_int), metavar="K", help="auto or INT (federated, lda; default auto)"
    )
    p.add_argument(
        "--temperature", type=float, metavar="T", help="routing softmax temperature (federated, lda; default 0.1)"
    )
    topk = p.add_mutually_exclusive_group()
    topk.add_argument(
        "--top-k",
        type=positive_int,
        metavar="K",
        help="route over the k best clusters (default: 10 for federated, all for lda)",
    )
    topk.add_argument(
        "--coverage",
        type=fraction,
        metavar="C",
        help="route over the fewest best clusters holding this share of the weight",
    )
    p.add_argument(
        "--shrinkage",
        type=auto_or(float),
        metavar="S",
        help="auto or FLOAT in [0, 1] (global, federated; default auto)",
    )
    p.add_argument(
        "--validation",
        choices=list(VALIDATIONS),
        help="the regime cross-validation measures: new questions with new answers, or new phrasings of "
        "questions whose answers are known (global, federated; default known-answers)",
    )
    p.add_argument(
        "--cluster-map",
        choices=["procrustes", "ridge"],
        help="each cluster's correction: a rotation, or a ridge least-squares map (federated; default procrustes)",
    )
    p.add_argument(
        "--refine-steps",
        type=auto_or(int),
        metavar="N",
        help="auto or N >= 0 steps of contrastive refinement of the fitted maps (federated; default 0: none)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed for k-means and cross-validation")
    p.add_argument("--no-index", action="store_true", help="do not store the training answers in the model")
    p.add_argument(
        "--weights-dtype",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="storage type of the maps W (computed in float32 either way)",
    )
    p.add_argument(
        "--query-encoder",
        metavar="DIR",
        help="static model folder embedding the queries; the model bridges them into MiniLM's answer space",
    )
    p.add_argument(
        "--bridge-corpus",
        action="append",
        metavar="FILE",
        help="with --query-encoder: sentences (one a line) embedded by both encoders to fit the bridge; "
        "repeatable (default: $PROJROUTE_DATA/corpus/sentences.txt)",
    )
    p.add_argument(
        "--bridge-sentences",
        type=positive_int,
        default=BRIDGE_SENTENCES,
        metavar="N",
        help=f"with --query-encoder: corpus sentences used, a seeded random sample (default {BRIDGE_SENTENCES:,})",
    )

    p = command("project", cmd_project, show_project, "project query embeddings into answer space")
    p.add_argument("model", metavar="MODEL", help='a model file (with --ray and --encoder: "none" to only embed)')
    p.add_argument(
        "input",
        nargs="+",
        metavar="INPUT",
        help=".npy of embeddings (n, D), or .jsonl/.txt of questions; with --ray: .parquet/.jsonl files or folders",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="OUT.npy; with --ray: a folder of Parquet")
    p.add_argument(
        "--ray",
        action="store_true",
        help="run on Ray Data (the ray extra): the running cluster at RAY_ADDRESS, or a local one",
    )
    ray = p.add_argument_group("with --ray")
    ray.add_argument("--encoder", metavar="DIR", help="static model folder: embed the text column first")
    ray.add_argument("--column", metavar="NAME", help='input vectors, a list of floats a row (default "embedding")')
    ray.add_argument("--text-column", metavar="NAME", help='input texts, with --encoder (default "text")')
    ray.add_argument("--output-column", metavar="NAME", help='output vectors (default "projection")')
    ray.add_argument("--index-dir", metavar="DIR", help="also write each batch as an answer index shard here")
    ray.add_argument("--id-column", metavar="NAME", help="unique int ids of the rows (the index shards' ids)")
    ray.add_argument("--batch-size", type=positive_int, metavar="N", help="rows per batch and shard (default 16384)")
    ray.add_argument(
        "--actors", type=positive_int, metavar="N", help="workers, each loading the model once (default 1)"
    )

    search_help = "answer one question from an index file (static queries) or a model's stored index (MiniLM queries)"
    p = command("search", cmd_search, show_search, search_help)
    p.add_argument("model", metavar="INDEX|MODEL", help="an index file (projroute index build) or a model file")
    p.add_argument("question")
    p.add_argument("-k", type=positive_int, default=5, help="number of answers (default 5)")
    p.add_argument("--data", help="model file only: search the distinct answers of DATA instead: " + data_help)
    p.add_argument("--encoder", metavar="DIR", help="index file only: static model folder instead of the recorded one")
    p.add_argument(
        "--model", dest="model_file", metavar="MODEL", help="index file only: model file instead of the recorded one"
    )
    p.add_argument("--routing", action="store_true", help="also print the top routing weights")
    p.add_argument("--exact", action="store_true", help="index file only: search exactly even if it has a graph")
    p.add_argument(
        "--ef", type=positive_int, metavar="N", help="index file only: graph candidates per query (approximate search)"
    )

    # Listed for --help only: main() hands `serve` and its arguments to the service.
    serve_help = "serve a model or index file over HTTP (see projroute serve --help)"
    p = sub.add_parser("serve", help=serve_help, description=serve_help, add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)

    p = command("eval", cmd_eval, show_eval, "compare models with raw cosine on held-out queries")
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("data", metavar="DATA", help=data_help)

    p = command(
        "distill",
        cmd_distill,
        show_distill,
        "distil a teacher model file into a small transformer and report its fidelity",
    )
    p.add_argument("teacher", metavar="TEACHER", help="any projroute model file")
    p.add_argument("data", metavar="DATA", help="training questions and held-out queries: " + data_help)
    p.add_argument("-o", "--output", required=True, metavar="STUDENT", help="student file to write")
    p.add_argument("--epochs", type=positive_int, help="most training epochs (early stopping may end sooner)")
    p.add_argument("--no-augment", action="store_true", help="train on the training questions only")
    p.add_argument(
        "--importance",
        choices=["uniform", "entropy"],
        default="uniform",
        help="per-sample loss weights (entropy: the teacher's normalised routing entropy)",
    )
    p.add_argument(
        "--domains",
        type=positive_int,
        metavar="N",
        help="N domain students mixed by a router (a federated or lda teacher; default: one student)",
    )
    p.add_argument("--plot", metavar="PNG", help="save the loss curve here (with --domains: one per domain)")
    p.add_argument("--seed", type=int, default=0)

    p = command(
        "analyze",
        cmd_analyze,
        show_analyze,
        "suggest a cluster count, measure a routed model's granularity, and merge its clusters",
    )
    p.add_argument("model", metavar="MODEL", help="a federated or lda model file")
    p.add_argument("data", metavar="DATA", help="training pairs and held-out queries: " + data_help)
    p.add_argument("--plot", metavar="PNG", help="save the routing-weight coverage curve here")
    p.add_argument(
        "--meta",
        nargs="+",
        type=auto_or(positive_int),
        metavar="K",
        help="meta-cluster into K' clusters: auto (powers of two below K) or a list of ints",
    )
    p.add_argument(
        "--method",
        choices=["kmeans", "agglomerative"],
        default="kmeans",
        help="how to group the centroids (default kmeans)",
    )
    p.add_argument(
        "--merge",
        choices=["average", "refit"],
        default="average",
        help="average the members' maps, or refit Procrustes on the merged pairs (default average)",
    )
    p.add_argument("-o", "--output", metavar="MODEL", help="write the merged model at the suggested K' here")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed for k-means and the refit's base map (the fit's --seed reproduces it)",
    )

    p = command("demo", cmd_demo, show_demo, "fit and evaluate all three kinds on the packaged demo data")
    p.add_argument("--out", metavar="DIR", help="where to save the models (default: a new temporary folder)")

    idx = sub.add_parser(
        "index", help="answer index files for text search", description="answer index files for text search"
    )
    idx_sub = idx.add_subparsers(dest="index_command", required=True, metavar="COMMAND")
    build_help = "embed a corpus (one answer a line) with a static model and write an index file"
    p = idx_sub.add_parser("build", parents=[common], help=build_help, description=build_help)
    p.set_defaults(run=cmd_index_build, show=show_index_build)
    p.add_argument("corpus", metavar="CORPUS", help="UTF-8 text file, one answer per non-blank line")
    p.add_argument("-o", "--output", required=True, metavar="INDEX", help="index file to write")
    p.add_argument("--encoder", required=True, metavar="DIR", help="static model folder (model2vec format)")
    p.add_argument(
        "--model",
        metavar="MODEL",
        help="model file projecting static queries at search time into the answers' space",
    )
    p.add_argument(
        "--answers",
        choices=["static", "minilm"],
        default="static",
        help="embed the answers with the static model (default) or with MiniLM (train extra), for a model that "
        "bridges static queries into MiniLM's space",
    )
    p.add_argument(
        "--approximate",
        action="store_true",
        help="also store an approximate (HNSW) graph: searches take about 3 ms over a million answers, "
        "at a recall@10 of about 0.95 against exact search (defaults)",
    )
    p.add_argument("--connectivity", type=positive_int, metavar="M", help="graph links per node (default 32)")
    p.add_argument("--ef-construction", type=positive_int, metavar="N", help="candidates while building (default 128)")
    p.add_argument("--ef-search", type=positive_int, metavar="N", help="candidates per query (default 128)")

    static = sub.add_parser(
        "static",
        help="static embeddings (Model2Vec) distilled from the encoder",
        description="static embeddings (Model2Vec) distilled from the encoder",
    )
    static_sub = static.add_subparsers(dest="static_command", required=True, metavar="COMMAND")
    static_help = "distil a static model from the bundled all-MiniLM-L6-v2 (vocabulary, then tokenlearn on a corpus)"
    p = static_sub.add_parser("distill", parents=[common], help=static_help, description=static_help)
    p.set_defaults(run=cmd_static_distill, show=show_static_distill)
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="model2vec folder to write")
    p.add_argument(
        "--corpus",
        action="extend",
        nargs="+",
        metavar="FILE",
        help="text files, one sentence a line, added to the default corpus",
    )
    p.add_argument(
        "--no-default-corpus",
        action="store_true",
        help="train on the --corpus files only, not $PROJROUTE_DATA/corpus/sentences.txt",
    )
    p.add_argument("--vocab-only", action="store_true", help="vocabulary distillation only (no corpus, no training)")
    p.add_argument(
        "--pca-dims",
        type=lambda s: None if s == "none" else positive_int(s),
        default=256,
        metavar="N",
        help="output dimension after PCA, or none: 384, in MiniLM's own space (default 256)",
    )
    p.add_argument(
        "--sif",
        type=lambda s: None if s == "none" else float(s),
        default=1e-4,
        metavar="A",
        help="SIF (Zipf) coefficient in (0, 1), or none (default 1e-4)",
    )
    p.add_argument(
        "--fraction",
        type=float,
        default=1.0,
        metavar="F",
        help="train on this share of the corpus sentences (default 1)",
    )
    p.add_argument("--epochs", type=positive_int, default=20, help="most epochs (early stopping; default 20)")
    p.add_argument(
        "--vocab-size",
        type=int,
        default=0,
        metavar="N",
        help="add the corpus's N most frequent words to the vocabulary (default 0: none)",
    )
    p.add_argument(
        "--head",
        choices=["fold", "drop"],
        default="fold",
        help="fold the trained linear head into the table, or drop it as tokenlearn does (default fold)",
    )
    p.add_argument("--teacher", metavar="DIR", help="teacher model folder (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--stsb", action="store_true", help="report STS-B test Spearman ($PROJROUTE_DATA/stsb)")
    p.add_argument("--seed", type=int, default=0)

    prle = sub.add_parser(
        "prle",
        help="prototype regression with local experts (STS-B scores)",
        description="prototype regression with local experts (STS-B scores)",
    )
    prle_sub = prle.add_subparsers(dest="prle_command", required=True, metavar="COMMAND")
    run_help = "fit PRLE from a TOML config and print one table of it and the baselines on STS-B test"
    p = prle_sub.add_parser("run", parents=[common], help=run_help, description=run_help)
    p.set_defaults(run=cmd_prle_run, show=show_prle_run)
    p.add_argument("config", metavar="CONFIG", help="a TOML run config (e.g. configs/prle_stsb.toml)")
    explain_help = "predict the similarity of two sentences and show the prototypes behind it"
    p = prle_sub.add_parser("explain", parents=[common], help=explain_help, description=explain_help)
    p.set_defaults(run=cmd_prle_explain, show=show_prle_explain)
    p.add_argument("model", metavar="MODEL", help="a prle model file")
    p.add_argument("sentence1")
    p.add_argument("sentence2")
    p.add_argument("--top", type=positive_int, default=3, help="prototypes to show (default 3)")
    return parser


# --- serve ----------------------------------------------------------------------------


def cmd_serve(argv: Sequence[str]) -> int:
    """``projroute serve ...``: the HTTP service in Rust. Its command line is parsed by the
    service itself (the same as the ``projroute-serve`` binary's), so it is written once."""
    try:
        return projroute._core.serve(["projroute serve", *argv])
    except KeyboardInterrupt:  # Ctrl-C: the service has already shut down cleanly
        return 0


def error_message(e: BaseException) -> str:
    """One line describing a user error."""
    text = f"{e.strerror or e}: {e.filename}" if isinstance(e, OSError) and e.filename else str(e) or type(e).__name__
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns 0, exits 2 on user errors
    (``serve`` returns the service's exit status)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:
        return cmd_serve(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.run(args)
    except USER_ERRORS as e:
        parser.exit(2, f"projroute: error: {error_message(e)}\n")
    print(json.dumps(result) if args.json else args.show(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
