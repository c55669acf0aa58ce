import numpy as np
import pytest

pytest.importorskip("sentence_transformers")

from projroute.embed import Encoder

SENTENCES = [
    "How do I reset my password?",
    "I forgot my password, how can I change it?",
    "The giraffe is the tallest living animal.",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("embed-cache")


@pytest.fixture(scope="module")
def encoder(cache):
    """One Encoder per module, so the model loads once."""
    return Encoder(cache_dir=cache)


@pytest.fixture(scope="module")
def vectors(encoder):
    return encoder.encode(SENTENCES, progress=False)


def test_encode_shape_norm_similarity(encoder, vectors):
    assert encoder.model_loaded
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sim = vectors @ vectors.T
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert sim[0, 1] > sim[1, 2] + 0.3


def test_second_encoder_uses_cache_without_model(cache, vectors):
    other = Encoder(cache_dir=cache)
    again = other.encode(SENTENCES[::-1] + SENTENCES[:1], progress=False)
    np.testing.assert_array_equal(again, np.vstack([vectors[::-1], vectors[:1]]))
    assert not other.model_loaded


def test_only_missing_texts_are_embedded(encoder, vectors, cache):
    model_dir = encoder.cache_dir
    before = set(model_dir.glob("*.npz"))
    new = ["A brand new sentence about the weather."]
    out = encoder.encode([SENTENCES[1], new[0], new[0]], progress=False)
    (shard,) = set(model_dir.glob("*.npz")) - before
    with np.load(shard) as z:
        assert z["keys"].shape == (1,) and z["vecs"].shape == (1, 384)
    np.testing.assert_array_equal(out[0], vectors[1])
    np.testing.assert_array_equal(out[1], out[2])
    assert abs(float(out[1] @ vectors[1])) < 0.9


def test_compaction_keeps_entries(encoder, tmp_path):
    enc = Encoder(cache_dir=tmp_path)
    enc._model = encoder._model  # reuse the loaded model
    enc.max_shards = 2
    texts = [f"sentence number {i}" for i in range(5)]
    first = np.vstack([enc.encode([t], progress=False) for t in texts])
    assert len(list(enc.cache_dir.glob("*.npz"))) <= 2
    fresh = Encoder(cache_dir=tmp_path)
    np.testing.assert_array_equal(fresh.encode(texts, progress=False), first)
    assert not fresh.model_loaded


def test_empty(tmp_path):
    enc = Encoder(cache_dir=tmp_path)
    out = enc.encode([])
    assert out.shape == (0, 384) and out.dtype == np.float32
    assert not enc.model_loaded


def test_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PROJROUTE_CACHE", str(tmp_path))
    assert Encoder().cache_dir.parent == tmp_path
