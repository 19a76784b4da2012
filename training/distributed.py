"""One process, or many under `torchrun`: process group, device per rank, FSDP sharding.

Sharding is torch's own FSDP (`fully_shard`, FSDP2): each decoder layer is one unit whose
weights are all-gathered for its forward/backward and resharded after, then the
Transformer itself (embeddings, final norm, output layer). Gradients are reduce-scattered
(averaged) across ranks; nothing here is home-made distribution.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from engine.model import Transformer


@dataclass(frozen=True)
class Topology:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[Topology, torch.device]:
    """Read torchrun's environment, join the process group, pick this rank's device."""
    topo = Topology(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
    )
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("train.device: cuda requested but no CUDA GPU is visible")
        device = torch.device("cuda", topo.local_rank if topo.distributed else torch.cuda.current_device())
        torch.cuda.set_device(device)
    else:
        device = torch.device(device_name)
    if topo.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return topo, device


def shard_model(core: Transformer, device: torch.device, world_size: int) -> None:
    """Shard the Transformer in place with FSDP2 (adapters injected by peft are sharded too)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    for layer in core.model.layers:
        fully_shard(layer, mesh=mesh)
    # The Transformer is the root unit, so calling it directly (as the engine does for
    # FIM exact-match) gathers the embeddings and output layer too.
    fully_shard(core, mesh=mesh)


def set_gradient_sync(core: nn.Module, sync: bool) -> None:
    """Skip the reduce-scatter on micro-batches before the last of an accumulation."""
    if hasattr(core, "set_requires_gradient_sync"):
        core.set_requires_gradient_sync(sync)


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
