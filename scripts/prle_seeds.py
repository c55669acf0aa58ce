"""PRLE against the value-space wrappers over several seeds: is PRLE at least as good
as the best wrapper fitted on its own value embeddings, beyond one seed's noise?

For each seed the config's whole fit is re-run (kernel, prototypes, experts), then every
value-space baseline of ``prle run`` is fitted on that seed's value embeddings; STS-B test
Spearman for each, then the mean and standard deviation over seeds, and PRLE's mean
paired difference to each wrapper. Also per seed: corr(|Δy|, distance) in value space
from test rows to training rows (issue 12's metric bar, held out), and how much dropping
the top prototype moves the test predictions against dropping a random one (its
attribution bar). Re-run::

    PROJROUTE_DATA=../shared/data .venv/bin/python scripts/prle_seeds.py configs/prle_stsb.toml --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np

from projroute.prle import PRLERegressor, load_config
from projroute.prle.baselines import oracle_mixture, regressors, scores
from projroute.prle.data import load_stsb
from projroute.prle.report import faithfulness
from projroute.prle.train import distance_correlation


def one_seed(cfg, data, seed: int) -> tuple[dict[str, float], float, dict[str, float]]:
    """Test Spearman of PRLE and of every value-space wrapper, all at ``seed``; PRLE's
    dev Spearman (what a choice between configs may look at); the metric and attribution
    checks on test."""
    cfg = replace(cfg, seed=seed)
    tr, dev, te = data["train"], data["dev"], data["test"]
    model = PRLERegressor(cfg).fit(tr.X, tr.y, dev.X, dev.y)
    out = {"PRLE": scores(model.predict(te.X), te.y)["spearman"]}
    A, B = model.transform(tr.X), model.transform(te.X)
    for name, reg in regressors(seed).items():
        out[name] = scores(reg.fit(A, tr.y).predict(B), te.y)["spearman"]
    k = cfg.report.oracle_clusters
    out[f"oracle mixture (k={k})"] = scores(oracle_mixture(A, tr.y, B, k, seed), te.y)["spearman"]
    checks = {
        "test_to_train_corr": distance_correlation(B, te.y, seed=seed, reference=(A, tr.y)),
        **faithfulness(model, te.X, seed),
    }
    return out, scores(model.predict(dev.X), dev.y)["spearman"], checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--json", help="also write the per-seed figures here")
    args = ap.parse_args()
    cfg = load_config(args.config)
    data = load_stsb(cfg.data or None)
    runs, checks = [], []
    for seed in args.seeds:
        test, dev, c = one_seed(cfg, data, seed)
        runs.append(test)
        checks.append(c)
        print(
            f"seed {seed}: PRLE dev {dev:.4f}; test-to-train corr(|Δy|, distance) {c['test_to_train_corr']:.3f}; "
            f"dropping the top / a random prototype moves ŷ by {c['drop_top_mean_change']:.4f} / "
            f"{c['drop_random_mean_change']:.4f}; test " + ", ".join(f"{m} {v:.4f}" for m, v in test.items()),
            flush=True,
        )
    methods = list(runs[0])
    table = np.array([[r[m] for m in methods] for r in runs])
    print(f"\nSTS-B test Spearman over seeds {args.seeds}: mean ± sd; PRLE minus method, mean ± sd (paired)")
    print(f"{'method (value space)':<26} {'mean':>7} {'sd':>7} {'PRLE − it':>10} {'sd':>7} {'PRLE ahead':>10}")
    for j, m in enumerate(methods):
        diff = table[:, 0] - table[:, j]
        print(
            f"{m:<26} {table[:, j].mean():>7.4f} {table[:, j].std(ddof=1) if len(runs) > 1 else 0:>7.4f} "
            f"{diff.mean():>+10.4f} {diff.std(ddof=1) if len(runs) > 1 else 0:>7.4f} "
            f"{f'{int((diff >= 0).sum())}/{len(runs)}':>10}"
        )
    corr = [c["test_to_train_corr"] for c in checks]
    print(f"test-to-train corr(|Δy|, distance) in value space: min {min(corr):.3f}, mean {np.mean(corr):.3f}")
    ratio = [c["drop_top_mean_change"] / c["drop_random_mean_change"] for c in checks]
    print(f"dropping the top prototype over dropping a random one, mean |Δŷ| ratio: min {min(ratio):.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seeds": args.seeds, "runs": runs, "checks": checks}, f, indent=1)


if __name__ == "__main__":
    main()
