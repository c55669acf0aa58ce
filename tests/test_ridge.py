"""RidgeProjection: a least-squares linear map between spaces of different dimensions,
served by the Rust core as a ``global`` model. Tolerance: 1e-5 against numpy."""

import numpy as np
import pytest

import projroute as pr
from projroute.ridge import RIDGE_GRID, ridge_map

from helpers import unit


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
    scores = list(model.validation_.values())
    assert model.alpha_ == RIDGE_GRID[int(np.argmax(scores))]
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
