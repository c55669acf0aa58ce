"""Cluster analysis and consolidation of routed models (``projroute analyze``).

* :func:`suggest_n_clusters` -- how many clusters a set of embeddings supports.
* :func:`granularity` -- how concentrated a fitted model's routing is on a query set.
* :func:`meta_cluster` -- merge a federated model's K clusters into K' and rebuild it;
  :func:`suggest_meta` picks K', :func:`merge_cost` says what merging costs.
* :func:`analyze` -- all of the above for a model file on a data set (``projroute analyze``).

Routing statistics use the full softmax over all centroids at the model's
temperature (not the served ``top_k``), so coverage curves run up to 1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from projroute import _format
from projroute._core import Projector
from projroute._estimator import Projection
from projroute.clustering import effective_rank, kmeans_labels
from projroute.metrics import mean_cosine, retrieval_metrics
from projroute.procrustes import GlobalProjection, cluster_delta
from projroute.reference import route_weights, unit_rows

#: Shares of the routing weight that :func:`granularity` reports the mean k for.
COVERAGE_LEVELS = (0.5, 0.8, 0.95)
#: :func:`suggest_meta`'s targets: the mean top-1 weight, or the mean k for 80% coverage.
META_TOP1, META_K80 = 0.5, 10


def suggest_n_clusters(X: np.ndarray, variance: float = 0.8) -> dict[str, Any]:
    """Cluster-count figures for the embeddings ``X`` (N, d), rows unit-normalised first.

    Returns ``effective_rank`` (of ``X``, as ``n_clusters="auto"`` uses), ``r`` (the
    fewest principal components of the centred ``X`` holding ``variance`` of its
    variance), ``two_pow_r`` (2^r, at most N; ``two_pow_r_capped`` says whether it
    was cut), ``sqrt_n`` and ``recommended``: the rounded effective rank, clipped to
    [ceil(sqrt(N) / 2), max(1, N // 2)]. The effective rank counts the directions the
    data spread over, one cluster each (``n_clusters="auto"`` fits that many). The
    lower bound, half of sqrt(N) (where clusters and pairs per cluster balance),
    keeps low-rank data with many pairs from being cut into a few huge clusters
    (at most about 2 sqrt(N) pairs each on average); the upper bound leaves at
    least two pairs per cluster on average, the least a cluster map is fitted from
    (``min_cluster_size``).
    """
    X = np.asarray(X, np.float32)
    if X.ndim != 2 or len(X) < 2:
        raise ValueError(f"need at least two embeddings (N, d), got shape {X.shape}")
    X, n = unit_rows(X), len(X)
    s = np.linalg.svd(X - X.mean(axis=0, dtype=np.float64), compute_uv=False) ** 2
    r = int(np.searchsorted(np.cumsum(s) / s.sum(), variance) + 1)
    erank = effective_rank(X)
    low, high = int(np.ceil(np.sqrt(n) / 2)), max(1, n // 2)
    return {
        "n": n,
        "dim": X.shape[1],
        "effective_rank": erank,
        "variance": variance,
        "r": r,
        "two_pow_r": min(2**r, n),
        "two_pow_r_capped": 2**r > n,
        "sqrt_n": float(np.sqrt(n)),
        "recommended": int(np.clip(round(erank), low, high)),
        "bounds": [low, high],
    }


def _projector(model: Projector | Projection) -> Projector:
    return model._fitted() if isinstance(model, Projection) else model


def routing_parts(model: Projector | Projection) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The tensors and parsed config of a routed model (a loaded ``Projector`` or a
    fitted estimator); ValueError for a kind without routing (global, transformer)."""
    projector = _projector(model)
    tensors = projector.tensors()
    if "centroids" not in tensors:
        raise ValueError(f"a {projector.kind} model has no routing; analysis needs a federated or lda model")
    return _format.dense_maps(tensors, json.loads(projector.config))


def coverage_curves(X: np.ndarray, centroids: np.ndarray, temperature: float) -> np.ndarray:
    """Per-query coverage curves (B, K), float64: entry [i, k-1] is the share of query
    i's full-softmax routing weight held by its k best clusters."""
    w = route_weights(X, centroids, temperature, top_k=len(centroids))
    return np.cumsum(-np.sort(-w.astype(np.float64), axis=1), axis=1)


def routing_stats(X: np.ndarray, centroids: np.ndarray, temperature: float) -> dict[str, Any]:
    """Mean k for each of :data:`COVERAGE_LEVELS` (keys "50%", ...), the mean top-1
    weight and the mean coverage curve (K,) of queries ``X`` (B, d) routed over
    ``centroids`` (K, d) by the full softmax at ``temperature``."""
    cum = coverage_curves(X, centroids, temperature)
    # A level counts as reached within float32 rounding of the weights.
    mean_k = {
        f"{p:.0%}": float(np.mean(np.minimum((cum < p - 1e-6).sum(axis=1) + 1, cum.shape[1]))) for p in COVERAGE_LEVELS
    }
    curve = cum.mean(axis=0)
    return {"mean_k": mean_k, "top1": float(curve[0]), "curve": curve.tolist()}


def granularity(model: Projector | Projection, X: np.ndarray) -> dict[str, Any]:
    """How concentrated the routing of ``model`` is on the queries ``X`` (B, d).

    Returns :func:`routing_stats` (mean k for 50/80/95% of the weight, mean top-1
    weight, mean coverage curve for k = 1..K) plus ``top_k_weight`` (the mean share
    the served ``top_k`` clusters hold), ``centroid_cosine`` (min/mean/max pairwise
    cosine of the K centroids; None when K = 1), ``duplicate_centroids`` (how many
    centroids lie within cosine 1e-4 of an earlier one: they split their weight),
    ``n_clusters``, ``temperature``, ``top_k`` and ``queries``.
    """
    tensors, config = routing_parts(model)
    C = unit_rows(tensors["centroids"])
    K, top_k = len(C), config["top_k"]
    stats = routing_stats(np.asarray(X, np.float32), C, config["temperature"])
    S = C @ C.T
    sims = S[np.triu_indices(K, 1)]
    return {
        "n_clusters": K,
        "temperature": config["temperature"],
        "top_k": top_k,
        "queries": len(X),
        **stats,
        "top_k_weight": stats["curve"][min(top_k, K) - 1],
        "duplicate_centroids": int((np.triu(S, 1) > 1 - 1e-4).any(axis=0).sum()),
        "centroid_cosine": {"min": float(sims.min()), "mean": float(sims.mean()), "max": float(sims.max())}
        if len(sims)
        else None,
    }


def plot_coverage(curve: Sequence[float], path: str | os.PathLike[str], top_k: int | None = None) -> None:
    """Save a PNG of the mean coverage ``curve`` (K,) against k = 1..K, with the
    :data:`COVERAGE_LEVELS` as guides and the served ``top_k`` marked if given."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    k = np.arange(1, len(curve) + 1)
    ax.plot(k, curve, marker="." if len(curve) <= 50 else None, color="tab:blue", label="mean coverage")
    for p in COVERAGE_LEVELS:
        ax.axhline(p, color="gray", linestyle=":", linewidth=0.8)
    if top_k is not None:
        ax.axvline(top_k, color="tab:orange", linestyle="--", label=f"served top_k = {top_k}")
    ax.set(
        xlabel="k (best clusters kept)",
        ylabel="share of routing weight",
        xscale="log",
        ylim=(0, 1.02),
        title="routing-weight coverage against k",
    )
    ax.legend(loc="lower right")
    fig.savefig(os.fspath(path), dpi=120)


# --- meta-clustering ------------------------------------------------------------------


def cluster_sizes(
    model: Projector | Projection, labels: np.ndarray | None = None, sizes: np.ndarray | None = None
) -> np.ndarray:
    """Pairs per cluster (K,), float64: ``sizes`` if given, else the model's
    ``config["fit"]["cluster_sizes"]``, else counts of ``labels`` (an estimator's
    ``labels_`` by default), else ones."""
    tensors, config = routing_parts(model)
    K = len(tensors["centroids"])
    if sizes is None:
        sizes = config.get("fit", {}).get("cluster_sizes")
    if sizes is None:
        labels = getattr(model, "labels_", None) if labels is None else labels
        sizes = np.ones(K) if labels is None else np.bincount(labels, minlength=K)
    sizes = np.asarray(sizes, np.float64)
    if sizes.shape != (K,) or (sizes < 0).any():
        raise ValueError(f"sizes must be {K} non-negative counts, got shape {sizes.shape}")
    return sizes


def group_centroids(centroids: np.ndarray, n_meta: int, method: str = "kmeans", random_state: int = 0) -> np.ndarray:
    """Group labels 0..K'-1 (K,) of the ``centroids`` (K, d), by k-means on the unit
    centroids or by average-linkage agglomerative clustering on cosine distance.
    K' is ``n_meta`` (fewer only if k-means leaves groups empty on duplicate centroids)."""
    K = len(centroids)
    if method not in ("kmeans", "agglomerative"):
        raise ValueError(f"method must be 'kmeans' or 'agglomerative', got {method!r}")
    if not isinstance(n_meta, (int, np.integer)) or not 1 <= n_meta <= K:
        raise ValueError(f"n_meta must be an int in [1, {K}] (the model's clusters), got {n_meta!r}")
    if n_meta == K:
        return np.arange(K)
    C = unit_rows(centroids)
    if method == "kmeans":
        return kmeans_labels(C, int(n_meta), random_state)
    from sklearn.cluster import AgglomerativeClustering

    return AgglomerativeClustering(n_clusters=int(n_meta), metric="cosine", linkage="average").fit_predict(C)


def merge_centroids(centroids: np.ndarray, sizes: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Merged centroids (K', d): the unit-normalised size-weighted mean of each group's
    unit centroids (equal weights within a group whose sizes are all zero)."""
    K_meta = int(groups.max()) + 1
    total = np.bincount(groups, weights=sizes, minlength=K_meta)
    weights = np.where(total[groups] > 0, sizes, 1.0)
    onehot = np.zeros((K_meta, len(groups)))
    onehot[groups, np.arange(len(groups))] = weights
    return unit_rows(onehot @ unit_rows(centroids))


def nearest_scaled_orthogonal(M: np.ndarray) -> np.ndarray:
    """The ``s * R`` closest to ``M`` (d, d) in Frobenius norm, R orthogonal: with
    ``M = U diag(sigma) V^T``, ``R = U V^T`` (the polar factor) and ``s = mean(sigma)``."""
    U, sigma, Vt = np.linalg.svd(np.asarray(M, np.float64))
    return sigma.mean() * U @ Vt


def _weighted_mean(W: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_k weights[k] W[k] / sum weights`` of W (m, d, d), float64; plain mean if all zero."""
    weights = weights if weights.sum() > 0 else np.ones(len(W))
    return np.tensordot(weights / weights.sum(), W.astype(np.float64), axes=1)


def meta_cluster(
    model: Projector | Projection,
    n_meta: int,
    method: str = "kmeans",
    merge: str = "average",
    Q: np.ndarray | None = None,
    A: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    sizes: np.ndarray | None = None,
    random_state: int = 0,
) -> Projector:
    """Merge the K clusters of a federated ``model`` into ``n_meta`` and rebuild it.

    Centroids are grouped by :func:`group_centroids`; each group gets the merged
    centroid of :func:`merge_centroids` (weights: :func:`cluster_sizes`) and a map:

    * ``merge="average"``: the size-weighted mean of its members' W, replaced by
      :func:`nearest_scaled_orthogonal` (averaging distinct rotations shrinks them).
      A group of one keeps its W as is, so K' = K returns the same model.
    * ``merge="refit"``: FederatedProjection's per-cluster step on the merged
      cluster's pairs, ``W_g = B + lambda * cluster_delta(Q_g, A_g, B)``: Procrustes in
      the span of the group's questions, the base map ``B`` elsewhere, with the
      model's shrinkage ``lambda`` and ``min_cluster_size`` (smaller groups keep
      ``B``). ``B`` is refitted as the model was: the validated global map of
      (Q, A) with ``random_state``, or the identity. Needs the training pairs
      ``Q``, ``A`` (n, d) and their cluster ``labels`` (n,) (an estimator's
      ``labels_`` by default); without labels each pair goes to its nearest
      centroid by question cosine, recorded as ``pair_labels`` in the config.

    Returns a federated ``Projector`` with K' clusters, ``top_k = min(top_k, K')``;
    other tensors (a stored answer index) and the metadata are kept. Its
    ``config["fit"]["meta"]`` records the merge and the group of each old cluster.
    """
    if merge not in ("average", "refit"):
        raise ValueError(f"merge must be 'average' or 'refit', got {merge!r}")
    tensors, config = routing_parts(model)
    if config["kind"] != "federated":
        raise ValueError(
            f"meta-clustering merges the per-cluster maps W: needs a federated model, got {config['kind']}"
        )
    C, W = tensors.pop("centroids"), tensors.pop("W")
    labels = getattr(model, "labels_", None) if labels is None else labels
    weights = cluster_sizes(model, labels, sizes)
    groups = group_centroids(C, n_meta, method, random_state)
    K_meta = int(groups.max()) + 1
    fit = dict(config.get("fit", {}))
    meta: dict[str, Any] = {"from_clusters": len(C), "method": method, "merge": merge, "groups": groups.tolist()}
    if merge == "average":
        members = (np.flatnonzero(groups == g) for g in range(K_meta))
        merged = [
            W[m[0]] if len(m) == 1 else nearest_scaled_orthogonal(_weighted_mean(W[m], weights[m])) for m in members
        ]
        fit["cluster_sizes"] = np.bincount(groups, weights=weights, minlength=K_meta).round().astype(int).tolist()
    else:
        if Q is None or A is None:
            raise ValueError("merge='refit' needs the training pairs Q and A")
        Q, A = np.asarray(Q, np.float32), np.asarray(A, np.float32)
        if Q.ndim != 2 or Q.shape != A.shape or Q.shape[1] != C.shape[1]:
            raise ValueError(f"Q and A must both be (n, {C.shape[1]}), got {Q.shape} and {A.shape}")
        meta["pair_labels"] = "nearest centroid" if labels is None else "given"
        if labels is None:
            labels = np.argmax(unit_rows(Q) @ unit_rows(C).T, axis=1)
        labels = np.asarray(labels)
        if labels.shape != (len(Q),) or labels.min() < 0 or labels.max() >= len(C):
            raise ValueError(
                f"labels must hold one cluster in [0, {len(C)}) per pair ({len(Q)},), got shape {labels.shape}"
            )
        base = (
            GlobalProjection(random_state=random_state).fit(Q, A).W_.astype(np.float64)
            if fit.get("base", "global") == "global"
            else np.eye(Q.shape[1])
        )
        lam, min_size = fit.get("shrinkage", 1.0), fit.get("min_cluster_size", 2)
        pair_group = groups[labels]
        merged = [
            base + lam * cluster_delta(Q[rows], A[rows], base) if rows.sum() >= min_size else base
            for rows in (pair_group == g for g in range(K_meta))
        ]
        fit["cluster_sizes"] = np.bincount(pair_group, minlength=K_meta).tolist()
    config.update(n_clusters=K_meta, top_k=min(config["top_k"], K_meta), fit={**fit, "meta": meta})
    tensors.update(
        centroids=merge_centroids(C, weights, groups).astype(np.float32), W=np.stack(merged).astype(np.float32)
    )
    return Projector.from_tensors(tensors, json.dumps(config), _projector(model).metadata)


def meta_candidates(n_clusters: int) -> list[int]:
    """Default K' to try for a model of K clusters: the powers of two below K."""
    return [2**i for i in range(int(n_clusters).bit_length()) if 2**i < n_clusters]


def suggest_meta(
    model: Projector | Projection,
    X: np.ndarray,
    candidates: Sequence[int],
    method: str = "kmeans",
    sizes: np.ndarray | None = None,
    random_state: int = 0,
) -> dict[str, Any]:
    """Pick K' among ``candidates`` from the routing of the merged centroids on ``X`` (B, d).

    Each candidate's row holds ``n_meta`` and :func:`routing_stats` (without the
    curve) of the merged model, full softmax at the model's temperature. The
    suggestion is the largest candidate whose mean top-1 weight reaches
    :data:`META_TOP1` or whose mean k for 80% coverage is at most :data:`META_K80`
    (``met=True``): the least merging that makes routing decisive. (Merging tends
    to concentrate routing and k80 <= K' always, so every K' <= 10 qualifies and the
    smallest qualifying K' would always be the smallest candidate.) If none
    qualifies, the smallest candidate, the most concentrated on offer (``met=False``).
    """
    tensors, config = routing_parts(model)
    C = tensors["centroids"]
    if not len(candidates):
        raise ValueError("no candidate K' to try")
    weights = cluster_sizes(model, sizes=sizes)
    X = np.asarray(X, np.float32)
    rows = []
    for n_meta in sorted(set(candidates)):
        merged = merge_centroids(C, weights, group_centroids(C, n_meta, method, random_state))
        stats = routing_stats(X, merged, config["temperature"])
        del stats["curve"]
        rows.append({"n_meta": int(n_meta), **stats})
    met = [r["n_meta"] for r in rows if r["top1"] >= META_TOP1 or r["mean_k"]["80%"] <= META_K80]
    return {"suggested": max(met) if met else rows[0]["n_meta"], "met": bool(met), "rows": rows}


def merge_cost(
    original: Projector | Projection,
    merged: Projector | Projection,
    X: np.ndarray,
    corpus: np.ndarray,
    gold: Sequence[Sequence[int]],
) -> dict[str, Any]:
    """What merging costs on held-out queries ``X`` (B, d) against ``corpus`` (m, d):
    ``cosine`` (mean cosine between the two models' outputs) and the
    :func:`~projroute.metrics.retrieval_metrics` of ``raw`` cosine, ``original`` and ``merged``."""
    X = np.asarray(X, np.float32)
    P, P_merged = original.project(X), merged.project(X)
    return {
        "cosine": mean_cosine(P, P_merged),
        "raw": retrieval_metrics(X, corpus, gold),
        "original": retrieval_metrics(P, corpus, gold),
        "merged": retrieval_metrics(P_merged, corpus, gold),
    }


def analyze(
    model_path: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    plot: str | os.PathLike[str] | None = None,
    meta: Sequence[int | str] | None = None,
    method: str = "kmeans",
    merge: str = "average",
    output: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The analysis ``projroute analyze`` prints, as a JSON-able dict: the cluster-count
    :func:`suggest_n_clusters` on the training pairs of ``data`` (any data spec
    :func:`projroute.datasets.load_pairs` takes), the routing :func:`granularity` on its
    held-out queries (``plot``: save the coverage curve), the cost of float16/bfloat16
    maps and, with ``meta`` (``["auto"]`` or a list of K'), the meta-clustering sweep,
    writing the suggested merged model to ``output``."""
    from projroute import datasets
    from projroute.embed import Encoder, embed_pairs
    from projroute.serving import load, with_weights_dtype

    if meta and "auto" in meta and len(meta) > 1:
        raise ValueError("--meta takes 'auto' or a list of integers, not both")
    if output and not meta:
        raise ValueError("-o writes a merged model: give --meta too")
    model = load(model_path)
    if model.kind not in ("federated", "lda"):
        raise ValueError(f"{model_path}: a {model.kind} model; analyze takes a federated or lda model")
    config = json.loads(model.config)
    pairs, ev = datasets.load_pairs(data), datasets.load_eval(data)
    encoder = Encoder()
    Q, A, _, _ = embed_pairs(pairs, encoder)
    E = encoder.encode(ev.queries + ev.corpus)
    X, C = E[: len(ev)], E[len(ev) :]
    cluster_on = config.get("fit", {}).get("cluster_on", "answers")
    result: dict[str, Any] = {
        "model": model_path,
        "kind": model.kind,
        "data": data,
        "pairs": len(pairs),
        "queries": len(ev),
        "corpus": len(ev.corpus),
        "cluster_on": cluster_on,
        "suggestion": suggest_n_clusters(A if cluster_on == "answers" else Q),
        "granularity": granularity(model, X),
        "plot": plot,
        "meta": None,
    }
    if plot:
        plot_coverage(result["granularity"]["curve"], plot, result["granularity"]["top_k"])
    w_size = sum(t.size for name, t in model.tensors().items() if _format.is_weights(name))
    result["precision"] = {}
    for dtype in ("float16", "bfloat16") if w_size else ():
        cost = merge_cost(model, with_weights_dtype(model, dtype), X, C, ev.gold)
        result["precision"][dtype] = {
            "cosine": cost["cosine"],
            "w_bytes": w_size * 2,
            **{k: cost["merged"][k] for k in ("hit@1", "mrr")},
        }
    if meta:
        K = result["granularity"]["n_clusters"]
        candidates = meta_candidates(K) if list(meta) == ["auto"] else [int(k) for k in meta]
        sweep = suggest_meta(model, X, candidates, method, random_state=seed)
        for row in sweep["rows"]:
            merged = meta_cluster(model, row["n_meta"], method, merge, Q, A, random_state=seed)
            cost = merge_cost(model, merged, X, C, ev.gold)
            row.update(cosine=cost["cosine"], **{k: cost["merged"][k] for k in ("hit@1", "mrr")})
            if row["n_meta"] == sweep["suggested"] and output:
                merged.save(output)
        # Model files store no pair labels: a refit assigns pairs to the nearest centroid.
        sweep.update(
            method=method,
            merge=merge,
            output=output,
            pair_labels="nearest centroid" if merge == "refit" else None,
            **{k: {m: cost[k][m] for m in ("hit@1", "mrr")} for k in ("raw", "original")},
        )
        result["meta"] = sweep
    return result
