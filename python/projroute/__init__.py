"""projroute: learn maps from question embeddings into answer space, serve them from Rust.

Importing projroute and serving a model need only numpy; fitting needs the ``fit``
extra (scikit-learn), embedding and distillation the ``train`` extra (torch).
"""

from projroute._core import (
    FORMAT_VERSION,
    FlatIndex,
    ModelFormatError,
    Projector,
    ProjrouteError,
    Searcher,
    StaticEncoder,
    __version__,
    get_num_threads,
    kernel_info,
    set_num_threads,
)
from projroute.bridge import BridgedProjection
from projroute.contrastive import ContrastiveProjection
from projroute.federated import FederatedProjection
from projroute.index import build_index
from projroute.lda import LdaProjection
from projroute.procrustes import GlobalProjection
from projroute.ridge import RidgeProjection
from projroute.serving import load, with_weights_dtype
from projroute.trees import HierarchicalProjection, TreeProjection

__all__ = [
    "FORMAT_VERSION",
    "BridgedProjection",
    "ContrastiveProjection",
    "FederatedProjection",
    "FlatIndex",
    "GlobalProjection",
    "HierarchicalProjection",
    "LdaProjection",
    "ModelFormatError",
    "Projector",
    "ProjrouteError",
    "RidgeProjection",
    "Searcher",
    "StaticEncoder",
    "TreeProjection",
    "__version__",
    "build_index",
    "get_num_threads",
    "kernel_info",
    "load",
    "set_num_threads",
    "with_weights_dtype",
]
