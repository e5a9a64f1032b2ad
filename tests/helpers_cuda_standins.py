"""torch.cuda's stream and graph calls stood in on the CPU, for the tests of CUDA graph capture and replay
(soundry.engine.static_steps): a capture runs the step eagerly (so a warm-up or capture that would write past
the KV cache fails here as it would assert on a device), a replay is only counted (a real one would read the
tensors it captured, whatever the cache holds now). ``GraphStandIns`` records every capture in order, the
stream it was made on and the memory pool it was given."""

from __future__ import annotations

import contextlib

import torch


class Stream:
    """torch.cuda.Stream's stand-in: remembers its device."""

    def __init__(self, device=None, *args, **kwargs):
        self.device = device

    def wait_stream(self, other) -> None:
        pass


class Graph:
    """torch.cuda.CUDAGraph's stand-in: replays are counted; ``pool()`` is the pool it was captured into."""

    def __init__(self):
        self.replays = 0
        self.captured_on = None  # the device of the stream the capture was given
        self.shared_pool = None

    def replay(self) -> None:
        self.replays += 1

    def pool(self):
        return self.shared_pool


class GraphStandIns:
    """What the stand-ins saw: ``captured``, every graph in the order it was captured."""

    def __init__(self):
        self.captured: list[Graph] = []

    def graph(self, g: Graph, pool=None, stream=None, **kwargs):
        """torch.cuda.graph's stand-in: the body runs eagerly. A capture given no pool gets a new one."""
        g.shared_pool = pool if pool is not None else ("pool", len(self.captured))
        g.captured_on = None if stream is None else stream.device
        self.captured.append(g)
        return contextlib.nullcontext()

    @property
    def replays(self) -> int:
        return sum(g.replays for g in self.captured)


def cuda_graph_stand_ins(monkeypatch) -> GraphStandIns:
    """Replace torch.cuda's Stream, current_stream, stream, CUDAGraph and graph for the test."""
    seen = GraphStandIns()
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream(device))
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", seen.graph)
    return seen
