"""How well |ŷ_i − ŷ_j| can track |y_i − y_j| on STS-B test, given a predictor's accuracy.

Adds Gaussian noise to the gold test scores so that the noisy scores ŷ have a chosen
Pearson correlation with y, then prints corr(|Δy|, |Δŷ|) over 200,000 random pairs (the
pairs and the measure of ``projroute.prle.train.distance_correlation``). It bounds issue
12's metric bar on held-out pairs: a value space whose distances follow the score can do
little better than its own predictions.

    PROJROUTE_DATA=../shared/data .venv/bin/python scripts/prle_metric_ceiling.py
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from projroute.prle.train import distance_correlation


def main() -> None:
    path = Path(os.environ.get("PROJROUTE_DATA", "../shared/data")) / "stsb" / "test.csv"
    with open(path, encoding="utf-8", newline="") as f:
        y = np.array([float(row[2]) for row in csv.reader(f)])
    rng = np.random.default_rng(0)
    print("Pearson(y, ŷ)  corr(|Δy|, |Δŷ|)")
    for target in (0.82, 0.85, 0.88, 0.90, 0.92, 0.95):
        noise = rng.normal(scale=y.std() * np.sqrt(1 / target**2 - 1), size=len(y))
        y_hat = y + noise
        pearson = float(np.corrcoef(y, y_hat)[0, 1])
        print(f"{pearson:13.3f}  {distance_correlation(y_hat[:, None], y):.3f}")


if __name__ == "__main__":
    main()
