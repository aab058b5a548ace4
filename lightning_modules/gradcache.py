"""Gradient caching (GradCache): contrastive batches far larger than memory, with the gradients of the
whole batch.

A contrastive loss couples every text of the batch, so the batch cannot simply be split into
gradient-accumulation steps. GradCache (Gao et al., "Scaling Deep Contrastive Learning Batch Size
under Memory Limited Setup", 2021, arXiv:2101.06983) splits the *encoder* instead:

1. encode every mini-batch without a graph, keeping only its token vectors and the random state
   it started from;
2. compute the loss over the whole batch from those vectors (made leaves that need a gradient)
   and its gradient with respect to each token vector: the cache;
3. encode each mini-batch again, from its saved random state (the same dropout masks), with a
   graph, and back-propagate the cached gradient through it into the parameters.

Activations are held for one mini-batch at a time; the cost is one more forward pass.

Where peers went wrong, and what this module does instead:

* **Autocast.** Its cache of low-precision weight copies is cleared before the replay, whose
  casts must carry a graph (the first pass's do not).
* **fp16 loss scaling.** The cached gradients are replayed at the GradScaler's scale, as the
  plain step's backward pass runs, so that they do not underflow in half precision.
* **One DDP all-reduce per step.** Step 3 runs inside ``training_step``: each mini-batch's
  parameter gradients are taken with ``torch.autograd.grad`` (which fires no DDP hook) and summed
  in a buffer; the loss returned to Lightning carries them into ``.grad`` in its single backward
  pass, so DDP reduces once per step, as for a plain step, and Lightning's gradient accumulation
  and loss scale apply to them as to any loss (``_AttachGradients``). The replay runs in
  ``training_step`` under the precision plugin's autocast, like the first pass, not in a
  backward hook outside it.
* **Random state.** Each mini-batch's replay restores the random states it started from (torch's
  CPU and CUDA generators, NumPy's and Python's: ``data.loading.rng_states``),
  and the state after step 1 is restored at the end, so the rest of the step draws what it would
  have drawn.
* **No cache on the module.** Everything lives in one call; a second forward cannot clobber it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from lightning_modules.data.loading import rng_states, set_rng_states
from lightning_modules.encoder import TokenEmbeddings

Embed = Callable[[torch.Tensor, torch.Tensor], TokenEmbeddings]
Objective = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class GradCache:
    """How to split each side of a batch into mini-batches: at most ``mini_batch_size`` texts, or at
    most ``token_budget`` padded tokens (texts x padded length), or both (the smaller wins; at least
    one text a mini-batch)."""

    mini_batch_size: int | None = None
    token_budget: int | None = None

    def __post_init__(self) -> None:
        for name in ("mini_batch_size", "token_budget"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"model.gradcache.{name} must be a positive integer or null, got {value!r}")
        if self.mini_batch_size is None and self.token_budget is None:
            raise ValueError("model.gradcache needs mini_batch_size or token_budget")

    @classmethod
    def from_settings(cls, settings: dict | None) -> GradCache | None:
        """``model.gradcache`` (a dict of the fields above, or null) -> a ``GradCache``, or None when
        off (null, or every field null)."""
        if settings is not None and not isinstance(settings, Mapping):
            raise ValueError(f"model.gradcache must be a mapping such as {{mini_batch_size: 64}} (set "
                             f"model.gradcache.mini_batch_size=64 on the command line), got {settings!r}")
        if not settings or all(value is None for value in settings.values()):
            return None
        unknown = set(settings) - {"mini_batch_size", "token_budget"}
        if unknown:
            raise ValueError(f"model.gradcache: unknown key(s) {sorted(unknown)}; known: mini_batch_size, token_budget")
        return cls(**settings)

    def rows_per_chunk(self, length: int) -> int:
        """Texts per mini-batch for a side padded to ``length`` tokens."""
        rows = [self.mini_batch_size] if self.mini_batch_size else []
        if self.token_budget:
            rows.append(self.token_budget // max(length, 1))
        return max(1, min(rows))

    def loss(self, embed: Embed, sides: Sequence[tuple[torch.Tensor, torch.Tensor]], objective: Objective,
             parameters: Sequence[torch.nn.Parameter], loss_scale: float = 1.0) -> torch.Tensor:
        """The loss of ``objective(*embeddings)``, one ``TokenEmbeddings`` per side, whose backward pass
        gives ``parameters`` the gradient that a plain step on the whole batch would give them.

        Args:
            embed: ``(input_ids (T, L), attention_mask (T, L)) -> TokenEmbeddings (T, L, D)``.
            sides: ``(input_ids, attention_mask)`` of each side (queries, documents), each encoded
                in mini-batches of its own.
            objective: the loss of the whole batch from every side's token vectors.
            parameters: the trainable parameters that ``embed`` uses.
            loss_scale: fp16 training's current loss scale (GradScaler's), applied to the cached
                gradients during the replay as the plain step's backward pass would have them, so
                that small gradients do not underflow in half precision; taken out again before
                the gradients are handed on (Lightning's backward pass applies the scale itself).
        """
        plans = [self._chunks(ids, mask) for ids, mask in sides]
        # 1. Token vectors without a graph, and the random state each mini-batch started from.
        cached, states = [], []
        for plan in plans:
            vectors, masks = [], []
            for ids, mask in plan:
                states.append(rng_states())
                with torch.no_grad():
                    out = embed(ids, mask)
                vectors.append(out.vectors)
                masks.append(out.mask)
            cached.append(TokenEmbeddings(torch.cat(vectors).requires_grad_(), torch.cat(masks)))
        after_first_pass = rng_states()

        # 2. The loss over the whole batch, and its gradient with respect to every token vector.
        with torch.enable_grad():
            value = objective(*cached)
            cache = torch.autograd.grad(value, [side.vectors for side in cached])

        # 3. Each mini-batch again, from its random state, its cached gradient sent into the parameters.
        gradients: list[torch.Tensor | None] = [None] * len(parameters)
        replay = iter(states)
        for plan, side_cache in zip(plans, cache):
            for (ids, mask), chunk_cache in zip(plan, side_cache.split([len(ids) for ids, _ in plan])):
                set_rng_states(next(replay))
                # Autocast keeps the low-precision copies of the weights it makes while its region
                # lasts. The first pass made them without a graph, and each replay frees its own:
                # reused, they would leave weights without gradients (PyTorch issues 112583, 142234).
                torch.clear_autocast_cache()
                with torch.enable_grad():
                    out = embed(ids, mask)
                    parts = torch.autograd.grad(out.vectors, parameters,
                                                grad_outputs=(chunk_cache * loss_scale).to(out.vectors.dtype),
                                                allow_unused=True)
                gradients = [g if p is None else p if g is None else g.add_(p) for g, p in zip(gradients, parts)]
        set_rng_states(after_first_pass)
        if loss_scale != 1.0:
            gradients = [None if g is None else g.div_(loss_scale) for g in gradients]
        return _AttachGradients.apply(value.detach(), gradients, *parameters)

    def _chunks(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        rows = self.rows_per_chunk(input_ids.shape[1])
        return list(zip(input_ids.split(rows), attention_mask.split(rows)))


class _AttachGradients(torch.autograd.Function):
    """Returns ``value`` (the loss); its backward pass hands each parameter its precomputed gradient,
    times the incoming gradient (Lightning's loss scale and accumulation factor)."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, gradients: list, *parameters: torch.Tensor) -> torch.Tensor:
        ctx.gradients = gradients
        return value.clone()

    @staticmethod
    def backward(ctx, incoming: torch.Tensor):
        return (None, None, *(None if g is None else g * incoming.to(g.dtype) for g in ctx.gradients))

