"""The time of each decode step, for ``EngineStats.step_seconds`` (and so the steps/s the metrics show).

On the CPU a step's wall time is its time. On a GPU the engine thread only enqueues a step (it does not
wait for it), so wall time counts the enqueue and overstates steps/s: there CUDA events are recorded
around the step on the stream and their elapsed time is added once the step has run (``Event.query``,
which does not wait). The sum lags the step count by the steps still queued on the device.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import torch


class StepTimer:
    def __init__(self, device: torch.device | str):
        self.cuda = torch.device(device).type == "cuda"
        self._pending: deque[tuple[Any, Any]] = deque()  # CUDA: (start, end) events of steps not yet summed

    def start(self) -> Any:
        """Before a step: a start mark (a recorded event on CUDA)."""
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def stop(self, started: Any) -> float:
        """After a step: the seconds of the steps known to have run since the last call."""
        if not self.cuda:
            return time.perf_counter() - started
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self._pending.append((started, end))
        seconds = 0.0
        while self._pending and self._pending[0][1].query():
            start, end = self._pending.popleft()
            seconds += start.elapsed_time(end) / 1000
        return seconds
