"""The hierarchical ensemble: torch module, domain teachers, export, candle parity,
and an end-to-end distillation of a small federated teacher.

Parity tolerance: max |candle - torch| <= 1e-4 on random inputs and random weights
(scaled up from the default init; top-k ties are measure-zero with random weights).
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import projroute as pr  # noqa: E402
from projroute.distill import (  # noqa: E402
    ProjectionTransformer,
    TransformerEnsemble,
    distill_ensemble,
    load_ensemble,
    project_numpy,
    save_ensemble,
    save_student,
)
from projroute.distill.student import top_k_softmax  # noqa: E402
from projroute.distill.teacher import DomainTeacher, domain_mass  # noqa: E402
from projroute.metrics import mean_cosine  # noqa: E402
from projroute.reference import route_weights  # noqa: E402

from helpers import random_model, unit  # noqa: E402

ARCH = dict(d_model=32, n_heads=4, n_layers=2, num_keys=8, ffn_dim=48)
D_IN, D_OUT = 24, 20


@pytest.fixture
def one_thread():
    """One torch (and BLAS/OpenMP) thread: tiny models train faster so on a busy machine."""
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(n)


def random_ensemble(n_domains, top_k, seed, router_hidden=16, **arch):
    torch.manual_seed(seed)
    ens = TransformerEnsemble(D_IN, D_OUT, n_domains, top_k, router_hidden, **(arch or ARCH))
    with torch.no_grad():
        for p in ens.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return ens.eval()


def test_state_dict_names():
    ens = TransformerEnsemble(D_IN, D_OUT, 3, 2, 16, **ARCH)
    student = [f"students.{d}.{n}" for d in range(3) for n in ProjectionTransformer(D_IN, D_OUT, **ARCH).state_dict()]
    names = list(ens.state_dict())
    assert names[:4] == ["router.0.weight", "router.0.bias", "router.2.weight", "router.2.bias"]
    assert names[4:] == student
    assert ens.state_dict()["router.0.weight"].shape == (16, D_IN)
    assert ens.state_dict()["router.2.weight"].shape == (3, 16)
    with pytest.raises(ValueError, match="top_k"):
        TransformerEnsemble(D_IN, D_OUT, 3, 4, **ARCH)


@pytest.mark.parametrize("n_domains,top_k", [(4, 1), (4, 2), (4, 3), (3, 3)])
def test_forward_mixes_exactly_top_k_domains(n_domains, top_k):
    ens = random_ensemble(n_domains, top_k, seed=top_k)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(64, D_IN)).astype(np.float32))
    with torch.no_grad():
        w = ens.weights(x)
        y = ens(x)
        dense = (w.unsqueeze(-1) * torch.stack([s(x) for s in ens.students], dim=1)).sum(dim=1)
        logits = ens.router(x)
    assert ((w > 0).sum(dim=1) == top_k).all()
    assert torch.allclose(w.sum(dim=1), torch.ones(64), atol=1e-6)
    # The kept domains are those of the largest logits.
    kept = torch.topk(logits, top_k, dim=1).indices
    assert (torch.gather(w, 1, kept) > 0).all()
    assert torch.allclose(y, dense, atol=1e-5)


def test_top_k_ties_go_to_the_lower_index():
    logits = torch.tensor([[1.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    w = top_k_softmax(logits, 2)
    assert torch.equal(w > 0, torch.tensor([[False, True, True, False], [True, True, False, False]]))
    assert torch.allclose(w[w > 0], torch.full((4,), 0.5))


def test_domain_teachers_recompose_the_teacher():
    rng = np.random.default_rng(3)
    K = 6
    for kind in ("federated", "lda"):
        teacher, tensors, routing = random_model(kind, rng, d=16, K=K, T=0.2, top_k=K)
        X = unit(rng, 50, 16)
        whole = DomainTeacher(kind, tensors, routing, np.arange(K))
        np.testing.assert_allclose(whole.project(X), teacher.project(X), atol=1e-5)
        # Without top-k truncation the teacher is the routing-mass mix of its domain teachers.
        domain_of_cluster = np.array([0, 1, 0, 2, 1, 2])
        mass = domain_mass(route_weights(X, tensors["centroids"], 0.2, K), domain_of_cluster, 3)
        parts = [DomainTeacher(kind, tensors, routing, np.flatnonzero(domain_of_cluster == d)) for d in range(3)]
        mixed = sum(mass[:, d, None] * parts[d].project(X) for d in range(3))
        np.testing.assert_allclose(mixed, teacher.project(X), atol=1e-5)
        assert parts[0].top_k == 2 and parts[0].route(X).shape == (50, 2)


def test_save_load_round_trip(tmp_path):
    ens = random_ensemble(3, 2, seed=5)
    path = tmp_path / "ens.safetensors"
    save_ensemble(ens, path, {"teacher": {"kind": "random"}})
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        config = json.loads(f.metadata()["projroute"])
        assert set(f.keys()) == set(ens.state_dict())
        names = f.keys()
        assert all(f.get_tensor(k).dtype == torch.float32 for k in names)
    assert set(config) == {"format", "version", "kind", "dim_in", "dim_out", "transformer", "ensemble", "fit"}
    assert config["kind"] == "transformer_ensemble" and config["version"] == 1
    assert config["ensemble"] == {"n_domains": 3, "top_k": 2, "router_hidden": 16}
    assert config["transformer"] == {**ARCH, "layer_norm_eps": 1e-5}
    back = load_ensemble(path)
    x = torch.randn(7, D_IN)
    with torch.no_grad():
        assert torch.equal(back(x), ens(x))


def served_by_parts(ens, x, tmp_path):
    """The ensemble computed the way the Rust core does, from pieces it already serves:
    numpy router (erf GELU), top-k softmax by logit, each student through candle."""
    from math import sqrt

    from scipy.special import erf

    sd = {k: v.numpy().astype(np.float64) for k, v in ens.state_dict().items()}
    h = x @ sd["router.0.weight"].T + sd["router.0.bias"]
    h = 0.5 * h * (1 + erf(h / sqrt(2)))
    logits = (h @ sd["router.2.weight"].T + sd["router.2.bias"]).astype(np.float32)
    order = np.argsort(-logits, axis=1, kind="stable")[:, : ens.top_k]
    kept = np.take_along_axis(logits, order, axis=1)
    e = np.exp(kept - kept[:, :1])
    w = np.zeros_like(logits)
    np.put_along_axis(w, order, e / e.sum(axis=1, keepdims=True), axis=1)
    out = np.zeros((len(x), ens.dim_out), np.float32)
    for d, student in enumerate(ens.students):
        save_student(student, tmp_path / f"s{d}.safetensors", {})
        rows = np.flatnonzero(w[:, d])
        if len(rows):
            out[rows] += w[rows, d, None] * pr.load(tmp_path / f"s{d}.safetensors").project(x[rows])
    return out


@pytest.mark.parametrize("n_domains,top_k", [(3, 2), (3, 3)], ids=["sparse", "dense"])
@pytest.mark.parametrize("batch", [1, 9, 200, 600])
def test_candle_matches_torch(tmp_path, n_domains, top_k, batch):
    ens = random_ensemble(n_domains, top_k, seed=batch + top_k)
    path = tmp_path / "ens.safetensors"
    save_ensemble(ens, path, {"teacher": "random"})
    x = np.random.default_rng(batch).normal(size=(batch, D_IN)).astype(np.float32)
    with torch.no_grad():
        want = ens(torch.from_numpy(x)).numpy()
    # The same computation from served students (Rust students, numpy mixing).
    pytest.importorskip("scipy")
    assert np.abs(served_by_parts(ens, x, tmp_path) - want).max() <= 1e-4
    served = pr.load(path)
    assert served.kind == "transformer_ensemble" and (served.dim_in, served.dim_out) == (D_IN, D_OUT)
    assert np.abs(served.project(x) - want).max() <= 1e-4
    assert served.route(x) is None


def test_distill_small_federated_teacher(one_thread):
    """Two domains over an 8-cluster teacher: held-out cosine to the teacher > 0.85, far
    above the raw query-output cosine."""
    rng = np.random.default_rng(0)
    d = 32
    Q = unit(rng, 400, d)
    R = np.linalg.qr(rng.normal(size=(d, d)))[0].astype(np.float32)
    A = Q @ R + 0.5 * unit(rng, 400, d)
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    teacher = pr.FederatedProjection(n_clusters=8, shrinkage=1.0, progress=False).fit(Q, A)
    res = distill_ensemble(
        teacher,
        Q,
        n_domains=2,
        top_k=2,
        router_hidden=32,
        student=dict(d_model=32, n_heads=4, n_layers=1, num_keys=8, ffn_dim=64),
        epochs=5,
        router_epochs=2,
        finetune_epochs=1,
        augment_ratio=4,
        seed=0,
        progress=False,
    )
    ens = res.ensemble
    assert ens.n_domains == 2 and len(res.domains) == 2 and sorted(set(res.domain_of_cluster)) == [0, 1]
    assert res.n_parameters == ens.n_parameters() == res.router_parameters + 2 * res.student_parameters
    X = unit(rng, 300, d)
    T = teacher.project(X)
    raw = mean_cosine(X, T)
    cos = mean_cosine(project_numpy(ens, X), T)
    print(f"held-out cosine {cos:.4f}, raw {raw:.4f}")
    assert cos > 0.85 and cos > raw + 0.3, (cos, raw)
    json.dumps(res.fit_info())


def test_distill_lda_projector_sparse_smoke(tmp_path, one_thread):
    """A loaded lda Projector as teacher, one domain per query, fine-tuning on: the
    pipeline runs, and the saved ensemble serves what torch computes."""
    rng = np.random.default_rng(1)
    teacher, _, _ = random_model("lda", rng, d=16, K=6, T=0.1, top_k=3)
    teacher.save(tmp_path / "lda.safetensors")
    teacher = pr.load(tmp_path / "lda.safetensors")
    res = distill_ensemble(
        teacher,
        unit(rng, 120, 16),
        n_domains=3,
        top_k=1,
        router_hidden=8,
        student=dict(d_model=16, n_heads=2, n_layers=1, num_keys=4, ffn_dim=16),
        epochs=2,
        router_epochs=1,
        finetune_epochs=1,
        augment_ratio=1,
        min_domain_queries=8,
        progress=False,
    )
    assert res.teacher_kind == "lda" and len(res.history["finetune"]["train_loss"]) == 1
    assert res.teacher_parameters == 6 * 32
    res.save(tmp_path / "ens.safetensors")
    served = pr.load(tmp_path / "ens.safetensors")
    X = unit(rng, 40, 16)
    assert np.abs(served.project(X) - project_numpy(res.ensemble, X)).max() <= 1e-4
    assert json.loads(served.config)["fit"]["teacher"]["kind"] == "lda"
    with pytest.raises(ValueError, match="routed"):
        distill_ensemble(pr.GlobalProjection().fit(unit(rng, 50, 16), unit(rng, 50, 16)), unit(rng, 20, 16))


def test_router_stage_takes_the_automatic_augment_ratio(one_thread):
    """augment_ratio="auto" (distill's default) sizes the router stage's epochs as it sizes a student's."""
    rng = np.random.default_rng(2)
    teacher, _, _ = random_model("federated", rng, d=8, K=4, T=0.2, top_k=2)
    res = distill_ensemble(
        teacher,
        unit(rng, 64, 8),
        n_domains=2,
        router_hidden=8,
        student=dict(d_model=8, n_heads=2, n_layers=1, num_keys=4, ffn_dim=8),
        epochs=1,
        router_epochs=1,
        finetune_epochs=0,
        batch_size=1024,
        progress=False,
    )
    assert len(res.history["router"]["train_loss"]) == 1  # before: TypeError from "auto" * n
