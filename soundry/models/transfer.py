"""Host-to-device copies that do not wait: a small host tensor goes to the GPU from pinned memory
with ``non_blocking=True``, so the thread that issues it (the engine's decode loop) does not stall
until the device has run everything queued before the copy. On the CPU it is the tensor itself."""

from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``t`` (on the host) on ``device``, copied asynchronously from pinned memory for CUDA. PyTorch's
    pinned-memory allocator keeps the host buffer until the copy has run, so ``t`` may be dropped."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
