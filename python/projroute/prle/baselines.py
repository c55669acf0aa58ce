"""Baselines for PRLE, each fitted in a given space (retrieval: the pair features;
value: PRLE's value embeddings): scikit-learn regressors, the oracle mixture, and the
raw cosine of the two sentence embeddings."""

from __future__ import annotations

from typing import Any

import numpy as np

from projroute.prle.prototypes import _distances, select_prototypes

__all__ = ["oracle_mixture", "regressors", "scores"]


def regressors(seed: int = 0) -> dict[str, Any]:
    """The wrapper baselines, unfitted: ridge (linear), k-NN, SVR, decision tree and random
    forest (inputs standardised where the method is scale-sensitive)."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import Ridge
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR
    from sklearn.tree import DecisionTreeRegressor

    return {
        "linear (ridge)": make_pipeline(StandardScaler(), Ridge(alpha=10.0)),
        "k-NN (k=20)": KNeighborsRegressor(n_neighbors=20, weights="distance"),
        "SVR (rbf)": make_pipeline(StandardScaler(), SVR(C=1.0)),
        "decision tree": DecisionTreeRegressor(max_depth=8, min_samples_leaf=10, random_state=seed),
        "random forest": RandomForestRegressor(
            n_estimators=100, max_features="sqrt", min_samples_leaf=3, n_jobs=1, random_state=seed
        ),
    }


def oracle_mixture(Z: np.ndarray, y: np.ndarray, Z_test: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """The oracle mixture: k-medoids (FasterPAM) clusters of the training rows Z (n, d),
    one ridge regressor per cluster, each test row (m, d) routed to its nearest medoid.
    Returns predictions (m,)."""
    from sklearn.linear_model import Ridge

    medoids = Z[select_prototypes(Z, k, "kmedoids", seed)]
    train_c = _distances(Z, medoids).argmin(1)
    test_c = _distances(Z_test, medoids).argmin(1)
    out = np.empty(len(Z_test))
    for c in range(k):
        model = Ridge(alpha=10.0).fit(Z[train_c == c], y[train_c == c])
        if (test_c == c).any():
            out[test_c == c] = model.predict(Z_test[test_c == c])
    return out


def scores(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Pearson, Spearman and MSE of predictions (n,) against gold y (n,)."""
    from projroute.static.stsb import spearman

    pred = np.asarray(pred, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return {
        "pearson": float(np.corrcoef(pred, y)[0, 1]),
        "spearman": spearman(pred, y),
        "mse": float(np.mean((pred - y) ** 2)),
    }
