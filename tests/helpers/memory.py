"""What autograd keeps for the backward pass: the measure of the memory-lean paths' tests."""

from __future__ import annotations

import torch


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of ``fn()``."""
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(saved)
