"""The packed kernel's dense product against numpy's BLAS at 1 and 2 threads: one
(M, K) @ (K, N) product through a global model (``projroute.set_num_threads``), by
default (1024, 768) @ (768, 768), the same product in numpy, and numpy's 2048² square
GEMM (``threadpoolctl`` limits BLAS; it comes with scikit-learn, in the `train` extra);
median GFLOP/s of 30 calls (5 for the square GEMM). Prints the machine first.

    .venv/bin/python scripts/gemm_threads.py [--shape M K N]
"""

from __future__ import annotations

import argparse
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[1024, 768, 768], metavar=("M", "K", "N"))
    m, k, n = parser.parse_args().shape
    info = pr.kernel_info()
    print(f"cpu: {info['cpu_model']}; kernel: {info['kernel']}; ({m}, {k}) @ ({k}, {n})")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(m, k)).astype(np.float32)
    W = (rng.normal(size=(k, n)) / np.sqrt(k)).astype(np.float32)
    S = rng.normal(size=(2048, 2048)).astype(np.float32)
    model = pr.Projector.from_tensors({"W": W, "bias": np.zeros(n, np.float32)}, json.dumps(header("global", k, n)))
    flops = 2 * m * k * n
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
