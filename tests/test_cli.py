import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")

import projroute
from projroute import _format, cli, serving

TOPICS = {
    "install": ("How do I install the package?", "Run pip install with the package name."),
    "gpu": ("Does it need a GPU?", "No, serving runs on the CPU through the Rust core."),
    "save": ("How do I save a fitted model?", "Call save with a path; it writes one safetensors file."),
    "cats": ("What do cats eat?", "Cats are carnivores and eat mostly meat."),
}
PAIRS = [(f"{q} ({variant})", a) for q, a in TOPICS.values() for variant in ("please", "quickly", "today")]
ANSWERS = list(dict.fromkeys(a for _, a in PAIRS))
KINDS = ["global", "federated", "lda"]
TINY = ["--n-clusters", "3", "--shrinkage", "0.5"]
KIND_ARGS = {"global": ["--shrinkage", "0.5"], "federated": TINY, "lda": ["--n-clusters", "3"]}


@pytest.fixture(scope="session", autouse=True)
def cache(tmp_path_factory):
    """One embedding cache for the whole session, so each text is embedded once."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("embed-cache")
        mp.setenv("PROJROUTE_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    """A dozen (question, answer) pairs over four topics, as JSONL."""
    path = tmp_path_factory.mktemp("data") / "tiny.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in PAIRS))
    return path


@pytest.fixture(scope="session")
def models(tmp_path_factory, data) -> dict[str, Path]:
    """One fitted model per kind, with the training answers as index."""
    root = tmp_path_factory.mktemp("models")
    paths = {kind: root / f"{kind}.safetensors" for kind in KINDS}
    for kind, path in paths.items():
        assert cli.main(["fit", str(data), "-o", str(path), "--kind", kind, *KIND_ARGS[kind]]) == 0
    return paths


def run_json(capsys, *argv: str) -> dict:
    assert cli.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def run_error(capsys, *argv: str) -> str:
    """Run a failing command; check exit status 2 and a one-line message, return it."""
    with pytest.raises(SystemExit) as exc:
        cli.main(list(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert lines and lines[-1].startswith("projroute: error: ") and "Traceback" not in err
    return lines[-1]


def test_entry_point_version():
    script = Path(sys.executable).parent / "projroute"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"projroute {projroute.__version__}"


# --- fit ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_fit_json_and_model(capsys, tmp_path, data, kind):
    path = tmp_path / "m.safetensors"
    r = run_json(capsys, "fit", str(data), "-o", str(path), "--kind", kind, *KIND_ARGS[kind])
    assert r["kind"] == kind and r["pairs"] == len(PAIRS) and r["path"] == str(path)
    assert r["bytes"] == path.stat().st_size > 0
    assert r["index"] == len(ANSWERS)
    assert r["n_clusters"] == (None if kind == "global" else 3)
    assert r["shrinkage"] == (None if kind == "lda" else 0.5)
    assert r["top_k"] == {"global": None, "federated": 3, "lda": 3}[kind]
    model = projroute.load(path)
    assert model.kind == kind and (model.dim_in, model.dim_out) == (384, 384)
    index, texts = serving.stored_index(model)
    assert len(index) == len(ANSWERS) and texts == ANSWERS


def test_fit_text_summary_and_options(capsys, tmp_path, data):
    path = tmp_path / "m.safetensors"
    argv = [
        "fit",
        str(data),
        "-o",
        str(path),
        "--kind",
        "lda",
        "--n-clusters",
        "3",
        "--coverage",
        "0.8",
        "--temperature",
        "0.2",
        "--no-index",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "fitted lda on 12 pairs" in out and str(path) in out and "no answer index" in out
    config = json.loads(projroute.load(path).config)
    assert config["coverage"] == 0.8 and config["temperature"] == 0.2
    assert serving.stored_index(projroute.load(path)) is None


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--kind", "global", "--n-clusters", "3"], "--n-clusters does not apply to a global model"),
        (["--kind", "lda", "--shrinkage", "0.5"], "--shrinkage does not apply to a lda model"),
        (["--kind", "global", "--shrinkage", "2"], "shrinkage must be 'auto' or in [0, 1]"),
        (["--kind", "global", "--refine-steps", "50"], "--refine-steps does not apply to a global model"),
        (["--kind", "federated", "--refine-steps", "-5"], "refine_steps must be 'auto' or an int >= 0"),
    ],
    ids=["clusters-global", "shrinkage-lda", "shrinkage-range", "refine-global", "refine-negative"],
)
def test_fit_bad_options(capsys, tmp_path, data, extra, message):
    assert message in run_error(capsys, "fit", str(data), "-o", str(tmp_path / "m.safetensors"), *extra)


def test_fit_rejects_bad_coverage(capsys, data, tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli.main(["fit", str(data), "-o", str(tmp_path / "m"), "--kind", "lda", "--coverage", "1.5"])
    assert exc.value.code == 2 and "expected a number in (0, 1)" in capsys.readouterr().err


# --- project --------------------------------------------------------------------------


def test_project_npy(capsys, tmp_path, models):
    X = np.random.default_rng(0).standard_normal((5, 384))
    np.save(tmp_path / "x.npy", X)
    out = tmp_path / "p.npy"
    r = run_json(capsys, "project", str(models["federated"]), str(tmp_path / "x.npy"), "-o", str(out))
    P = np.load(out)
    assert r["shape"] == [5, 384] and P.shape == (5, 384) and P.dtype == np.float32
    expected = projroute.load(models["federated"]).project(X.astype(np.float32))
    np.testing.assert_allclose(P, expected, rtol=1e-6)


@pytest.mark.parametrize("suffix", ["txt", "jsonl"])
def test_project_questions(capsys, tmp_path, data, models, suffix):
    src = tmp_path / f"q.{suffix}"
    lines = [q for q, _ in PAIRS[:4]] if suffix == "txt" else data.read_text().splitlines()[:4]
    src.write_text("\n".join(lines) + "\n\n")
    out = tmp_path / "p.npy"
    assert cli.main(["project", str(models["global"]), str(src), "-o", str(out)]) == 0
    assert "4 x 384 float32" in capsys.readouterr().out
    P = np.load(out)
    assert P.shape == (4, 384) and P.dtype == np.float32


# --- search ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_search_stored_index(capsys, models, kind):
    r = run_json(capsys, "search", str(models[kind]), PAIRS[0][0], "-k", "3", "--routing")
    hits = r["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert all(h["text"] == ANSWERS[h["id"]] for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert hits[0]["text"] == PAIRS[0][1]
    if kind == "global":
        assert r["routing"] is None
    else:
        weights = [w["weight"] for w in r["routing"]]
        assert all(0 <= w["cluster"] < 3 for w in r["routing"])
        assert all(0 < w <= 1 for w in weights) and sum(weights) <= 1 + 1e-5


def test_search_text_and_data(capsys, data, models):
    argv = ["search", str(models["global"]), PAIRS[3][0], "-k", "20", "--data", str(data), "--routing"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(ANSWERS) + 1  # k is capped at the index size
    assert lines[0].split(maxsplit=2)[0] == "1" and PAIRS[3][1] in lines[0]
    assert lines[-1].startswith("routing: none (global model")


# --- eval -----------------------------------------------------------------------------


def test_eval_json(capsys, data, models):
    r = run_json(capsys, "eval", *map(str, models.values()), str(data))
    assert r["queries"] == len(PAIRS) and r["corpus"] == len(ANSWERS)
    raw, *rest = r["rows"]
    assert raw["model"] == "raw cosine" and raw["path"] is None and raw["delta_mrr"] is None
    assert [row["path"] for row in rest] == [str(p) for p in models.values()]
    for row in r["rows"]:
        assert all(0 <= row[k] <= 1 for k in ("hit@1", "hit@5", "hit@10", "mrr"))
        assert row["hit@1"] <= row["hit@5"] <= row["hit@10"]
    for row in rest:
        assert row["delta_hit@1"] == pytest.approx(row["hit@1"] - raw["hit@1"])
        assert row["delta_mrr"] == pytest.approx(row["mrr"] - raw["mrr"])


def test_eval_table(capsys, data, models):
    assert cli.main(["eval", str(models["federated"]), str(models["lda"]), str(data)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, s in enumerate(lines) if s.startswith("model"))
    assert lines[header].split() == ["model", "hit@1", "hit@5", "hit@10", "mrr", "Δhit@1", "Δmrr"]
    rows = lines[header + 1 :]
    assert len(rows) == 3 and rows[0].startswith("raw cosine") and rows[0].split()[-2:] == ["-", "-"]
    assert rows[1].startswith("federated (federated.safetensors)")
    assert rows[2].startswith("lda (lda.safetensors)")
    assert len({len(s) for s in lines[header:]}) == 1  # aligned columns


# --- errors ---------------------------------------------------------------------------


def test_missing_model(capsys, tmp_path, data):
    missing = tmp_path / "nope.safetensors"
    message = run_error(capsys, "eval", str(missing), str(data))
    assert message.startswith(f"projroute: error: {missing}: No such file")


def test_foreign_safetensors(capsys, tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"weight": np.zeros((2, 2), np.float32)}, str(path))
    assert "not a projroute model" in run_error(capsys, "search", str(path), "hello")


def test_truncated_model(capsys, tmp_path, models):
    path = tmp_path / "cut.safetensors"
    blob = models["global"].read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    assert str(path) in run_error(capsys, "search", str(path), "hello")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.jsonl", None, "no such file"),
        ("bad.jsonl", '{"question": "q"}\n', "bad.jsonl:1: missing or non-string field 'answer'"),
        ("data.csv", "q,a\n", "unrecognised data spec"),
        (
            "latin1.jsonl",
            b'{"question": "q", "answer": "a"}\n{"question": "caf\xe9", "answer": "a"}\n',
            "latin1.jsonl:2: not UTF-8 text (byte 0xe9 at column 18)",
        ),
        ("deep.jsonl", "[" * 100_000 + "\n", "deep.jsonl:1: invalid JSON"),
        ("huge.jsonl", '{"question": ' + "1" * 10_000 + "}\n", "huge.jsonl:1: invalid JSON"),
    ],
    ids=["missing", "no-answer", "unknown", "not-utf8", "deep", "huge-int"],
)
def test_bad_data(capsys, tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert message in run_error(capsys, "fit", str(path), "-o", str(tmp_path / "m"), "--kind", "global")


@pytest.mark.parametrize(
    "files, message",
    [
        ({"stackExchange-FAQ.json": b'{"root": {"qapair": "no"}}'}, "stackExchange-FAQ.json: not StackFAQ data"),
        ({"stackExchange-FAQ.json": b'{"root": {"qapair": [{"answer": "a"}]}}'}, "thread 0 is not an object"),
        ({"stackExchange-FAQ.json": b'{\n"root": \xff}'}, "stackExchange-FAQ.json:2: not UTF-8 text (byte 0xff"),
        ({"stackExchange-FAQ.json": b'{\n\n"root": }'}, "stackExchange-FAQ.json:3: invalid JSON"),
        ({"train.csv": b"qtext,label,atext\nq,1,\xe9\n"}, "train.csv:2: not UTF-8 text (byte 0xe9 at column 5)"),
        ({"train.csv": b"q,a\n"}, "train.csv: expected header qtext,label,atext"),
        ({"train.csv": b"qtext,label,atext\nq,2,a\n"}, "train.csv:2: expected qtext,label(0/1),atext"),
        (
            {"train.csv": b'qtext,label,atext\n"' + b"x" * 200_000 + b'",1,a\n'},
            "train.csv:2: malformed CSV (field larger",
        ),
    ],
    ids=[
        "stackfaq-shape",
        "stackfaq-thread",
        "stackfaq-utf8",
        "stackfaq-json",
        "trec-utf8",
        "trec-header",
        "trec-label",
        "trec-huge-field",
    ],
)
def test_bad_data_folders(capsys, tmp_path, files, message):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    assert message in run_error(capsys, "fit", str(tmp_path), "-o", str(tmp_path / "m"), "--kind", "global")


def test_top_k_above_n_clusters(capsys, tmp_path, data):
    message = run_error(
        capsys, "fit", str(data), "-o", str(tmp_path / "m"), "--kind", "federated", "--n-clusters", "3", "--top-k", "5"
    )
    assert message.endswith("top_k=5 is more than n_clusters=3")
    assert not (tmp_path / "m").exists()


@pytest.fixture(scope="module")
def other_files(tmp_path_factory):
    """A tree model (keyed) and an answer index file, 384-d like the encoder."""
    root = tmp_path_factory.mktemp("other")
    W = np.stack([np.eye(384, dtype=np.float32)] * 2)
    _format.save(root / "tree.safetensors", {"W": W}, _format.header("tree", 384, 384, nodes=["", "a"]))
    projroute._core.save_index(str(root / "answers.index"), np.eye(3, 384, dtype=np.float32), ["a", "b", "c"])
    np.save(root / "x.npy", np.zeros((2, 384), np.float32))
    (root / "questions.txt").write_bytes(b"fine\n\xff\xfe oops\n")
    (root / "corpus.txt").write_bytes(b"one\ntwo\xc3\n")
    (root / "empty.npy").write_bytes(b"")
    return root


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["analyze", "{global}", "{data}"],
            "global.safetensors: a global model; analyze takes a federated or lda model",
        ),
        (["distill", "{tree}", "{data}", "-o", "{tmp}/s"], "tree.safetensors: a tree teacher needs a key per query"),
        (["distill", "{global}", "{data}", "-o", "{tmp}/s", "--domains", "2"], "--domains takes a federated or lda"),
        (["project", "{tree}", "{x}", "-o", "{tmp}/p.npy"], "key"),
        (
            ["project", "{index}", "{x}", "-o", "{tmp}/p.npy"],
            "answers.index: an answer index file (projroute-index), not a model",
        ),
        (["eval", "{index}", "{data}"], "answers.index: an answer index file (projroute-index), not a model"),
        (
            ["project", "{global}", "{questions}", "-o", "{tmp}/p.npy"],
            "questions.txt:2: not UTF-8 text (byte 0xff at column 1)",
        ),
        (["project", "{global}", "{empty}", "-o", "{tmp}/p.npy"], "empty.npy: not a readable .npy array"),
        (
            ["index", "build", "{corpus}", "-o", "{tmp}/i", "--encoder", "{tmp}"],
            "corpus.txt:2: not UTF-8 text (byte 0xc3",
        ),
        (["search", "{index}", "q", "--model", "{tree}", "--encoder", "{tmp}"], "not a static model folder"),
    ],
    ids=[
        "analyze-global",
        "distill-tree",
        "distill-domains-global",
        "project-tree",
        "project-index",
        "eval-index",
        "questions-utf8",
        "empty-npy",
        "corpus-utf8",
        "search-no-encoder",
    ],
)
def test_wrong_files_for_the_command(capsys, tmp_path, data, models, other_files, argv, message):
    names = {
        "global": models["global"],
        "data": data,
        "tmp": tmp_path,
        "tree": other_files / "tree.safetensors",
        "index": other_files / "answers.index",
        "x": other_files / "x.npy",
        "questions": other_files / "questions.txt",
        "corpus": other_files / "corpus.txt",
        "empty": other_files / "empty.npy",
    }
    assert message in run_error(capsys, *(a.format(**names) for a in argv))
    assert not (tmp_path / "p.npy").exists() and not (tmp_path / "s").exists()


def test_bad_project_input(capsys, tmp_path, models):
    np.save(tmp_path / "x.npy", np.zeros(384))
    assert "expected a 2-D float array" in run_error(
        capsys, "project", str(models["global"]), str(tmp_path / "x.npy"), "-o", str(tmp_path / "p.npy")
    )
    np.save(tmp_path / "x.npy", np.zeros((2, 10)))
    assert "10 columns, expected 384" in run_error(
        capsys, "project", str(models["global"]), str(tmp_path / "x.npy"), "-o", str(tmp_path / "p.npy")
    )


def test_search_without_index(capsys, tmp_path, data):
    path = tmp_path / "m.safetensors"
    assert cli.main(["fit", str(data), "-o", str(path), "--kind", "global", "--no-index", *KIND_ARGS["global"]]) == 0
    capsys.readouterr()
    assert "no stored answer index" in run_error(capsys, "search", str(path), PAIRS[0][0])


# --- demo -----------------------------------------------------------------------------


@pytest.mark.slow
def test_demo(capsys, tmp_path):
    r = run_json(capsys, "demo", "--out", str(tmp_path))
    assert r["dir"] == str(tmp_path) and r["queries"] > r["pairs"] > 100
    assert [row["model"] for row in r["rows"]] == ["raw cosine", *KINDS]
    for kind, path in r["models"].items():
        model = projroute.load(path)
        assert model.kind == kind and len(serving.stored_index(model)[0]) == r["corpus"]
    assert all(0 <= row["mrr"] <= 1 for row in r["rows"])


def test_distill_reports_fidelity_and_serves_the_student(capsys, tmp_path, data, models):
    pytest.importorskip("torch")
    out, plot = tmp_path / "student.safetensors", tmp_path / "loss.png"
    r = run_json(
        capsys, "distill", str(models["federated"]), str(data), "-o", str(out), "--epochs", "2", "--plot", str(plot)
    )
    assert projroute.load(out).kind == "transformer" and plot.stat().st_size > 0
    assert r["student"]["parameters"] > 0 and r["compression"] == pytest.approx(
        r["teacher"]["parameters"] / r["student"]["parameters"]
    )
    assert -1.0 <= r["cosine"] <= 1.0 and 0.0 <= r["overlap@10"] <= 1.0
    assert set(r["retrieval"]) == {"raw", "teacher", "student"}
    assert all(r["latency_ms"][m][b] > 0 for m in ("teacher", "student") for b in ("b1", "b1024"))


def test_distill_domains_writes_an_ensemble(capsys, tmp_path, data, models):
    pytest.importorskip("torch")
    out = tmp_path / "ensemble.safetensors"
    r = run_json(
        capsys,
        "distill",
        str(models["federated"]),
        str(data),
        "-o",
        str(out),
        "--domains",
        "2",
        "--epochs",
        "1",
        "--no-augment",
    )
    served = projroute.load(out)
    assert served.kind == r["student"]["kind"] == "transformer_ensemble"
    assert json.loads(served.config)["ensemble"]["n_domains"] == r["training"]["domains"] == 2
    assert r["student"]["parameters"] > 0 and -1.0 <= r["cosine"] <= 1.0
    assert "federated" in run_error(
        capsys, "distill", str(models["global"]), str(data), "-o", str(out), "--domains", "2"
    )
