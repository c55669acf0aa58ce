"""PRLE: every head, router and prototype selector on synthetic data; seeded runs;
Rust/torch parity; save and load; bad input; the CLI on a tiny config."""

import itertools
import json
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("kmedoids")

import projroute  # noqa: E402
from projroute import _format, cli  # noqa: E402
from projroute.prle import PRLEConfig, PRLERegressor, load, load_config, pair_features  # noqa: E402
from projroute.prle.config import (  # noqa: E402
    HEADS,
    ROUTERS,
    SELECTORS,
    ExpertConfig,
    HeadConfig,
    KernelConfig,
    PrototypeConfig,
    RouterConfig,
)
from projroute.prle.prototypes import select_prototypes  # noqa: E402
from projroute.prle.report import faithfulness  # noqa: E402

#: Rust vs torch predictions, absolute (scores are in [0, 5]).
PARITY_TOL = 1e-4


def data(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic regression: a score in [0, 5] that depends on two input directions."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = 2.5 + 2.0 * np.tanh(X[:, 0] - 0.5 * X[:, 1]) + 0.1 * rng.normal(size=n)
    return X, y.astype(np.float32)


def config(head: str = "mlp", router: str = "knn", **kw) -> PRLEConfig:
    k = kw.pop("k", 6)
    return PRLEConfig(
        seed=kw.pop("seed", 0),
        head=HeadConfig(kind=head, dim=kw.pop("dim", 8), hidden=16, rff_features=32),
        kernel=KernelConfig(epochs=kw.pop("epochs", 3), batch_size=64),
        prototypes=PrototypeConfig(
            n=k, selector=kw.pop("selector", "kmedoids"), trainable=kw.pop("trainable", False), snap_every=1
        ),
        router=RouterConfig(kind=router, top_k=kw.pop("top_k", 3), hidden=8, radius=kw.pop("radius", 0.5)),
        experts=ExpertConfig(epochs=kw.pop("expert_epochs", 3)),
    )


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("seed", "head", "router"), [(i, *c) for i, c in enumerate(itertools.product(HEADS, ROUTERS))], ids=str
)
def test_every_head_and_router_fits_and_rust_matches_torch(seed, head, router):
    rng = np.random.default_rng(seed)
    d, dim, k = int(rng.integers(5, 40)), int(rng.integers(2, 12)), int(rng.integers(2, 10))
    X, y = data(200, d, seed=1)
    m = PRLERegressor(config(head, router, dim=dim, k=k, top_k=int(rng.integers(1, k + 1)), radius=0.7)).fit(X, y)
    X_new, _ = data(int(rng.integers(1, 70)), d, seed=2)
    rust, ref = m.predict(X_new), m.predict_torch(X_new)
    np.testing.assert_allclose(rust, ref, atol=PARITY_TOL)
    assert m.projector_.kind == "prle" and m.projector_.n_clusters == k
    assert np.isfinite(rust).all()
    # The routing the core reports is the torch router's.
    with torch.no_grad():
        w = m.model_.mix(torch.from_numpy(m.transform(X_new)))[1].numpy()
    np.testing.assert_allclose(m.projector_.route(X_new), w, atol=1e-5)


@pytest.mark.parametrize("router", ROUTERS)
def test_runs_are_seeded(router):
    X, y = data(150, 10, seed=3)
    a = PRLERegressor(config(router=router, trainable=True)).fit(X, y)
    b = PRLERegressor(config(router=router, trainable=True)).fit(X, y)
    c = PRLERegressor(config(router=router, trainable=True, seed=1)).fit(X, y)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    np.testing.assert_array_equal(a.prototype_index_, b.prototype_index_)
    assert not np.array_equal(a.predict(X), c.predict(X))


def test_learning_beats_the_mean_and_metric_tracks_scores():
    X, y = data(600, 8, seed=4)
    X_test, y_test = data(300, 8, seed=5)
    m = PRLERegressor(config("mlp", "softmax", epochs=30, expert_epochs=30, k=8)).fit(X, y)
    mse = np.mean((m.predict(X_test) - y_test) ** 2)
    assert mse < 0.3 * np.var(y_test)
    from projroute.prle.train import distance_correlation

    assert distance_correlation(m.transform(X_test), y_test) > distance_correlation(X_test, y_test) + 0.2


def test_distance_correlation_within_and_to_reference_rows():
    from projroute.prle.train import distance_correlation

    rng = np.random.default_rng(0)
    y, y_ref = rng.uniform(0, 5, 300), rng.uniform(0, 5, 200)
    # A space that is the score itself: distances are |Δy| exactly.
    assert distance_correlation(y[:, None], y) == pytest.approx(1.0)
    assert distance_correlation(y[:, None], y, reference=(y_ref[:, None], y_ref)) == pytest.approx(1.0)
    # Reference rows whose embeddings do not match their scores: only the share that
    # comes from where y_i lies is left (0.13 here).
    shuffled = (rng.permutation(y_ref)[:, None], y_ref)
    assert distance_correlation(y[:, None], y, reference=shuffled) < 0.3


def test_expert_fits_are_scikit_learns_weighted_ridge():
    from sklearn.linear_model import Ridge

    from projroute.prle.train import _ridge_fits

    rng = np.random.default_rng(1)
    Z, y, w = rng.normal(size=(120, 6)), rng.normal(size=120), rng.dirichlet(np.ones(4), size=120)
    W, b = _ridge_fits(Z, y, w, alpha=3.0)
    for k in range(4):
        ref = Ridge(alpha=3.0).fit(Z, y, sample_weight=w[:, k])
        np.testing.assert_allclose(W[k], ref.coef_, rtol=1e-5, atol=1e-6)
        assert b[k] == pytest.approx(ref.intercept_, abs=1e-5)


def test_local_init_starts_each_expert_on_its_own_neighbourhood():
    X, y = data(300, 8, seed=8)
    cfg = config("mlp", "softmax", expert_epochs=0, k=5)
    cfg.router.temperature, cfg.router.learn_temperature = 0.05, False
    starts = {}
    for init in ("global", "local"):
        cfg.experts.init = init
        starts[init] = PRLERegressor(cfg).fit(X, y).model_.expert_weight.detach().numpy()
    assert np.ptp(starts["global"], axis=0).max() == 0.0  # one fit, copied K times
    assert np.ptp(starts["local"], axis=0).max() > 0.01


@pytest.mark.parametrize("selector", SELECTORS)
def test_prototype_selectors_pick_distinct_real_rows(selector):
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(80, 5)).astype(np.float32)
    idx = select_prototypes(Z, 7, selector, seed=0)
    assert idx.shape == (7,) and len(set(idx.tolist())) == 7 and idx.max() < 80
    np.testing.assert_array_equal(idx, select_prototypes(Z, 7, selector, seed=0))
    with pytest.raises(ValueError, match="k <= n"):
        select_prototypes(Z, 81, selector)


def test_farthest_first_spreads_out():
    Z = np.array([[0, 0], [0.1, 0], [5, 5], [10, 0], [0, 10]], dtype=np.float32)
    idx = select_prototypes(Z, 4, "farthest", seed=0)
    assert 1 not in idx.tolist() or 0 not in idx.tolist()


@pytest.mark.parametrize("trainable", [False, True], ids=["fixed", "trainable"])
def test_prototypes_are_training_examples(trainable):
    X, y = data(150, 10, seed=6)
    m = PRLERegressor(config(router="softmax", trainable=trainable)).fit(X, y, X[:30], y[:30])
    P = m.model_.P.detach().numpy()
    np.testing.assert_allclose(P, m.transform(X[m.prototype_index_]), atol=1e-6)
    np.testing.assert_allclose(m.prototype_scores_, y[m.prototype_index_])


def test_save_load_round_trip_and_explain(tmp_path):
    X, y = data(120, 9, seed=7)
    pairs = [(f"a{i}", f"b{i}") for i in range(len(X))]
    m = PRLERegressor(config("residual_mlp", "mlp")).fit(X[:100], y[:100], X[100:], y[100:], pairs=pairs[:100])
    path = tmp_path / "m.safetensors"
    m.save(path)
    back = load(path)
    np.testing.assert_array_equal(back.predict(X), m.predict(X))
    np.testing.assert_allclose(back.predict_torch(X), m.predict(X), atol=PARITY_TOL)
    np.testing.assert_array_equal(projroute.load(path).project(X)[:, 0], m.predict(X))
    e = back.explain(X[:2], top=2)
    assert len(e) == 2 and abs(e[0]["prediction"] - m.predict(X[:1])[0]) < PARITY_TOL
    p = e[0]["prototypes"][0]
    assert p["pair"] == list(pairs[p["row"]]) and p["score"] == pytest.approx(y[p["row"]])
    assert sum(q["weight"] for q in e[0]["prototypes"]) <= 1 + 1e-6


def test_attributions_drop_top_versus_random():
    X, y = data(300, 8, seed=8)
    m = PRLERegressor(config("mlp", "softmax", k=8, epochs=10, expert_epochs=10)).fit(X, y)
    f = faithfulness(m, X[:100], seed=0)
    assert f["drop_top_mean_change"] > 0 and 0 <= f["top_moves_more_share"] <= 1
    assert f["drop_top_mean_change"] >= f["drop_random_mean_change"]


def test_bad_input_is_a_clear_error(tmp_path):
    X, y = data(60, 6, seed=9)
    with pytest.raises(ValueError, match="finite"):
        PRLERegressor(config()).fit(np.where(X > 2, np.nan, X), y)
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        PRLERegressor(config()).fit(X, y[:-1])
    with pytest.raises(ValueError, match=r"prototypes\.n"):
        PRLERegressor(config(k=59, top_k=2)).fit(X, y)
    m = PRLERegressor(config()).fit(X, y)
    with pytest.raises(ValueError, match="columns"):
        m.predict(X[:, :5])
    with pytest.raises(ValueError, match="NaN"):
        m.predict(np.full((2, 6), np.nan, dtype=np.float32))
    big = np.repeat(X, 3, axis=0)  # past the small-batch path
    big[100, 4] = -np.inf
    with pytest.raises(ValueError, match="infinite"):
        m.predict(big)
    tensors = m.tensors()
    del tensors["experts.bias"]
    with pytest.raises(projroute.ModelFormatError, match=r"experts\.bias"):
        projroute.Projector.from_tensors(tensors, json.dumps(m.header()))
    header = m.header()
    header["prle"]["router"] = "nearest"
    with pytest.raises(projroute.ModelFormatError, match="unknown prle router"):
        projroute.Projector.from_tensors(m.tensors(), json.dumps(header))
    plain = tmp_path / "plain.safetensors"
    _format.save(plain, m.tensors(), {**m.header(), "fit": {}})
    np.testing.assert_array_equal(projroute.load(plain).project(X)[:, 0], m.predict(X))
    with pytest.raises(projroute.ModelFormatError, match="no PRLE fit record"):
        load(plain)
    with pytest.raises(projroute.ModelFormatError, match="not a 'prle'"):
        bad = tmp_path / "g.safetensors"
        projroute.GlobalProjection().fit(X, X).save(bad)
        load(bad)


def test_config_from_toml(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('seed = 3\n[head]\nkind = "rff"\n[router]\nkind = "radius"\nradius = 1\n')
    cfg = load_config(path)
    assert (cfg.seed, cfg.head.kind, cfg.router.kind, cfg.router.radius) == (3, "rff", "radius", 1.0)
    path.write_text("[head]\nkindd = 'mlp'\n")
    with pytest.raises(ValueError, match="kindd"):
        load_config(path)
    with pytest.raises(ValueError, match=r"router\.kind"):
        PRLEConfig.from_dict({"router": {"kind": "nearest"}})


def test_pair_features_are_symmetric():
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(5, 12)), rng.normal(size=(5, 12))
    f = pair_features(u, v)
    assert f.shape == (5, 37) and f.dtype == np.float32
    np.testing.assert_array_equal(f, pair_features(v, u))
    un = u / np.linalg.norm(u, axis=1, keepdims=True)
    vn = v / np.linalg.norm(v, axis=1, keepdims=True)
    np.testing.assert_allclose(f[:, -1], (un * vn).sum(1), rtol=1e-5)


class HashEncoder:
    """A stand-in for MiniLM: a fixed random unit vector per word, averaged."""

    dim = 16

    def __init__(self, *args, **kwargs):
        pass

    def encode(self, texts, progress=True):
        out = []
        for t in texts:
            vecs = [np.random.default_rng(zlib.crc32(w.encode())).normal(size=self.dim) for w in t.split()]
            v = np.mean(vecs, axis=0)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)


def test_cli_runs_a_tiny_config_and_explains(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    for split, n in (("train", 80), ("dev", 20), ("test", 20)):
        lines = []
        for _ in range(n):
            a = rng.choice(words, 5)
            b = np.where(rng.random(5) < rng.random(), a, rng.choice(words, 5))
            lines.append(f"{' '.join(a)},{' '.join(b)},{5 * (a == b).mean():.1f}")
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "run.toml").write_text(
        f"data = {json.dumps(str(tmp_path))}\n"
        "[head]\ndim = 4\nhidden = 8\n[kernel]\nepochs = 2\n[prototypes]\nn = 4\n[router]\ntop_k = 2\n"
        "[experts]\nepochs = 2\n"
        f"[report]\noutput = {json.dumps(str(tmp_path / 'out'))}\noracle_clusters = 2\ntsne_points = 30\n"
    )
    monkeypatch.setattr("projroute.prle.data.Encoder", HashEncoder)
    monkeypatch.setattr("projroute.embed.Encoder", HashEncoder)
    assert cli.main(["prle", "run", str(tmp_path / "run.toml"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    methods = {(row["method"], row["space"]) for row in r["table"]}
    assert ("PRLE", "value") in methods and ("SVR (rbf)", "retrieval") in methods and ("SVR (rbf)", "value") in methods
    assert all(np.isfinite(row["mse"]) for row in r["table"])
    assert (tmp_path / "out" / "tsne.png").stat().st_size > 1000
    model = str(tmp_path / "out" / "model.safetensors")
    assert cli.main(["prle", "explain", model, "w1 w2 w3", "w1 w2 w4", "--top", "2"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("predicted similarity") and text.count("weight") == 2
    with pytest.raises(SystemExit):
        cli.main(["prle", "run", str(tmp_path / "missing.toml")])
