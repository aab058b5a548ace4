"""Export the token encoder to ONNX: backbone -> projection (if any) -> L2 norm, one graph.

The graph (``onnx/model.onnx`` in an exported directory) has

* inputs ``input_ids`` int64 ``(batch, sequence)`` and ``attention_mask`` int64
  ``(batch, sequence)``, 1 for real tokens and 0 for padding; both axes dynamic
  (``sequence`` at most the backbone's ``max_position_embeddings``: 512 for MiniLM);
* output ``token_embeddings`` float32 ``(batch, sequence, dim)``: one unit vector per
  position, ``TokenEncoder(...).vectors`` to within float32 rounding (~1e-7).

It holds the vectors only. Which positions take part in MaxSim is the caller's part:
the real tokens (``attention_mask == 1``), less ``[CLS]``/``[SEP]`` and punctuation when
the export's ``maxsim_lightning.json`` says ``skip_special_tokens`` / ``skip_punctuation``.
Padding positions carry vectors too (the encoder computes them), but they mean nothing.

Run it with onnxruntime and the tokenizer saved beside it::

    import numpy as np, onnxruntime as ort
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained("DIR")
    session = ort.InferenceSession("DIR/onnx/model.onnx", providers=["CPUExecutionProvider"])
    batch = tokenizer(["A man plays a guitar.", "Hi."], padding=True, truncation=True, max_length=128,
                      return_tensors="np")
    (vectors,) = session.run(["token_embeddings"], {"input_ids": batch["input_ids"].astype(np.int64),
                                                    "attention_mask": batch["attention_mask"].astype(np.int64)})
    # vectors: (2, L, dim) float32; keep vectors[i][batch["attention_mask"][i] == 1]

(Asymmetric models insert a query/document marker token after ``[CLS]``;
``LateInteractionModel.tokenize`` does that, a bare tokenizer call does not.)
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.tokenization import pad_token_ids

log = logging.getLogger(__name__)

# 18: the opset torch's exporter writes natively (TORCHLIB_OPSET), so no version conversion runs.
OPSET = 18
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "token_embeddings"
# The exporter traces with these two texts: two rows of different lengths, so the traced
# graph is the padded one (a shortcut for "no padding" can never be baked in) and neither
# axis has size 1 (torch.export specialises sizes 0 and 1 instead of keeping them dynamic).
EXAMPLE_TEXTS = ("An example sentence to trace the encoder with.", "A short one.")
# Exported vs eager float32 on the example batch; a correct export differs by ~1e-7.
VERIFY_ATOL = 1e-4
# torch.onnx.export(dynamo=True) writes the graph with onnxscript; onnx checks it, onnxruntime runs it.
_REQUIRED = ("onnx", "onnxruntime", "onnxscript")


class OnnxExportError(RuntimeError):
    """The ONNX graph was written but does not reproduce the PyTorch encoder."""


class _EncoderGraph(nn.Module):
    """What the ONNX graph computes: ``TokenEncoder.forward`` without the matching mask.

    ``forward(input_ids (B, L) int64, attention_mask (B, L) int64) -> (B, L, D) float32``,
    L2-normalised over ``D``. The mask that ``TokenEncoder`` also returns is a lookup of
    token ids, which the caller does from the ids it already has.
    """

    def __init__(self, backbone: nn.Module, projection: nn.Linear | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # No token_type_ids: BERT-style backbones default them to zeros, which is what
        # TokenEncoder passes too, so the graph keeps just the two inputs every caller has.
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.projection is not None:
            hidden = self.projection(hidden)
        return F.normalize(hidden, p=2, dim=-1)


def export_onnx(model, path: Path) -> Path:
    """Write ``model``'s token encoder to ``path`` as ONNX (see the module docstring). Returns ``path``.

    The export works on a float32 CPU copy in eval mode, so ``model`` itself (its
    device, dtype, train/eval mode) is left as it was. The weights go inside the file,
    unless they exceed ONNX's 2 GB limit: then beside it as ``<name>.data``.

    After writing, the file is checked with ``onnx.checker`` and run once with
    onnxruntime against the PyTorch encoder.

    Raises:
        ImportError: onnx, onnxruntime or onnxscript (torch's exporter needs it) is missing.
        OnnxExportError: onnxruntime's vectors differ from PyTorch's on the example batch
            (the file is removed again).
    """
    _require_onnx_packages()
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder = model.encoder
    # A copy: eval() and float32 must not change the caller's model (export runs mid-pipeline).
    graph = _EncoderGraph(copy.deepcopy(encoder.backbone), copy.deepcopy(encoder.projection))
    graph = graph.to(device="cpu", dtype=torch.float32).eval()
    example = pad_token_ids(model.tokenize(list(EXAMPLE_TEXTS)), encoder.tokenizer.pad_token_id)

    # torch.export's dynamo-based exporter (torch.onnx's default since 2.9): the TorchScript
    # one is deprecated and traces Python branches on tensor values into constants.
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with _quiet_exporter():
        program = torch.onnx.export(
            graph,
            example,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamo=True,
            # The same Dim on both inputs: ids and mask always share their shape.
            dynamic_shapes={name: {0: batch, 1: sequence} for name in INPUT_NAMES},
            verbose=False,
        )
    written = (path, path.with_name(path.name + ".data"))  # the graph, and its weights when over 2 GB
    try:
        # external_data=None: one self-contained file unless the weights pass 2 GB.
        with _quiet_exporter():  # saving runs onnxscript's optimiser, which reports every pass
            program.save(str(path), external_data=None)
        onnx.checker.check_model(str(path), full_check=True)  # by path: works with external data too
        difference = _verify(graph, path, example)
    except BaseException:
        for file in written:  # as export_model: a failed export leaves no file that looks usable
            file.unlink(missing_ok=True)
        raise
    # Named within its folder: export_model writes into a staging folder, renamed when complete.
    log.info("%s/%s: onnxruntime's token vectors match PyTorch's within %.1e (tolerance %.0e) on %d example texts",
             path.parent.name, path.name, difference, VERIFY_ATOL, len(EXAMPLE_TEXTS))
    return path


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx and onnxscript log each optimisation pass (a hundred lines of "Replaced
    initializer ...") and each optional package they lack (torchvision); only errors pass
    while exporting. Warnings that are harmless here are dropped: the mask's axis names
    repeat the ids' (one Dim for both; the graph still names its axes batch and sequence),
    and a deprecation inside torch.export's own pytree code."""
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"# The axis name: \w+ will not be used", category=UserWarning)
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
            yield
    finally:
        logging.disable(before)


def _require_onnx_packages() -> None:
    missing = [package for package in _REQUIRED if importlib.util.find_spec(package) is None]
    if missing:
        raise ImportError(
            f"ONNX export needs {', '.join(missing)} (not installed): "
            "pip install onnx onnxruntime onnxscript (onnxscript is what torch.onnx.export uses to write the graph)"
        )


@torch.no_grad()
def _verify(graph: _EncoderGraph, path: Path, example: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Run the written file on the example batch and compare with PyTorch at the real tokens;
    return the largest difference."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_ids, attention_mask = example
    (exported,) = session.run([OUTPUT_NAME], {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
    expected = graph(input_ids, attention_mask)
    real = attention_mask.bool()
    difference = (torch.from_numpy(exported)[real] - expected[real]).abs().max().item()
    if not difference <= VERIFY_ATOL:  # `not <=`: a NaN fails too
        raise OnnxExportError(
            f"{path}: onnxruntime's token vectors differ from PyTorch's by {difference:.2e} (> {VERIFY_ATOL}) on the "
            "example batch; the backbone may use an operation the ONNX exporter translates wrongly"
        )
    return difference
