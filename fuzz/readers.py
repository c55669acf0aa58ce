"""atheris fuzzing of the Python readers of data files: JSONL pairs, the demo format,
StackFAQ and TREC QA loaders, question files (.txt, .jsonl) and answer corpora.

    python fuzz/readers.py [libFuzzer flags] [CORPUS ...]   (fuzz/run.sh runs it)

Each input's first byte picks a reader, the rest is the file. A reader may raise
ValueError (bad data, naming the file) or OSError; anything else escaping is a crash.
``check`` needs no atheris: tests/test_fuzz_corpus.py replays the corpus through it.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


def _readers() -> list[tuple[str, Callable[[Path], object]]]:
    from projroute import cli, datasets, index

    def trecqa(path: Path) -> object:
        (path.parent / "test.csv").write_bytes(path.read_bytes())
        return datasets.trecqa(path.parent)

    return [
        ("pairs.jsonl", datasets.load_jsonl),
        ("demo.jsonl", datasets.demo),
        ("stackExchange-FAQ.json", datasets.stackfaq),
        ("train.csv", trecqa),
        ("questions.txt", cli.read_questions),
        ("questions.jsonl", cli.read_questions),
        ("corpus.txt", index.read_corpus),
        ("pairs.jsonl", lambda p: datasets.load_eval(str(p))),
    ]


READERS: list[tuple[str, Callable[[Path], object]]] = []


def check(data: bytes) -> None:
    """Feed ``data[1:]`` as a file to the reader ``data[0]`` picks."""
    if not READERS:
        READERS.extend(_readers())
    if not data:
        return
    name, read = READERS[data[0] % len(READERS)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data[1:])
        with contextlib.suppress(ValueError, OSError):
            read(path)


def main() -> None:
    import atheris

    with atheris.instrument_imports(include=["projroute"]):
        READERS.extend(_readers())
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
