"""Distillation: compress any projroute teacher into a small transformer (torch).

Needs the ``train`` extra. A student is saved as one safetensors file of kind
``"transformer"`` (or ``"transformer_ensemble"`` for domain students mixed by a
router) that the Rust core serves like any other projroute model.
"""

try:
    import safetensors  # noqa: F401
    import torch  # noqa: F401
except ImportError as err:
    raise ImportError(
        f"projroute.distill needs torch and safetensors ({err.name} is missing): pip install 'projroute[train]'"
    ) from err

from projroute.distill.ensemble import EnsembleResult, distill_ensemble
from projroute.distill.evaluate import fidelity
from projroute.distill.export import load_ensemble, load_student, save_ensemble, save_student
from projroute.distill.student import MLPBaseline, ProjectionTransformer, TransformerEnsemble, project_numpy
from projroute.distill.train import DistillResult, distill

__all__ = [
    "DistillResult",
    "EnsembleResult",
    "MLPBaseline",
    "ProjectionTransformer",
    "TransformerEnsemble",
    "distill",
    "distill_ensemble",
    "fidelity",
    "load_ensemble",
    "load_student",
    "project_numpy",
    "save_ensemble",
    "save_student",
]
