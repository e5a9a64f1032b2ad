"""The inference engine: continuous batching, KV cache, per-row sampling. Knows nothing of HTTP."""

from soundry.engine.request import GenerationCanceled, GenerationRequest, GenerationResult
from soundry.engine.scheduler import Engine, EngineStats

__all__ = ["Engine", "EngineStats", "GenerationCanceled", "GenerationRequest", "GenerationResult"]
