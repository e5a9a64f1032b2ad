"""Request bodies and their validation: unknown keys, out-of-range values and values of the wrong JSON
type (strict: ``"5"`` and ``true`` are not numbers, ``5.5`` is not an integer, ``0`` is not a boolean)
are rejected."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationInfo, field_validator

from soundry.audio import FORMATS, NORMALIZATIONS
from soundry.models.registry import MODEL_NAMES
from soundry.tasks.models import FEEDBACK_MAX_CHARS, RATING_RANGE

# An absolute http(s) URL with a host name or IPv4 address (or empty), as the OpenAPI document's pattern;
# the validator also takes an IPv6 literal ([2001:db8::1]), which the pattern leaves out. Whether the host
# resolves to addresses a webhook may reach is checked when the task is created (422), which no schema says.
_URL = r"[Hh][Tt][Tt][Pp][Ss]?://(?:[^\s/?#@\[\]]*@)?{host}(?::[0-9]{{1,5}})?(?:[/?#]\S*)?"
WEBHOOK_PATTERN = "^$|^" + _URL.format(host="[A-Za-z0-9.-]+") + "$"
_WEBHOOK_SYNTAX = re.compile(_URL.format(host=r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])"))


def _integral(v):
    """A JSON number without a fraction (``5.0``) is an integer, as JSON Schema says; ``5.5``, ``"5"`` and
    ``true`` are not."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


JsonInt = Annotated[int, BeforeValidator(_integral)]


class Configs(BaseModel):
    """Generation settings. Defaults follow FlexStack's page (model audiogen, 5 s, top_k 15, top_p 0.9)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"dependentRequired": {
        "continuation_start": ["input_audio"], "continuation_end": ["input_audio"]}})

    model: str = Field("audiogen", description=f"one of {', '.join(MODEL_NAMES)}",
                       json_schema_extra={"enum": list(MODEL_NAMES)})
    duration: float = Field(5.0, gt=0, description="seconds; beyond the model's context it is generated in windows")
    top_k: JsonInt = Field(15, ge=0, le=2048, description="0 disables top-k")
    top_p: float = Field(0.9, ge=0.0, le=1.0, description="0 disables nucleus filtering; both filters apply")
    temperature: float = Field(1.0, gt=0.0, le=10.0)
    cfg_coef: float = Field(3.0, ge=0.0, le=20.0, description="classifier-free guidance strength")
    seed: Annotated[int, Field(ge=0, le=2**62), BeforeValidator(_integral)] | None = Field(
        None, description="makes the task reproducible")
    output_format: Literal[tuple(FORMATS)] = "wav"  # type: ignore[valid-type]
    normalization: Literal[tuple(NORMALIZATIONS)] = "loudness"  # type: ignore[valid-type]
    target_lufs: float = Field(-14.0, ge=-70.0, le=0.0)
    input_audio: str | None = Field(None, pattern="^[0-9a-f]{32}$", description=(
        "id of an upload (POST /v1/uploads) to continue: the result is that clip followed by its continuation, "
        "and `duration` is the total"))
    continuation_start: float = Field(0.0, ge=0.0, le=3600.0, description="seconds into input_audio where the prompt "
                                                                          "starts")
    continuation_end: float | None = Field(None, gt=0.0, le=3600.0, description="seconds into input_audio where the "
                                                                                "prompt ends (default: its end)")
    loop: StrictBool = Field(False, description="a clip that loops seamlessly (generated past its end, the extra tail "
                                          "crossfaded into its head)")
    melody: str | None = Field(None, pattern="^[0-9a-f]{32}$", description=(
        "id of an upload (POST /v1/uploads) whose tune the music follows (melody models only: those whose entry in "
        "GET /v1/models/audio_generation says `melody: true`); the whole clip, tiled or cut to the model's 30 s "
        "context in every window; not together with input_audio"))
    decoder: Literal["encodec", "mbd"] = Field("encodec", description=(
        "what turns the tokens into the stored file: `encodec` (the model's codec) or `mbd` (MultiBand Diffusion, "
        "MusicGen models only: fewer artefacts, seconds of extra work per clip; live audio stays EnCodec)"))

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v.strip().lower() not in MODEL_NAMES:
            raise ValueError(f"unknown model {v!r}; known models: {', '.join(MODEL_NAMES)}")
        return v.strip().lower()


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
        if v is None or v == "":
            return None
        from urllib.parse import urlparse

        parsed = urlparse(v)
        if not _WEBHOOK_SYNTAX.fullmatch(v) or parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("webhook must be an absolute http:// or https:// URL with a host name or address")
        return v

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _plain_text(cls, v: str, info: ValidationInfo) -> str:
        return check_prompt(v, info.field_name, allow_blank=info.field_name == "negative_prompt")


# What check_prompt refuses, as JSON Schema patterns for the OpenAPI document: control characters (C0
# other than tab, line feed and carriage return; DEL; C1); a non-blank text has a visible character.
_TEXT = "[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]"
TEXT_PATTERN = f"^{_TEXT}*$"
NON_BLANK_PATTERN = f"^{_TEXT}*[^\\s\\u0000-\\u001F\\u007F-\\u009F]{_TEXT}*$"


def _control(c: str) -> bool:
    """C0 controls other than tab, line feed and carriage return; DEL; C1 controls (U+0080-U+009F)."""
    return (ord(c) < 32 and c not in "\t\n\r") or 0x7F <= ord(c) <= 0x9F


def check_prompt(v: str, name: str = "prompt", allow_blank: bool = False) -> str:
    """A text field must have visible text (unless ``allow_blank``), no control characters (C0, DEL
    and C1; tabs and newlines are fine) and no unpaired surrogates."""
    if not allow_blank and not v.strip():
        raise ValueError(f"{name} must not be blank")
    if any(_control(c) for c in v):
        raise ValueError(f"{name} contains control characters")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in v):
        raise ValueError(f"{name} contains unpaired surrogates (not valid Unicode text)")
    return v


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
