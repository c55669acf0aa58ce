"""Readers for question/answer data sets.

Two shapes of data come out of this module:

* :class:`Pairs` -- (question, answer) training pairs, one row per pair.
* :class:`EvalSet` -- a held-out retrieval task: queries, an answer corpus and,
  for each query, the corpus indices of its correct answers.

The real data sets are third-party and are read in place from a data
directory (see :func:`data_dir`), never copied into the project.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from projroute._atomic import atomic_write

__all__ = [
    "EvalSet",
    "Pairs",
    "data_dir",
    "demo",
    "load_eval",
    "load_jsonl",
    "load_pairs",
    "pairs_to_eval",
    "parse_json",
    "read_text",
    "save_jsonl",
    "split_by_question",
    "stackfaq",
    "trecqa",
    "utf8_lines",
]

ENV_DATA = "PROJROUTE_DATA"
STACKFAQ_FILE = "stackExchange-FAQ.json"
TRECQA_HEADER = ["qtext", "label", "atext"]

PathLike = str | os.PathLike


@dataclass
class Pairs:
    """(question, answer) training pairs; row ``i`` pairs ``questions[i]`` with ``answers[i]``.

    Attributes
    ----------
    questions, answers : list of str, same length
    ids : list of str or None
        Optional identifier per pair.
    """

    questions: list[str]
    answers: list[str]
    ids: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.questions) != len(self.answers):
            raise ValueError(f"{len(self.questions)} questions but {len(self.answers)} answers")
        if self.ids is not None and len(self.ids) != len(self.questions):
            raise ValueError(f"{len(self.ids)} ids for {len(self.questions)} pairs")

    def __len__(self) -> int:
        return len(self.questions)


@dataclass
class EvalSet:
    """A retrieval task: rank ``corpus`` for each query.

    Attributes
    ----------
    queries : list of str, length n
    corpus : list of str, length m, unique texts
    gold : list of list of int, length n
        ``gold[i]`` holds the indices into ``corpus`` of query ``i``'s correct answers.
    """

    queries: list[str]
    corpus: list[str]
    gold: list[list[int]]

    def __post_init__(self) -> None:
        if len(self.gold) != len(self.queries):
            raise ValueError(f"{len(self.gold)} gold lists for {len(self.queries)} queries")

    def __len__(self) -> int:
        return len(self.queries)


def _not_utf8(path: PathLike, lineno: int, byte: int, column: int) -> ValueError:
    return ValueError(f"{path}:{lineno}: not UTF-8 text (byte 0x{byte:02x} at column {column})")


def utf8_lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file, read as a stream, line ends kept and a
    leading byte-order mark dropped; a line that is not UTF-8 is a ValueError naming the
    file, the line and the byte."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(path, lineno, e.object[e.start], e.start + 1) from None


def read_text(path: PathLike) -> str:
    """The whole of a UTF-8 text file (a leading byte-order mark dropped); bytes that
    are not UTF-8 are a ValueError naming the file, the line and the byte."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        body = e.object  # the bytes after any byte-order mark
        line_start = body.rfind(b"\n", 0, e.start) + 1
        lineno = body.count(b"\n", 0, e.start) + 1
        raise _not_utf8(path, lineno, body[e.start], e.start - line_start + 1) from None


def parse_json(text: str, where: str) -> object:
    """``text`` parsed as JSON; anything unparsable (bad syntax, absurd nesting or
    numbers) is a ValueError starting with ``where`` (a file and line)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{where}: invalid JSON ({e})") from None


def data_dir(path: PathLike | None = None) -> Path:
    """The data directory holding ``stackfaq/`` and ``trecqa/``: ``path``, or else the
    environment variable ``PROJROUTE_DATA``. The library guesses no location.

    Raises
    ------
    FileNotFoundError
        If neither is given, or the one given is not a directory.
    """
    if path is not None:
        p = Path(path)
        if not p.is_dir():
            raise FileNotFoundError(f"data directory {p} does not exist (pass another path or set {ENV_DATA})")
        return p
    env = os.environ.get(ENV_DATA)
    if not env:
        raise FileNotFoundError(
            f"no data directory: set {ENV_DATA} to the folder holding stackfaq/ and trecqa/, or pass its path"
        )
    p = Path(env)
    if not p.is_dir():
        raise FileNotFoundError(f"{ENV_DATA}={env} is not a directory")
    return p


def load_jsonl(path: PathLike) -> Pairs:
    """Read pairs from a JSON-lines file.

    Each non-blank line is an object with string fields ``"question"`` and
    ``"answer"`` and optionally ``"id"`` (either on every line or on none).

    Raises
    ------
    ValueError
        Naming the file and line number of a malformed line or missing field.
    """
    questions: list[str] = []
    answers: list[str] = []
    ids: list[str] = []
    for lineno, line in utf8_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        rec = parse_json(line, where)
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object")
        for field in ("question", "answer"):
            if not isinstance(rec.get(field), str):
                raise ValueError(f"{where}: missing or non-string field {field!r}")
        if questions and ("id" in rec) != bool(ids):
            raise ValueError(f"{where}: 'id' must be given on every line or on none")
        questions.append(rec["question"])
        answers.append(rec["answer"])
        if "id" in rec:
            ids.append(str(rec["id"]))
    return Pairs(questions, answers, ids if ids else None)


def save_jsonl(pairs: Pairs, path: PathLike) -> None:
    """Write pairs as JSON lines readable by :func:`load_jsonl`."""
    with atomic_write(path) as f:
        for i, (q, a) in enumerate(zip(pairs.questions, pairs.answers)):
            rec = {"question": q, "answer": a}
            if pairs.ids is not None:
                rec = {"id": pairs.ids[i], **rec}
            f.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))


class _Corpus:
    """Unique texts in first-seen order, with their indices."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._index: dict[str, int] = {}

    def add(self, text: str) -> int:
        i = self._index.get(text)
        if i is None:
            i = self._index[text] = len(self.texts)
            self.texts.append(text)
        return i


def _eval_from_groups(groups: Iterable[tuple[str, list[str]]], corpus: _Corpus) -> EvalSet:
    """Build an EvalSet from (query, answers) groups, merging repeated queries."""
    order: dict[str, list[int]] = {}
    for query, answers in groups:
        gold = order.setdefault(query, [])
        for a in answers:
            j = corpus.add(a)
            if j not in gold:
                gold.append(j)
    return EvalSet(list(order), corpus.texts, [sorted(g) for g in order.values()])


def pairs_to_eval(pairs: Pairs) -> EvalSet:
    """Turn pairs into a retrieval task.

    Queries are the unique questions (first-seen order), the corpus the unique
    answers (first-seen order), and each query's gold the answers paired with it.
    """
    return _eval_from_groups(((q, [a]) for q, a in zip(pairs.questions, pairs.answers)), _Corpus())


def split_by_question(pairs: Pairs, frac: float = 0.1, seed: int = 0) -> tuple[Pairs, Pairs]:
    """Hold out a random ``frac`` of the unique questions with all their pairs.

    Deterministic for a given ``seed``; at least one question lands on each side.
    Pair order (and ``ids``) is kept within each part.

    Returns
    -------
    train, held_out : Pairs
    """
    if not 0.0 < frac < 1.0:
        raise ValueError(f"frac must lie in (0, 1), got {frac}")
    unique = list(dict.fromkeys(pairs.questions))
    if len(unique) < 2:
        raise ValueError("need at least two distinct questions to split")
    n_out = min(max(round(frac * len(unique)), 1), len(unique) - 1)
    rng = np.random.default_rng(seed)
    held = {unique[i] for i in rng.choice(len(unique), size=n_out, replace=False)}
    mask = [q in held for q in pairs.questions]

    def take(keep: bool) -> Pairs:
        rows = [i for i, m in enumerate(mask) if m == keep]
        return Pairs(
            [pairs.questions[i] for i in rows],
            [pairs.answers[i] for i in rows],
            None if pairs.ids is None else [pairs.ids[i] for i in rows],
        )

    return take(False), take(True)


def _as_list(value: object) -> list[str]:
    """Normalise a JSON field that may be a string, a list or null to clean non-blank strings."""
    items = value if isinstance(value, list) else [value]
    return [s.strip() for s in items if isinstance(s, str) and s.strip()]


def stackfaq(path: PathLike | None = None) -> tuple[Pairs, EvalSet]:
    """Load StackFAQ (Karan and Snajder, 2018).

    Parameters
    ----------
    path : path-like, optional
        ``stackExchange-FAQ.json`` or the directory holding it; default
        ``data_dir() / "stackfaq"``.

    Returns
    -------
    train : Pairs
        (original question, answer) for every answer of every thread;
        ids ``"<thread>/<answer>"``.
    test : EvalSet
        Every paraphrase (``rephr``, skipping ``"*"`` placeholders and blanks)
        as a query against the corpus of all threads' answers; gold = the
        thread's answers.
    """
    p = Path(path) if path is not None else data_dir() / "stackfaq"
    if p.is_dir():
        p = p / STACKFAQ_FILE
    text = read_text(p)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}:{e.lineno}: invalid JSON ({e.msg})") from None
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{p}: invalid JSON ({e})") from None
    root = doc.get("root") if isinstance(doc, dict) else None
    threads = root.get("qapair") if isinstance(root, dict) else None
    if not isinstance(threads, list):
        raise ValueError(f'{p}: not StackFAQ data (expected {{"root": {{"qapair": [...]}}}})')
    questions, answers, ids = [], [], []
    groups: list[tuple[str, list[str]]] = []
    for t, thread in enumerate(threads):
        if not (isinstance(thread, dict) and isinstance(thread.get("question"), str)):
            raise ValueError(f'{p}: thread {t} is not an object with a string "question"')
        question = thread["question"].strip()
        thread_answers = _as_list(thread.get("answer"))
        for a, answer in enumerate(thread_answers):
            questions.append(question)
            answers.append(answer)
            ids.append(f"{t}/{a}")
        if thread_answers:
            groups += [(r, thread_answers) for r in _as_list(thread.get("rephr")) if r != "*"]
    corpus = _Corpus()
    for answer in answers:
        corpus.add(answer)
    return Pairs(questions, answers, ids), _eval_from_groups(groups, corpus)


def _read_trecqa(path: Path) -> list[tuple[str, int, str]]:
    reader = csv.reader(line for _, line in utf8_lines(path))
    try:
        header = next(reader, None)
        if header != TRECQA_HEADER:
            raise ValueError(f"{path}: expected header {','.join(TRECQA_HEADER)}, got {header}")
        rows = []
        for row in reader:
            if len(row) != 3 or row[1] not in ("0", "1"):
                raise ValueError(f"{path}:{reader.line_num}: expected qtext,label(0/1),atext, got {row}")
            rows.append((row[0], int(row[1]), row[2]))
    except csv.Error as e:
        raise ValueError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    return rows


def trecqa(path: PathLike | None = None, split: str = "test") -> tuple[Pairs, EvalSet]:
    """Load TREC QA answer-sentence selection.

    Parameters
    ----------
    path : path-like, optional
        Directory holding ``train.csv``, ``dev.csv`` and ``test.csv``
        (header ``qtext,label,atext``); default ``data_dir() / "trecqa"``.
    split : {"dev", "test"}
        Which file the evaluation set comes from.

    Returns
    -------
    train : Pairs
        The label-1 (question, answer) rows of ``train.csv``.
    test : EvalSet
        Queries = the split's questions with at least one positive; corpus =
        all unique answer sentences of the split (positives and negatives);
        gold = each query's positives.
    """
    if split not in ("dev", "test"):
        raise ValueError(f"split must be 'dev' or 'test', got {split!r}")
    root = Path(path) if path is not None else data_dir() / "trecqa"
    train_rows = _read_trecqa(root / "train.csv")
    train = Pairs([q for q, y, _ in train_rows if y], [a for _, y, a in train_rows if y])
    rows = _read_trecqa(root / f"{split}.csv")
    corpus = _Corpus()
    for _, _, a in rows:
        corpus.add(a)
    test = _eval_from_groups(((q, [a]) for q, y, a in rows if y), corpus)
    return train, test


def demo(path: PathLike | None = None) -> tuple[Pairs, EvalSet]:
    """Load the small packaged demo set (``projroute/data/demo_qa.jsonl``).

    Records are ``{"id", "topic", "question", "answer", "paraphrases": [str, ...]}``.

    Parameters
    ----------
    path : path-like, optional
        A file in the same format to read instead of the packaged one.

    Returns
    -------
    train : Pairs
        (question, answer) per record, ids = record ids.
    test : EvalSet
        Every paraphrase as a query against the corpus of all answers;
        gold = its record's answer.
    """
    if path is None:
        text = resources.files("projroute.data").joinpath("demo_qa.jsonl").read_text("utf-8")
        source = "projroute/data/demo_qa.jsonl"
    else:
        text = read_text(path)
        source = str(path)
    questions, answers, ids = [], [], []
    groups: list[tuple[str, list[str]]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        rec = parse_json(line, f"{source}:{lineno}")
        if not (
            isinstance(rec, dict)
            and isinstance(rec.get("question"), str)
            and isinstance(rec.get("answer"), str)
            and {"id", "paraphrases"} <= rec.keys()
        ):
            raise ValueError(
                f"{source}:{lineno}: bad demo record (expected an object with string question and answer, "
                "an id and paraphrases)"
            )
        ids.append(str(rec["id"]))
        questions.append(rec["question"])
        answers.append(rec["answer"])
        groups += [(p, [rec["answer"]]) for p in _as_list(rec["paraphrases"])]
    corpus = _Corpus()
    for answer in answers:
        corpus.add(answer)
    return Pairs(questions, answers, ids), _eval_from_groups(groups, corpus)


def _resolve(spec: PathLike) -> tuple[str, Path | None]:
    """Classify a data spec as ("demo"|"stackfaq"|"trecqa"|"jsonl", path)."""
    s = os.fspath(spec)
    if s == "demo":
        return "demo", None
    if s in ("stackfaq", "trecqa"):
        return s, data_dir() / s
    p = Path(s)
    if p.is_dir():
        if (p / STACKFAQ_FILE).is_file():
            return "stackfaq", p
        if (p / "train.csv").is_file():
            return "trecqa", p
    elif p.suffix == ".jsonl":
        if not p.is_file():
            raise FileNotFoundError(f"no such file: {p}")
        return "jsonl", p
    raise ValueError(
        f"unrecognised data spec {s!r}: expected 'demo', 'stackfaq', 'trecqa', a directory "
        f"holding {STACKFAQ_FILE} or a TREC QA train.csv, or a .jsonl file"
    )


def load_pairs(spec: PathLike) -> Pairs:
    """Training pairs for a CLI data spec.

    ``spec`` is ``"demo"``, ``"stackfaq"`` or ``"trecqa"`` (the latter two under
    :func:`data_dir`), a directory holding ``stackExchange-FAQ.json`` or a
    TREC QA ``train.csv``, or a ``.jsonl`` file.
    """
    kind, path = _resolve(spec)
    if kind == "jsonl" and path is not None:
        return load_jsonl(path)
    return {"demo": demo, "stackfaq": stackfaq, "trecqa": trecqa}[kind](path)[0]


def load_eval(spec: PathLike) -> EvalSet:
    """Evaluation set for a CLI data spec (see :func:`load_pairs`).

    TREC QA gives its test split; a ``.jsonl`` file goes through :func:`pairs_to_eval`.
    """
    kind, path = _resolve(spec)
    if kind == "jsonl" and path is not None:
        return pairs_to_eval(load_jsonl(path))
    return {"demo": demo, "stackfaq": stackfaq, "trecqa": trecqa}[kind](path)[1]
