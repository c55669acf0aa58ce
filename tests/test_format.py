"""The model file: round trips, interoperability with safetensors, and bad files."""

import json
import struct

import numpy as np
import pytest

import projroute as pr

from helpers import config, random_model, unit


@pytest.mark.parametrize("kind", ["global", "federated", "lda"])
def test_save_load_round_trip(kind, tmp_path):
    rng = np.random.default_rng(0)
    model, tensors, _ = random_model(kind, rng, top_k=3)
    path = tmp_path / f"{kind}.safetensors"
    model.save(path)
    loaded = pr.load(path)
    X = rng.normal(size=(5, 16)).astype(np.float32)
    np.testing.assert_array_equal(loaded.project(X), model.project(X))
    assert loaded.kind == kind and json.loads(loaded.config) == json.loads(model.config)
    for name, value in tensors.items():
        np.testing.assert_array_equal(loaded.tensors()[name], value)


def test_file_is_plain_safetensors_with_json_config(tmp_path):
    from safetensors.numpy import load_file, safe_open

    rng = np.random.default_rng(1)
    model, tensors, _ = random_model("federated", rng, K=4)
    path = tmp_path / "m.safetensors"
    model.save(path)
    loaded = load_file(path)
    np.testing.assert_array_equal(loaded["W"], tensors["W"])
    with safe_open(path, "numpy") as f:
        cfg = json.loads(f.metadata()["projroute"])
    assert cfg["format"] == "projroute" and cfg["version"] == 1  # whole maps: every reader opens it
    assert cfg["kind"] == "federated" and cfg["n_clusters"] == 4


def test_file_written_by_safetensors_python_loads(tmp_path):
    """Python's safetensors writer produces files the Rust reader accepts."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(2)
    C, A = unit(rng, 3, 8), unit(rng, 3, 8)
    path = tmp_path / "lda.safetensors"
    cfg = config("lda", 8, 8, n_clusters=3, temperature=0.5, top_k=3, coverage=None)
    save_file({"centroids": C, "answers": A}, path, metadata={"projroute": cfg})
    assert pr.load(path).n_clusters == 3


def _saved(tmp_path, kind="federated"):
    model, _tensors, _ = random_model(kind, np.random.default_rng(3), K=4)
    path = tmp_path / "m.safetensors"
    model.save(path)
    return path


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.safetensors"):
        pr.load(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("cut", [0, 5, 8, 40, -1], ids=["empty", "short", "header-len", "mid-header", "last-byte"])
def test_truncated_file(tmp_path, cut):
    path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data[:-1])
    with pytest.raises(pr.ModelFormatError, match=r"safetensors|projroute"):
        pr.load(path)


def test_foreign_files(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "other.safetensors"
    save_file({"weight": np.zeros((2, 2), np.float32)}, path)
    with pytest.raises(pr.ModelFormatError, match=r"other.safetensors: .*not a projroute model"):
        pr.load(path)
    text = tmp_path / "notes.txt"
    text.write_text("hello world, this is not a model at all")
    with pytest.raises(pr.ModelFormatError):
        pr.load(text)


def _rewrite(tmp_path, mutate_config=None, tensors=None, metadata_extra=None):
    """Write a federated file with a modified config or tensors via the safetensors writer."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(4)
    cfg = json.loads(config("federated", 8, 8, n_clusters=3, temperature=0.1, top_k=2, coverage=None))
    if mutate_config:
        mutate_config(cfg)
    t = (
        tensors
        if tensors is not None
        else {"centroids": unit(rng, 3, 8), "W": rng.normal(size=(3, 8, 8)).astype(np.float32)}
    )
    path = tmp_path / "bad.safetensors"
    save_file(t, path, metadata={"projroute": json.dumps(cfg), **(metadata_extra or {})})
    return path


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda c: c.update(version=pr.FORMAT_VERSION + 1), "upgrade projroute"),
        (lambda c: c.update(kind="warp"), "unknown model kind"),
        (lambda c: c.update(format="other"), "format"),
        (lambda c: c.pop("temperature"), "temperature"),
        (lambda c: c.update(temperature=0.0), "temperature"),
        (lambda c: c.update(top_k=4), "top_k"),
        (lambda c: c.update(n_clusters=5), "clusters"),
        (lambda c: c.update(dim_out=9), "dimensions"),
        (lambda c: c.update(surprise=1), "unknown field"),
    ],
    ids=[
        "newer-version",
        "unknown-kind",
        "foreign-format",
        "no-temperature",
        "zero-temperature",
        "top-k-over-K",
        "wrong-K",
        "wrong-dim",
        "unknown-field",
    ],
)
def test_bad_config(tmp_path, mutate, match):
    with pytest.raises(pr.ModelFormatError, match=match):
        pr.load(_rewrite(tmp_path, mutate))


@pytest.mark.parametrize(
    "tensors, match",
    [
        ({"centroids": np.ones((3, 8), np.float32), "W": np.ones((3, 8, 8), np.float64)}, "F32"),
        ({"centroids": np.ones((3, 8), np.float32), "W": np.ones((2, 8, 8), np.float32)}, "shape"),
        ({"centroids": np.ones((3, 8), np.float32)}, "needs a tensor `W`"),
        ({"centroids": np.ones((3, 8), np.float32), "W": np.full((3, 8, 8), np.nan, np.float32)}, "NaN"),
        ({"centroids": np.zeros((3, 8), np.float32), "W": np.ones((3, 8, 8), np.float32)}, "zero norm"),
        (
            {
                "centroids": np.ones((3, 8), np.float32),
                "W": np.ones((3, 8, 8), np.float32),
                "extra": np.ones(2, np.float32),
            },
            "unexpected tensor",
        ),
        ({"centroids": np.ones((3, 8), np.float32), "W": np.ones((3, 64), np.float32)}, "dimensions"),
    ],
    ids=["float64", "inconsistent-K", "missing-W", "nan", "zero-centroid", "extra-tensor", "W-2d"],
)
def test_bad_tensors(tmp_path, tensors, match):
    with pytest.raises(pr.ModelFormatError, match=match):
        pr.load(_rewrite(tmp_path, tensors=tensors))


def test_header_length_overflow_is_an_error_not_a_crash(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    with pytest.raises(pr.ModelFormatError):
        pr.load(path)


def _factored(rng, ranks, d=8):
    """Tensors of a federated model with factored maps of ``ranks``."""
    return {
        "centroids": unit(rng, len(ranks), d),
        "W.base": rng.normal(size=(d, d)).astype(np.float32),
        "W.U": rng.normal(size=(d, sum(ranks))).astype(np.float32),
        "W.M": rng.normal(size=(sum(ranks), d)).astype(np.float32),
    }


def test_factored_maps_round_trip_as_version_2_at_any_precision(tmp_path):
    from safetensors.numpy import load_file

    rng = np.random.default_rng(3)
    ranks = [0, 2, 8]
    tensors = _factored(rng, ranks)
    model = pr.Projector.from_tensors(
        tensors, config("federated", 8, 8, n_clusters=3, temperature=0.1, top_k=2, ranks=ranks)
    )
    X = rng.normal(size=(5, 8)).astype(np.float32)
    for dtype in ("float32", "float16"):
        path = tmp_path / f"{dtype}.safetensors"
        pr.with_weights_dtype(model, dtype).save(path)
        loaded = pr.load(path)
        cfg = json.loads(loaded.config)
        assert cfg["version"] == 2 and cfg["ranks"] == ranks
        assert {str(t.dtype) for n, t in load_file(path).items() if n.startswith("W.")} == {dtype}
        if dtype == "float32":
            np.testing.assert_array_equal(loaded.project(X), model.project(X))
            for name, value in tensors.items():
                np.testing.assert_array_equal(loaded.tensors()[name], value)
        else:
            np.testing.assert_allclose(loaded.project(X), model.project(X), rtol=1e-2, atol=1e-2)


def test_factored_maps_and_whole_maps_in_one_file_are_refused(tmp_path):
    tensors = {**_factored(np.random.default_rng(4), [1, 2, 3]), "W": np.ones((3, 8, 8), np.float32)}
    with pytest.raises(pr.ModelFormatError, match="not as `W`"):
        pr.load(_rewrite(tmp_path, lambda c: c.update(version=2, ranks=[1, 2, 3]), tensors=tensors))


@pytest.mark.parametrize(
    "ranks, version, drop, match",
    [
        ([1, 2, 3], 1, None, "needs format version 2"),
        (None, 1, None, "need `ranks`"),
        ([1, 2, 4], 2, None, "do not fit"),
        ([3, 3], 2, None, "2 ranks for 3 clusters"),
        ([1, 2, 3], 2, "W.M", "needs a tensor `W.M`"),
        ([2**64 - 1, 7, 0], 2, None, "sum past the largest size"),
    ],
    ids=["version-1", "no-ranks", "ranks-sum", "ranks-count", "missing-factor", "ranks-overflow"],
)
def test_bad_factored_maps(tmp_path, ranks, version, drop, match):
    rng = np.random.default_rng(4)
    tensors = _factored(rng, [1, 2, 3])
    tensors.pop(drop, None)

    def mutate(c):
        c.update(version=version)
        if ranks is not None:
            c.update(ranks=ranks)

    with pytest.raises(pr.ModelFormatError, match=match):
        pr.load(_rewrite(tmp_path, mutate, tensors=tensors))
