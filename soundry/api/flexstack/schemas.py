"""FlexStack's request bodies: the task create (``configs`` is the service's :class:`Configs`) and feedback."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from soundry.service.configs import TEXT_PATTERN, WEBHOOK_PATTERN, Configs, check_prompt, check_webhook_url
from soundry.tasks.models import FEEDBACK_MAX_CHARS, RATING_RANGE


class CreateTask(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{
        "prompt": "motorcycle engine revving", "configs": {"model": "audiogen", "duration": 5, "top_k": 15,
                                                           "top_p": 0.9}}]})

    prompt: str = Field(..., min_length=1, description="what to generate")
    negative_prompt: str = Field("", description="what to steer away from (replaces the empty guidance condition); "
                                                 "the same limits as prompt")
    configs: Configs = Field(default_factory=Configs)
    webhook: str | None = Field(None, max_length=2000, description=(
        "an http(s) URL: when the task completes, fails or is canceled, soundry POSTs its result there, "
        "signed with your webhook secret (see /v1/user/me) in X-Soundry-Signature: t=<unix>,v1=<hex HMAC-SHA256 "
        "of '<t>.<body>'>. Its host must resolve to public addresses only (loopback, private and link-local "
        "ones are refused unless the operator allows them), e.g. https://hooks.your-domain.example/soundry"),
        json_schema_extra={"pattern": WEBHOOK_PATTERN})

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        return check_webhook_url(v)

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _plain_text(cls, v: str, info: ValidationInfo) -> str:
        return check_prompt(v, info.field_name, allow_blank=info.field_name == "negative_prompt")


class Feedback(BaseModel):
    """A rating of one of the caller's finished tasks (FlexStack's ``submit_feedback``)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{
        "task_id": "5ae07defb1a146b3b8d536357cd76ba1", "rating": 4, "feedback": "great engine sound"}]})

    task_id: str = Field(..., min_length=1, max_length=64)
    rating: float = Field(..., ge=RATING_RANGE[0], le=RATING_RANGE[1], allow_inf_nan=False,
                          description=f"{RATING_RANGE[0]:g} (worst) to {RATING_RANGE[1]:g} (best); fractions allowed")
    feedback: str = Field("", max_length=FEEDBACK_MAX_CHARS, description="free text; empty allowed",
                          json_schema_extra={"pattern": TEXT_PATTERN})

    @field_validator("feedback")
    @classmethod
    def _plain_text(cls, v: str) -> str:
        return check_prompt(v, "feedback", allow_blank=True)

    @field_validator("rating", mode="before")
    @classmethod
    def _a_number(cls, v):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError("rating must be a number")
        return v
