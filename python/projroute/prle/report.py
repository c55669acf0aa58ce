"""A whole PRLE run from one config: fit on STS-B train (early stopping on dev), score
PRLE and every baseline on test in one table, measure the metric, check attributions,
plot both spaces. ``projroute prle run CONFIG`` calls :func:`run`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from projroute.prle.baselines import oracle_mixture, regressors, scores
from projroute.prle.config import PRLEConfig
from projroute.prle.data import Split, load_stsb
from projroute.prle.estimator import PRLERegressor
from projroute.prle.train import distance_correlation

__all__ = ["faithfulness", "plot_tsne", "run"]


@torch.no_grad()
def faithfulness(model: PRLERegressor, X: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Drop each row's top-weighted prototype, or a random one among those it routes to,
    and re-route without it. Returns the mean |Δŷ| of each and the share of rows where
    dropping the top one moves the prediction more."""
    net = model.model_
    z = torch.from_numpy(model.transform(X))
    yhat, w, _ = net.mix(z)
    k = w.shape[1]
    rng = np.random.default_rng(seed)
    routed = (w > 0).numpy()
    rand = torch.from_numpy(np.array([rng.choice(np.flatnonzero(r)) for r in routed]))
    out = {}
    for name, drop in (("top", w.argmax(1)), ("random", rand)):
        y_drop = net.mix(z, exclude=torch.nn.functional.one_hot(drop, k).bool())[0]
        out[name] = (y_drop - yhat).abs()
    return {
        "drop_top_mean_change": float(out["top"].mean()),
        "drop_random_mean_change": float(out["random"].mean()),
        "top_moves_more_share": float((out["top"] > out["random"]).float().mean()),
    }


def plot_tsne(model: PRLERegressor, split: Split, path: Path, n_points: int, seed: int = 0) -> None:
    """t-SNE of the retrieval space (pair features) and the value space of ``n_points``
    training rows plus the prototypes (black crosses), coloured by gold score; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    protos = model.prototype_index_
    rest = np.setdiff1d(np.arange(len(split.y)), protos)
    rows = np.concatenate([rng.choice(rest, min(n_points, len(rest)), replace=False), protos])
    X = split.X[rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    for ax, (title, data) in zip(axes, (("retrieval space (pair features)", X), ("value space", model.transform(X)))):
        xy = TSNE(2, init="pca", random_state=seed, perplexity=min(30.0, (len(rows) - 1) / 3)).fit_transform(data)
        sc = ax.scatter(
            xy[: -len(protos), 0], xy[: -len(protos), 1], c=split.y[rows[: -len(protos)]], s=4, cmap="viridis"
        )
        ax.scatter(xy[-len(protos) :, 0], xy[-len(protos) :, 1], marker="x", c="black", s=40, label="prototypes")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(sc, ax=axes, label="gold score")
    axes[0].legend(loc="lower left")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: PRLEConfig, encoder: Any = None) -> dict[str, Any]:
    """Fit, evaluate and report one run; writes ``model.safetensors`` and ``tsne.png``
    under ``cfg.report.output``. Returns a JSON-able dict (``table``: one row per method)."""
    start = time.time()
    out = Path(cfg.report.output)
    out.mkdir(parents=True, exist_ok=True)
    data = load_stsb(cfg.data or None, encoder)
    tr, dev, te = data["train"], data["dev"], data["test"]
    Xtr, Xdev, Xte = tr.X, dev.X, te.X
    model = PRLERegressor(cfg).fit(Xtr, tr.y, Xdev, dev.y, pairs=list(zip(tr.s1, tr.s2)))
    model.save(out / "model.safetensors")
    table = [{"method": "PRLE", "space": "value", **scores(model.predict(Xte), te.y)}]
    a, b = np.polyfit(tr.cosine, tr.y, 1)
    table.append({"method": "cosine (u, v)", "space": "retrieval", **scores(a * te.cosine + b, te.y)})
    if cfg.report.baselines:
        spaces = {"retrieval": (Xtr, Xte), "value": (model.transform(Xtr), model.transform(Xte))}
        for space, (A, B) in spaces.items():
            for name, reg in regressors(cfg.seed).items():
                table.append({"method": name, "space": space, **scores(reg.fit(A, tr.y).predict(B), te.y)})
            k = cfg.report.oracle_clusters
            pred = oracle_mixture(A, tr.y, B, k, cfg.seed)
            table.append({"method": f"oracle mixture (k={k})", "space": space, **scores(pred, te.y)})
    Ztr, Zte = model.transform(Xtr), model.transform(Xte)
    metric = {}
    for space, (A, B) in {"retrieval": (Xtr, Xte), "value": (Ztr, Zte)}.items():
        metric[f"train_{space}"] = distance_correlation(A, tr.y, seed=cfg.seed)
        # Held-out rows against training rows: the distances prototype routing measures.
        metric[f"test_to_train_{space}"] = distance_correlation(B, te.y, seed=cfg.seed, reference=(A, tr.y))
        metric[f"test_{space}"] = distance_correlation(B, te.y, seed=cfg.seed)
    # The same for the 1-d space of PRLE's own predictions: how far held-out pairs
    # scatter around the curve given the model's errors alone.
    metric["test_prediction"] = distance_correlation(model.predict(Xte)[:, None], te.y, seed=cfg.seed)
    tsne = None
    if cfg.report.tsne:
        tsne = str(out / "tsne.png")
        plot_tsne(model, tr, Path(tsne), cfg.report.tsne_points, cfg.seed)
    return {
        "table": table,
        "distance_correlation": metric,
        "faithfulness": faithfulness(model, Xte, cfg.report.faithfulness_seed),
        "kernel_epochs": {"run": len(model.kernel_history_.dev), "best": model.kernel_history_.best_epoch},
        "expert_epochs": {"run": len(model.expert_history_.dev), "best": model.expert_history_.best_epoch},
        "temperature": model.model_.router.temperature,
        "model": str(out / "model.safetensors"),
        "tsne": tsne,
        "seconds": time.time() - start,
        "config": cfg.to_dict(),
    }


def show(r: dict[str, Any]) -> str:
    """The run as text: the table, then the metric and attribution checks."""
    lines = [f"{'method':<26} {'space':<10} {'Pearson':>8} {'Spearman':>9} {'MSE':>7}"]
    for row in r["table"]:
        lines.append(
            f"{row['method']:<26} {row['space']:<10} {row['pearson']:>8.4f} {row['spearman']:>9.4f} {row['mse']:>7.4f}"
        )
    m, f = r["distance_correlation"], r["faithfulness"]
    lines += [
        "corr(|Δy|, distance), retrieval / value space: train pairs "
        f"{m['train_retrieval']:.3f} / {m['train_value']:.3f}; test to train {m['test_to_train_retrieval']:.3f} / "
        f"{m['test_to_train_value']:.3f}; test pairs {m['test_retrieval']:.3f} / {m['test_value']:.3f} "
        f"(|Δŷ| of PRLE's test predictions: {m['test_prediction']:.3f})",
        f"attributions: dropping the top prototype moves ŷ by {f['drop_top_mean_change']:.4f} on average, "
        f"a random routed one by {f['drop_random_mean_change']:.4f} (top moves more on "
        f"{100 * f['top_moves_more_share']:.1f}% of rows)",
        f"wrote {r['model']}" + (f" and {r['tsne']}" if r["tsne"] else "") + f" in {r['seconds']:.0f} s",
    ]
    return "\n".join(lines)
