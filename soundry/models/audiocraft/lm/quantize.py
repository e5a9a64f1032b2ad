"""CPU int8: dynamic quantisation of the LM's linear layers (weights int8, activations per batch).

This uses ``torch.ao.quantization.quantize_dynamic``, which the pinned torch deprecates (it warns,
and we let it). Its successor, torchao's ``quantize_`` (``Int8DynamicActivationInt8WeightConfig``),
was measured on this project's CPU (musicgen-small shape, batch 1, same run, torchao 0.18 on torch
2.13): eager decode at ~3 steps/s against ~28 with ``quantize_dynamic`` (fbgemm's packed int8 GEMM),
and its weight-only int8 at ~4 — slower even than float32. torchao's CPU int8 is meant to be lowered
by ``torch.compile``; the engine's eager path needs a fast eager kernel, so it stays here until
torchao has one (see bench/RESULTS.md, "int8 backend").
"""

from __future__ import annotations

import torch
from torch import nn


def is_quantized(lm: nn.Module) -> bool:
    """Whether ``quantize_lm`` has turned the LM's linear layers into int8 ones."""
    return any(".quantized." in type(m).__module__ for m in lm.modules())


def quantize_lm(lm: nn.Module, mode: str = "int8") -> nn.Module:
    if mode != "int8":
        raise ValueError(f"unknown quantisation {mode!r}; supported: int8")
    if next(lm.parameters()).device.type != "cpu":
        raise ValueError("int8 dynamic quantisation runs on the CPU only; on a GPU use bfloat16")
    from torch.ao.quantization import quantize_dynamic

    # in place: a copy would hold a second full float32 model at the peak of a load
    return quantize_dynamic(lm, {nn.Linear}, dtype=torch.qint8, inplace=True)
