"""Response shapes for the OpenAPI document (routes build their answers as dicts; these models
describe them, and the schema-fuzzing test checks the answers against them)."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")
Status = Literal["PENDING", "PROCESSING", "COMPLETED", "FAILED", "CANCELED"]


class Envelope(BaseModel, Generic[T]):
    data: T
    errors: list[str] = Field(description="machine-readable codes; empty on success")
    error_description: str = Field(description="a sentence a person can act on; empty on success")
    start_time: str = Field(examples=["2026-11-25 10:00:00.123456"])
    end_time: str
    host_of_client_call_request: str
    total_time_by_second: float
    status: Literal["success", "error"]


class ErrorEnvelope(Envelope[Any]):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "data": None, "errors": ["invalid_config"], "error_description": "configs.duration: Input should be greater "
                                                                          "than 0", "start_time": "…", "end_time":
        "…", "host_of_client_call_request": "127.0.0.1", "total_time_by_second": 0.001, "status": "error"}]})


class Profile(BaseModel):
    username: str
    name: str
    email: str
    type: str
    credits: float
    last_login_at: str | None


class Me(Profile):
    webhook_secret: str = Field(description="verifies the X-Soundry-Signature of your webhooks")


class Tokens(Profile):
    access_token: str
    refresh_token: str = Field(description="single use: exchange it at /v1/user/refresh_token for a new pair")
    expires_in: int = Field(description="seconds the access token is valid")


class TaskFeedback(BaseModel):
    rating: float = Field(ge=1, le=5, description="1 (worst) to 5 (best)")
    feedback: str
    rated_at: str | None


class TaskInfo(BaseModel):
    task_id: str = Field(examples=["5ae07defb1a146b3b8d536357cd76ba1"])
    total_tasks: int
    percent: int = Field(ge=0, le=100)
    status: Status
    url_download: str | None = Field(description="signed, expiring link (no auth header); null until COMPLETED")
    url_stream: str | None = Field(None, description="signed link to the audio as it is generated (GET …/stream "
                                                     "without an auth header); null once the task has ended")
    error_description: str = Field(description="why the task FAILED; empty otherwise")
    prompt: str
    negative_prompt: str
    config: dict[str, Any] = Field(description="the configs, plus task_name, task_type and queue_name")
    queue_position: int | None = Field(description="1-based among PENDING tasks of the model; null otherwise")
    eta_seconds: float | None = Field(description="a rough estimate of the seconds left; null when unknown")
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    duration: float | None = Field(None, description="COMPLETED only: seconds of audio")
    sample_rate: int | None = Field(None, description="COMPLETED only")
    output_format: str | None = Field(None, description="COMPLETED only")
    seed: int | None = Field(None, description="COMPLETED only: the seed used (reproduces the clip)")
    decoder: Literal["encodec", "mbd", "autoencoder"] | None = Field(None, description=(
        "COMPLETED only: what decoded the stored file (EnCodec or MultiBand Diffusion; a diffusion model's "
        "autoencoder)"))
    feedback: TaskFeedback | None = Field(None, description="the owner's rating (POST /v1/ai/feedback); null if none")


class TaskResult(BaseModel):
    is_success: bool = Field(description="false only when the task FAILED")
    data: TaskInfo


class FeedbackStored(BaseModel):
    task_id: str
    rating: float
    feedback: str
    rated_at: str | None


class TaskCreated(BaseModel):
    task_id: str
    prompt: str
    negative_prompt: str
    config: dict[str, Any]


class History(BaseModel):
    total: int
    limit: int
    offset: int
    tasks: list[TaskInfo]


class ModelEntry(BaseModel):
    model: str
    metadata: dict[str, Any]


class AiModel(BaseModel):
    model: str
    type: str


class AiModels(BaseModel):
    models: list[AiModel]


def answers(model: type | None, status: int = 200, *errors: int) -> dict:
    """``responses=`` for a route: its success shape and the error statuses it can answer."""
    out: dict = {status: {"model": Envelope[model]}} if model is not None else {}
    for code in errors:
        out[code] = {"model": ErrorEnvelope}
    return out


def either(ref: str, description: str) -> dict:
    """An answer that is the wire API's own error (``ref``) or, from the server's guards (overload, too many
    unauthenticated requests from an address), soundry's envelope."""
    return {"description": description, "content": {"application/json": {"schema": {"anyOf": [
        {"$ref": f"#/components/schemas/{ref}"}, {"$ref": "#/components/schemas/ErrorEnvelope"}]}}}}
