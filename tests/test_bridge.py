"""BridgedProjection (issue 10, part 3): queries from one space served by a model fitted
in another, through a ridge bridge learned on a corpus embedded by both. The Rust core
must match the numpy definition ``model(q @ W_in + b_in)`` (rtol 1e-4, atol 1e-5)."""

import json

import numpy as np
import pytest

import projroute as pr
from projroute.reference import unit_rows
from projroute.ridge import RIDGE_GRID, ridge_map

from helpers import assert_one_se_choice, unit

D_Q, D_A = 12, 16


def spaces(rng, n):
    """n latent points seen by a cheap (12-d, noisy) and a strong (16-d) encoder."""
    Z = rng.normal(size=(n, 8))
    cheap = Z @ SPACES["cheap"] + 0.05 * rng.normal(size=(n, D_Q))
    strong = Z @ SPACES["strong"]
    return cheap.astype(np.float32), unit_rows(strong.astype(np.float32))


SPACES = {
    "cheap": np.random.default_rng(100).normal(size=(8, D_Q)),
    "strong": np.random.default_rng(101).normal(size=(8, D_A)),
}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    corpus = spaces(rng, 2000)
    Qs, Qm = spaces(rng, 300)
    # Answers: the strong view of each question, rotated a little (what the model learns).
    R = np.linalg.qr(np.eye(D_A) + 0.3 * rng.normal(size=(D_A, D_A)))[0].astype(np.float32)
    A = unit_rows(Qm @ R)
    return corpus, Qs, A, R


@pytest.fixture(scope="module")
def fitted(data):
    corpus, Qs, A, _ = data
    return pr.BridgedProjection(pr.FederatedProjection(n_clusters=4, random_state=0)).fit(Qs, A, corpus)


def test_rust_matches_the_numpy_definition(fitted, data):
    S, M = data[0]
    W = ridge_map(S - S.mean(0), M - M.mean(0), fitted.alpha_)
    np.testing.assert_allclose(fitted.W_in_, W, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fitted.b_in_, M.mean(0) - S.mean(0) @ W, rtol=1e-4, atol=1e-5)
    X = unit(np.random.default_rng(5), 40, D_Q)
    bridged = X @ fitted.W_in_ + fitted.b_in_
    np.testing.assert_allclose(fitted.project(X), fitted.model_.project(bridged), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fitted.route(X), fitted.model_.route(bridged), rtol=1e-4, atol=1e-5)
    assert fitted.kind == "federated" and fitted.config_["input_dim"] == D_Q
    assert (fitted.projector_.dim_in, fitted.projector_.dim_out) == (D_Q, D_A)


def test_alpha_is_chosen_on_the_training_pairs(fitted):
    assert list(fitted.validation_) == list(RIDGE_GRID)
    assert_one_se_choice(fitted.alpha_, fitted.validation_)
    assert fitted.config_["fit"]["bridge"] == {
        "alpha": fitted.alpha_,
        "validation_mrr": fitted.validation_,
        "corpus_sentences": 2000,
    }


def test_the_model_adds_to_the_bridge_on_new_questions(fitted, data):
    """Held-out questions: the bridge alone lands near their strong view; the model fitted
    behind it also learns the rotation from questions to answers."""
    *_, R = data
    Qs, Qm = spaces(np.random.default_rng(9), 200)
    answers = unit_rows(Qm @ R)

    def hit1(P):
        return float(np.mean(np.argmax(unit_rows(P) @ answers.T, axis=1) == np.arange(len(P))))

    bridge_only, bridged = hit1(Qs @ fitted.W_in_ + fitted.b_in_), hit1(fitted.project(Qs))
    assert bridged > bridge_only + 0.05 and bridged > 0.8, (bridge_only, bridged)


def test_save_load_round_trip(fitted, tmp_path):
    path = tmp_path / "bridged.safetensors"
    fitted.save(path, weights_dtype="float16")
    loaded = pr.load(path)
    assert (loaded.dim_in, loaded.dim_out, loaded.kind) == (D_Q, D_A, "federated")
    config = json.loads(loaded.config)
    assert config["input_dim"] == D_Q and config["weights_dtype"] == "float16"
    tensors = loaded.tensors()
    np.testing.assert_array_equal(tensors["bridge.W"], fitted.W_in_)  # the bridge stays float32
    X = unit(np.random.default_rng(6), 10, D_Q)
    np.testing.assert_allclose(loaded.project(X), fitted.project(X), rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="columns"):
        loaded.project(unit(np.random.default_rng(6), 3, D_A))


def test_bad_input(data):
    corpus, Qs, A, _ = data
    S, M = corpus
    with pytest.raises(ValueError, match="corpus is 12 -> 15"):
        pr.BridgedProjection().fit(Qs, A, (S, M[:, :15]))
    with pytest.raises(ValueError, match="alpha"):
        pr.BridgedProjection(alpha=0).fit(Qs, A, corpus)
    with pytest.raises(ValueError, match="needs keys"):
        pr.BridgedProjection(pr.TreeProjection()).fit(Qs, A, corpus)


def test_cli_fit_with_a_query_encoder_then_search(capsys, encoder_dir, tmp_path):
    """``projroute fit DATA --query-encoder DIR``: static questions, MiniLM answers, a bridge
    from the corpus; the model then serves an index of MiniLM answers to static queries."""
    pytest.importorskip("sentence_transformers")
    from projroute import cli, datasets

    model = tmp_path / "bridged.safetensors"
    fit = ["fit", "demo", "--kind", "federated", "--query-encoder", str(encoder_dir), "-o", str(model)]
    assert cli.main([*fit, "--bridge-sentences", "300", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["query_encoder"] == str(encoder_dir) and r["bridge"]["corpus_sentences"] == 300
    assert r["bridge"]["alpha"] in RIDGE_GRID
    loaded = pr.load(model)
    assert (loaded.dim_in, loaded.dim_out, loaded.kind) == (32, 384, "federated")
    answers = tmp_path / "answers.txt"
    answers.write_text("\n".join(dict.fromkeys(datasets.load_pairs("demo").answers)), "utf-8")
    index = tmp_path / "answers.index"
    build = ["index", "build", "--encoder", str(encoder_dir), "--model", str(model), "--answers", "minilm"]
    assert cli.main([*build, str(answers), "-o", str(index)]) == 0
    capsys.readouterr()
    assert cli.main(["search", str(index), "how do I install it?", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert len(hits) == 3 and hits[0]["score"] >= hits[2]["score"]
