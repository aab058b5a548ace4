"""The ``triton`` backend of ``maxsim_matrix``: fused kernels for the hard-max MaxSim.

Forward: each program keeps a block of ``a`` texts on chip while tiles of ``b`` tokens stream
past; similarities live only in registers (float32 accumulation), and what reaches memory is
the ``(Ba, Bb)`` scores and each token's argmax, ``(Ba, Bb, La)`` and/or ``(Ba, Bb, Lb)``
(int16 while the matched side has fewer than 2^15 tokens). Backward: from those indices
alone; the gradient of a max flows to the winning pair of tokens only.

Contract: CUDA tensors, or CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``, set
before Triton is imported: the tests without a GPU), of float32, bf16 or fp16 (one dtype);
``a`` texts of at most ``settings.MAX_A_TOKENS`` tokens (``handles`` says whether the kernels
take a pair of inputs; ``maxsim_matrix`` hands the others to chunked). float32 inputs multiply
in IEEE float32, 16-bit ones in their own type; every sum is float32. Gradients are bit for
bit reproducible under ``torch.use_deterministic_algorithms(True)``; otherwise the last bits
of the picked tokens' gradients may vary from run to run (atomic adds).

Modules: ``function.py`` (the autograd function), ``host.py`` (checks and backward launches),
``settings.py`` (launch settings), ``kernels.py`` (the kernels). Design and measurements:
docs/engine.md, "triton".
"""

from lightning_modules.maxsim.triton.function import TritonMaxSim
from lightning_modules.maxsim.triton.host import handles, runs_on
from lightning_modules.maxsim.triton.settings import MAX_A_TOKENS, interpreting

__all__ = ["MAX_A_TOKENS", "TritonMaxSim", "handles", "interpreting", "runs_on"]
