"""The OpenAPI document, completed where FastAPI cannot see: the create route reads its body itself
(to answer malformed JSON with 400), so its schema, with every model it refers to, is added here;
limits that come from the settings (prompt length, duration), the model names of the live catalog, Replicate's
versions and the inputs of Cog's model are written into it, so the document says what validation does; and links
from a created task to its result, cancel and events let clients and stateful fuzzers follow a task."""

from __future__ import annotations

import copy

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from soundry.api.cog import routes as cog
from soundry.api.flexstack.schemas import CreateTask
from soundry.api.http.server import UNCOUNTED, UNCOUNTED_SUFFIXES
from soundry.api.replicate import routes as replicate
from soundry.config import Settings
from soundry.models.catalog import Catalog
from soundry.service.configs import NON_BLANK_PATTERN, TEXT_PATTERN

CREATE = ("/v1/ai/audio_generation", "post")
ELEVENLABS = "/v1/sound-generation"
TASK_LINKS = {"GetTask": ("/v1/ai/audio_generation/{task_id}", "get", "the task's state and result"),
              "CancelTask": ("/v1/ai/audio_generation/{task_id}/cancel", "post", "cancel it"),
              "TaskEvents": ("/v1/ai/audio_generation/{task_id}/events", "get", "follow its progress")}


def create_task_schemas(settings: Settings) -> dict[str, dict]:
    """Components for the create body: CreateTask and the models it refers to, with the limits."""
    body = CreateTask.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas = body.pop("$defs", {})
    props = body["properties"]
    for name in ("prompt", "negative_prompt"):
        props[name]["maxLength"] = settings.max_prompt_chars
        props[name]["pattern"] = NON_BLANK_PATTERN if name == "prompt" else TEXT_PATTERN
    schemas["Configs"]["properties"]["duration"]["maximum"] = settings.max_duration
    schemas["CreateTask"] = body
    return schemas


def _elevenlabs_limits(doc: dict, settings: Settings) -> None:
    """The ElevenLabs body with this server's limits on ``text`` and ``duration_seconds`` (the route
    refuses longer ones)."""
    content = doc["paths"].get(ELEVENLABS, {}).get("post", {}).get("requestBody", {}).get("content", {})
    if "application/json" not in content:
        return
    schema = content["application/json"]["schema"] = copy.deepcopy(content["application/json"]["schema"])
    schema["properties"]["text"]["maxLength"] = settings.max_prompt_chars
    for option in schema["properties"]["duration_seconds"].get("anyOf", []):
        if "maximum" in option:
            option["maximum"] = min(option["maximum"], settings.max_duration)


def _document_common_answers(doc: dict) -> None:
    """Answers any route can give, in the envelope: 400 for a malformed body, 422 (FastAPI documents
    its own HTTPValidationError shape, which this API never sends), 408 for a stalled body, 429 for an
    address with too many unauthenticated requests in progress, and 503 when overloaded."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}
    for path, item in doc["paths"].items():
        for op in item.values():
            answers = op.setdefault("responses", {})
            if "HTTPValidationError" in str(answers.get("422")):  # not the wire APIs' own 422 shapes
                answers["422"]["content"] = error
            if "requestBody" in op:
                answers.setdefault("400", {"description": "malformed body", "content": error})
                answers.setdefault("408", {"description": "request_timeout: the body stalled for `body_timeout` "
                                                          "seconds; the connection is closed", "content": error})
            if path not in UNCOUNTED and not path.endswith(UNCOUNTED_SUFFIXES):
                answers.setdefault("429", {"description": "rate_limited (among others): this address has too many "
                                                          "unauthenticated requests in progress; retry after "
                                                          "`Retry-After` seconds", "content": error})
                answers.setdefault("503", {"description": "overloaded: retry after `Retry-After` seconds",
                                           "content": error})
    for unused in ("HTTPValidationError", "ValidationError"):
        doc["components"]["schemas"].pop(unused, None)


def install_openapi(app: FastAPI, settings: Settings, catalog: Catalog) -> None:
    """The document, made again when the catalog's names change (a model added while the server runs)."""
    made_for: list = [None]

    def openapi() -> dict:
        names = catalog.names()
        if app.openapi_schema and made_for[0] == names:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        doc.setdefault("components", {}).setdefault("schemas", {}).update(create_task_schemas(settings))
        doc["components"]["schemas"]["Configs"]["properties"]["model"]["enum"] = names
        create = doc["paths"][CREATE[0]][CREATE[1]]
        create["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/CreateTask"}}}}
        create["responses"]["201"]["links"] = {
            name: {"operationId": doc["paths"][path][method]["operationId"], "description": text,
                   "parameters": {"task_id": "$response.body#/data/task_id"}}
            for name, (path, method, text) in TASK_LINKS.items()}
        _elevenlabs_limits(doc, settings)
        replicate.document(doc)
        cog.document(doc, settings, catalog)
        _document_common_answers(doc)
        app.openapi_schema, made_for[0] = doc, names
        return doc

    app.openapi = openapi
