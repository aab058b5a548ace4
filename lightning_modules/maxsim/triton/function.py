"""``TritonMaxSim``: the autograd function of the ``triton`` backend (kernels in ``kernels.py``,
launches of the backward passes in ``host.py``, their settings in ``settings.py``)."""

from __future__ import annotations

import torch
import triton

from lightning_modules.maxsim.triton import host, kernels, settings


class TritonMaxSim(torch.autograd.Function):
    """``maxsim_matrix`` with a hard max, fused.

    ``apply(a (Ba, La, D), b (Bb, Lb, D), a_mask (Ba, La), b_mask (Bb, Lb), a_weight (Ba, La),
    b_weight (Bb, Lb), direction) -> (Ba, Bb)`` float32. ``a_weight``/``b_weight`` are what
    each token's best match adds to the score: one value per text (``1``, ``1/count``, halved
    for "both") on its real tokens, 0 on masked ones, float32. Masked tokens' vectors must be
    zero (``maxsim_matrix`` zeroes them): a product with weight 0 is still NaN on inf padding.
    Masks and weights get no gradient. Without a gradient to compute (inference, scoring a
    corpus) the argmax indices are neither written nor kept.
    """

    @staticmethod
    def forward(ctx, a, b, a_mask, b_mask, a_weight, b_weight, direction):
        a, b = a.contiguous(), b.contiguous()
        a_mask, b_mask = a_mask.to(torch.int8).contiguous(), b_mask.to(torch.int8).contiguous()
        a_weight, b_weight = a_weight.float().contiguous(), b_weight.float().contiguous()
        (ba, la, dim), (bb, lb, _) = a.shape, b.shape
        keep = any(ctx.needs_input_grad[:2])
        a2b, b2a = direction in ("a2b", "both"), direction in ("b2a", "both")
        scores = torch.empty(ba, bb, dtype=torch.float32, device=a.device)
        a_best = torch.empty(ba, bb, la, dtype=host.index_dtype(lb), device=a.device) if a2b and keep else None
        b_best = torch.empty(ba, bb, lb, dtype=host.index_dtype(la), device=a.device) if b2a and keep else None
        config = settings.forward_config(la, lb, dim, a.dtype, direction, keep, host.arch(a))
        with host.on_device(a):
            a_blocks = triton.cdiv(ba, config["TEXTS"])
            b_texts = host.b_texts_per_program(a, bb, a_blocks)
            # b texts on grid axis 0: a corpus may hold more than the 65535 that axis 1 allows.
            kernels.forward_kernel[(triton.cdiv(bb, b_texts), a_blocks)](
                a, b, a_mask, b_mask, a_weight, b_weight, scores,
                scores if a_best is None else a_best, scores if b_best is None else b_best,  # unused when None
                ba, bb, la, lb, dim, b_texts, **config,
            )  # fmt: skip
        ctx.save_for_backward(a, b, a_weight, b_weight, a_best, b_best)
        ctx.direction = direction
        return scores

    @staticmethod
    def backward(ctx, grad):
        a, b, a_weight, b_weight, a_best, b_best = ctx.saved_tensors
        grad = grad.float().contiguous()
        want_a, want_b = ctx.needs_input_grad[:2]
        with host.on_device(a):
            backward = host.sorted_backward if torch.are_deterministic_algorithms_enabled() else host.atomic_backward
            grad_a, grad_b = backward(a, b, a_weight, b_weight, a_best, b_best, grad, ctx.direction, want_a, want_b)
        grad_a = grad_a.view_as(a).to(a.dtype) if want_a else None
        grad_b = grad_b.view_as(b).to(b.dtype) if want_b else None
        return grad_a, grad_b, None, None, None, None, None
