"""A task's configs (wire-neutral: every API translates its request into them) and the text rules.

Unknown keys, out-of-range values and values of the wrong JSON
type (strict: ``"5"`` and ``true`` are not numbers, ``5.5`` is not an integer, ``0`` is not a boolean)
are rejected."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, field_validator

from soundry.audio import FORMATS, NORMALIZATIONS

# An absolute http(s) URL with a host name or IPv4 address (or empty), as the OpenAPI document's pattern;
# the validator also takes an IPv6 literal ([2001:db8::1]), which the pattern leaves out. Whether the host
# resolves to addresses a webhook may reach is checked when the task is created (422), which no schema says.
# No control character (C0, DEL, C1) nor white space anywhere: the classes are spelled out rather than \s / \S,
# whose meaning differs between regex dialects (Python's \s takes U+001C-U+001F and U+0085, ECMA's U+FEFF), so
# the document's pattern and this validator refuse the same URLs whichever engine reads the pattern.
_NOT_IN_URL = "\\u0000-\\u0020\\u007F-\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000\\uFEFF"
_URL = ("[Hh][Tt][Tt][Pp][Ss]?://(?:[^" + _NOT_IN_URL + "/?#@\\[\\]]*@)?{host}(?::[0-9]{{1,5}})?(?:[/?#][^"
        + _NOT_IN_URL + "]*)?")
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

    model: str = Field("audiogen", max_length=64, description=(
        "a model of GET /v1/models/audio_generation (the document's enum is the live catalog)"))
    duration: float = Field(5.0, gt=0, description="seconds; beyond the model's context it is generated in windows")
    top_k: JsonInt = Field(15, ge=0, le=2048, description="0 disables top-k")
    top_p: float = Field(0.9, ge=0.0, le=1.0, description="0 disables nucleus filtering; both filters apply")
    temperature: float = Field(1.0, gt=0.0, le=10.0)
    cfg_coef: float = Field(3.0, ge=0.0, le=20.0, description=(
        "classifier-free guidance strength (a diffusion model's default is its own: see the model list's "
        "`default_guidance`; 1 or less is no guidance)"))
    steps: JsonInt | None = Field(None, ge=1, le=500, description=(
        "denoising steps of a diffusion model (Stable Audio; default: the model's `default_steps`); autoregressive "
        "models take none"))
    seed: Annotated[int, Field(ge=0, le=2**62), BeforeValidator(_integral)] | None = Field(
        None, description="makes the task reproducible")
    output_format: Literal[tuple(FORMATS)] = "wav"  # type: ignore[valid-type]
    bit_depth: Literal[16, 24, 32] = Field(16, description="16 (every format), 24 (wav, flac) or 32 (float wav)")
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
    def _model_name(cls, v: str) -> str:
        """Names are case-insensitive; whether the catalog knows it is the service's check."""
        return v.strip().lower()


# What check_prompt refuses, as JSON Schema patterns for the OpenAPI document: control characters (C0
# other than tab, line feed and carriage return; DEL; C1); a non-blank text has a visible character.
_TEXT = "[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]"
TEXT_PATTERN = f"^{_TEXT}*$"
# a visible character: neither a control nor what str.strip() takes as space (spelled out: \\s differs by dialect)
_SPACE = "\\u0000-\\u0020\\u007F-\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000"
NON_BLANK_PATTERN = f"^{_TEXT}*[^{_SPACE}]{_TEXT}*$"


def check_webhook_url(v: str | None) -> str | None:
    """A webhook URL's syntax: an absolute http(s) URL with a host (None or "" for none)."""
    if v is None or v == "":
        return None
    if any(_control(c) for c in v):
        raise ValueError("a webhook URL must not contain control characters")
    from urllib.parse import urlparse

    parsed = urlparse(v)
    if not _WEBHOOK_SYNTAX.fullmatch(v) or parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError("webhook must be an absolute http:// or https:// URL with a host name or address")
    return v


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
