"""The prediction's shape in the OpenAPI document, as Replicate's and Cog's APIs answer it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class PredictionFields(BaseModel):
    """What a prediction answers on both APIs (Replicate adds its model, version and urls)."""

    id: str
    input: dict[str, Any]
    status: Literal["starting", "processing", "succeeded", "failed", "canceled"]
    output: str | None = Field(description="the audio: a data: URL, or a signed https link behind https")
    error: str | None
    logs: str
    metrics: dict[str, float]
    created_at: str | None
    started_at: str | None
    completed_at: str | None
