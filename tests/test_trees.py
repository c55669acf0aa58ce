"""Per-tree and hierarchical maps (projroute.trees, the `tree` and `hierarchical`
kinds of the Rust core) on a synthetic hierarchy with a distinct rotation per node.

Parity tolerance as in test_parity.py: |rust - numpy| <= 1e-5 + 1e-4 * |numpy|.
"""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import projroute as pr
from projroute import reference as ref
from projroute.metrics import retrieval_metrics

from helpers import config, unit

RTOL, ATOL = 1e-4, 1e-5
D = 8


def rotation(rng: np.random.Generator, d: int = D) -> np.ndarray:
    """A random proper rotation (d, d)."""
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def pairs(rng, sizes: dict[str, int], rotations: dict[str, np.ndarray], noise: float = 0.05):
    """Q, A (n, D) float32 and the key of each pair: ``A = unit(Q @ R_key + noise)``."""
    keys = [k for k, n in sizes.items() for _ in range(n)]
    Q = unit(rng, len(keys), D)
    A = np.einsum("nd,nde->ne", Q, np.stack([rotations[k] for k in keys]))
    A = ref.unit_rows(A + noise * rng.normal(size=A.shape))
    return Q, A, keys


def mrr(P: np.ndarray, A: np.ndarray) -> float:
    """MRR of each projected query against every answer, its own being the gold."""
    return retrieval_metrics(P, A, [[i] for i in range(len(A))])["mrr"]


@pytest.fixture(scope="module")
def trees():
    """Four trees of 60 pairs, each with its own rotation, and one tree of 3 pairs."""
    rng = np.random.default_rng(0)
    rot = {k: rotation(rng) for k in ["t0", "t1", "t2", "t3", "tiny"]}
    train = pairs(rng, {"t0": 60, "t1": 60, "t2": 60, "t3": 60, "tiny": 3}, rot)
    test = pairs(rng, {"t0": 30, "t1": 30, "t2": 30, "t3": 30}, rot)
    return train, test, pr.TreeProjection().fit(*train)


@pytest.fixture(scope="module")
def hierarchy():
    """Paths under two top-level nodes; `a/y/tiny` has too few pairs for a node."""
    rng = np.random.default_rng(1)
    sizes = {"a/x": 60, "a/y": 60, "a/y/tiny": 4, "b": 60}
    rot = {k: rotation(rng) for k in sizes}
    train = pairs(rng, sizes, rot)
    test = pairs(rng, {"a/x": 30, "a/y": 30, "b": 30}, rot)
    return train, test, pr.HierarchicalProjection().fit(*train)


@pytest.mark.parametrize("data", ["trees", "hierarchy"])
def test_keyed_maps_beat_the_global_map(data, request):
    (Q, A, _keys), (X, Y, test_keys), model = request.getfixturevalue(data)
    glob = pr.GlobalProjection().fit(Q, A)
    keyed, flat = mrr(model.project(X, test_keys), Y), mrr(glob.project(X), Y)
    assert keyed > flat + 0.2, (keyed, flat)
    assert model.shrinkage_ > 0.5
    np.testing.assert_array_equal(model.W_[model.nodes_.index("")], glob.W_)


def test_tiny_and_unknown_trees_fall_back_to_the_global_map(trees):
    (Q, A, _), _, model = trees
    assert model.nodes_ == ["", "t0", "t1", "t2", "t3"]
    assert model.node_sizes_ == [len(Q), 60, 60, 60, 60]
    assert model.resolve(["tiny", "t9", "", "t1", "t1/x"]) == ["", "", "", "t1", ""]
    X = unit(np.random.default_rng(2), 3, D)
    np.testing.assert_allclose(
        model.project(X, ["tiny", "t9", ""]), pr.GlobalProjection().fit(Q, A).project(X), rtol=RTOL, atol=ATOL
    )


def test_paths_use_the_deepest_fitted_ancestor(hierarchy):
    _, _, model = hierarchy
    assert model.nodes_ == ["", "a", "b", "a/x", "a/y"]
    assert model.node_sizes_[1] == 124
    keys = ["a/x/q", "a/y/tiny", "a", "a/z", "b/z/w", "c", "", "a/x/"]
    assert model.resolve(keys) == ["a/x", "a/y", "a", "a", "b", "", "", "a/x"]


def test_zero_shrinkage_gives_the_global_map_everywhere(hierarchy):
    (Q, A, keys), _, _ = hierarchy
    model = pr.HierarchicalProjection(shrinkage=0.0).fit(Q, A, keys)
    glob = pr.GlobalProjection().fit(Q, A).W_
    for W in model.W_:
        np.testing.assert_allclose(W, glob, atol=1e-6)


def test_child_maps_equal_their_parent_outside_their_span(hierarchy):
    """W_child - W_parent is zero on directions orthogonal to the child's questions."""
    rng = np.random.default_rng(3)
    Q, A = unit(rng, 23, D), unit(rng, 23, D)
    model = pr.HierarchicalProjection(shrinkage=1.0, min_pairs=3).fit(Q, A, [""] * 20 + ["a/b"] * 3)
    assert model.nodes_ == ["", "a", "a/b"]
    v = np.linalg.svd(Q[20:])[2][-1]  # orthogonal to the questions under `a`
    for W in model.W_[1:]:
        np.testing.assert_allclose(v @ W, v @ model.W_[0], atol=1e-5)


def test_save_load_round_trip(hierarchy, tmp_path):
    _, (X, _, keys), model = hierarchy
    path = tmp_path / "h.safetensors"
    model.save(path)
    loaded = pr.load(path)
    assert loaded.kind == "hierarchical" and loaded.n_clusters is None
    assert json.loads(loaded.config)["nodes"] == model.nodes_
    np.testing.assert_array_equal(loaded.project(X, keys), model.project(X, keys))
    np.testing.assert_array_equal(loaded.project(X, np.array(keys)), model.project(X, keys))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(pr.ModelFormatError):
        pr.load(path)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_reduced_precision_maps(trees, tmp_path, dtype):
    _, (X, _, keys), model = trees
    path = tmp_path / "t.safetensors"
    model.save(path, weights_dtype=dtype)
    loaded = pr.load(path)
    assert loaded.kind == "tree" and json.loads(loaded.config)["weights_dtype"] == dtype
    np.testing.assert_allclose(loaded.project(X, keys), model.project(X, keys), atol=2e-2)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda m, X: m.project(X), ValueError, "needs keys: one tree id per query"),
        (lambda m, X: m.project(X, ["t0"]), ValueError, "1 keys for 4 queries"),
        (lambda m, X: m.project(X, "t0t1"), TypeError, "sequence of str"),
        (lambda m, X: m.project(X, [0, 1, 2, 3]), TypeError, "sequence of str"),
        (lambda m, X: m.project(X, None), ValueError, "needs keys"),
        (lambda m, X: m.resolve([b"t0"]), TypeError, "sequence of str"),
        (
            lambda m, X: pr.Projector.from_tensors({"W": np.eye(D, dtype=np.float32)}, config("global", D, D)).project(
                X, ["t0"] * 4
            ),
            ValueError,
            "takes no keys",
        ),
    ],
    ids=["no-keys", "length", "one-str", "ints", "none", "bytes", "unkeyed-kind"],
)
def test_bad_serving_inputs_are_exceptions(trees, call, exc, match):
    served = trees[2].projector_
    with pytest.raises(exc, match=match):
        call(served, unit(np.random.default_rng(4), 4, D))


@pytest.mark.parametrize(
    "keys, exc, match",
    [
        (["t0"] * 5, ValueError, "5 keys for 6 items"),
        ([1, 2, 3, 4, 5, 6], TypeError, "sequence of str"),
        ("abcdef", TypeError, "sequence of str"),
    ],
    ids=["length", "ints", "one-str"],
)
def test_bad_fit_inputs_are_exceptions(keys, exc, match):
    rng = np.random.default_rng(5)
    with pytest.raises(exc, match=match):
        pr.TreeProjection(shrinkage=1.0).fit(unit(rng, 6, D), unit(rng, 6, D), keys)


def _write(tmp_path, kind="tree", nodes=("", "a"), W=None, **extra):
    from safetensors.numpy import save_file

    cfg = json.loads(config(kind, D, D))
    if nodes is not None:
        cfg["nodes"] = list(nodes)
    path = tmp_path / "keyed.safetensors"
    W = np.ones((2, D, D), np.float32) if W is None else W
    save_file({"W": W, **extra}, path, metadata={"projroute": json.dumps(cfg)})
    return path


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"nodes": ("a", "b")}, "root"),
        ({"nodes": ("", "")}, "twice"),
        ({"nodes": ("", "a", "b")}, "3 node keys for 2 maps"),
        ({"nodes": None}, "needs `nodes`"),
        ({"bias": np.ones(D, np.float32)}, "unexpected tensor"),
        ({"W": np.ones((D, D), np.float32)}, "dimensions"),
        ({"kind": "hierarchical", "W": np.ones((2, D, D + 1), np.float32)}, "dimensions"),
    ],
    ids=["no-root", "duplicate", "count", "no-nodes", "extra-tensor", "W-2d", "wrong-dim"],
)
def test_bad_keyed_files(tmp_path, kwargs, match):
    with pytest.raises(pr.ModelFormatError, match=match):
        pr.load(_write(tmp_path, **kwargs))


def test_hand_written_file_loads(tmp_path):
    served = pr.load(_write(tmp_path, W=np.stack([np.eye(D), 2 * np.eye(D)]).astype(np.float32)))
    assert served.kind == "tree" and served.resolve(["a", "b"]) == ["a", ""]


PATHS = ["a", "b", "a/a", "a/b", "b/a", "a/a/b", "a/b/a", "b/a/a"]
KEYS = PATHS + ["", "c", "a/c", "a/b/a/c", "a/", "/a", "b//a", "c/a"]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    B=st.integers(1, 40),
    d_in=st.integers(1, 16),
    d_out=st.integers(1, 16),
    hierarchical=st.booleans(),
    nodes=st.lists(st.sampled_from(PATHS), unique=True),
)
def test_keyed_matches_reference(seed, B, d_in, d_out, hierarchical, nodes):
    rng = np.random.default_rng(seed)
    nodes = list(rng.permutation(["", *nodes]))
    keys = list(rng.choice(KEYS, size=B))
    W = rng.normal(size=(len(nodes), d_in, d_out)).astype(np.float32)
    X = rng.normal(size=(B, d_in)).astype(np.float32)
    kind = "hierarchical" if hierarchical else "tree"
    cfg = json.loads(config(kind, d_in, d_out))
    model = pr.Projector.from_tensors({"W": W}, json.dumps({**cfg, "nodes": nodes}))
    node = ref.resolve_keys(keys, nodes, hierarchical)
    assert model.resolve(keys) == [nodes[i] for i in node]
    np.testing.assert_allclose(model.project(X, keys), ref.project_keyed(X, W, node), rtol=RTOL, atol=ATOL)
