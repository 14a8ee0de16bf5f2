"""Process-group plumbing so the same training code runs alone or under ``torchrun`` (DDP)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessGroup:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_process_group(use_cuda: bool) -> ProcessGroup:
    """Join the group ``torchrun`` describes in the environment; a no-op for a single process.

    NCCL on CUDA, gloo on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return ProcessGroup()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return ProcessGroup(rank=rank, world_size=world_size, local_rank=local_rank)


def destroy_process_group(group: ProcessGroup) -> None:
    if group.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(group: ProcessGroup) -> None:
    if group.enabled:
        dist.barrier()


def parameters_in_sync(module: torch.nn.Module, group: ProcessGroup) -> bool:
    """True when every rank holds the same parameters (checks that DDP really averaged gradients)."""
    if not group.enabled:
        return True
    checksum = torch.stack([p.detach().double().sum() for p in module.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(checksum) for _ in range(group.world_size)]
    dist.all_gather(gathered, checksum)
    return all(torch.allclose(g, gathered[0], rtol=0, atol=1e-6) for g in gathered)
