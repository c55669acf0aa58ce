"""Distillation across processes: torch DistributedDataParallel over a process group
that ``torchrun`` sets up (gloo on the CPU, NCCL where each process has a GPU).

Every process builds the same epochs (same seed: same augmented queries, teacher
labels and shuffles) and takes its contiguous share of each global mini-batch; the
gradients are averaged so that each step is the single-process step on the same
global batch, up to float rounding.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def init() -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment (once) and
    return this process's device: ``cuda:LOCAL_RANK`` with NCCL where GPUs exist, else
    the CPU with gloo. RuntimeError outside ``torchrun``."""
    if not dist.is_initialized():
        if missing := [v for v in TORCHRUN_VARIABLES if v not in os.environ]:
            raise RuntimeError(
                f"distributed=True needs a torchrun process group ({', '.join(missing)} not set): "
                "torchrun --nproc-per-node N -m projroute.distill.torchrun ..."
            )
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def wrap(module: nn.Module, device: torch.device) -> DistributedDataParallel:
    """``module`` moved to ``device`` and wrapped for gradient averaging across the group."""
    module.to(device)
    return DistributedDataParallel(module, device_ids=None if device.type == "cpu" else [device])


def rank_and_size() -> tuple[int, int]:
    """This process's rank and the group's size; (0, 1) without a process group."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def local_rows(rows: torch.Tensor) -> torch.Tensor:
    """This process's contiguous share of a global mini-batch's row indices (B,)."""
    rank, size = rank_and_size()
    return rows.tensor_split(size)[rank]


def sum_over_group(value: float) -> float:
    """``value`` summed over the processes of the group."""
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item())
