"""Load test of ``projroute serve`` (``make bench-serve``; not part of CI).

A federated model at D=384 (100 clusters, top-10, fitted on synthetic topic data)
storing 10,000 answers is served on loopback; oha sends one query per request (a
different held-out query each time, ``-Z``) at 1, 8 and 64 connections, with
micro-batching on (the defaults) and off (``--no-batching``). With ``--rounds N`` the
two modes alternate N times, so that a drift in the machine's speed falls on both.
Prints the medians over rounds of p50, p99 and requests/s per endpoint, mode and
connection count as a Markdown table, and batching's throughput ratio per round (the
raw figures as JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
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
    p.add_argument("--rounds", type=int, default=1, help="alternations of batching on and off")
    p.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    args = p.parse_args()
    endpoints, connections = args.endpoints.split(","), [int(c) for c in args.connections.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, queries = build(folder, args.weights_dtype)
        print(f"model: {model.stat().st_size / 1e6:.0f} MB; cores: {os.cpu_count()}", file=sys.stderr)
        for endpoint in endpoints:
            lines = bodies(folder, queries, endpoint)
            for round_ in range(args.rounds):
                for mode, flags in [("on", []), ("off", ["--no-batching"])]:
                    proc, url = start(args.server, model, flags)
                    try:
                        for c in connections:
                            oha(args.oha, url + endpoint, lines, c, "2s", args.oha_threads)  # warm-up
                            r = oha(args.oha, url + endpoint, lines, c, args.duration, args.oha_threads)
                            s, pct = r["summary"], r["latencyPercentiles"]
                            row = {
                                "endpoint": endpoint,
                                "round": round_,
                                "batching": mode,
                                "connections": c,
                                "p50_ms": pct["p50"] * 1e3,
                                "p99_ms": pct["p99"] * 1e3,
                                "rps": s["requestsPerSec"],
                                "status": r.get("statusCodeDistribution", {}),
                            }
                            rows.append(row)
                            print(json.dumps(row), file=sys.stderr)
                    finally:
                        proc.send_signal(signal.SIGTERM)
                        proc.wait(timeout=60)
    print(f"medians over {args.rounds} round(s); requests/s with its range")
    print("| endpoint | connections | batching | p50 | p99 | requests/s |")
    print("|---|---|---|---|---|---|")
    for endpoint in endpoints:
        for mode in ["on", "off"]:
            for c in connections:
                got = [r for r in rows if (r["endpoint"], r["batching"], r["connections"]) == (endpoint, mode, c)]
                p50, p99 = (statistics.median(r[f] for r in got) for f in ["p50_ms", "p99_ms"])
                rps = sorted(r["rps"] for r in got)
                spread = f" ({rps[0]:,.0f}–{rps[-1]:,.0f})" if len(rps) > 1 else ""
                print(
                    f"| `{endpoint}` | {c} | {mode} | {p50:.2f} ms | {p99:.2f} ms "
                    f"| {statistics.median(rps):,.0f}{spread} |"
                )
    for endpoint in endpoints:
        by = {(r["round"], r["batching"], r["connections"]): r["rps"] for r in rows if r["endpoint"] == endpoint}
        for c in connections:
            ratios = [by[(i, "on", c)] / by[(i, "off", c)] for i in range(args.rounds)]
            each = ", ".join(f"{x:.2f}x" for x in ratios)
            print(
                f"{endpoint}, {c} connections: batching {statistics.median(ratios):.2f}x the throughput "
                f"without (median; each round: {each})"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
