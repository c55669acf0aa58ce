"""Prototype regression with local experts (PRLE): a metric-learned value space, real
training examples as prototypes, a router over them and one linear expert each.

Needs the ``train`` extra (torch, kmedoids). A fitted model is saved as a projroute
model file of kind ``"prle"`` that the Rust core serves (``projroute.load(path)``).
"""

try:
    import kmedoids  # noqa: F401
    import torch  # noqa: F401
except ImportError as err:
    raise ImportError(
        f"projroute.prle needs torch and kmedoids ({err.name} is missing): pip install 'projroute[train]'"
    ) from err

from projroute.prle.config import PRLEConfig, load_config
from projroute.prle.data import pair_features
from projroute.prle.estimator import PRLERegressor, load

__all__ = ["PRLEConfig", "PRLERegressor", "load", "load_config", "pair_features"]
