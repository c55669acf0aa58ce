"""Resident memory: a loaded federated model holds its weights once (100 MB, and 1 GB
as the issue asks), and projecting 10^6 queries in batches of 1,024 does not grow it.

Measured in fresh subprocesses (VmRSS from /proc, Linux only): before and after
``projroute.load``, with a bar of 1.2x the file's tensor bytes; and after the first
100 batches and after the last, with a bar of 4 MiB of growth (one batch's output is
0.25 MiB; a leak of one output per batch would be 244 MiB).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from projroute import _format

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")

D = 384
SIZES = {"100MB": 170, "1GB": 1700}  # clusters K; W takes K * 384 * 384 * 4 bytes

MEASURE = """
import gc, json, sys
import projroute

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

before = rss()
model = projroute.load(sys.argv[1])
gc.collect()
print(json.dumps({"before": before, "after": rss(), "kind": model.kind}))
"""


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], config: dict) -> None:
    """A model file written straight from the arrays (no copy, no fsync: fast at 1 GB)."""
    header: dict = {"__metadata__": {"projroute": json.dumps(config)}}
    offset = 0
    for name, a in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for a in tensors.values():
            f.write(memoryview(np.ascontiguousarray(a)).cast("B"))


def rss_run(script: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "RAYON_NUM_THREADS": "2"},
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize("size", ["100MB", pytest.param("1GB", marks=pytest.mark.slow)])
def test_loaded_federated_model_holds_its_weights_once(tmp_path, size):
    K = SIZES[size]
    rng = np.random.default_rng(0)
    C = rng.normal(size=(K, D)).astype(np.float32)
    W = np.empty((K, D, D), np.float32)
    W[:] = rng.normal(size=(D, D)).astype(np.float32)  # a 1 GB random draw would take longer than the test
    config = _format.header("federated", D, D, n_clusters=K, temperature=0.1, top_k=10, coverage=None)
    path = tmp_path / "fed.safetensors"
    write_safetensors(path, {"centroids": C, "W": W}, config)
    tensor_bytes = C.nbytes + W.nbytes
    del W
    r = rss_run(MEASURE, str(path))
    ratio = (r["after"] - r["before"]) / tensor_bytes
    print(
        f"\nloaded {tensor_bytes / 1e6:.1f} MB of tensors: resident +{(r['after'] - r['before']) / 1e6:.1f} MB "
        f"({ratio:.3f}x)"
    )
    assert r["kind"] == "federated"
    assert ratio <= 1.2


PROJECT = """
import json, sys
import numpy as np
import projroute
from projroute._format import header

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

K, D, B, N = 16, 64, 1024, 10**6
rng = np.random.default_rng(0)
config = header("federated", D, D, n_clusters=K, temperature=0.1, top_k=4, coverage=None)
tensors = {"centroids": rng.normal(size=(K, D)).astype(np.float32), "W": rng.normal(size=(K, D, D)).astype(np.float32)}
model = projroute.Projector.from_tensors(tensors, json.dumps(config))
pool = [rng.normal(size=(B, D)).astype(np.float32) for _ in range(8)]
batches = -(-N // B)
for i in range(batches):
    out = model.project(pool[i % len(pool)])
    if i == 99:
        warm = rss()
print(json.dumps({"warm": warm, "end": rss(), "queries": batches * B}))
"""


def test_projecting_a_million_queries_does_not_grow_memory():
    r = rss_run(PROJECT)
    growth = r["end"] - r["warm"]
    print(f"\nprojected {r['queries']} queries in batches of 1024: resident {growth / 2**20:+.2f} MiB after warm-up")
    assert r["queries"] >= 10**6
    assert growth <= 4 * 2**20
