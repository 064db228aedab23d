"""Synchronised BatchNorm for fused blocks: statistics of the whole process group.

Forward all-gathers each rank's ``(count, mean, m2)`` and merges them with Chan's
formula; backward all-reduces the BN-backward sums ``sum(dz)`` and ``sum(dz*xhat)``, as
``nn.SyncBatchNorm`` does (the parameter gradients themselves stay local: DDP averages
them). Functional collectives keep it traceable by ``torch.compile``; counts travel as
tensors, so nothing waits on the host.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

Tensor = torch.Tensor


def group_size(group) -> int:
    """World size of ``group`` (None = the default group); 1 when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _group(group):
    return group if group is not None else dist.group.WORLD


def gather_stats(mean: Tensor, m2: Tensor, count: int, group) -> tuple[Tensor, Tensor, Tensor]:
    """Merge per-rank ``(count, mean, m2)`` into the group's; returns a 0-d count tensor."""
    from torch.distributed import _functional_collectives as fc

    local = torch.stack([torch.full_like(mean, float(count)), mean, m2])  # (3, C)
    every = fc.all_gather_tensor(local, gather_dim=0, group=_group(group))
    counts, means, m2s = every.view(-1, 3, mean.shape[0]).unbind(1)  # (world, C) each
    total = counts.sum(0)
    merged_mean = (counts * means).sum(0) / total
    merged_m2 = (m2s + counts * (means - merged_mean) ** 2).sum(0)
    return merged_mean, merged_m2, total[0]


def all_reduce_sums(sum_dz: Tensor, sum_dz_xhat: Tensor, group) -> tuple[Tensor, Tensor]:
    """Group-wide ``sum(dz)`` and ``sum(dz*xhat)``."""
    from torch.distributed import _functional_collectives as fc

    both = fc.all_reduce(torch.stack([sum_dz, sum_dz_xhat]), "sum", _group(group))
    return both[0], both[1]
