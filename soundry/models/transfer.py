"""Host-to-device copies that do not wait: a small host tensor goes to the GPU from pinned memory
with ``non_blocking=True``, so the thread that issues it (the engine's decode loop) does not stall
until the device has run everything queued before the copy. On the CPU it is the tensor itself.
``on_side_stream`` runs work a caller's thread needs the result of (an audio prompt's encoding) on a stream of
its own, so that thread waits for that work only, not for an engine's decode steps queued before it."""

from __future__ import annotations

from collections.abc import Callable

import torch


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``t`` (on the host) on ``device``, copied asynchronously from pinned memory for CUDA. PyTorch's
    pinned-memory allocator keeps the host buffer until the copy has run, so ``t`` may be dropped."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def on_side_stream(device: torch.device | str, fn: Callable[..., torch.Tensor], *args) -> torch.Tensor:
    """``fn(*args)``; on CUDA on a fresh stream of ``device`` that first waits for the caller's stream, and the
    caller's thread then waits for that stream alone. The result is marked used by the caller's stream (where
    an engine reads it), so its memory is not handed to the side stream's next work while still being read."""
    device = torch.device(device)
    if device.type != "cuda":
        return fn(*args)
    caller = torch.cuda.current_stream(device)
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(caller)
    with torch.cuda.stream(stream):
        out = fn(*args)
    stream.synchronize()
    if out.device == device:
        out.record_stream(caller)
    return out
