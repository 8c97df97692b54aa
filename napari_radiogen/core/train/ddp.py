"""Distributed data parallel under ``torchrun`` (env ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``).

* NCCL on CUDA, Gloo on CPU; one process per device.
* :class:`ShardSampler` draws one global order per epoch (shuffled, or weighted draws) from a
  seed shared by all ranks and gives rank ``r`` the items ``r, r+W, r+2W, ...``: without the
  padding of ``DistributedSampler``, so the samples seen per epoch over all ranks equal those
  of a single-process run. Ranks may then get one batch more or less; the engine wraps the
  epoch in ``DistributedDataParallel.join()`` to handle the uneven inputs.
* Only rank 0 writes checkpoints, logs, reports and model files; rank 0 evaluates and
  broadcasts the decisions (early stopping) to the others.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> DistInfo:
    return DistInfo(rank=int(os.environ.get("RANK", 0)),
                    world_size=int(os.environ.get("WORLD_SIZE", 1)),
                    local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def setup(device: str) -> DistInfo:
    """Initialise the process group when launched by torchrun with WORLD_SIZE > 1."""
    info = env_world()
    if not info.enabled:
        return info
    import torch.distributed as dist
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
        info.initialized_here = True
    return info


def teardown(info: DistInfo) -> None:
    if info.enabled and info.initialized_here:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()


def device_for(device: str, info: DistInfo) -> str:
    if device.startswith("cuda") and info.enabled:
        return f"cuda:{info.local_rank}"
    return device


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist
        dist.barrier()


def all_sum(value: float, info: DistInfo, device: str = "cpu") -> float:
    if not info.enabled:
        return float(value)
    import torch.distributed as dist
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    if not info.enabled:
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ShardSampler(torch.utils.data.Sampler):
    """Seeded global order per epoch, sharded by rank without padding."""

    def __init__(self, n: int, *, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 weights: Optional[Sequence[float]] = None, seed: int = 0):
        self.n, self.rank, self.world_size = int(n), int(rank), int(world_size)
        self.shuffle, self.seed, self.epoch = shuffle, int(seed), 0
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_order(self) -> list:
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        if self.shuffle:
            return torch.randperm(self.n, generator=g).tolist()
        return list(range(self.n))

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_order()[self.rank::self.world_size])

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))
