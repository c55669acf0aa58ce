"""Distillation (projroute.distill): the student's exact architecture and tensor names,
the export format, training on the fly from a teacher, and fidelity metrics."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

import projroute as pr  # noqa: E402
from projroute.distill import (  # noqa: E402
    MLPBaseline,
    ProjectionTransformer,
    distill,
    fidelity,
    load_student,
    project_numpy,
    save_student,
)
from projroute.distill.teacher import Teacher  # noqa: E402
from projroute.distill.train import (  # noqa: E402
    entropy_weights,
    importance_weights,
    initialise_keys,
    key_groups,
    split_queries,
)
from projroute.metrics import mean_cosine  # noqa: E402

from helpers import random_model, unit  # noqa: E402

D = 32
SMALL = {"d_model": 32, "n_heads": 4, "n_layers": 2, "num_keys": 8, "ffn_dim": 64}
FAST = {"epochs": 3, "augment_ratio": 2.0, "progress": False, "student": SMALL}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train fastest (and steadiest on a busy machine) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def synthetic():
    """A federated teacher on 400 random unit questions in 32-d, answers a noisy rotation
    of them; plus 200 fresh held-out queries. -> (teacher, Q, A, held-out X)."""
    rng = np.random.default_rng(0)
    Q = unit(rng, 400, D)
    R = np.linalg.qr(rng.normal(size=(D, D)))[0]
    A = Q @ R + 0.5 * rng.normal(size=(400, D)) / np.sqrt(D)
    A = (A / np.linalg.norm(A, axis=1, keepdims=True)).astype(np.float32)
    teacher = pr.FederatedProjection(n_clusters=8, shrinkage=1.0, progress=False).fit(Q, A)
    return teacher, Q, A, unit(rng, 200, D)


# --- architecture -------------------------------------------------------------------------


def expected_shapes(dim_in: int, dim_out: int, d: int, n_layers: int, nk: int, ffn: int) -> dict[str, tuple]:
    shapes = {
        "input.weight": (d, dim_in),
        "input.bias": (d,),
        "norm.weight": (d,),
        "norm.bias": (d,),
        "output.weight": (dim_out, d),
        "output.bias": (dim_out,),
        "skip.weight": (dim_out, dim_in),
    }
    for i in range(n_layers):
        p = f"layers.{i}."
        shapes |= {
            p + "keys": (nk, d),
            p + "values": (nk, d),
            p + "norm1.weight": (d,),
            p + "norm1.bias": (d,),
            p + "query.weight": (d, d),
            p + "query.bias": (d,),
            p + "out.weight": (d, d),
            p + "out.bias": (d,),
            p + "norm2.weight": (d,),
            p + "norm2.bias": (d,),
            p + "ffn1.weight": (ffn, d),
            p + "ffn1.bias": (ffn,),
            p + "ffn2.weight": (d, ffn),
            p + "ffn2.bias": (d,),
        }
    return shapes


def test_state_dict_names_and_shapes_are_exact():
    m = ProjectionTransformer(24, 20, d_model=16, n_heads=4, n_layers=3, num_keys=5, ffn_dim=40)
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == expected_shapes(24, 20, 16, 3, 5, 40)
    assert m.config() == {"d_model": 16, "n_heads": 4, "n_layers": 3, "num_keys": 5, "ffn_dim": 40}
    assert m.n_parameters() == sum(math.prod(s) for s in got.values())
    assert ProjectionTransformer(384, 384).config() == {
        "d_model": 256,
        "n_heads": 4,
        "n_layers": 2,
        "num_keys": 64,
        "ffn_dim": 512,
    }


def test_forward_shapes_and_attention():
    m = ProjectionTransformer(24, 20, **SMALL)
    x = torch.randn(7, 24)
    y, att = m(x, return_attention=True)
    assert y.shape == (7, 20) and att.shape == (7, 4, 8)
    torch.testing.assert_close(att.sum(-1), torch.ones(7, 4))
    torch.testing.assert_close(m(x), y)
    with pytest.raises(ValueError, match="divisible"):
        ProjectionTransformer(8, 8, d_model=30, n_heads=4)


def reference_forward(state: dict[str, np.ndarray], x: np.ndarray, n_heads: int, n_layers: int) -> np.ndarray:
    """Plain numpy forward pass from the state_dict: what the Rust side must compute."""
    erf = np.vectorize(math.erf)

    def linear(name, h):
        out = h @ state[name + ".weight"].T
        return out + state[name + ".bias"] if name + ".bias" in state else out

    def layer_norm(name, h):
        mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
        return (h - mu) / np.sqrt(var + 1e-5) * state[name + ".weight"] + state[name + ".bias"]

    h = linear("input", x)
    for i in range(n_layers):
        p = f"layers.{i}"
        q = linear(p + ".query", layer_norm(p + ".norm1", h))
        K, V = state[p + ".keys"], state[p + ".values"]
        dh = h.shape[1] // n_heads
        heads = []
        for j in range(n_heads):
            s = q[:, j * dh : (j + 1) * dh] @ K[:, j * dh : (j + 1) * dh].T / np.sqrt(dh)
            a = np.exp(s - s.max(1, keepdims=True))
            heads.append((a / a.sum(1, keepdims=True)) @ V[:, j * dh : (j + 1) * dh])
        h = h + linear(p + ".out", np.concatenate(heads, 1))
        f = linear(p + ".ffn1", layer_norm(p + ".norm2", h))
        h = h + linear(p + ".ffn2", 0.5 * f * (1 + erf(f / np.sqrt(2))))
    return linear("skip", x) + linear("output", layer_norm("norm", h))


def test_forward_matches_a_plain_numpy_reference():
    torch.manual_seed(0)
    m = ProjectionTransformer(24, 20, **SMALL)
    with torch.no_grad():  # switch the zero-initialised output branch on
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = np.random.default_rng(0).normal(size=(5, 24)).astype(np.float32)
    state = {k: v.double().numpy() for k, v in m.state_dict().items()}
    want = reference_forward(state, x.astype(np.float64), n_heads=4, n_layers=2)
    np.testing.assert_allclose(project_numpy(m, x), want, rtol=1e-4, atol=1e-5)


def test_a_new_student_is_its_linear_path():
    m = ProjectionTransformer(24, 20, **SMALL)
    x = torch.randn(3, 24)
    torch.testing.assert_close(m(x), m.skip(x))


def test_mlp_baseline():
    m = MLPBaseline(24, 20, hidden=16, n_layers=3)
    assert m(torch.randn(4, 24)).shape == (4, 20)
    assert m.n_parameters() == 24 * 16 + 16 + 2 * (16 * 16 + 16) + 16 * 20 + 20 + 24 * 20


# --- export -------------------------------------------------------------------------------


def test_export_round_trip(tmp_path):
    torch.manual_seed(1)
    m = ProjectionTransformer(24, 20, **SMALL)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path / "student.safetensors"
    save_student(m, path, {"teacher": {"kind": "federated", "parameters": 123}})
    back = load_student(path)
    x = np.random.default_rng(0).normal(size=(6, 24)).astype(np.float32)
    np.testing.assert_array_equal(project_numpy(back, x), project_numpy(m, x))

    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        config = json.loads(f.metadata()["projroute"])
        names = f.keys()
        tensors = {k: f.get_tensor(k) for k in names}
    assert set(tensors) == set(m.state_dict())
    assert all(t.dtype == np.float32 and t.flags.c_contiguous for t in tensors.values())
    assert config["format"] == "projroute" and config["version"] == 1
    assert config["kind"] == "transformer" and (config["dim_in"], config["dim_out"]) == (24, 20)
    assert config["transformer"] == {**SMALL, "layer_norm_eps": 1e-5}
    assert config["fit"]["teacher"] == {"kind": "federated", "parameters": 123}
    assert config["fit"]["student_parameters"] == m.n_parameters()


def test_load_student_rejects_other_files(tmp_path):
    rng = np.random.default_rng(0)
    model, _, _ = random_model("federated", rng)
    model.save(str(tmp_path / "fed.safetensors"))
    with pytest.raises(pr.ModelFormatError, match="not a 'transformer'"):
        load_student(tmp_path / "fed.safetensors")
    with pytest.raises(TypeError, match="ProjectionTransformer"):
        save_student(MLPBaseline(4, 4), tmp_path / "mlp.safetensors", {})


def test_distill_result_saves_its_record(tmp_path, synthetic):
    teacher, Q, _, _ = synthetic
    r = distill(teacher, Q, **FAST)
    r.save(tmp_path / "s.safetensors")
    from projroute._format import read_config

    fit = read_config(tmp_path / "s.safetensors", "transformer")["fit"]
    assert fit["teacher"] == {"kind": "federated", "parameters": 8 * D * D + 8 * D}
    assert fit["compression"] == pytest.approx(r.compression)
    assert fit["settings"]["epochs"] == 3
    x = Q[:5]
    np.testing.assert_array_equal(
        project_numpy(load_student(tmp_path / "s.safetensors"), x), project_numpy(r.student, x)
    )


# --- teachers -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["global", "federated", "lda"])
def test_teacher_parameter_counts(kind, tmp_path):
    rng = np.random.default_rng(0)
    model, _, _ = random_model(kind, rng, d=16, K=6)
    want = {"global": 16 * 16 + 16, "federated": 6 * 16 * 16 + 6 * 16, "lda": 2 * 6 * 16}[kind]
    assert Teacher(model).n_parameters == want
    model.save(str(tmp_path / "m.safetensors"))
    loaded = pr.load(tmp_path / "m.safetensors")
    assert Teacher(loaded).n_parameters == want and Teacher(loaded).kind == kind
    assert (Teacher(loaded).centroids is None) == (kind == "global")


def test_any_object_with_project_is_a_teacher():
    class Linear:
        def project(self, X):
            return X[:, ::-1] * 2.0

    Q = unit(np.random.default_rng(0), 64, 8)
    r = distill(Linear(), Q, epochs=2, progress=False, student=SMALL | {"num_keys": 4})
    assert r.teacher_parameters is None and r.compression is None and r.teacher_kind == "Linear"
    assert mean_cosine(project_numpy(r.student, Q), Linear().project(Q)) > 0.99  # the least-squares skip


# --- training -----------------------------------------------------------------------------


def test_distilled_student_matches_the_teacher_on_held_out_queries(synthetic):
    """Trained from scratch (no least-squares start), a few epochs reach cosine > 0.9."""
    teacher, Q, A, X = synthetic
    r = distill(teacher, Q, epochs=8, lr=5e-3, augment_ratio=4.0, init_skip=False, progress=False, student=SMALL)
    fid = fidelity(teacher, r.student, X, A)
    assert fid["cosine"] > 0.9, fid
    assert r.best_val_cosine > 0.9
    assert r.compression == pytest.approx((8 * D * D + 8 * D) / r.n_parameters)


def test_least_squares_start_is_already_close(synthetic):
    teacher, Q, A, X = synthetic
    r = distill(teacher, Q, **FAST)
    assert fidelity(teacher, r.student, X, A)["cosine"] > 0.95


def test_per_question_routed_teacher_distils(synthetic):
    """The routing modes plug into the same teacher interface: a per-question routed,
    entropy-prior federated teacher, with the routing loss on its cluster weights."""
    _, Q, A, X = synthetic
    teacher = pr.FederatedProjection(
        n_clusters=8, shrinkage=1.0, routing="questions", prior="entropy", cluster_temperature=0.1, progress=False
    ).fit(Q, A)
    r = distill(teacher, Q, routing_weight=0.2, **FAST)
    assert Teacher(teacher).n_parameters == 8 * D * D + 8 * D + 400 * D + 400  # maps, centroids, questions, prior
    assert fidelity(teacher, r.student, X, A)["cosine"] > 0.95


def test_keyed_teacher_distils_with_its_training_keys():
    """A tree teacher serves each query by its key; given the training keys, any query
    takes the key of its nearest training query, and the student learns more than the
    best single linear map of the query (the key-dependent part)."""
    rng = np.random.default_rng(2)
    centers = unit(rng, 3, D)
    rot = [np.linalg.qr(rng.normal(size=(D, D)))[0] for _ in range(3)]
    g = rng.integers(0, 3, 600)
    Q = (centers[g] + 0.2 * rng.normal(size=(600, D))).astype(np.float32)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    A = np.einsum("nd,nde->ne", Q, np.stack(rot)[g]).astype(np.float32)
    keys = [f"t{k}" for k in g]
    teacher = pr.TreeProjection(shrinkage=1.0).fit(Q[:500], A[:500], keys[:500])
    with pytest.raises(ValueError, match="keys"):
        distill(teacher, Q[:500], **FAST)
    nearest = np.argmax(Q[500:] @ Q[:500].T, axis=1)
    np.testing.assert_array_equal(
        Teacher(teacher, keys[:500], Q[:500]).project(Q[500:]), teacher.project(Q[500:], [keys[i] for i in nearest])
    )
    r = distill(teacher, Q[:500], keys=keys[:500], **{**FAST, "epochs": 15, "lr": 3e-3})
    T = teacher.project(Q[500:], keys[500:])
    linear = np.linalg.lstsq(Q[:500], teacher.project(Q[:500], keys[:500]), rcond=None)[0]
    assert mean_cosine(project_numpy(r.student, Q[500:]), T) > mean_cosine(Q[500:] @ linear, T) + 0.03


@pytest.mark.parametrize("augment", [(), ("sphere",), ("mix",), ("sphere", "mix")])
def test_augmentation_on_and_off(synthetic, augment):
    teacher, Q, _, _ = synthetic
    r = distill(teacher, Q[:100], augment=augment, epochs=2, progress=False, student=SMALL)
    assert r.settings["augment"] == list(augment)
    assert np.isfinite(r.history["train_loss"]).all() and len(r.history["val_cosine"]) == 2


def test_extra_queries_are_an_augmentation(synthetic):
    teacher, Q, _, X = synthetic
    r = distill(teacher, Q[:100], augment=(), extra_queries=X, epochs=2, progress=False, student=SMALL)
    assert r.settings["augment"] == ["extra"] and r.settings["n_extra_queries"] == len(X)
    with pytest.raises(ValueError, match="extra_queries"):
        distill(teacher, Q[:100], augment=("extra",), epochs=1, progress=False, student=SMALL)
    with pytest.raises(ValueError, match="unknown augmentation"):
        distill(teacher, Q[:100], augment=("flip",), epochs=1, progress=False, student=SMALL)


def test_routing_loss_and_entropy_importance(synthetic):
    teacher, Q, _, _ = synthetic
    r = distill(teacher, Q[:150], routing_weight=0.5, importance="entropy", **FAST)
    assert np.isfinite(r.history["train_loss"]).all()
    with pytest.raises(ValueError, match="ProjectionTransformer"):
        distill(teacher, Q[:50], routing_weight=0.5, student=MLPBaseline(D, D), epochs=1, progress=False)


def test_entropy_needs_routing():
    model, _, _ = random_model("global", np.random.default_rng(0), d=8)
    with pytest.raises(ValueError, match="routing"):
        distill(model, unit(np.random.default_rng(1), 20, 8), importance="entropy", **FAST)


def test_entropy_weights_have_mean_one():
    rng = np.random.default_rng(0)
    route = rng.dirichlet(np.full(6, 0.3), size=50).astype(np.float32)
    route[0] = np.eye(6)[2]  # one-hot: zero entropy
    route[1] = 1 / 6  # uniform: full entropy
    w = entropy_weights(route)
    assert w.shape == (50,) and w.dtype == np.float32
    assert w.mean() == pytest.approx(1.0, abs=1e-6)
    raw = importance_weights(route)  # 0.5 + H / log K
    assert raw[0] == pytest.approx(0.5) and raw[1] == pytest.approx(1.5)
    np.testing.assert_allclose(w, raw / raw.mean(), rtol=1e-6)
    assert np.all((raw >= 0.5) & (raw <= 1.5 + 1e-6))


def test_key_groups_and_key_initialisation(synthetic):
    teacher, _, _, _ = synthetic
    group, centroids = key_groups(teacher.centroids_, 3, seed=0)
    assert group.shape == (8,) and set(group.tolist()) == {0, 1, 2} and centroids.shape == (3, D)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)
    group, centroids = key_groups(teacher.centroids_, 16, seed=0)
    np.testing.assert_array_equal(group, np.arange(8))
    m = ProjectionTransformer(D, D, **SMALL)
    scale = m.layers[0].keys.norm(dim=1).mean().item()
    initialise_keys(m, centroids)
    np.testing.assert_allclose(m.layers[0].keys.norm(dim=1).detach().numpy(), scale, rtol=1e-5)
    _, att = m(torch.as_tensor(centroids), return_attention=True)
    # each centroid attends most to its own key, on average over heads
    np.testing.assert_array_equal(att.mean(1).argmax(1).numpy(), np.arange(8))


def test_early_stopping_restores_the_best_epoch(synthetic):
    teacher, Q, _, _ = synthetic
    r = distill(
        teacher,
        Q[:200],
        epochs=40,
        lr=0.05,
        patience=2,
        init_skip=False,
        progress=False,
        student=SMALL,
        augment_ratio=1.0,
        seed=3,
    )
    val = r.history["val_cosine"]
    assert r.best_epoch == int(np.argmax(val))
    assert len(val) < 40 and len(val) == r.best_epoch + 3  # stopped after `patience` bad epochs
    _, val_rows = split_queries(200, 0.1, np.random.default_rng(3))
    Xv = Q[:200][val_rows]
    assert mean_cosine(project_numpy(r.student, Xv), teacher.project(Xv)) == pytest.approx(val[r.best_epoch], abs=1e-6)


def test_training_is_reproducible(synthetic):
    teacher, Q, _, _ = synthetic
    a = distill(teacher, Q[:100], **FAST)
    b = distill(teacher, Q[:100], **FAST)
    assert a.history == b.history
    for (k, v), w in zip(a.student.state_dict().items(), b.student.state_dict().values()):
        torch.testing.assert_close(v, w, rtol=0, atol=0, msg=k)


def test_plot_is_written(tmp_path, synthetic):
    teacher, Q, _, _ = synthetic
    distill(teacher, Q[:100], plot=tmp_path / "curve.png", **FAST)
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments(synthetic):
    teacher, Q, _, _ = synthetic
    with pytest.raises(ValueError, match="importance"):
        distill(teacher, Q, importance="loss", **FAST)
    with pytest.raises(ValueError, match="val_fraction"):
        distill(teacher, Q, val_fraction=1.0, **FAST)
    with pytest.raises(ValueError, match="epochs"):
        distill(teacher, Q, epochs=0, progress=False)


# --- fidelity -----------------------------------------------------------------------------


def test_fidelity_of_the_teacher_itself(synthetic):
    teacher, _, A, X = synthetic
    gold = [[i] for i in range(len(X))]
    fid = fidelity(teacher, teacher, X, A[: len(X)], gold)
    assert fid["cosine"] == pytest.approx(1.0) and fid["mse"] == 0.0 and fid["overlap@10"] == 1.0
    assert fid["teacher"] == fid["student"]


def test_fidelity_accepts_a_torch_student(synthetic):
    teacher, Q, A, X = synthetic
    r = distill(teacher, Q[:100], **FAST)
    fid = fidelity(teacher, r.student, X, A, k=5)
    assert set(fid) == {"cosine", "mse", "overlap@5", "n"}
    assert 0.0 <= fid["overlap@5"] <= 1.0 and fid["n"] == len(X)
    assert fidelity(teacher, teacher, X, A[:3], k=10)["overlap@10"] == 1.0  # k capped at the corpus


# --- the optional dependency --------------------------------------------------------------


def test_import_without_torch_names_the_extra():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "try:\n    import projroute.distill\nexcept ImportError as e:\n    print(e)\n"
        "else:\n    print('imported')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'projroute[train]'" in out


def test_least_squares_skip_keeps_the_identity_outside_the_queries_span():
    from projroute.distill.train import fit_skip

    rng = np.random.default_rng(0)
    W = np.linalg.qr(rng.normal(size=(D, D)))[0].astype(np.float32)
    X = unit(rng, 10, D)  # spans 10 of 32 directions
    m = ProjectionTransformer(D, D, **SMALL)
    fit_skip(m, X, X @ W)
    np.testing.assert_allclose(project_numpy(m, X), X @ W, atol=1e-5)
    z = np.linalg.svd(X)[2][-1:]  # a direction orthogonal to every query
    np.testing.assert_allclose(project_numpy(m, z), z, atol=1e-5)
    wide = ProjectionTransformer(D, 5, **SMALL)
    fit_skip(wide, X, X[:, :5])
    np.testing.assert_allclose(project_numpy(wide, z), 0.0, atol=1e-5)


def test_early_stopper_keeps_the_best_weights_and_counts_patience():
    from projroute.distill.loop import EarlyStopper

    m = torch.nn.Linear(2, 2)
    start = {k: v.clone() for k, v in m.state_dict().items()}
    stopper = EarlyStopper(m, patience=None, best=0.5)  # the starting weights score 0.5
    with torch.no_grad():
        m.weight.add_(1.0)
    assert not stopper(0, m, 0.4)
    stopper.restore(m)
    assert stopper.best_epoch == -1 and all(torch.equal(v, start[k]) for k, v in m.state_dict().items())
    stopper = EarlyStopper(m, patience=2)
    assert [stopper(e, m, s) for e, s in enumerate([0.1, 0.3, 0.2, 0.2])] == [False, False, False, True]
    assert stopper.best_epoch == 1 and stopper.best == 0.3
    unscored = EarlyStopper(m, patience=1)
    assert not any(unscored(e, m, None) for e in range(3)) and unscored.best_epoch == 2
