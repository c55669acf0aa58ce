"""candle (Rust) against PyTorch on the distilled student.

Tolerance: max |candle - torch| <= 1e-4 on random inputs and random weights
(weights scaled up from the default init so that every block matters).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import projroute as pr  # noqa: E402
from projroute.distill import ProjectionTransformer, load_student, save_student  # noqa: E402

ARCHS = {
    "small": dict(d_model=32, n_heads=4, n_layers=1, num_keys=8, ffn_dim=64),
    "deeper": dict(d_model=48, n_heads=6, n_layers=3, num_keys=20, ffn_dim=40),
}


def random_student(dim_in, dim_out, seed, **arch):
    torch.manual_seed(seed)
    student = ProjectionTransformer(dim_in, dim_out, **arch)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return student.eval()


@pytest.mark.parametrize("arch", sorted(ARCHS), ids=sorted(ARCHS))
# 2100 rows: a batch the Rust core cuts into 64-row chunks run per thread (up to 16 threads).
@pytest.mark.parametrize("batch", [1, 7, 300, 2100])
def test_candle_matches_torch(tmp_path, arch, batch):
    student = random_student(24, 20, seed=batch, **ARCHS[arch])
    path = tmp_path / "student.safetensors"
    save_student(student, path, {"teacher": "random"})
    served = pr.load(path)
    assert served.kind == "transformer" and (served.dim_in, served.dim_out) == (24, 20)
    x = np.random.default_rng(batch).normal(size=(batch, 24)).astype(np.float32)
    with torch.no_grad():
        want = student(torch.from_numpy(x)).numpy()
    got = served.project(x)
    assert np.abs(got - want).max() <= 1e-4
    assert served.route(x) is None


def test_export_round_trip_and_bad_files(tmp_path):
    student = random_student(16, 16, seed=0, **ARCHS["small"])
    path = tmp_path / "s.safetensors"
    save_student(student, path, {})
    back = load_student(path)
    x = torch.randn(5, 16)
    with torch.no_grad():
        assert torch.equal(back(x), student(x))
    # A missing tensor and a wrong shape are format errors, not crashes.
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(path, "numpy") as f:
        meta = f.metadata()
    tensors = load_file(path)
    broken = dict(tensors)
    del broken["layers.0.keys"]
    save_file(broken, tmp_path / "missing.safetensors", metadata=meta)
    with pytest.raises(pr.ModelFormatError, match="keys"):
        pr.load(tmp_path / "missing.safetensors")
    broken = dict(tensors)
    broken["layers.0.values"] = np.zeros((3, 32), np.float32)
    save_file(broken, tmp_path / "shape.safetensors", metadata=meta)
    with pytest.raises(pr.ModelFormatError, match="shape"):
        pr.load(tmp_path / "shape.safetensors")
    with pytest.raises(ValueError, match="columns"):
        pr.load(path).project(np.ones((2, 15), np.float32))
