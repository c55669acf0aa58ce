"""Model files written before issue 9 (tests/fixtures/pre_issue9, by its make.py at
commit 31c9985) load and project as they did then, and a save/load round trip keeps
every tensor, the config and the outputs bit for bit.

"As they did then" is bit for bit, except for the federated kind: its blend now sums
each row's routed terms in routing order (so a row's output no longer depends on its
batch or the thread count), which moves the last bits of some outputs against the
stored ones; those match to 1e-6."""

from pathlib import Path

import numpy as np
import pytest

import projroute as pr

FIXTURES = Path(__file__).parent / "fixtures" / "pre_issue9"
MODELS = sorted(p.stem for p in FIXTURES.glob("*.safetensors"))
X = np.load(FIXTURES / "queries.npy")
KEYS = (FIXTURES / "query_keys.txt").read_text().split("\n")[:-1]
EXPECTED = np.load(FIXTURES / "expected.npz")


def project(model: pr.Projector) -> np.ndarray:
    return model.project(X, KEYS) if model.kind in ("tree", "hierarchical") else model.project(X)


def assert_as_then(model: pr.Projector, name: str) -> None:
    """``model``'s outputs are the stored ones (see the module docstring)."""
    if model.kind == "federated":
        np.testing.assert_allclose(project(model), EXPECTED[name], rtol=0, atol=1e-6)
    else:
        np.testing.assert_array_equal(project(model), EXPECTED[name])


def test_every_kind_is_covered():
    kinds = {pr.load(FIXTURES / f"{name}.safetensors").kind for name in MODELS}
    assert kinds == {"global", "federated", "lda", "tree", "hierarchical", "transformer", "transformer_ensemble"}


@pytest.mark.parametrize("name", MODELS)
def test_old_files_project_as_they_did(name):
    assert_as_then(pr.load(FIXTURES / f"{name}.safetensors"), name)


@pytest.mark.parametrize("name", MODELS)
def test_save_load_round_trip_is_bit_identical(name, tmp_path):
    model = pr.load(FIXTURES / f"{name}.safetensors")
    model.save(tmp_path / "again.safetensors")
    back = pr.load(tmp_path / "again.safetensors")
    assert back.config == model.config and back.metadata == model.metadata
    assert back.tensors().keys() == model.tensors().keys()
    for key, value in model.tensors().items():
        np.testing.assert_array_equal(back.tensors()[key], value, err_msg=key)
    np.testing.assert_array_equal(project(back), project(model))
    assert_as_then(back, name)


@pytest.mark.parametrize("name", MODELS)
def test_index_reads_the_stored_answers_alone(name):
    model = pr.load(FIXTURES / f"{name}.safetensors")
    stored = model.tensors().get("index.embeddings")
    if stored is None:
        assert model.index is None
    else:
        np.testing.assert_array_equal(model.index, stored)
