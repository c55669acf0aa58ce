"""RidgeProjection: a least-squares linear map between spaces of different dimensions,
served by the Rust core as a ``global`` model. Tolerance: 1e-5 against numpy."""

import numpy as np
import pytest

import projroute as pr
from projroute.reference import unit_rows
from projroute.ridge import RIDGE_GRID, SpanRidge, ridge_map

from helpers import assert_one_se_choice, unit


@pytest.fixture
def pairs():
    rng = np.random.default_rng(3)
    Q = unit(rng, 200, 12)
    M = rng.normal(size=(12, 7)).astype(np.float32)
    A = Q @ M + 0.5 + 0.01 * rng.normal(size=(200, 7)).astype(np.float32)
    return Q, A, M


def test_recovers_a_linear_map_across_dimensions(pairs):
    Q, A, M = pairs
    model = pr.RidgeProjection(alpha=1e-6).fit(Q, A)
    assert model.W_.shape == (12, 7) and model.projector_.kind == "global"
    np.testing.assert_allclose(model.W_, M, atol=0.05)
    np.testing.assert_allclose(model.bias_, 0.5, atol=0.05)
    np.testing.assert_allclose(model.project(Q), Q @ model.W_ + model.bias_, rtol=1e-5, atol=1e-5)


def test_ridge_map_is_the_regularised_normal_equations():
    rng = np.random.default_rng(0)
    Q, A = rng.normal(size=(30, 5)), rng.normal(size=(30, 3))
    W = ridge_map(Q, A, 0.5)
    m = np.trace(Q.T @ Q) / 5
    np.testing.assert_allclose((Q.T @ Q + 0.5 * m * np.eye(5)) @ W, Q.T @ A, atol=1e-9)


def test_auto_chooses_from_the_grid_by_validation(pairs):
    Q, A, _ = pairs
    model = pr.RidgeProjection(center=False).fit(Q, A)
    assert list(model.validation_) == list(RIDGE_GRID)
    assert_one_se_choice(model.alpha_, model.validation_)
    assert model.bias_ is None


def test_save_load_round_trip(pairs, tmp_path):
    Q, A, _ = pairs
    model = pr.RidgeProjection(alpha=0.1).fit(Q, A)
    model.save(tmp_path / "ridge.safetensors")
    loaded = pr.load(tmp_path / "ridge.safetensors")
    assert (loaded.dim_in, loaded.dim_out) == (12, 7)
    np.testing.assert_array_equal(loaded.project(Q), model.project(Q))


@pytest.mark.parametrize("alpha", [0, -1.0, "big", None])
def test_bad_alpha_is_an_error(pairs, alpha):
    Q, A, _ = pairs
    with pytest.raises(ValueError, match="alpha"):
        pr.RidgeProjection(alpha=alpha).fit(Q, A)


def test_span_ridge_is_the_primal_ridge_toward_the_base_and_the_base_outside_the_span():
    rng = np.random.default_rng(6)
    d, n = 16, 5
    Qc, Ac, base = rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(d, d))
    m = np.mean(np.sum(Qc**2, axis=1))
    for alpha in (0.01, 1.0, 100.0):
        primal = np.linalg.solve(Qc.T @ Qc + alpha * m * np.eye(d), Qc.T @ (Ac - Qc @ base))
        np.testing.assert_allclose(SpanRidge(Qc, Ac, base).delta(alpha), primal, atol=1e-9)
    z = rng.normal(size=d)
    z -= np.linalg.lstsq(Qc.T, z, rcond=None)[0] @ Qc  # orthogonal to every question
    np.testing.assert_allclose(z @ SpanRidge(Qc, Ac, base).delta(0.1), 0.0, atol=1e-9)


@pytest.mark.parametrize("base", ["identity", "global"])
def test_a_strong_ridge_keeps_the_base_and_a_weak_one_fits_the_pairs(base):
    rng = np.random.default_rng(7)
    Q = unit(rng, 200, 8)
    A = (Q @ rng.normal(size=(8, 8))).astype(np.float32)  # a general linear map, not a rotation
    strong = pr.RidgeProjection(alpha=1e6, base=base, center=False).fit(Q, A)
    B = np.eye(8) if base == "identity" else pr.GlobalProjection().fit(Q, A).W_
    np.testing.assert_allclose(strong.W_, B, atol=1e-4)
    weak = pr.RidgeProjection(alpha=1e-6, base=base, center=False).fit(Q, A)
    np.testing.assert_allclose(weak.project(Q), A, atol=1e-3)
    assert weak.config_["fit"]["base"] == base


def test_a_base_needs_equal_dimensions_and_a_known_name(pairs):
    Q, A, _ = pairs
    with pytest.raises(ValueError, match="equal dimensions"):
        pr.RidgeProjection(base="identity").fit(Q, A)
    with pytest.raises(ValueError, match="base must be"):
        pr.RidgeProjection(base="rotation").fit(Q, Q)


def test_federated_ridge_corrections_are_validated_and_served(tmp_path):
    rng = np.random.default_rng(8)
    Q = unit(rng, 240, 12)
    A = unit_rows(Q @ rng.normal(size=(12, 12)) + 0.1 * rng.normal(size=(240, 12)))
    fed = pr.FederatedProjection(n_clusters=4, cluster_map="ridge", progress=False).fit(Q, A)
    assert list(fed.validation_) == list(RIDGE_GRID)
    assert_one_se_choice(fed.alpha_, fed.validation_)
    assert fed.config_["fit"]["cluster_map"] == "ridge" and fed.config_["fit"]["alpha"] == fed.alpha_
    # The served maps are the base plus each cluster's SpanRidge correction.
    base = pr.GlobalProjection().fit(Q, A).W_
    for k in range(4):
        rows = fed.labels_ == k
        np.testing.assert_allclose(fed.W_[k], base + SpanRidge(Q[rows], A[rows], base).delta(fed.alpha_), atol=1e-5)
    fed.save(tmp_path / "fed.safetensors")
    X = unit(rng, 30, 12)
    np.testing.assert_allclose(pr.load(tmp_path / "fed.safetensors").project(X), fed.project(X), atol=1e-6)
    with pytest.raises(ValueError, match="cluster_map must be"):
        pr.FederatedProjection(cluster_map="affine").fit(Q, A)
