"""Collectives for losses that look across processes: a gather that keeps gradients, and checks that
fail the same way on every rank instead of hanging one of them.

Only ``torch.distributed`` (gloo on CPUs, NCCL on GPUs, whatever Lightning's DDP set up); with no
process group, or one process, every function is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _GatherWithGradient(torch.autograd.Function):
    """All ranks' ``(B, ...)`` tensors -> ``(W * B, ...)``, rank order; the backward pass gives each rank
    the sum over all ranks of the gradient of its own slice.

    Why not ``self.all_gather(..., sync_grads=False)`` or a detached gather: the rows gathered from
    other ranks must pass this rank's loss gradient back to the rank that made them, or their encoder
    learns nothing from this rank's queries. Why not ``torch.distributed.nn.all_gather``: its backward
    needs reduce-scatter or all-to-all, which gloo lacks on some builds. Here NCCL reduce-scatters
    (each rank receives only its own slice) and other backends all-reduce the whole gradient and keep
    their slice: ``W`` times the traffic, for CPUs' gloo, where batches are small.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rows = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor) -> torch.Tensor:
        gradient = gradient.contiguous()
        if dist.get_backend() == dist.Backend.NCCL:
            own = gradient.new_empty((ctx.rows, *gradient.shape[1:]))
            dist.reduce_scatter_tensor(own, gradient, op=dist.ReduceOp.SUM)
            return own
        summed = gradient.clone()  # all_reduce works in place: never on autograd's own buffer
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        start = rank() * ctx.rows
        return summed[start : start + ctx.rows]


def gather_with_gradient(tensor: torch.Tensor) -> torch.Tensor:
    """``(B, ...)`` on each rank -> ``(W * B, ...)``, rank ``r``'s rows at ``[r * B, (r + 1) * B)``, with
    gradients flowing back to every rank's own rows. Every rank must pass the same shape
    (``gather_sizes`` checks it first)."""
    if world_size() == 1:
        return tensor
    return _GatherWithGradient.apply(tensor)


def gather_without_gradient(tensor: torch.Tensor) -> torch.Tensor:
    """``(B, ...)`` -> ``(W * B, ...)`` in rank order, for masks, keys and other values without gradients."""
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def gather_sizes(sizes: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """Each rank's ``sizes`` -> ``(W, len(sizes))`` int64, every rank seeing all of them. One small
    collective that every rank makes: decisions taken from its result (pad to the largest length,
    refuse unequal batches) are the same on every rank, so none waits for a gather the others skip."""
    local = torch.tensor([sizes], dtype=torch.int64, device=device)
    return gather_without_gradient(local)
