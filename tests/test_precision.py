"""``trainer.precision: auto``: bf16 only where the processor multiplies it natively, and bf16
encodings that stay close to fp32's."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.precision import bf16_supported, cpu_flags, inference_autocast, resolve_precision
from tests.helpers.models import tiny_model


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse avx2 avx512_bf16 amx_tile\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse", "avx2", "avx512_bf16", "amx_tile"}
    assert cpu_flags(tmp_path / "absent") == set()


@pytest.mark.parametrize(("flags", "native"), [({"avx2", "avx512f"}, False), ({"avx512_bf16"}, True),
                                               ({"amx_bf16", "amx_tile"}, True), (set(), False)])
def test_auto_picks_bf16_only_with_native_bf16(flags, native):
    assert bf16_supported("cpu", flags) is native
    precision = resolve_precision("auto", "cpu", flags)
    assert precision.training == ("bf16-mixed" if native else "32-true")
    assert precision.inference == ("bf16" if native else "32")
    assert ("has native bf16" in precision.reason) is native


@pytest.mark.parametrize(("asked", "inference"), [("32-true", "32"), (32, "32"), ("bf16-mixed", "bf16"),
                                                  ("bf16-true", "bf16"), ("16-mixed", "16")])
def test_an_explicit_precision_is_used_everywhere(asked, inference):
    precision = resolve_precision(asked, "cpu", {"avx512_bf16"})
    assert precision.training == str(asked) and precision.inference == inference


def test_bf16_encodings_are_close_to_fp32(minilm_path):
    model = tiny_model(minilm_path)
    ids = model.tokenize(["a protein binds the receptor", "cells divide", "the heart pumps blood to the lungs"])
    full = model.embed_token_ids(ids)
    model.inference_precision = "bf16"
    low = model.embed_token_ids(ids)
    assert all(v.dtype == torch.bfloat16 for v in low)
    cosines = torch.cat([torch.nn.functional.cosine_similarity(a, b.float(), dim=-1) for a, b in zip(full, low)])
    assert cosines.min() > 0.99


def test_inference_autocast_refuses_an_unknown_precision():
    with inference_autocast("32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with inference_autocast("bf16", "cpu"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="inference precision"):
        inference_autocast("fp8", "cpu")
