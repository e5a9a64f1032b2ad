"""What Replicate's and Cog's APIs share when a prediction is created: the request body, the caller, and its
translation into a task spec (the inputs through ``core``; soundry's own checks are the task service's)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from soundry.api.http.auth import bearer_user
from soundry.api.http.links import link_base
from soundry.api.predictions import core
from soundry.service.configs import WEBHOOK_PATTERN, check_webhook_url
from soundry.service.errors import invalid
from soundry.service.tasks import TaskSpec
from soundry.tasks.models import User

WEBHOOK_DEFAULT = ("start", "output", "logs", "completed")


class CreatePrediction(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{
        "input": {"prompt": "calm piano over rain", "model_version": "stereo-large", "duration": 8}}]})

    input: dict[str, Any] = Field(default_factory=dict, description="the model's inputs (GET its version's schema)")
    webhook: str | None = Field(None, max_length=2000, json_schema_extra={"pattern": WEBHOOK_PATTERN},
                                description="POSTed the prediction at each event of webhook_events_filter "
                                            "(soundry's address rules and X-Soundry-Signature)")
    webhook_completed: str | None = Field(None, max_length=2000, json_schema_extra={"pattern": WEBHOOK_PATTERN},
                                          description="as webhook, for the completed event")
    webhook_events_filter: list[Literal["start", "output", "logs", "completed"]] | None = Field(
        None, description="the events sent (default: all): `start` when it starts processing, `output` when its "
                           "file is ready, `logs` when new progress lines appear (at most one delivery in flight, "
                           "coalesced), `completed` when it succeeds, fails or is canceled")
    stream: StrictBool | None = Field(None, description=(
        "true: the prediction's `urls.stream` is soundry's live audio, a signed link (WAV while it is generated, "
        "the stored file once it is)"))


async def caller(request: Request) -> User:
    """The user of ``Authorization: Bearer <soundry API key or access token>`` (or Replicate's older
    ``Token`` scheme)."""
    return await bearer_user(request, ("bearer", "token"),
                       "send 'Authorization: Bearer <soundry API key or access token>'")


def own_origins(request: Request) -> list[str]:
    """Where the caller's files live: the links soundry signs, and the address the client used."""
    return [link_base(request).rstrip("/"), str(request.base_url).rstrip("/")]


async def translate(request: Request, model: str, body: CreatePrediction, cog_model: str | None = None) -> TaskSpec:
    """A create's task spec (validated by the service when submitted); the input's own refusals name its fields."""
    request.state.prediction_model = model
    inp = core.validate_input(model, body.input)
    origins = own_origins(request)
    prompt, negative, cfg = core.to_task(model, inp, lambda value, field: core.input_audio_id(value, origins, field),
                                         cog_model)
    for field in ("webhook", "webhook_completed"):  # the service's rule, naming the field the caller sent
        try:
            check_webhook_url(getattr(body, field))
        except ValueError as exc:
            raise invalid(field, str(exc)) from None
    if body.webhook and body.webhook_completed and body.webhook_completed != body.webhook:
        raise invalid("webhook_completed", "a prediction has one webhook URL here: send webhook (with "
                                           "webhook_events_filter) or webhook_completed alone, not two URLs")
    events = list(body.webhook_events_filter or WEBHOOK_DEFAULT)
    webhook = body.webhook or body.webhook_completed or ""
    if body.webhook_completed and not body.webhook:
        events = ["completed"]
    wire = {"model": model, "version": core.version_id(model), "input": body.input, "events": events}
    if body.stream:
        wire["stream"] = True
    return TaskSpec(prompt, negative, cfg, webhook, wire)
