"""Distil across processes with ``torchrun``: every process runs :func:`distill` with
``distributed=True`` on the same arguments; rank 0 saves the student and prints its
summary as one JSON object.

    torchrun --standalone --nproc-per-node 2 -m projroute.distill.torchrun \\
        TEACHER QUERIES.npy -o student.safetensors [--epochs N] [--batch-size B] [--seed S]

On several machines, give ``torchrun`` ``--nnodes``, ``--node-rank`` and
``--rdzv-endpoint`` instead of ``--standalone``; every machine needs the teacher and the
queries at the same paths. ``--batch-size`` is the global batch, split over the processes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

import projroute
from projroute.distill.train import distill


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchrun ... -m projroute.distill.torchrun", description=__doc__.split("\n")[0])
    p.add_argument("teacher", metavar="TEACHER", help="any keyless projroute model file")
    p.add_argument("queries", metavar="QUERIES.npy", help="training queries (n, D_in) float")
    p.add_argument("-o", "--output", required=True, metavar="STUDENT", help="student file to write (rank 0)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=256, help="global mini-batch rows (default 256)")
    p.add_argument("--augment-ratio", type=float, help="augmented queries per query per epoch (default auto)")
    p.add_argument("--no-augment", action="store_true", help="train on the queries only")
    p.add_argument("--student", type=json.loads, metavar="JSON", help="ProjectionTransformer keyword arguments")
    p.add_argument("--threads", type=int, help="torch threads per process (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = projroute.load(args.teacher)
    queries = np.load(args.queries, allow_pickle=False)
    result = distill(
        teacher,
        queries,
        student=args.student,
        epochs=args.epochs,
        batch_size=args.batch_size,
        augment=() if args.no_augment else ("sphere", "mix"),
        augment_ratio="auto" if args.augment_ratio is None else args.augment_ratio,
        seed=args.seed,
        progress=False,
        distributed=True,
    )
    if dist.get_rank() == 0:
        result.save(args.output, queries=args.queries)
        summary = {**result.fit_info(), "history": result.history}
        print(json.dumps({**summary, "processes": dist.get_world_size(), "output": args.output}))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
