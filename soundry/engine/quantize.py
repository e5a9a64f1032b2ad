"""CPU int8: dynamic quantisation of the LM's linear layers (weights int8, activations per batch)."""

from __future__ import annotations

import warnings

import torch
from torch import nn


def quantize_lm(lm: nn.Module, mode: str = "int8") -> nn.Module:
    if mode != "int8":
        raise ValueError(f"unknown quantisation {mode!r}; supported: int8")
    if next(lm.parameters()).device.type != "cpu":
        raise ValueError("int8 dynamic quantisation runs on the CPU only; on a GPU use bfloat16")
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(lm, {nn.Linear}, dtype=torch.qint8)
