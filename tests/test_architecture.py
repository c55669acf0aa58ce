"""The package's seams (issue 9): no import cycles, one owner of the config header, and a
save that calls the Rust serialiser once and never builds or loads a model."""

import ast
from pathlib import Path

import numpy as np

import projroute as pr
from projroute import _core

PACKAGE = Path(pr.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every projroute module -> the projroute modules it imports, at any depth of its code."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name, found = module_name(path), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("projroute"):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("projroute"))
        graph[name] = found
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_no_module_imports_one_that_imports_it_back():
    graph = imports()
    # Package __init__ files re-export their children; a child importing its package
    # (for a sibling) is not a cycle between two modules of code.
    code = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        for d in code[m]:
            if d in path:
                cycles.append(path[path.index(d) :] + [d])
            elif len(path) < 12:
                visit(d, path + [d])

    for m in code:
        visit(m, [m])
    assert not cycles, cycles[:5]


def test_one_module_writes_the_config_header():
    writers = [
        p.name
        for p in PACKAGE.rglob("*.py")
        if '"format": FORMAT' in p.read_text() or '"format": "projroute"' in p.read_text()
    ]
    assert writers == ["_format.py"]


def test_save_calls_the_serialiser_once_and_never_a_loader(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    Q = rng.normal(size=(40, 8)).astype(np.float32)
    model = pr.FederatedProjection(n_clusters=3, shrinkage=0.5, progress=False).fit(Q, Q + 0.1)
    calls = []
    serialise = _core.save_file
    monkeypatch.setattr(_core, "save_file", lambda *a: (calls.append(a[2]), serialise(*a)))

    def forbidden(*_args, **_kwargs):
        raise AssertionError("save built or loaded a model")

    monkeypatch.setattr(_core.Projector, "load", forbidden, raising=False)
    monkeypatch.setattr(_core.Projector, "from_tensors", forbidden, raising=False)
    model.save(tmp_path / "m.safetensors", answers=Q, weights_dtype="float16")
    assert calls == [str(tmp_path / "m.safetensors")]
    monkeypatch.undo()
    loaded = pr.load(tmp_path / "m.safetensors")
    assert loaded.kind == "federated" and loaded.tensors()["index.embeddings"].shape == (40, 8)
