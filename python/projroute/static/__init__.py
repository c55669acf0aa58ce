"""Static embeddings: a token table and mean pooling in place of the transformer (Model2Vec).

Distil one from the bundled all-MiniLM-L6-v2 (needs ``pip install 'projroute[static]'``)::

    from projroute import static
    model = static.distill_vocab("m2v-256", pca_dims=256)        # vocabulary only, ~1-3 min on CPU
    model = static.distill_corpus("m2v-corpus", fraction=0.1)    # + tokenlearn on the sentence corpus
    X = static.load("m2v-corpus").encode(["how do I install it?"])  # (1, 256) float32, unit rows
    static.stsb_spearman(model)                                  # STS-B test Spearman

The folders are model2vec's format: ``model2vec.StaticModel.from_pretrained(DIR)`` loads them.
"""

from projroute.static.distill import (
    DEFAULT_PCA_DIMS,
    DEFAULT_SIF,
    default_corpus,
    distill_corpus,
    distill_vocab,
    load,
    read_corpus,
    teacher_path,
)
from projroute.static.stsb import read_stsb, spearman, stsb_spearman

__all__ = [
    "DEFAULT_PCA_DIMS",
    "DEFAULT_SIF",
    "default_corpus",
    "distill_corpus",
    "distill_vocab",
    "load",
    "read_corpus",
    "read_stsb",
    "spearman",
    "stsb_spearman",
    "teacher_path",
]
