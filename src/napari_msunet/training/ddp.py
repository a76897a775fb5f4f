"""Training on several processes with torch DistributedDataParallel (``torchrun``).

``torchrun --nproc-per-node N -m napari_msunet.cli train --config run.yaml`` starts N copies of
the trainer; each finds its rank in the environment torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``) and :func:`~napari_msunet.training.trainer.iter_train` then:

- joins the process group (NCCL on GPUs, gloo on the CPU) and uses GPU ``LOCAL_RANK``;
- wraps the network in DDP (with synchronised batch norm on GPUs, so its statistics are the
  global batch's; gloo has no synchronised batch norm, so on the CPU each process normalises
  over its own share);
- **shards the batches by rank**: ``batch_size`` is per process, a step's global batch is
  ``batch_size x N`` items, and rank *r* takes the *r*-th share of each global batch of the
  same seeded permutation a one-process run with ``batch_size x N`` would draw. So N processes
  follow the one-process run with the N-times batch (the same items each step, gradients
  averaged), up to float summation order; an epoch is ``len(data) / (batch_size x N)`` steps;
- reports each step's loss averaged over the processes, and logs, checkpoints, validates and
  holds the run folder's lock **on rank 0 only**; every rank resumes from rank 0's checkpoint;
- stops when any process is asked to, at the same step: torchrun passes a Ctrl-C on to its
  processes as SIGTERM, which ``msunet train`` turns into the trainer's ``stop``; rank 0 then
  writes the checkpoint a rerun resumes.

Random augmentation is drawn per process from the step's seed and the rank: with
augmentation on, the N processes see the same items as the one-process run, augmented
differently. Whether to resume is rank 0's decision (every rank must see the run folder); a
run resumes only with the number of processes it was saved with (the data order depends on
it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "Ranks",
    "device_for",
    "from_main",
    "mean_over_ranks",
    "process_group",
    "stop_on_any",
    "wrap",
]


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun launch (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Ranks:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def device_for(ranks: Ranks, requested: torch.device) -> torch.device:
    """GPU ``LOCAL_RANK`` when the run is on CUDA, else the requested device."""
    if ranks.active and requested.type == "cuda":
        return torch.device("cuda", ranks.local_rank)
    return requested


@contextlib.contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[None]:
    """Join the process group for the run (and leave it after) when launched by torchrun."""
    if not ranks.active or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # rank 0 validates alone while the others wait in the next step's all-reduce: a long
    # validation must not trip the default 10-minute collective timeout
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(hours=4))
    try:
        yield
    finally:
        dist.destroy_process_group()


def wrap(model: nn.Module, ranks: Ranks, device: torch.device) -> nn.Module:
    """The network the steps run: ``model`` itself, or DDP around it (see the module)."""
    if not ranks.active:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    return nn.parallel.DistributedDataParallel(model)


def mean_over_ranks(values: Sequence[float], ranks: Ranks, device: torch.device) -> list[float]:
    """``values`` averaged over the processes (themselves in one process)."""
    if not ranks.active:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(v) / ranks.world for v in t.tolist()]


def from_main(value: object, ranks: Ranks) -> object:
    """Rank 0's ``value`` on every process (``value`` itself in one process)."""
    if not ranks.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def stop_on_any(flag: bool, ranks: Ranks, device: torch.device) -> bool:
    """Whether any process was asked to stop (all stop at the same step)."""
    if not ranks.active:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
