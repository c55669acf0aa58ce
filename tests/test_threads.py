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
    assert info["kernel"] == available_kernels(info)[-1]
    if platform.machine() == "x86_64" and os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = next(line.split(":", 1)[1].split() for line in f if line.startswith("flags"))
        assert avx2 == ({"avx2", "fma", "f16c"} <= set(flags))
        assert ("avx512f" in info["features"]) == ("avx512f" in flags)


KERNEL_CAPS = {"portable": "portable", "avx2": "avx2+fma+f16c", "avx512": "avx512f"}


def available_kernels(info: dict) -> list[str]:
    """The kernel paths this CPU's features allow, narrowest first."""
    features = set(info["features"])
    paths = ["portable"]
    if {"avx2", "fma", "f16c"} <= features:
        paths.append("avx2+fma+f16c")
    if "avx512f" in features:
        paths.append("avx512f")
    return paths


def test_every_kernel_path_projects_what_the_default_does(tmp_path):
    """``PROJROUTE_KERNEL`` forces each path this CPU has (a cap above what it has falls
    back to the widest it runs); every fixture model projects the same under each, to
    float32 rounding (rtol 1e-4, atol 1e-5)."""
    available = available_kernels(pr.kernel_info())
    script = (
        "import sys, numpy as np, projroute as pr\n"
        "from pathlib import Path\n"
        "X = np.random.default_rng(0).normal(size=(300, 64)).astype(np.float32)\n"
        "out = {}\n"
        "for p in sorted(Path(sys.argv[1]).glob('*.safetensors')):\n"
        "    m = pr.load(p)\n"
        "    keys = (Path(sys.argv[1]) / 'query_keys.txt').read_text().split()\n"
        "    Xm = np.resize(X, (300, m.dim_in)).astype(np.float32)\n"
        "    ks = [keys[i % len(keys)] for i in range(300)] if m.kind in ('tree', 'hierarchical') else None\n"
        "    out[p.stem] = m.project(Xm) if ks is None else m.project(Xm, ks)\n"
        "np.savez(sys.argv[2], kernel=pr.kernel_info()['kernel'], **out)\n"
    )
    results = {}
    for cap, path in KERNEL_CAPS.items():
        dest = tmp_path / f"{cap}.npz"
        env = {**os.environ, "PROJROUTE_KERNEL": cap}
        subprocess.run([sys.executable, "-c", script, str(FIXTURES), str(dest)], check=True, env=env)
        results[cap] = dict(np.load(dest))
        wanted = path if path in available else available[-1]
        assert str(results[cap].pop("kernel")) == wanted
    assert set(results["portable"]) == set(MODELS)
    for cap in ("avx2", "avx512"):
        for name in MODELS:
            np.testing.assert_allclose(
                results[cap][name], results["portable"][name], rtol=1e-4, atol=1e-5, err_msg=f"{cap} {name}"
            )
