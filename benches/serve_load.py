"""Load test of ``projroute serve`` (``make bench-serve``; not part of CI).

A federated model at D=384 (100 clusters, top-10, fitted on synthetic topic data)
storing 10,000 answers is served on loopback; oha sends one query per request (a
different held-out query each time, ``-Z``) at 1, 8 and 64 connections, with
micro-batching on (the defaults) and off (``--no-batching``). Prints p50, p99 and
requests/s per endpoint, mode and connection count as a Markdown table (and the raw
figures as JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import projroute as pr

D = 384
N_ANSWERS = 10_000
N_CLUSTERS = 100
TOPICS = 200


def unit(X: np.ndarray) -> np.ndarray:
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def synthetic(rng: np.random.Generator, n: int, topics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(questions, answers), (n, D) unit rows: answers near a topic, questions near their answer."""
    A = unit(topics[rng.integers(len(topics), size=n)] + rng.normal(scale=0.8 / np.sqrt(D), size=(n, D)))
    Q = unit(A + rng.normal(scale=0.8 / np.sqrt(D), size=(n, D)))
    return Q, A


def build(folder: Path, weights_dtype: str = "float32") -> tuple[Path, np.ndarray]:
    """The model file (seed 0; maps stored as ``weights_dtype``) and 1,000 held-out queries."""
    rng = np.random.default_rng(0)
    topics = unit(rng.normal(size=(TOPICS, D)))
    Q, A = synthetic(rng, N_ANSWERS, topics)
    model = pr.FederatedProjection(n_clusters=N_CLUSTERS, top_k=10, shrinkage=1.0, random_state=0).fit(Q, A)
    path = folder / "fed384.safetensors"
    model.save(path, answers=A, weights_dtype=weights_dtype)
    return path, synthetic(rng, 1000, topics)[0]


def bodies(folder: Path, queries: np.ndarray, endpoint: str) -> Path:
    """One JSON request body a line, one query each (oha -Z picks lines at random)."""
    path = folder / f"bodies{endpoint.replace('/', '_')}.jsonl"
    extra = {"k": 10} if endpoint == "/search" else {}
    lines = (json.dumps({"vectors": [[round(float(v), 6) for v in q]], **extra}) for q in queries)
    path.write_text("\n".join(lines) + "\n")
    return path


def start(server: str, model: Path, flags: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([server, str(model), "--port", "0", *flags], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        sys.exit(f"the server did not start: {line}")
    return proc, line.rsplit("listening on ", 1)[1].strip()


def oha(exe: str, url: str, body_lines: Path, connections: int, duration: str, threads: int) -> dict:
    cmd = [exe, url, "-z", duration, "-c", str(connections), "-m", "POST", "-T", "application/json"]
    cmd += ["--worker-threads", str(threads)]
    cmd += ["-Z", str(body_lines), "--no-tui", "--output-format", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="target/release/projroute-serve")
    p.add_argument("--oha", default="target/tools/bin/oha")
    p.add_argument("--duration", default="10s", help="per measurement (oha -z), after a 2 s warm-up")
    p.add_argument("--connections", default="1,8,64")
    p.add_argument(
        "--oha-threads",
        type=int,
        default=1,
        help="oha's worker threads (one drives 64 connections at under a fifth of a core, and leaves "
        "the other core to the server; oha's own default is one per core)",
    )
    p.add_argument("--endpoints", default="/project,/search")
    p.add_argument(
        "--weights-dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="the maps' storage"
    )
    p.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, queries = build(folder, args.weights_dtype)
        print(f"model: {model.stat().st_size / 1e6:.0f} MB; cores: {os.cpu_count()}", file=sys.stderr)
        for endpoint in args.endpoints.split(","):
            lines = bodies(folder, queries, endpoint)
            for mode, flags in [("on", []), ("off", ["--no-batching"])]:
                proc, url = start(args.server, model, flags)
                try:
                    for c in map(int, args.connections.split(",")):
                        oha(args.oha, url + endpoint, lines, c, "2s", args.oha_threads)  # warm-up
                        r = oha(args.oha, url + endpoint, lines, c, args.duration, args.oha_threads)
                        s, pct = r["summary"], r["latencyPercentiles"]
                        ok = r.get("statusCodeDistribution", {})
                        row = {
                            "endpoint": endpoint,
                            "batching": mode,
                            "connections": c,
                            "p50_ms": pct["p50"] * 1e3,
                            "p99_ms": pct["p99"] * 1e3,
                            "rps": s["requestsPerSec"],
                            "status": ok,
                        }
                        rows.append(row)
                        print(json.dumps(row), file=sys.stderr)
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=60)
    print("| endpoint | connections | batching | p50 | p99 | requests/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| `{r['endpoint']}` | {r['connections']} | {r['batching']} | {r['p50_ms']:.2f} ms "
            f"| {r['p99_ms']:.2f} ms | {r['rps']:,.0f} |"
        )
    for endpoint in args.endpoints.split(","):
        by = {(r["batching"], r["connections"]): r["rps"] for r in rows if r["endpoint"] == endpoint}
        for c in map(int, args.connections.split(",")):
            print(f"{endpoint}, {c} connections: batching {by[('on', c)] / by[('off', c)]:.2f}x the throughput without")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
