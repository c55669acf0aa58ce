"""Resident memory of a loaded model: a 100 MB federated model holds its weights once.

Measured in a fresh subprocess (VmRSS from /proc, Linux only) before and after
``projroute.load``; the bar is 1.2x the file's tensor bytes.
"""

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from projroute import _format

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")

K, D = 170, 384  # W: 170 * 384 * 384 * 4 bytes = 100.3 MB

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


def test_loaded_federated_model_holds_its_weights_once(tmp_path):
    rng = np.random.default_rng(0)
    C = rng.normal(size=(K, D)).astype(np.float32)
    W = rng.normal(size=(K, D, D)).astype(np.float32)
    config = _format.header("federated", D, D, n_clusters=K, temperature=0.1, top_k=10, coverage=None)
    path = tmp_path / "fed.safetensors"
    _format.save(path, {"centroids": C, "W": W}, config)
    tensor_bytes = C.nbytes + W.nbytes
    del W
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": sysconfig.get_config_var("BINDIR") or "", "RAYON_NUM_THREADS": "2"},
    )
    r = json.loads(out.stdout)
    ratio = (r["after"] - r["before"]) / tensor_bytes
    print(
        f"\nloaded {tensor_bytes / 1e6:.1f} MB of tensors: resident +{(r['after'] - r['before']) / 1e6:.1f} MB "
        f"({ratio:.3f}x)"
    )
    assert r["kind"] == "federated"
    assert ratio <= 1.2
