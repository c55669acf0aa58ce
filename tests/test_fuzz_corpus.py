"""The atheris corpus of the Python data readers as regression tests: every input the
fuzzer kept (fuzz/corpus/readers, seeded from fuzz/seeds/readers) and every crash it found (fuzz/regressions/readers)
goes through ``fuzz/readers.py``'s ``check``, which lets only ValueError and OSError
through. Needs no atheris."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "fuzz"


def test_every_kept_input_reads_or_raises_a_clear_error():
    spec = importlib.util.spec_from_file_location("fuzz_readers", ROOT / "readers.py")
    assert spec is not None and spec.loader is not None
    readers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(readers)
    inputs = sorted(
        p
        for d in ("seeds/readers", "corpus/readers", "regressions/readers")
        for p in (ROOT / d).glob("*")
        if p.is_file()
    )
    assert len(inputs) >= 20
    for path in inputs:
        try:
            readers.check(path.read_bytes())
        except Exception as e:
            raise AssertionError(f"{path}: {type(e).__name__}: {e}") from e
