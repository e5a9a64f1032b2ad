"""The core shared by the Replicate and Cog translations: a prediction's input → a soundry task, and a
task → a prediction.

Inputs follow the public models' names and defaults: ``meta/musicgen`` (replicate/cog-musicgen's
``predict.py``), ``sepal/audiogen``, and ``soundry/<model>`` (soundry's own configs). A value soundry
cannot honour is refused (422) naming the field, never ignored. Every prediction is an ordinary task (created
through the task service, ``soundry.service.tasks``); what the wire API needs to answer in its own shape (the
model and version asked for, the input as sent, the webhook events) is kept in the task's config under
``"prediction"``.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import re
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlsplit

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, create_model

from soundry import __version__
from soundry.audio.encode import FORMATS
from soundry.models import catalog
from soundry.service.configs import TEXT_PATTERN, Configs, JsonInt
from soundry.service.errors import ServiceError, invalid
from soundry.signing import signed_stream_path
from soundry.tasks.models import Task
from soundry.tasks.result import download_url
from soundry.tasks.webhooks import LOG_STEP

STATUS = {"PENDING": "starting", "PROCESSING": "processing", "COMPLETED": "succeeded", "FAILED": "failed",
          "CANCELED": "canceled"}
WEBHOOK_EVENTS = ("start", "output", "logs", "completed")
# meta/musicgen's model_version → soundry's model
MUSICGEN_VERSIONS = {"stereo-melody-large": "musicgen-stereo-melody-large", "melody-large": "musicgen-melody-large",
                     "stereo-large": "musicgen-stereo-large", "large": "musicgen-large"}
NORMALIZATION = {"loudness": "loudness", "peak": "peak", "rms": "rms", "clip": "none"}  # clip: the encoder clips


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class MusicGenInput(_Input):
    """meta/musicgen's inputs (cog-musicgen's names and defaults)."""

    model_version: str = Field("stereo-melody-large", description=(
        "stereo-melody-large (the default), melody-large, stereo-large, large, or a soundry MusicGen name"))
    prompt: str | None = Field(None, description="a description of the music")
    input_audio: str | None = Field(None, description=(
        "a file of yours on this server (its POST /v1/files urls.get); with continuation it is continued, "
        "else it is the melody the music follows (melody versions only)"))
    duration: float = Field(8.0, gt=0, allow_inf_nan=False, description="seconds (with continuation: the total)")
    continuation: StrictBool = Field(False, description="continue input_audio (else input_audio is a melody)")
    continuation_start: float = Field(0.0, ge=0, allow_inf_nan=False, description="seconds into input_audio")
    continuation_end: float | None = Field(None, ge=0, allow_inf_nan=False, description="seconds into input_audio")
    multi_band_diffusion: StrictBool = Field(False, description=(
        "decode with MultiBand Diffusion instead of EnCodec (fewer artefacts, seconds of extra work per clip)"))
    normalization_strategy: Literal["loudness", "clip", "peak", "rms"] = "loudness"
    top_k: int = Field(250, ge=0, le=2048)
    top_p: float = Field(0.0, ge=0, le=1, allow_inf_nan=False)
    temperature: float = Field(1.0, gt=0, le=10, allow_inf_nan=False)
    classifier_free_guidance: float = Field(3.0, ge=0, le=20, allow_inf_nan=False)
    output_format: Literal["wav", "mp3"] = "wav"
    seed: int | None = Field(None, ge=-1, le=2**62, description="none or -1: random")


class AudioGenInput(_Input):
    """sepal/audiogen's inputs."""

    prompt: str = Field(..., description="a description of the sound")
    duration: float = Field(3.0, gt=0, allow_inf_nan=False, description="seconds")
    top_k: int = Field(250, ge=0, le=2048)
    top_p: float = Field(0.0, ge=0, le=1, allow_inf_nan=False)
    temperature: float = Field(1.0, gt=0, le=10, allow_inf_nan=False)
    classifier_free_guidance: float = Field(3.0, ge=0, le=20, allow_inf_nan=False)
    output_format: Literal["wav", "mp3"] = "wav"


class SoundryInput(Configs):
    """soundry/<model>: the prompt and soundry's own configs (the model is the one named in the path);
    ``input_audio`` and ``melody`` may also be file URLs of this server."""

    prompt: str = Field(..., description="what to generate")
    negative_prompt: str = Field("", description="what to steer away from")
    input_audio: str | None = Field(None, description="an upload's id, or its URL on this server")
    melody: str | None = Field(None, description="an upload's id, or its URL on this server (melody models)")


class DiffusionInput(_Input):
    """soundry/<a Stable Audio model>: what a diffusion model reads (built per model by :func:`input_model`)."""


@functools.lru_cache(maxsize=64)
def _diffusion_input(name: str, steps: int | None, guidance: float | None, seconds: float) -> type[BaseModel]:
    """soundry/<name>'s inputs: soundry's configs without those only autoregressive models read (the schema
    lists no input the model would refuse), its own step and guidance defaults, its longest clip."""
    fields: dict[str, Any] = {n: (f.annotation, f) for n, f in SoundryInput.model_fields.items()
                              if n not in (*catalog.AUTOREGRESSIVE_CONFIGS, "model")}  # the path names the model
    fields.update(
        duration=(float, Field(5.0, gt=0, le=seconds, allow_inf_nan=False,
                               description=f"seconds (at most {seconds:g})")),
        steps=(JsonInt, Field(steps or 8, ge=1, le=500, description="denoising steps (the model's default)")),
        cfg_coef=(float, Field(guidance if guidance is not None else 1.0, ge=0, le=20, allow_inf_nan=False,
                               description="classifier-free guidance (1 or less: none, and no negative prompt)")))
    return create_model(f"Input_{name}", __base__=DiffusionInput, __doc__=f"{name}: a diffusion model's inputs",
                        **fields)


def input_model(spec: catalog.ModelSpec) -> type[BaseModel]:
    """The inputs soundry/<model> takes: soundry's configs, a diffusion model's only those it reads."""
    if spec.kind != "diffusion":
        return SoundryInput
    return _diffusion_input(spec.name, spec.steps, spec.guidance, spec.context)


def limit_text(prop: dict, max_chars: int) -> None:
    """A text input's schema with the task service's limits: at most ``max_chars`` characters, no control
    characters (``None`` allowed where it is)."""
    for option in prop.get("anyOf", [prop]):
        if option.get("type") == "string":
            option["maxLength"] = max_chars
            option["pattern"] = TEXT_PATTERN


def version_id(model: str) -> str:
    """A stable version id per model and soundry release (Replicate's are 64 hex digits)."""
    return hashlib.sha256(f"soundry:{model}:{__version__}".encode()).hexdigest()


def models() -> dict[str, tuple[str, type[BaseModel]]]:
    """Every model this API answers for (the live catalog): ``owner/name`` → (its family or soundry model,
    input model)."""
    out = {"meta/musicgen": ("musicgen", MusicGenInput), "sepal/audiogen": ("audiogen", AudioGenInput)}
    names = catalog.active()
    out.update({f"soundry/{name}": (name, input_model(names.get(name))) for name in names.names()})
    return out


def model_for_version(version: str) -> str | None:
    """``owner/name`` of a version id (or of ``owner/name`` / ``owner/name:version``), None if unknown."""
    name, _, vid = version.partition(":")
    known = models()
    if name in known and (not vid or vid == version_id(name)):
        return name
    return next((m for m in known if version_id(m) == version), None)


def validate_input(model: str, raw) -> BaseModel:
    if not isinstance(raw, dict):
        raise invalid("input", "must be an object of the model's inputs")
    try:
        return models()[model][1].model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "input"
        msg = "unknown input" if err["type"] == "extra_forbidden" else err["msg"]
        raise invalid(field, msg) from None


def to_task(model: str, inp: BaseModel, resolve, cog_model: str | None = None) -> tuple[str, str, dict]:
    """(prompt, negative prompt, configs) of a validated input; ``resolve(value, field)`` turns an
    ``input_audio`` or ``melody`` value into an upload id; ``cog_model`` replaces meta/musicgen's default
    model_version (Cog's API serves the model its setting names)."""
    if isinstance(inp, (SoundryInput, DiffusionInput)):
        if "model" in inp.model_fields_set:
            raise invalid("model", "the model is the one the path names (soundry/<model>)")
        data = inp.model_dump(exclude={"prompt", "negative_prompt"}, exclude_unset=True)
        for field in ("input_audio", "melody"):
            if getattr(inp, field, None) is not None:
                data[field] = resolve(getattr(inp, field), field)
        return inp.prompt, inp.negative_prompt, {**data, "model": models()[model][0]}
    if inp.prompt is None or not inp.prompt.strip():
        raise invalid("prompt", "soundry needs a prompt (a description of the audio)")
    cfg = {"duration": inp.duration, "top_k": inp.top_k, "top_p": inp.top_p, "temperature": inp.temperature,
           "cfg_coef": inp.classifier_free_guidance, "output_format": inp.output_format}
    if isinstance(inp, AudioGenInput):
        return inp.prompt, "", {**cfg, "model": cog_model or "audiogen"}
    version = inp.model_version if cog_model is None or "model_version" in inp.model_fields_set else cog_model
    name = MUSICGEN_VERSIONS.get(version, version)
    names = catalog.active()
    spec = names.find(name)
    if spec is None or spec.family != "musicgen":
        raise invalid("model_version", f"unknown version {version!r}; use {', '.join(MUSICGEN_VERSIONS)} or one "
                                       f"of {', '.join(n for n in names.names() if names.get(n).family == 'musicgen')}")
    as_melody = inp.input_audio is not None and not inp.continuation
    if as_melody and not spec.melody:
        raise invalid("input_audio", f"as a melody (continuation false) it needs a melody version "
                                        f"(stereo-melody-large, melody-large), and {version} is not one; set "
                                        "continuation to true to continue it")
    if (inp.input_audio is None or as_melody) and ("continuation_start" in inp.model_fields_set
                                                   or inp.continuation_end is not None):
        raise invalid("continuation_start", "continuation_start/continuation_end need input_audio with "
                                               "continuation true")
    cfg.update(model=name, normalization=NORMALIZATION[inp.normalization_strategy],
               seed=None if inp.seed in (None, -1) else inp.seed,
               decoder="mbd" if inp.multi_band_diffusion else "encodec")
    if as_melody:
        cfg.update(melody=resolve(inp.input_audio, "input_audio"))
    elif inp.input_audio is not None:
        cfg.update(input_audio=resolve(inp.input_audio, "input_audio"), continuation_start=inp.continuation_start,
                   continuation_end=inp.continuation_end)
    return inp.prompt, "", cfg


_FILE_PATH = re.compile(r"/v1/(?:files|uploads)/([0-9a-f]{32})")


def input_audio_id(value: str, own_origins: list[str], field: str = "input_audio") -> str:
    """The upload id an ``input_audio`` (or ``melody``: ``field``) value names: an id, or a URL of this server's
    ``/v1/files/{id}`` (one of ``own_origins``). Anything else is refused: soundry never fetches a URL a user
    picks."""
    if re.fullmatch(r"[0-9a-f]{32}", value):
        return value
    if value.startswith("data:"):
        raise invalid(field, "data: URLs are not accepted; upload the file (POST /v1/files, which the "
                                        "replicate client does for a local file) and pass its URL")
    parts = urlsplit(value)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    match = _FILE_PATH.fullmatch(parts.path)
    if origin not in [o.lower().rstrip("/") for o in own_origins] or match is None:
        raise invalid(field, "only files uploaded to this server are accepted (POST /v1/files, then its "
                                        "urls.get); soundry does not fetch URLs")
    return match.group(1)


def iso(t: dt.datetime | None) -> str | None:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if t else None


def wire_of(task: Task) -> dict:
    """What the wire API recorded (tasks created elsewhere: their soundry model and configs)."""
    wire = (task.config or {}).get("prediction")
    if isinstance(wire, dict):
        return wire
    cfg = {k: v for k, v in (task.config or {}).items() if k != "model" and v is not None}
    model = f"soundry/{task.model}"
    return {"model": model, "version": version_id(model), "input": {"prompt": task.prompt, **cfg}}


def output_of(svc, task: Task, base: str) -> str | None:
    """A finished task's file: a signed link when ``base`` is https (the client wraps only https: and data:
    outputs as files) or when the file is over ``max_inline_output_bytes`` (each poll of a finished prediction
    would send it again: a 300 s stereo WAV is ~50 MB of JSON); else a data: URL, as Cog answers. Blocking (it
    may read the file)."""
    if task.status != "COMPLETED" or not task.file_key:
        return None
    if base.startswith("https:") or svc.storage.size(task.file_key) > svc.settings.max_inline_output_bytes:
        return download_url(task, svc.settings, base)
    media = next((v[2] for v in FORMATS.values() if v[3] == task.file_format), "application/octet-stream")
    return f"data:{media};base64," + base64.b64encode(svc.storage.get(task.file_key)).decode()


def logs_of(task: Task) -> str:
    """tqdm-style progress lines, one per ``LOG_STEP`` % done (the client's ``Prediction.progress`` reads the
    last), and the outcome: derived from the task's stored percent, so the same on every read."""
    if task.status == "PENDING":
        return ""
    lines = [f"{p:3d}%|{'#' * (p // 10):<10}| {p}/100" for p in range(0, task.percent + 1, LOG_STEP)]
    if task.status == "COMPLETED":
        lines.append(f"generated {task.audio_seconds:.2f} s of audio with {task.model} (seed {task.seed})")
    return "\n".join(lines) + "\n"


def stream_link(task: Task, settings, base: str) -> str | None:
    """``urls.stream`` of a prediction created with ``stream: true``: soundry's live audio (WAV while it is
    generated, the stored file once it is), a signed link."""
    if not wire_of(task).get("stream"):
        return None
    return (settings.public_url or base).rstrip("/") + signed_stream_path(settings.secret, task.id,
                                                                          settings.download_ttl)


def prediction(task: Task, output: str | None, base: str | None, prediction_id: str | None = None,
               stream: str | None = None) -> dict:
    """The task as a Replicate/Cog prediction (``urls`` when ``base`` is given: Replicate's API; ``stream`` its
    live audio link)."""
    wire = wire_of(task)
    out = {"id": prediction_id or task.id, "model": wire["model"], "version": wire["version"],
           "input": wire["input"], "status": STATUS[task.status], "output": output,
           "error": (task.error or "generation failed") if task.status == "FAILED" else None, "logs": logs_of(task),
           "metrics": {}, "created_at": iso(task.created_at), "started_at": iso(task.started_at),
           "completed_at": iso(task.finished_at)}
    if task.started_at and task.finished_at:
        out["metrics"]["predict_time"] = round((task.finished_at - task.started_at).total_seconds(), 6)
    if task.status == "COMPLETED":
        out["metrics"]["audio_seconds"] = round(task.audio_seconds, 4)
    if base is not None:
        root = base.rstrip("/") + f"/v1/predictions/{task.id}"
        out["urls"] = {"get": root, "cancel": root + "/cancel", **({"stream": stream} if stream else {})}
    return out


def webhook_body(task: Task, settings, base: str) -> dict:
    """A prediction task's webhook body: the prediction, its output a signed link (no file is read here)."""
    return prediction(task, download_url(task, settings, base), base, wire_of(task).get("cog_id"),
                      stream_link(task, settings, base))


def field_name(field: str | None, model: str) -> str:
    """A refused field as the prediction's inputs name it: soundry's configs without ``configs.``, and
    meta/musicgen's own names for what soundry calls otherwise (the caller sees the field it sent)."""
    if not field:
        return ""
    name = field.removeprefix("configs.")
    if model in ("meta/musicgen", "sepal/audiogen"):  # soundry/<model> takes soundry's own names
        name = {"cfg_coef": "classifier_free_guidance", "normalization": "normalization_strategy"}.get(name, name)
    if model == "meta/musicgen":
        name = {"melody": "input_audio", "decoder": "multi_band_diffusion", "model": "model_version"}.get(name, name)
    return name


def answering_errors(answer: Callable[[ServiceError, Request], Any]):
    """A route decorator for a wire API: the service's refusals (and the HTTP layer's) answered in that API's
    own error shape (Replicate's problem details, Cog's ``detail``) by ``answer(error, request)``."""
    def decorate(route):
        @functools.wraps(route)
        async def wrapper(request: Request, *args, **kwargs):
            try:
                return await route(request, *args, **kwargs)
            except ServiceError as exc:
                return answer(exc, request)
        return wrapper
    return decorate
