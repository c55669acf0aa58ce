import json

import pytest

from projroute import datasets
from projroute.datasets import EvalSet, Pairs


def check_eval(ev: EvalSet) -> None:
    assert len(ev.gold) == len(ev.queries)
    assert len(set(ev.corpus)) == len(ev.corpus)
    for g in ev.gold:
        assert g and g == sorted(set(g))
        assert all(0 <= j < len(ev.corpus) for j in g)


# --- StackFAQ -------------------------------------------------------------


@pytest.fixture(scope="module")
def stackfaq(data_root):
    return datasets.stackfaq(data_root / "stackfaq")


def test_stackfaq_counts(stackfaq, data_root):
    train, test = stackfaq
    assert len(train) == 719
    assert len(set(train.questions)) == 125
    assert len(set(train.ids)) == 719
    # 125 threads x 11 rephr slots: 125 "*" placeholders and one null are skipped.
    assert len(test.queries) == 1249
    assert "*" not in test.queries and all(q.strip() for q in test.queries)
    assert len(test.corpus) == 719
    assert set(test.corpus) == set(train.answers)
    assert sum(len(g) for g in test.gold) == 10 * 719 - 6  # thread 93 has 9 paraphrases
    check_eval(test)
    # the json file and its directory are both accepted
    train2, test2 = datasets.stackfaq(data_root / "stackfaq" / "stackExchange-FAQ.json")
    assert train2 == train and test2 == test


def test_stackfaq_gold_is_thread_answers(stackfaq, data_root):
    _train, test = stackfaq
    raw = (data_root / "stackfaq" / "stackExchange-FAQ.json").read_text()
    threads = json.loads(raw)["root"]["qapair"]
    first = threads[0]
    i = test.queries.index(first["rephr"][0].strip())
    assert [test.corpus[j] for j in test.gold[i]] == [a.strip() for a in first["answer"]]
    # the one thread whose "answer" is a lone string
    single = next(t for t in threads if isinstance(t["answer"], str))
    i = test.queries.index(single["rephr"][0].strip())
    assert [test.corpus[j] for j in test.gold[i]] == [single["answer"].strip()]


# --- TREC QA --------------------------------------------------------------


@pytest.mark.parametrize(
    "split, n_queries, corpus_size, n_positive",
    [("dev", 78, 1038, 222), ("test", 89, 1393, 284)],
)
def test_trecqa_counts(data_root, split, n_queries, corpus_size, n_positive):
    train, test = datasets.trecqa(data_root / "trecqa", split=split)
    # README: 93 questions and 348 answers in train.csv; 83 of them have a positive.
    assert len(train) == 348
    assert len(set(train.questions)) == 83
    assert len(test.queries) == n_queries
    assert len(test.corpus) == corpus_size
    assert sum(len(g) for g in test.gold) == n_positive
    check_eval(test)


def test_trecqa_quoted_fields_and_bad_split(data_root):
    train, _ = datasets.trecqa(data_root / "trecqa")
    assert train.questions[0].startswith("Who is the author of the book , `` The Iron Lady")
    assert any("," in a for a in train.answers)
    with pytest.raises(ValueError, match="split"):
        datasets.trecqa(data_root / "trecqa", split="train")


# --- jsonl, pairs_to_eval, split ----------------------------------------


def test_jsonl_round_trip(tmp_path):
    pairs = Pairs(["q1", "q1", 'q2 "quoted"'], ["a1", "a2", "ünïcode\nline"], ["x", "y", "z"])
    path = tmp_path / "p.jsonl"
    datasets.save_jsonl(pairs, path)
    assert datasets.load_jsonl(path) == pairs
    no_ids = Pairs(pairs.questions, pairs.answers)
    datasets.save_jsonl(no_ids, path)
    assert datasets.load_jsonl(path) == no_ids


@pytest.mark.parametrize(
    "bad_line",
    [
        '{"question": "q"',
        '{"question": "q"}',
        '["q", "a"]',
        '{"question": 1, "answer": "a"}',
        '{"id": 3, "question": "q", "answer": "a"}',
    ],
)
def test_jsonl_bad_line_names_line_number(tmp_path, bad_line):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n\n' + bad_line + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3"):
        datasets.load_jsonl(path)


def test_pairs_to_eval():
    pairs = Pairs(["q1", "q2", "q1", "q3"], ["a1", "a2", "a3", "a1"])
    ev = datasets.pairs_to_eval(pairs)
    assert ev.queries == ["q1", "q2", "q3"]
    assert ev.corpus == ["a1", "a2", "a3"]
    assert ev.gold == [[0, 2], [1], [0]]


def test_split_by_question():
    qs = [f"q{i // 3}" for i in range(60)]  # 20 questions x 3 answers
    pairs = Pairs(qs, [f"a{i}" for i in range(60)], [str(i) for i in range(60)])
    train, held = datasets.split_by_question(pairs, frac=0.25, seed=1)
    assert len(set(held.questions)) == 5
    assert not set(train.questions) & set(held.questions)
    assert len(train) + len(held) == 60 and len(held) == 15
    assert sorted(train.ids + held.ids, key=int) == pairs.ids
    again = datasets.split_by_question(pairs, frac=0.25, seed=1)
    assert again == (train, held)
    held_sets = {frozenset(datasets.split_by_question(pairs, 0.25, s)[1].questions) for s in range(5)}
    assert len(held_sets) > 1
    with pytest.raises(ValueError):
        datasets.split_by_question(pairs, frac=1.0)


# --- demo -------------------------------------------------------------------


def _check_demo(train: Pairs, test: EvalSet) -> None:
    assert len(train) > 0 and len(train.ids) == len(train)
    assert len(test.queries) == 2 * len(train)
    check_eval(test)
    assert all(len(g) == 1 for g in test.gold)


def test_demo_from_file(tmp_path):
    recs = [
        {"id": "r1", "topic": "t", "question": "q1", "answer": "a1", "paraphrases": ["p1", "p2"]},
        {"id": "r2", "topic": "t", "question": "q2", "answer": "a2", "paraphrases": ["p3", "p4"]},
    ]
    path = tmp_path / "demo.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    train, test = datasets.demo(path)
    _check_demo(train, test)
    assert train.ids == ["r1", "r2"]
    assert test.queries == ["p1", "p2", "p3", "p4"] and test.gold == [[0], [0], [1], [1]]


def test_demo_packaged():
    _check_demo(*datasets.demo())


# --- data_dir and specs ------------------------------------------------------


def test_data_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PROJROUTE_DATA", str(tmp_path))
    assert datasets.data_dir() == tmp_path
    assert datasets.data_dir(tmp_path / ".") == tmp_path
    monkeypatch.setenv("PROJROUTE_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="PROJROUTE_DATA"):
        datasets.data_dir()
    with pytest.raises(FileNotFoundError, match="PROJROUTE_DATA"):
        datasets.data_dir(tmp_path / "missing")


def test_data_dir_is_not_guessed(tmp_path, monkeypatch):
    monkeypatch.delenv("PROJROUTE_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path.parent / "shared" / "data").mkdir(parents=True, exist_ok=True)
    with pytest.raises(FileNotFoundError, match="PROJROUTE_DATA"):
        datasets.data_dir()


def test_load_specs(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("PROJROUTE_DATA", str(data_root))
    assert len(datasets.load_pairs("stackfaq")) == 719
    assert len(datasets.load_eval(data_root / "stackfaq").queries) == 1249
    assert len(datasets.load_pairs(str(data_root / "trecqa"))) == 348
    assert len(datasets.load_eval("trecqa").queries) == 89
    path = tmp_path / "p.jsonl"
    datasets.save_jsonl(Pairs(["q", "q"], ["a", "b"]), path)
    assert len(datasets.load_pairs(path)) == 2
    assert datasets.load_eval(str(path)).gold == [[0, 1]]
    with pytest.raises(ValueError, match="unrecognised"):
        datasets.load_pairs(tmp_path)
    with pytest.raises(FileNotFoundError):
        datasets.load_pairs(tmp_path / "missing.jsonl")


def test_text_readers_name_the_line_and_byte_that_is_not_utf8(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("\ufeffok\n".encode() + b"caf\xe9\n")
    for read in (datasets.read_text, lambda p: list(datasets.utf8_lines(p))):
        with pytest.raises(ValueError, match=r"t\.txt:2: not UTF-8 text \(byte 0xe9 at column 4\)"):
            read(path)
    path.write_bytes("\ufeffok\n\u00e9t\u00e9\n".encode())
    assert datasets.read_text(path) == "ok\n\u00e9t\u00e9\n"
    assert list(datasets.utf8_lines(path)) == [(1, "ok\n"), (2, "\u00e9t\u00e9\n")]
    path.write_bytes("\ufeff".encode() + b"a\xff")
    with pytest.raises(ValueError, match=r"t\.txt:1: not UTF-8 text \(byte 0xff at column 2\)"):
        datasets.read_text(path)
    with pytest.raises(ValueError, match=r"where: invalid JSON"):
        datasets.parse_json("[" * 100_000, "where")
