"""The codec's own CUDA stream, so that decoding never stalls the LM on a GPU either.

The engine thread queues the LM's steps on the current stream; codes handed to the codec thread (a
finished request's, or a streamed chunk's) were produced there. ``handoff`` records an event on that
stream after them and marks them used by the codec stream (so the caching allocator does not give
their memory back to the LM while a decode still reads it); ``run``, on the codec thread, makes the
codec stream wait for the event and decodes on it, beside the LM's next steps instead of between
them. On the CPU both are plain calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class CodecStream:
    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(device=self.device) if self.device.type == "cuda" else None

    def handoff(self, *tensors: torch.Tensor) -> Any:
        """On the engine thread, after queuing the work that produces ``tensors``: what ``run`` waits for."""
        if self.stream is None:
            return None
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        for t in tensors:
            t.record_stream(self.stream)
        return event

    def run(self, ready: Any, fn: Callable[..., Any], *args: Any) -> Any:
        """On the codec thread: ``fn(*args)`` on the codec stream, once the handed-off tensors are ready."""
        if self.stream is None:
            return fn(*args)
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(ready)
            return fn(*args)
