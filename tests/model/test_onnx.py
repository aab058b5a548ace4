"""ONNX export of the token encoder: graph signature, dynamic axes, parity with PyTorch, export_model.

Every comparison runs the written file with onnxruntime on a batch whose size and
length differ from the example the exporter traced, so a graph with fixed shapes fails.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

for _package in ("onnx", "onnxruntime", "onnxscript"):
    pytest.importorskip(_package, reason=f"{_package} is not installed (pip install onnx onnxruntime onnxscript)")

import onnx  # noqa: E402
import onnxruntime  # noqa: E402

from lightning_modules.tokenization import pad_token_ids  # noqa: E402
from lightning_modules.encoder import EncoderOptions, TokenEncoder  # noqa: E402
from lightning_modules.model import export_model  # noqa: E402
from lightning_modules.model import LateInteractionModel  # noqa: E402
from lightning_modules.model.onnx import EXAMPLE_TEXTS, OnnxExportError, export_onnx  # noqa: E402
from tests.helpers.models import TINY

# Five texts of clearly different lengths: padding in every row but the longest, and both
# the batch size and the padded length differ from the export example's (checked below).
SENTENCES = [
    "A man is playing a guitar on the stage while the crowd sings along to every single word.",
    "Hi.",
    "Two dogs run through the snow.",
    "The stock market fell sharply on Monday after the announcement.",
    "A woman slices an onion.",
]
ATOL = 1e-4


def _tiny_model(minilm_path: str, projection_dim: int | None) -> LateInteractionModel:
    torch.manual_seed(0)  # random weights, but the same ones every run
    encoder = TokenEncoder(EncoderOptions(minilm_path, projection_dim=projection_dim, random_init=True,
                                          config_overrides=TINY))
    return LateInteractionModel(encoder).eval()


def _batch(model: LateInteractionModel, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids (B, L)`` and ``attention_mask (B, L)``, tokenised and padded as in training."""
    return pad_token_ids(model.tokenize(texts), model.encoder.tokenizer.pad_token_id)


def _run_onnx(path, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
    (vectors,) = session.run(["token_embeddings"], feeds)
    return torch.from_numpy(vectors)


def _max_difference_at_real_tokens(model: LateInteractionModel, path, texts: list[str]) -> float:
    input_ids, attention_mask = _batch(model, texts)
    exported = _run_onnx(path, input_ids, attention_mask)
    with torch.no_grad():
        expected = model.embed(input_ids, attention_mask).vectors
    assert exported.shape == expected.shape == (*input_ids.shape, model.encoder.dim)
    real = attention_mask.bool()
    return (exported[real] - expected[real]).abs().max().item()


@pytest.fixture(scope="module", params=[16, None], ids=["projection16", "no_projection"])
def exported(request, minilm_path, tmp_path_factory):
    """A tiny random model (with and without a projection) and its ONNX file."""
    model = _tiny_model(minilm_path, request.param)
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "nested" / "model.onnx")
    return model, path


def test_graph_has_two_int64_inputs_and_dynamic_axes(exported):
    model, path = exported
    assert path.is_file() and path.name == "model.onnx"  # the parent folder was created
    graph = onnx.load(str(path)).graph
    inputs = {i.name: i.type.tensor_type for i in graph.input}
    assert list(inputs) == ["input_ids", "attention_mask"]  # no token_type_ids
    for tensor_type in inputs.values():
        assert tensor_type.elem_type == onnx.TensorProto.INT64
        # Symbolic sizes (dim_param), not numbers: both axes stay dynamic.
        assert [d.dim_param for d in tensor_type.shape.dim] == ["batch", "sequence"]
        assert not any(d.HasField("dim_value") for d in tensor_type.shape.dim)
    (output,) = graph.output
    assert output.name == "token_embeddings"
    assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = output.type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[:2]] == ["batch", "sequence"] and len(dims) == 3
    assert dims[2].dim_value == model.encoder.dim == (16 if model.encoder.projection is not None else 32)


def test_matches_pytorch_on_a_batch_of_another_shape(exported):
    model, path = exported
    input_ids, attention_mask = _batch(model, SENTENCES)
    example_ids, _ = _batch(model, list(EXAMPLE_TEXTS))
    # The point of the test: neither axis may equal the traced example's.
    assert input_ids.shape[0] != example_ids.shape[0] and input_ids.shape[1] != example_ids.shape[1]
    assert not attention_mask.bool().all(), "the batch should contain padding"
    difference = _max_difference_at_real_tokens(model, path, SENTENCES)
    assert difference <= ATOL, f"max |onnx - torch| at real tokens = {difference:.2e}"


def test_vectors_are_unit_length_at_real_tokens(exported):
    model, path = exported
    input_ids, attention_mask = _batch(model, SENTENCES)
    norms = _run_onnx(path, input_ids, attention_mask)[attention_mask.bool()].norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5), f"norms in [{norms.min()}, {norms.max()}]"


def test_padding_does_not_change_a_texts_vectors(exported):
    # Each text alone (batch 1, no padding) against the same text inside the padded batch:
    # equal only if the graph really uses attention_mask and runs at batch size 1.
    model, path = exported
    input_ids, attention_mask = _batch(model, SENTENCES)
    batched = _run_onnx(path, input_ids, attention_mask)
    for row, text in enumerate(SENTENCES):
        alone_ids, alone_mask = _batch(model, [text])
        alone = _run_onnx(path, alone_ids, alone_mask)[0]
        length = int(alone_mask.sum())
        assert torch.allclose(alone, batched[row, :length], atol=ATOL), text


def test_pretrained_minilm_matches_pytorch(minilm_path, tmp_path):
    model = LateInteractionModel(TokenEncoder(EncoderOptions(minilm_path, projection_dim=None))).eval()
    path = export_onnx(model, tmp_path / "model.onnx")
    difference = _max_difference_at_real_tokens(model, path, SENTENCES)
    assert difference <= ATOL, f"max |onnx - torch| at real tokens = {difference:.2e}"


def test_export_model_writes_a_loadable_graph_and_leaves_the_model_alone(minilm_path, tmp_path):
    model = _tiny_model(minilm_path, 16).train()  # as a training pipeline would hand it over
    out_dir = export_model(model, tmp_path / "m", onnx=True)
    path = out_dir / "onnx" / "model.onnx"
    assert path.is_file()
    # The export worked on a copy: every submodule is still in train mode, float32 as before.
    assert all(module.training for module in model.modules())
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    model.eval()
    input_ids, attention_mask = _batch(model, SENTENCES[:3])
    exported = _run_onnx(path, input_ids, attention_mask)
    with torch.no_grad():
        expected = model.embed(input_ids, attention_mask).vectors
    real = attention_mask.bool()
    assert np.isfinite(exported.numpy()).all()
    assert (exported[real] - expected[real]).abs().max().item() <= ATOL


def test_missing_onnxruntime_says_what_to_install(minilm_path, tmp_path, monkeypatch):
    model = _tiny_model(minilm_path, None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # find_spec now reports it missing
    with pytest.raises(ImportError, match="pip install onnx onnxruntime") as error:
        export_onnx(model, tmp_path / "model.onnx")
    assert "onnxruntime" in str(error.value).split(":")[0]  # names the missing package
    assert not (tmp_path / "model.onnx").exists()


def test_a_graph_that_disagrees_with_pytorch_is_rejected_and_removed(minilm_path, tmp_path, monkeypatch):
    # Stand in for a mistranslated operation: onnxruntime's answer is shifted by 0.01.
    class ShiftedSession(onnxruntime.InferenceSession):
        def run(self, *args, **kwargs):
            return [out + 0.01 for out in super().run(*args, **kwargs)]

    monkeypatch.setattr(onnxruntime, "InferenceSession", ShiftedSession)
    with pytest.raises(OnnxExportError, match="differ from PyTorch's by 1.00e-02"):
        export_onnx(_tiny_model(minilm_path, None), tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []
