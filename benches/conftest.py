"""Synthetic, seeded data for the Python benchmarks (see benches/README.md).

Queries and centroids are random unit vectors, maps W are random Gaussian matrices
scaled by 1/sqrt(D); everything is float32 and built once per session.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass

import numpy as np
import pytest

from projroute import Projector, kernel_info
from projroute._format import header

SEED = 20240601

# Federated: the comparison the bars are about.
FED_B, FED_D, FED_K, FED_TOP_K, FED_T = 1024, 768, 124, 10, 0.1
# LDA: flat softmax over all heads (top_k = K).
LDA_D, LDA_K, LDA_T = 384, 1000, 0.1
# Roofline GEMM size (square, float32).
GEMM_N = 2048
# Memory-bandwidth probe: the bytes a single federated query must read (top_k maps of
# D x D floats), as several distinct blocks cycled so that none is cache-resident.
MEMBW_BLOCK_FLOATS = FED_TOP_K * FED_D * FED_D
MEMBW_N_BLOCKS = 8


_LOADAVG_AT_START = os.getloadavg() if hasattr(os, "getloadavg") else None


def pytest_report_header(config) -> str:
    """The machine a figure belongs to, printed at the top of every bench run."""
    info = kernel_info()
    features = " ".join(info["features"]) or "none"
    return f"cpu: {info['cpu_model']}; features: {features}; projroute kernel: {info['kernel']}"


@pytest.fixture(scope="session")
def machine() -> dict:
    """``cpu_model``, the CPU's SIMD ``features`` and the core's ``kernel`` path."""
    return kernel_info()


def pytest_benchmark_update_machine_info(config, machine_info):
    """Add what the figures depend on: the CPU model, its SIMD features and the core's
    kernel path, cores, numpy's BLAS and its threads, and the load average when the
    session started (other work on a shared machine)."""
    import numpy

    machine_info["projroute"] = kernel_info()
    machine_info["nproc"] = n_cpus()
    machine_info["loadavg_at_start"] = _LOADAVG_AT_START
    machine_info["loadavg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    machine_info["numpy"] = numpy.__version__
    try:
        from threadpoolctl import threadpool_info

        machine_info["blas"] = [
            {k: i.get(k) for k in ("internal_api", "version", "num_threads", "architecture")} for i in threadpool_info()
        ]
    except ImportError:
        machine_info["blas"] = None


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def config_json(kind: str, dim_in: int, dim_out: int, k: int, t: float, top_k: int) -> str:
    return json.dumps(header(kind, dim_in, dim_out, n_clusters=k, temperature=t, top_k=top_k, coverage=None))


@dataclass
class FederatedCase:
    X: np.ndarray  # (B, D) unit rows
    centroids: np.ndarray  # (K, D) unit rows
    W: np.ndarray  # (K, D, D)
    temperature: float
    top_k: int
    projector: Projector

    @property
    def flops(self) -> float:
        """Useful FLOPs of one full-batch projection: 2 * B * top_k * D^2."""
        b, d = self.X.shape
        return 2.0 * b * self.top_k * d * self.W.shape[2]

    def flops_per_query(self) -> float:
        return 2.0 * self.top_k * self.X.shape[1] * self.W.shape[2]


@dataclass
class LdaCase:
    X: np.ndarray  # (B, D) unit rows; B = 1024 (slice for B = 1)
    centroids: np.ndarray  # (K, D)
    answers: np.ndarray  # (K, D)
    temperature: float
    top_k: int
    projector: Projector

    def flops(self, b: int) -> float:
        """2·B·K·D for the scores plus 2·B·K·D for the blend (the exp/normalise are O(B·K))."""
        k, d = self.centroids.shape
        return 4.0 * b * k * d


SETTLE_S = 0.5


@pytest.fixture(autouse=True)
def settle():
    """Pause before every benchmark: OpenBLAS worker threads keep spinning for a while
    after numpy's last BLAS call, and on a 2-core machine they steal the cores from the
    next benchmark's threads (measured: a Rust GEMM right after numpy GEMMs ran 2-3x
    slower for its first rounds). The pause lets them park."""
    time.sleep(SETTLE_S)
    yield


@pytest.fixture(scope="session")
def federated() -> FederatedCase:
    rng = np.random.default_rng(SEED)
    X = unit_rows(rng, FED_B, FED_D)
    C = unit_rows(rng, FED_K, FED_D)
    W = rng.standard_normal((FED_K, FED_D, FED_D), dtype=np.float32)
    W *= np.float32(1.0 / np.sqrt(FED_D))
    proj = Projector.from_tensors(
        {"centroids": C, "W": W},
        config_json("federated", FED_D, FED_D, FED_K, FED_T, FED_TOP_K),
    )
    return FederatedCase(X, C, W, FED_T, FED_TOP_K, proj)


@pytest.fixture(scope="session")
def lda() -> LdaCase:
    rng = np.random.default_rng(SEED + 1)
    X = unit_rows(rng, 1024, LDA_D)
    C = unit_rows(rng, LDA_K, LDA_D)
    A = unit_rows(rng, LDA_K, LDA_D)
    proj = Projector.from_tensors(
        {"centroids": C, "answers": A},
        config_json("lda", LDA_D, LDA_D, LDA_K, LDA_T, LDA_K),
    )
    return LdaCase(X, C, A, LDA_T, LDA_K, proj)


@pytest.fixture(scope="session")
def gemm_operands() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED + 2)
    a = rng.standard_normal((GEMM_N, GEMM_N), dtype=np.float32)
    b = rng.standard_normal((GEMM_N, GEMM_N), dtype=np.float32)
    return a, b


@pytest.fixture(scope="session")
def membw_blocks() -> list[np.ndarray]:
    """MEMBW_N_BLOCKS distinct float32 blocks of top_k·D² floats (≈ 23.6 MB each, 189 MB
    in all: several times the last-level cache, so cycling them reads from DRAM)."""
    rng = np.random.default_rng(SEED + 3)
    return [rng.standard_normal(MEMBW_BLOCK_FLOATS, dtype=np.float32) for _ in range(MEMBW_N_BLOCKS)]


@pytest.fixture(scope="session")
def medians() -> dict[str, dict[str, float]]:
    """Median seconds per (group, test name), filled as the benchmarks run, so that a
    later test in a group can report its ratio to an earlier one in extra_info."""
    return {}


def n_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _record(benchmark, medians: dict, name: str, flops: float | None = None) -> float | None:
    """Store this benchmark's median under its group, add GFLOP/s to extra_info, and
    return the median (None when benchmarking is disabled)."""
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return None
    med = float(stats.stats.median)
    medians.setdefault(benchmark.group, {})[name] = med
    benchmark.extra_info["role"] = name
    if hasattr(os, "getloadavg"):
        benchmark.extra_info["loadavg_1min"] = os.getloadavg()[0]
    benchmark.extra_info["median_ms"] = med * 1e3
    if flops is not None:
        benchmark.extra_info["flops"] = flops
        benchmark.extra_info["gflops"] = flops / med / 1e9
    return med


PAIRED_ROUNDS = 9
# Between the halves of a pair: longer than OpenBLAS's worker threads spin after a call
# (2^28 cycles by default), so that neither half runs against the other's spinning threads.
PAUSE_S = 0.25


def _seconds(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def _pair_rounds(benchmark, first, second) -> list[tuple[float, float]]:
    """``PAIRED_ROUNDS`` rounds (after one not kept) of ``first()`` then ``second()``,
    each returning seconds, back to back with a pause after each half, so that a slow
    spell of a shared host slows both halves of a pair. Returns every round's pair of
    times; the benchmark's own timings are of whole rounds."""
    halves: list[tuple[float, float]] = []

    def pair() -> None:
        a = first()
        time.sleep(PAUSE_S)
        halves.append((a, second()))
        time.sleep(PAUSE_S)

    pair()  # warm-up, not kept
    halves.clear()
    benchmark.pedantic(pair, rounds=PAIRED_ROUNDS, warmup_rounds=0)
    return halves


def _paired(benchmark, run, flops: float, operands: tuple[np.ndarray, np.ndarray], calls: int = 1) -> None:
    """The roofline bar in paired rounds (:func:`_pair_rounds`): numpy's square GEMM on
    ``operands`` (best of two calls), then ``run()`` (best of ``calls``). extra_info gets
    every round's ratio of ``run``'s GFLOP/s (``flops`` a call) to the GEMM's; the report
    prints their median."""
    a, b = operands
    out = np.empty_like(a)
    halves = _pair_rounds(
        benchmark,
        lambda: min(_seconds(lambda: np.matmul(a, b, out=out)) for _ in range(2)),
        lambda: min(_seconds(run) for _ in range(calls)),
    )
    gemm_flops = 2.0 * a.shape[0] ** 3
    ratios = [(flops / r) / (gemm_flops / g) for g, r in halves]
    benchmark.extra_info.update(role="paired", paired_ratios=ratios)


def _paired_speedup(benchmark, baseline, run, calls: int) -> None:
    """Speedup of ``run`` over ``baseline`` in paired rounds (:func:`_pair_rounds`), each
    half one call untimed (the pause lets threads sleep and clocks drop), then the median
    of ``calls`` calls. extra_info gets every round's speedup (baseline time over
    ``run``'s) and both halves' times; the report prints their medians."""

    def median_s(f) -> float:
        f()
        return statistics.median(_seconds(f) for _ in range(calls))

    halves = _pair_rounds(benchmark, lambda: median_s(baseline), lambda: median_s(run))
    benchmark.extra_info.update(
        role="paired_speedup",
        speedups=[b / r for b, r in halves],
        baseline_s=[b for b, _ in halves],
        run_s=[r for _, r in halves],
    )


@pytest.fixture(scope="session")
def paired_speedup():
    """The ``_paired_speedup`` helper, as a fixture."""
    return _paired_speedup


@pytest.fixture(scope="session")
def paired():
    """The ``_paired`` helper, as a fixture."""
    return _paired


@pytest.fixture(scope="session")
def record():
    """The ``_record`` helper, as a fixture (test modules need not import conftest)."""
    return _record


def global_projector(W: np.ndarray) -> Projector:
    """A Rust global map ``x @ W``: one GEMM through the core's packed kernel on all
    threads (used as a diagnostic sub-step beside numpy's BLAS on the same shape)."""
    cfg = header("global", W.shape[0], W.shape[1])
    return Projector.from_tensors({"W": np.ascontiguousarray(W, dtype=np.float32)}, json.dumps(cfg))


@pytest.fixture(scope="session")
def rust_gemm():
    """Factory: ``rust_gemm(W)`` -> a Rust global Projector computing ``x @ W``."""
    return global_projector
