"""PRLE served by the Rust core against the same network's PyTorch CPU forward, with the
same thread count, at the STS-B run's sizes (1,153 pair features, MLP head 256 -> 32,
32 prototypes, softmax routing over all of them, linear experts).

Bars (PRLE issue): Rust at least 5x PyTorch at B=1, at least 1x at B=1024. The paired
test times both back to back in each round; ``benches/report.py`` prints both views.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

D_IN, HIDDEN, DIM, K = 1153, 256, 32, 32
THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model(torch):
    pytest.importorskip("kmedoids")
    from projroute.prle import PRLEConfig, PRLERegressor
    from projroute.prle.config import ExpertConfig, HeadConfig, KernelConfig, PrototypeConfig, RouterConfig

    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, D_IN), dtype=np.float32)
    y = (2.5 + 2 * np.tanh(X[:, 0])).astype(np.float32)
    cfg = PRLEConfig(
        head=HeadConfig(kind="mlp", dim=DIM, hidden=HIDDEN),
        kernel=KernelConfig(epochs=1),
        prototypes=PrototypeConfig(n=K),
        router=RouterConfig(kind="softmax", top_k=K, temperature=0.01, learn_temperature=False),
        experts=ExpertConfig(epochs=1),
    )
    m = PRLERegressor(cfg).fit(X, y)
    torch.set_num_threads(THREADS)
    return m, rng.standard_normal((1024, D_IN), dtype=np.float32)


def torch_forward(torch, net):
    """The torch network's forward of numpy features, as served: no autograd."""

    def forward(x):
        with torch.inference_mode():
            return net(torch.from_numpy(x)).numpy()

    return forward


@pytest.mark.parametrize("batch", [1, 1024], ids=["b1", "b1024"])
@pytest.mark.parametrize("impl", ["rust", "torch"])
def test_prle(benchmark, torch, model, impl, batch):
    m, X = model
    benchmark.group = f"prle-d{D_IN}-k{K}-b{batch}"
    benchmark.extra_info.update(role=impl, threads=THREADS)
    np.testing.assert_allclose(m.predict(X[:8]), m.predict_torch(X[:8]), atol=1e-4)
    queries = [X[i : i + batch] for i in range(0, len(X), batch)][:64]
    fn = {"rust": m.predict, "torch": torch_forward(torch, m.model_)}[impl]
    it = iter(range(10**9))
    rounds = 300 if batch == 1 else 20
    benchmark.pedantic(lambda: fn(queries[next(it) % len(queries)]), rounds=rounds, warmup_rounds=5)
    benchmark.extra_info["queries_per_s"] = batch / benchmark.stats.stats.median


@pytest.mark.parametrize("batch", [1, 1024], ids=["b1", "b1024"])
def test_prle_paired(benchmark, torch, model, paired_speedup, batch):
    m, X = model
    benchmark.group = f"prle-d{D_IN}-k{K}-b{batch}"
    benchmark.extra_info.update(threads=THREADS)
    q = X[:batch]
    forward = torch_forward(torch, m.model_)
    paired_speedup(benchmark, lambda: forward(q), lambda: m.predict(q), calls=200 if batch == 1 else 10)
