"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest

from projroute import datasets

# The tests read the real data sets from the checkout's neighbour ../shared/data unless
# PROJROUTE_DATA says otherwise (the library itself guesses no location).
os.environ.setdefault(datasets.ENV_DATA, str(Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The data directory ($PROJROUTE_DATA, by default ../shared/data); errors if missing."""
    return datasets.data_dir()
