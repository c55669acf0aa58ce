"""The packed kernel's dense product against numpy's BLAS at 1 and 2 threads: one
(1024, 768) @ (768, 768) product through a global model (``projroute.set_num_threads``),
the same product in numpy, and numpy's 2048² square GEMM (``threadpoolctl`` limits
BLAS; it comes with scikit-learn, in the `train` extra); median GFLOP/s of 30 calls (5 for
the square GEMM). Prints the machine first.

    .venv/bin/python scripts/gemm_threads.py
"""

from __future__ import annotations

import json
import time

import numpy as np
from threadpoolctl import threadpool_limits

import projroute as pr
from projroute._format import header


def median_seconds(f, n: int) -> float:
    f()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    info = pr.kernel_info()
    print(f"cpu: {info['cpu_model']}; kernel: {info['kernel']}")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1024, 768)).astype(np.float32)
    W = (rng.normal(size=(768, 768)) / 28).astype(np.float32)
    S = rng.normal(size=(2048, 2048)).astype(np.float32)
    model = pr.Projector.from_tensors(
        {"W": W, "bias": np.zeros(768, np.float32)}, json.dumps(header("global", 768, 768))
    )
    flops = 2 * 1024 * 768 * 768
    for threads in (1, 2):
        pr.set_num_threads(threads)
        with threadpool_limits(threads):
            rust = flops / median_seconds(lambda: model.project(X), 30) / 1e9
            blas = flops / median_seconds(lambda: X @ W, 30) / 1e9
            square = 2 * 2048**3 / median_seconds(lambda: S @ S, 5) / 1e9
        print(f"{threads} thread(s): projroute {rust:.1f}, numpy {blas:.1f}, numpy 2048² {square:.1f} GFLOP/s")
    pr.set_num_threads(0)


if __name__ == "__main__":
    main()
