"""Faults: saves are atomic (a failed or interrupted save leaves the earlier file
intact), and a process serving a model survives its file being truncated or replaced.

A full disk is simulated in a subprocess with a file-size limit (``RLIMIT_FSIZE``,
SIGXFSZ ignored so that writes fail with EFBIG); an interrupted save is a subprocess
killed with SIGKILL while its temporary file is being written.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import projroute as pr
from projroute import _format
from projroute._atomic import atomic_write

from helpers import config, unit

resource = pytest.importorskip("resource", reason="file-size limits are POSIX")

D = 64
SMALL = np.eye(D, dtype=np.float32)


def write_global(path: Path, W: np.ndarray) -> bytes:
    _format.save(path, {"W": W}, _format.header("global", len(W), W.shape[1]))
    return path.read_bytes()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# Each snippet writes a file about 1 MB long to argv[1] (the limit is 256 KiB).
BIG_WRITES = {
    "save_file": """
        from projroute import _format
        W = np.ones((512, 512), np.float32)
        _format.save(path, {"W": W}, _format.header("global", 512, 512))
    """,
    "Projector.save": """
        W = np.ones((512, 512), np.float32)
        config = json.dumps({"format": "projroute", "version": 1, "kind": "global", "dim_in": 512, "dim_out": 512})
        pr.Projector.from_tensors({"W": W}, config).save(path)
    """,
    "save_index": """
        pr._core.save_index(path, np.ones((512, 512), np.float32), ["a"] * 512)
    """,
    "save_jsonl": """
        from projroute import datasets
        datasets.save_jsonl(datasets.Pairs(["q" * 1000] * 1000, ["a"] * 1000), path)
    """,
    "atomic_write": """
        from projroute._atomic import atomic_write
        with atomic_write(path) as f:
            np.save(f, np.ones((512, 512), np.float32))
    """,
}

FULL_DISK = """
import json, resource, signal, sys
import numpy as np
import projroute as pr
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
path = sys.argv[1]
try:
{body}
except OSError as e:
    print("OSError", e)
    sys.exit(3)
"""


@pytest.mark.parametrize("writer", list(BIG_WRITES))
def test_a_full_disk_leaves_the_earlier_file_intact(tmp_path, writer):
    path = tmp_path / "target"
    earlier = write_global(path, SMALL)
    script = FULL_DISK.format(body=textwrap.indent(textwrap.dedent(BIG_WRITES[writer]), "    "))
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True)
    assert out.returncode == 3, out.stdout + out.stderr
    assert out.stdout.startswith("OSError")
    assert path.read_bytes() == earlier
    assert leftovers(tmp_path) == []
    assert pr.load(path).kind == "global"


INTERRUPTED = """
import sys
import numpy as np
from projroute import _format
W = np.full((2048, 2048), 2.0, np.float32)  # 16 MB: each save takes a while
while True:
    _format.save(sys.argv[1], {"W": W}, _format.header("global", 2048, 2048))
"""


def test_an_interrupted_save_leaves_a_whole_file(tmp_path):
    path = tmp_path / "model.safetensors"
    write_global(path, SMALL)
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(path)])
    try:
        deadline = time.monotonic() + 60
        while not leftovers(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert leftovers(tmp_path), "the saving process never wrote a temporary file"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    # Either the earlier file or a complete new one, never a part of one.
    model = pr.load(path)
    assert model.dim_in in (D, 2048)
    assert all(n.endswith(".tmp") for n in leftovers(tmp_path))


def test_atomic_write_keeps_the_earlier_file_when_the_block_fails(tmp_path):
    path = tmp_path / "out.npy"
    path.write_bytes(b"earlier")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write(b"half")
        raise RuntimeError("interrupted")
    assert path.read_bytes() == b"earlier"
    assert leftovers(tmp_path) == []
    with atomic_write(path) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new"
    assert (path.stat().st_mode & 0o777) == 0o666 & ~_umask()


def _umask() -> int:
    out = subprocess.run([sys.executable, "-c", "import os; print(os.umask(0))"], capture_output=True, text=True)
    return int(out.stdout)


def test_a_failed_index_build_leaves_the_earlier_index(tmp_path):
    path = tmp_path / "answers.index"
    pr._core.save_index(str(path), unit(np.random.default_rng(0), 3, 8), ["a", "b", "c"])
    earlier = path.read_bytes()
    with pytest.raises(FileNotFoundError):
        pr.build_index(["x", "y"], path, encoder=tmp_path / "no-encoder")
    assert path.read_bytes() == earlier
    assert leftovers(tmp_path) == []


def test_a_served_model_survives_its_file_truncated_or_replaced(tmp_path):
    """The loader reads the file into memory (no mmap), so nothing the file goes through
    afterwards can reach a loaded model: no SIGBUS, no change in its outputs."""
    rng = np.random.default_rng(0)
    path = tmp_path / "model.safetensors"
    W = rng.normal(size=(D, D)).astype(np.float32)
    write_global(path, W)
    model = pr.load(path)
    X = unit(rng, 5, D)
    before = model.project(X)
    with open(path, "r+b") as f:
        f.truncate(100)
    np.testing.assert_array_equal(model.project(X), before)
    path.write_bytes(b"\0" * 50)
    np.testing.assert_array_equal(model.project(X), before)
    replacement = tmp_path / "new.safetensors"
    write_global(replacement, 2 * W)
    os.replace(replacement, path)
    np.testing.assert_array_equal(model.project(X), before)
    np.testing.assert_allclose(pr.load(path).project(X), 2 * before, rtol=1e-5, atol=1e-6)


def test_saving_over_a_model_in_use_is_safe(tmp_path):
    """A save renames a new file over the old one: a process that loaded the old file
    keeps serving it, and a load after the save reads the new one whole."""
    path = tmp_path / "model.safetensors"
    first = np.random.default_rng(2).normal(size=(8, 8)).astype(np.float32)
    _format.save(path, {"W": first}, json.loads(config("global", 8, 8)))
    model = pr.load(path)
    _format.save(path, {"W": 3 * first}, json.loads(config("global", 8, 8)))
    X = np.eye(8, dtype=np.float32)
    np.testing.assert_array_equal(model.project(X), first)
    np.testing.assert_array_equal(pr.load(path).project(X), 3 * first)
