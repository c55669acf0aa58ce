"""Threads: one loaded model serves many Python threads at once (the GIL is released
in the core), with results identical to one thread; the core's thread count is a
setting (``projroute.set_num_threads``, ``RAYON_NUM_THREADS``). Throughput is measured
in ``benches/test_bench_threads.py``, not here."""

import os
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import projroute as pr

FIXTURES = Path(__file__).parent / "fixtures" / "pre_issue9"
MODELS = sorted(p.stem for p in FIXTURES.glob("*.safetensors"))
THREADS = 8


@pytest.fixture
def restore_threads():
    yield
    pr.set_num_threads(0)


def keys_for(model: pr.Projector, n: int) -> list[str] | None:
    if model.kind not in ("tree", "hierarchical"):
        return None
    keys = (FIXTURES / "query_keys.txt").read_text().split()
    return [keys[i % len(keys)] for i in range(n)]


@pytest.mark.parametrize("setting", [0, 1, 2], ids=["default", "one-thread", "two-threads"])
@pytest.mark.parametrize("name", MODELS)
def test_eight_threads_give_what_one_thread_gives(name, setting, restore_threads):
    pr.set_num_threads(setting)
    model = pr.load(FIXTURES / f"{name}.safetensors")
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(n, model.dim_in)).astype(np.float32) for n in (1, 7, 64, 300) * 4]

    def work(X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        keys = keys_for(model, len(X))
        P = model.project(X) if keys is None else model.project(X, keys)
        return P, None if keys is not None else model.route(X)

    expected = [work(X) for X in batches]
    with ThreadPoolExecutor(THREADS) as pool:
        for _ in range(3):
            for (P, w), (P1, w1) in zip(pool.map(work, batches), expected):
                np.testing.assert_array_equal(P, P1)
                if w1 is None:
                    assert w is None
                else:
                    np.testing.assert_array_equal(w, w1)


def test_set_num_threads_sizes_the_core(restore_threads):
    default = pr.get_num_threads()
    assert default >= 1
    pr.set_num_threads(3)
    assert pr.get_num_threads() == 3
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda _: pr.get_num_threads(), range(2))) == [3, 3]
    pr.set_num_threads(0)
    assert pr.get_num_threads() == default
    with pytest.raises(OverflowError):
        pr.set_num_threads(-1)


def test_rayon_num_threads_sets_the_default():
    script = "import projroute; print(projroute.get_num_threads())"
    env = {**os.environ, "RAYON_NUM_THREADS": "3"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "3"


def test_kernel_info_names_the_path_the_features_allow():
    info = pr.kernel_info()
    assert isinstance(info["cpu_model"], str) and info["cpu_model"]
    assert all(isinstance(f, str) for f in info["features"])
    avx2 = {"avx2", "fma", "f16c"} <= set(info["features"])
    assert info["kernel"] == ("avx2+fma+f16c" if avx2 else "portable")
    if platform.machine() == "x86_64" and os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = next(line.split(":", 1)[1].split() for line in f if line.startswith("flags"))
        assert avx2 == ({"avx2", "fma", "f16c"} <= set(flags))
        assert ("avx512f" in info["features"]) == ("avx512f" in flags)
