"""Per-tree and hierarchical maps on StackFAQ, beside raw cosine and the global and
federated maps. Needs the encoder (the ``train`` extra) and ../shared/data (or
$PROJROUTE_DATA). Figures are printed (``pytest -s``).

StackFAQ has no category field, but every thread is about one web app, named in its
title. ``TOPICS`` turns that name into a path (``google/drive/docs``, ``social/twitter``,
``other`` for threads naming none); the tree id is the same string, looked up
exactly. Training pairs take their thread's key. A held-out paraphrase is served
either with its thread's key (a category known at query time, like the help section
a user is browsing) or with the key the same rules give for its own text.
"""

import re

import pytest

pytest.importorskip("sentence_transformers")

import projroute as pr
from projroute import datasets
from projroute.embed import Encoder
from projroute.metrics import retrieval_metrics

pytestmark = pytest.mark.slow

#: (pattern on the lower-cased text, path); the first match wins.
TOPICS = [
    (r"spreadsheet|\bsheets?\b", "google/drive/sheets"),
    (r"google doc|\bdocs\b|google document", "google/drive/docs"),
    (r"google drive|\bdrive\b", "google/drive"),
    (r"gmail|e-?mail|\bmail\b|inbox", "google/gmail"),
    (r"hangout|google chat|google\+|gtalk", "google/hangouts"),
    (r"\bmaps?\b", "google/maps"),
    (r"calendar", "google/calendar"),
    (r"google", "google/search"),
    (r"youtube", "video/youtube"),
    (r"vimeo|video", "video"),
    (r"facebook", "social/facebook"),
    (r"twitter|tweet", "social/twitter"),
    (r"quora", "social/quora"),
    (r"github|\bcommit", "dev/github"),
    (r"trello", "tools/trello"),
    (r"dropbox", "tools/dropbox"),
]


def topic(text: str) -> str:
    """The path of the web app ``text`` is about, or ``other``."""
    return next((path for pattern, path in TOPICS if re.search(pattern, text.lower())), "other")


@pytest.fixture(scope="module")
def stackfaq(data_root):
    """Embedded training pairs with their thread's key; held-out paraphrases with the
    thread's key and the key of their own text."""
    train, test = datasets.stackfaq(data_root / "stackfaq")
    enc = Encoder()
    embed = lambda texts: enc.encode(texts, progress=False)  # noqa: E731
    key_of_answer = {a: topic(q) for q, a in zip(train.questions, train.answers)}
    return {
        "Q": embed(train.questions),
        "A": embed(train.answers),
        "keys": [topic(q) for q in train.questions],
        "X": embed(test.queries),
        "C": embed(test.corpus),
        "gold": test.gold,
        "thread_keys": [key_of_answer[test.corpus[g[0]]] for g in test.gold],
        "text_keys": [topic(q) for q in test.queries],
    }


@pytest.fixture(scope="module")
def results(stackfaq):
    d = stackfaq
    score = lambda P: retrieval_metrics(P, d["C"], d["gold"])  # noqa: E731
    tree = pr.TreeProjection().fit(d["Q"], d["A"], d["keys"])
    hier = pr.HierarchicalProjection().fit(d["Q"], d["A"], d["keys"])
    out = {
        "raw cosine": (score(d["X"]), ""),
        "global": (score(pr.GlobalProjection().fit(d["Q"], d["A"]).project(d["X"])), ""),
        "federated": (score(pr.FederatedProjection(progress=False).fit(d["Q"], d["A"]).project(d["X"])), ""),
    }
    for name, model in [("tree", tree), ("hierarchical", hier)]:
        fit = f"M={len(model.nodes_)} lambda={model.shrinkage_}"
        out[f"{name}, thread key"] = (score(model.project(d["X"], d["thread_keys"])), fit)
        out[f"{name}, text key"] = (score(model.project(d["X"], d["text_keys"])), fit)
    agree = sum(a == b for a, b in zip(d["thread_keys"], d["text_keys"])) / len(d["X"])
    print(
        f"\nstackfaq: {len(d['Q'])} training pairs, {len(d['X'])} held-out paraphrases, {len(d['C'])} answers; "
        f"text key = thread key for {agree:.1%}"
    )
    print("| model | Hit@1 | Hit@5 | Hit@10 | MRR | fit |\n|---|---|---|---|---|---|")
    for label, (m, fit) in out.items():
        print(f"| {label} | {m['hit@1']:.3f} | {m['hit@5']:.3f} | {m['hit@10']:.3f} | {m['mrr']:.3f} | {fit} |")
    return {label: m for label, (m, _) in out.items()}


@pytest.mark.parametrize("model", ["tree", "hierarchical"])
def test_keyed_maps_are_no_worse_than_raw_cosine(results, model):
    for keys in ["thread key", "text key"]:
        assert results[f"{model}, {keys}"]["hit@1"] >= results["raw cosine"]["hit@1"], keys
