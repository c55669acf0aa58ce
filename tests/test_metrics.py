import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projroute.metrics import mean_cosine, query_ranks, retrieval_metrics
from projroute.reference import unit_rows


def reference_ranks(P, C, gold):
    """Slow per-query reference of the rank definition."""
    ranks = []
    for p, g in zip(P, gold):
        p = p / (np.linalg.norm(p) or 1.0)
        s = np.array([c @ p / (np.linalg.norm(c) or 1.0) for c in C])
        best = max(s[j] for j in g)
        ranks.append(1 + int(np.sum(s > best)))
    return np.array(ranks)


def test_unit_rows():
    X = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float64)
    N = unit_rows(X)
    assert N.dtype == np.float32
    np.testing.assert_allclose(N, [[0.6, 0.8], [0.0, 0.0]])
    assert unit_rows(X, dtype=None).dtype == np.float64
    assert unit_rows(np.array([[2, 0]]), dtype=None).dtype == np.float64


def test_hand_computed():
    C = np.eye(4)
    # query 0 -> item 0 best (rank 1); query 1 scores 2 > 1 > 0 = 3, gold 3 -> rank 4;
    # query 2 gold {1, 2}: best gold is item 2, only item 0 is higher -> rank 2.
    P = np.array([[5.0, 1, 0, 0], [0.5, 0.3, 1.0, 0.0], [1.0, 0.2, 0.5, 0.0]])
    gold = [[0], [3], [1, 2]]
    np.testing.assert_array_equal(query_ranks(P, C, gold), [1, 4, 2])
    m = retrieval_metrics(P, C, gold, ks=(1, 2, 3))
    expected = {"hit@1": 1 / 3, "hit@2": 2 / 3, "hit@3": 2 / 3, "mrr": (1 + 1 / 4 + 1 / 2) / 3, "n": 3}
    assert m == pytest.approx(expected)
    assert set(retrieval_metrics(P, C, gold)) == {"hit@1", "hit@5", "hit@10", "mrr", "n"}


def test_perfect_ranking_when_queries_are_the_answers():
    rng = np.random.default_rng(0)
    C = rng.normal(size=(50, 16)).astype(np.float32)
    P = 7.0 * C[::-1]  # scale does not matter
    m = retrieval_metrics(P, C, [[49 - i] for i in range(50)])
    assert m == {"hit@1": 1.0, "hit@5": 1.0, "hit@10": 1.0, "mrr": 1.0, "n": 50}


def test_ties_count_in_the_query_favour():
    C = np.array([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    P = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    # items 0-2 tie for query 0 and 1 -> rank 1 whichever is gold; item 3 is strictly lower;
    # a zero query ties with everything.
    np.testing.assert_array_equal(query_ranks(P, C, [[2], [3], [3]]), [1, 4, 1])


def test_chunking_matches(monkeypatch):
    import projroute.metrics as metrics

    rng = np.random.default_rng(1)
    P, C = rng.normal(size=(37, 8)), rng.normal(size=(23, 8))
    gold = [list(rng.choice(23, size=rng.integers(1, 4), replace=False)) for _ in range(37)]
    full = query_ranks(P, C, gold)
    monkeypatch.setattr(metrics, "_CHUNK_ENTRIES", 50)  # two queries per chunk
    np.testing.assert_array_equal(query_ranks(P, C, gold), full)


def test_invalid_inputs():
    C = np.eye(3)
    with pytest.raises(ValueError, match="no gold"):
        query_ranks(np.ones((2, 3)), C, [[0], []])
    with pytest.raises(ValueError, match="out of range"):
        query_ranks(np.ones((1, 3)), C, [[3]])
    with pytest.raises(ValueError):
        query_ranks(np.ones((1, 2)), C, [[0]])
    with pytest.raises(ValueError):
        query_ranks(np.ones((2, 3)), C, [[0]])


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 12),
    m=st.integers(1, 15),
    d=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    discrete=st.booleans(),
)
def test_matches_reference(n, m, d, seed, discrete):
    rng = np.random.default_rng(seed)
    if discrete:  # corpus of +-one-hot and zero rows: exact ties, exact cosines
        P = rng.integers(-1, 2, size=(n, d)).astype(float)
        C = np.vstack([np.eye(d), -np.eye(d), np.zeros((1, d))])[rng.integers(0, 2 * d + 1, size=m)]
    else:
        P, C = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    gold = [rng.choice(m, size=rng.integers(1, min(m, 3) + 1), replace=False) for _ in range(n)]
    ranks = reference_ranks(P, C, gold)
    np.testing.assert_array_equal(query_ranks(P, C, gold), ranks)
    m_ = retrieval_metrics(P, C, gold)
    assert m_["mrr"] == pytest.approx(np.mean(1 / ranks))
    assert m_["hit@5"] == pytest.approx(np.mean(ranks <= 5))


def test_mean_cosine():
    P = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    T = np.array([[3.0, 0.0], [0.0, -1.0], [1.0, 1.0]])
    assert mean_cosine(P, T) == pytest.approx((1 - 1 + 0) / 3)
    with pytest.raises(ValueError):
        mean_cosine(P, T[:2])
