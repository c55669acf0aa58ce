"""Shared pytest fixtures."""

from pathlib import Path

import pytest

from projroute import datasets


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared data directory (../shared/data or $PROJROUTE_DATA); errors if missing."""
    return datasets.data_dir()
