"""``projroute serve``: the HTTP service started as a user starts it, on a loopback port.

Every endpoint is checked against the library's own answers, every error against its
status and message; SIGTERM must end the server cleanly; and schemathesis checks the
server against the OpenAPI document it serves (all checks, bounded examples and time).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import projroute as pr

D = 8
N_ANSWERS = 20
#: Small limits, so that the limit errors are cheap to reach.
LIMITS = ["--max-queries", "16", "--max-body-bytes", "65536"]


class Server:
    """A ``projroute serve`` process on a free loopback port (``--port 0``)."""

    def __init__(self, *args: str) -> None:
        cmd = [sys.executable, "-m", "projroute.cli", "serve", *args, "--port", "0"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "projroute serve: ...; listening on http://127.0.0.1:PORT"
        if "listening on " not in line:
            self.proc.kill()
            raise RuntimeError(f"the server did not start: {line}{self.proc.communicate()[1]}")
        self.url = line.rsplit("listening on ", 1)[1].strip()

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None, **headers: str):
        """(status, parsed JSON or text) of one request."""
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if data is not None:
            headers.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, text, kind = r.status, r.read().decode(), r.headers["Content-Type"]
        except urllib.error.HTTPError as e:
            status, text, kind = e.code, e.read().decode(), e.headers["Content-Type"]
        return status, json.loads(text) if kind == "application/json" else text

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        """Send ``sig``, then wait: the exit status and stderr."""
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A federated model (8 -> 8, 4 clusters, top-2) storing 20 answers and their texts."""
    rng = np.random.default_rng(0)
    Q = rng.normal(size=(200, D)).astype(np.float32)
    A = Q + 0.1 * rng.normal(size=Q.shape).astype(np.float32)
    model = pr.FederatedProjection(n_clusters=4, top_k=2, shrinkage=1.0).fit(Q, A)
    path = tmp_path_factory.mktemp("serve") / "fed.safetensors"
    model.save(path, answers=A[:N_ANSWERS], answer_texts=[f"answer {i}" for i in range(N_ANSWERS)])
    return path


@pytest.fixture(scope="module")
def server(model_file) -> Iterator[Server]:
    s = Server(str(model_file), *LIMITS)
    yield s
    if s.proc.poll() is None:
        s.stop()


def test_project_and_search_answer_as_the_library_does(server, model_file):
    model = pr.load(model_file)
    X = np.random.default_rng(1).normal(size=(3, D)).astype(np.float32)
    status, out = server.request("POST", "/project", {"vectors": X.tolist()})
    assert status == 200, out
    np.testing.assert_allclose(np.array(out["vectors"], dtype=np.float32), model.project(X), rtol=1e-6, atol=1e-6)
    status, out = server.request("POST", "/search", {"vectors": X.tolist(), "k": 3})
    assert status == 200, out
    ids, scores = pr.FlatIndex(model.index).search(model.project(X), 3)
    assert [[h["id"] for h in hits] for hits in out["results"]] == ids.tolist()
    assert [[h["text"] for h in hits] for hits in out["results"]] == [[f"answer {i}" for i in row] for row in ids]
    np.testing.assert_allclose([[h["score"] for h in hits] for hits in out["results"]], scores, atol=1e-6)
    assert server.request("GET", "/health") == (
        200,
        {"status": "ok", "kind": "federated", "input": "vectors", "dim_in": D, "dim_out": D, "answers": N_ANSWERS},
    )
    status, doc = server.request("GET", "/openapi.json")
    assert status == 200 and sorted(doc["paths"]) == ["/health", "/metrics", "/openapi.json", "/project", "/search"]
    status, metrics = server.request("GET", "/metrics")
    assert status == 200
    assert 'projroute_http_responses_total{path="/project",status="200"}' in metrics
    assert 'projroute_batched_queries_total{path="/search"}' in metrics


Q1 = [0.5] * D
ERRORS = [
    ("/project", b'{"vectors": [[1, 2', 400, "malformed JSON"),
    ("/project", b'{"vectors": [[NaN, 1, 1, 1, 1, 1, 1, 1]]}', 400, "NaN and Infinity are not JSON numbers"),
    ("/project", {"vectors": [[1, 2, 3]]}, 422, "wrong dimension: query 0 has 3 values, the model takes 8"),
    ("/project", {"vectors": [Q1, [*Q1[:-1], 1e7]]}, 422, "query 1, value 7 is 10000000"),
    ("/project", {"vectors": [[0.0] * D]}, 422, "query 0 is (nearly) zero"),
    ("/project", {"vectors": []}, 422, "no queries"),
    ("/project", {"vectors": [Q1] * 17}, 422, "too many queries: 17 in one request, the limit is 16"),
    ("/project", {"vectors": [Q1], "keys": ["a"]}, 422, "takes no `keys`"),
    ("/project", {"vector": [Q1]}, 422, "unknown field `vector`"),
    ("/project", {"vectors": [[1.0] * 20_000]}, 413, "request body too large"),
    ("/search", {"vectors": [Q1], "k": 0}, 422, "k out of range"),
    ("/search", {"vectors": [Q1], "k": N_ANSWERS + 1}, 422, f"from 1 to {N_ANSWERS}"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), ERRORS, ids=[e[3] for e in ERRORS])
def test_bad_requests_get_a_4xx_naming_the_problem(server, path, body, status, message):
    raw = body if isinstance(body, bytes) else None
    got, out = server.request("POST", path, None if raw else body, raw=raw)
    assert (got, message in out["error"]) == (status, True), out


def test_wrong_method_content_type_and_path(server):
    assert server.request("DELETE", "/project")[0] == 405
    status, out = server.request("POST", "/project", raw=b'{"vectors": []}', **{"Content-Type": "text/plain"})
    assert (status, out["error"]) == (415, "expected a JSON body with `Content-Type: application/json`")
    assert server.request("GET", "/nowhere") == (404, {"error": "no such endpoint (see GET /openapi.json)"})


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_server_cleanly(model_file, sig):
    s = Server(str(model_file), "--no-batching")
    assert s.request("POST", "/project", {"vectors": [Q1]})[0] == 200
    code, err = s.stop(sig)
    assert (code, err) == (0, "")


def test_start_up_errors_exit_2(tmp_path):
    cmd = [sys.executable, "-m", "projroute.cli", "serve"]
    missing = subprocess.run([*cmd, str(tmp_path / "missing.safetensors")], capture_output=True, text=True)
    assert missing.returncode == 2 and "projroute serve: error:" in missing.stderr and "missing" in missing.stderr
    usage = subprocess.run([*cmd, "x", "--port", "nope"], capture_output=True, text=True)
    assert usage.returncode == 2 and "--port" in usage.stderr
    helped = subprocess.run([*cmd, "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--batch-wait-us" in helped.stdout


def test_index_file_serves_text(encoder_dir, tmp_path):
    texts = ["how do I install it?", "the weather is nice today", "install with pip"]
    path = tmp_path / "answers.index"
    pr.build_index(texts, path, encoder=encoder_dir)
    searcher = pr.Searcher.open_index(path)
    s = Server(str(path))
    try:
        status, out = s.request("POST", "/embed", {"texts": ["install pip", "\u2603\u2603"]})
        assert status == 200, out
        np.testing.assert_allclose(out["vectors"][0], searcher.embed(["install pip"])[0], rtol=1e-6, atol=1e-7)
        status, out = s.request("POST", "/search", {"texts": ["install pip"], "k": 2})
        assert status == 200, out
        want = searcher.search(["install pip"], 2)[0]
        assert [(h["id"], h["text"]) for h in out["results"][0]] == [(i, t) for i, _, t in want]
        assert s.request("POST", "/search", {"texts": ["x"], "k": 4})[0] == 422
    finally:
        assert s.stop()[0] == 0


def test_schemathesis_finds_no_failures(server, tmp_path):
    """Every check schemathesis has, against the served document: 50 examples an operation, at most 40 s."""
    exe = str(Path(sys.executable).with_name("schemathesis"))  # the dev extra's, beside this Python
    cmd = [exe, "run", f"{server.url}/openapi.json", "--checks", "all", "--max-examples", "50", "--max-time", "40"]
    cmd += ["--seed", "0", "--workers", "1", "--phases", "examples,coverage,fuzzing", "--report", "junit"]
    cmd += ["--report-junit-path", str(tmp_path / "junit.xml")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)  # its cache goes there
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    assert "No issues found" in run.stdout
    report = (tmp_path / "junit.xml").read_text()
    # Every operation but the document itself (schemathesis leaves its own source out).
    for operation in ["POST /project", "POST /search", "GET /health", "GET /metrics"]:
        assert f'testcase name="{operation}"' in report, f"{operation} was not tested"
