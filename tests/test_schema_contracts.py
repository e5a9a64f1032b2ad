"""Issue 30 item 15: what each route's OpenAPI document says it accepts is what it accepts. One test per finding
of an independent schemathesis run (all checks, stateful phase): a schema-valid request must not be refused, a
schema-violating one must be refused with 422 naming the field, and the document must say which."""

from __future__ import annotations

import re
import socket

import pytest
from fastapi.testclient import TestClient

from soundry.api.app import create_app
from soundry.tasks import webhook_target
from tests.conftest import PASSWORD, make_settings

COG_INPUT = {"prompt": "a waltz", "duration": 0.5}


def _no_dns(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "no DNS in the tests")


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    from tests.helpers_models import TINY

    mp.setenv("SOUNDRY_MODEL_PATHS", ",".join(f"{k}={v}" for k, v in TINY.items() if k.startswith(("audio", "music"))))
    mp.setattr(webhook_target, "getaddrinfo", _no_dns)
    app = create_app(make_settings(tmp_path_factory.mktemp("contracts")), start_worker=False)
    svc = app.state.services
    user = svc.accounts.create_user("contracts", PASSWORD)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {svc.accounts.create_api_key(user)}"
        client.doc = app.openapi()
        yield client
    mp.undo()


def _operation(doc: dict, path: str, method: str) -> dict:
    return doc["paths"][path][method]


def _body_schema(doc: dict, path: str, method: str, media: str = "application/json") -> dict:
    schema = _operation(doc, path, method)["requestBody"]["content"][media]["schema"]
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _param(doc: dict, path: str, method: str, name: str) -> dict:
    return next(p for p in _operation(doc, path, method)["parameters"] if p["name"] == name)["schema"]


def _pattern(schema: dict) -> str:
    return _flat(schema)["pattern"]


def _flat(schema: dict) -> dict:
    """A property's schema without its ``anyOf: [..., {"type": "null"}]`` wrapper."""
    options = [o for o in schema.get("anyOf", [schema]) if o.get("type") != "null"]
    return {**schema, **options[0]} if options else schema


def test_a_signed_link_missing_its_signature_is_403_and_expires_has_its_range(api):
    """Finding 1: ``GET /v1/files/{id}?expires=0`` (schema-valid: ``sig`` is optional) was 422 "a signed link has
    both expires and sig". A link with one of the two is a signed link that does not verify: 403, as a wrong
    signature; ``expires`` is documented as a Unix time (0 to 2^63-1), and outside it is 422 naming it."""
    expires = _flat(_param(api.doc, "/v1/files/{name}", "get", "expires"))
    assert expires["minimum"] == 0 and expires["maximum"] == 2**63 - 1
    for query in ("expires=0", "sig=abc", "expires=0&sig=abc"):
        r = api.get(f"/v1/files/{'a' * 32}.wav?{query}")
        assert r.status_code == 403, (query, r.text)
    r = api.get(f"/v1/files/{'a' * 32}.wav?expires=-1&sig=abc")
    assert r.status_code == 422 and "expires" in r.json()["error_description"], r.text


def test_cog_webhook_empty_means_no_webhook_and_refused_fields_are_documented_as_refused(api):
    """Finding 2: a Cog create with ``webhook: ""`` was refused. ``webhook: ""`` itself is no webhook (as on
    Replicate); what refused it was a field the same example carried that soundry refuses (``stream: true``,
    ``output_file_prefix: ""``, a non-empty ``context``: issue 30 item 14) while the document offered it. The
    document now says what is taken: ``stream`` false or null, ``output_file_prefix`` null, ``context`` empty."""
    for method, path in (("post", "/predictions"), ("put", "/predictions/contract-hook")):
        r = api.request(method, path, json={"input": COG_INPUT, "webhook": ""},
                        headers={"Prefer": "respond-async"})
        assert r.status_code == 202, (path, r.text)
    schema = _body_schema(api.doc, "/predictions", "post")
    assert re.search(_pattern(schema["properties"]["webhook"]), "")
    props = schema["properties"]
    assert props["output_file_prefix"]["type"] == "null" and props["context"]["anyOf"][0]["maxProperties"] == 0
    assert {"const": False} in props["stream"]["anyOf"] and {"type": "boolean"} not in props["stream"]["anyOf"]
    assert _body_schema(api.doc, "/predictions/{prediction_id}", "put") == schema
    for extra in ({"stream": False}, {"stream": None, "output_file_prefix": None, "context": {}}):
        r = api.post("/predictions", json={"input": COG_INPUT, "webhook": "", **extra},
                     headers={"Prefer": "respond-async"})
        assert r.status_code == 202, (extra, r.text)
    for extra, field in (({"stream": True}, "stream"), ({"output_file_prefix": ""}, "output_file_prefix")):
        r = api.post("/predictions", json={"input": COG_INPUT, "webhook": "", **extra},
                     headers={"Prefer": "respond-async"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == field, r.text


def test_replicate_version_is_documented_as_the_versions_served(api):
    """Finding 3: ``version: ""`` on ``/v1/predictions`` was schema-valid and refused. The document lists the
    versions (and ``owner/name``, ``owner/name:version``) this server serves; anything else is 422 naming it."""
    version = _body_schema(api.doc, "/v1/predictions", "post")["properties"]["version"]
    assert "" not in version["enum"] and "meta/musicgen" in version["enum"]
    assert all(len(v) == 64 for v in version["enum"] if "/" not in v) and len(version["enum"]) >= 6
    r = api.post("/v1/predictions", json={"version": "", "input": {"prompt": "rain"}})
    assert r.status_code == 422 and r.json()["invalid_fields"][0]["field"] == "version", r.text
    for v in version["enum"]:
        model = v.split(":")[0] if "/" in v else None
        if model in (None, "sepal/audiogen"):
            r = api.post("/v1/predictions", json={"version": v, "input": {"prompt": "rain", "duration": 0.5}})
            assert r.status_code == 201 or r.json()["invalid_fields"][0]["field"] != "version", (v, r.text)


@pytest.mark.parametrize("path,field", [("/v1/files", "content"), ("/v1/uploads", "file")])
def test_upload_routes_say_they_take_audio_and_refuse_other_bytes_as_documented(api, path, field):
    """Finding 4: a non-audio file to ``/v1/files`` and ``/v1/uploads``: their schemas said any bytes. The file part
    is documented as audio (``contentMediaType``, the part's encoding, the description), and other bytes are the
    documented 422 ``invalid_audio``."""
    op = _operation(api.doc, path, "post")
    content = op["requestBody"]["content"]["multipart/form-data"]
    part = content["schema"]["properties"][field]
    assert part["contentMediaType"] == "audio/*" and "audio" in part["description"]
    assert content["encoding"][field]["contentType"].startswith("audio/")
    assert "audio" in op["description"] and "422" in op["responses"]
    r = api.post(path, files={field: ("x.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image/png")})
    assert r.status_code == 422 and "not a readable audio file" in r.text and field in r.text, r.text
    assert "object at 0x" not in r.text and "Error opening" not in r.text, r.text  # libsndfile's reason alone


def test_cog_put_id_is_documented_as_taken(api):
    """Finding 5: a Cog ``PUT /predictions/{id}`` with an id of unusual characters was refused while the path's
    schema said any string. The path parameter documents the ids taken; one outside it is 422 naming ``id``."""
    schema = _param(api.doc, "/predictions/{prediction_id}", "put", "prediction_id")
    pattern = schema["pattern"]
    assert re.search(pattern, "job-7.a_b") and not any(re.search(pattern, i) for i in ("a b", ".", "..", "x" * 129))
    r = api.post("/predictions", json={"input": COG_INPUT, "id": ".."}, headers={"Prefer": "respond-async"})
    assert r.status_code == 422 and r.json()["detail"].startswith("id: "), r.text  # the body's shape: a sentence
    r = api.put("/predictions/job%20one", json={"input": COG_INPUT}, headers={"Prefer": "respond-async"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "id", r.text
    assert _pattern(_body_schema(api.doc, "/predictions", "post")["properties"]["id"]) == pattern


def test_negative_prompt_past_its_documented_length_is_refused_everywhere(api):
    """Finding 6: a ``negative_prompt`` past its documented length was accepted. Every document that has one
    gives it ``maxLength`` = ``max_prompt_chars``, and every route refuses a longer one (422 naming it)."""
    limit = api.app.state.services.settings.max_prompt_chars
    long = "x" * (limit + 1)
    r = api.post("/v1/ai/audio_generation", json={"prompt": "rain", "negative_prompt": long})
    assert r.status_code == 422 and "negative_prompt" in r.json()["error_description"], r.text
    r = api.post("/v1/models/soundry/audiogen/predictions", json={"input": {"prompt": "rain", "negative_prompt": long}})
    assert r.status_code == 422 and r.json()["invalid_fields"][0]["field"] == "negative_prompt", r.text
    inputs = api.get("/v1/models/soundry/audiogen").json()["latest_version"]["openapi_schema"]["components"]
    props = inputs["schemas"]["Input"]["properties"]
    assert props["negative_prompt"]["maxLength"] == props["prompt"]["maxLength"] == limit
    assert _body_schema(api.doc, "/v1/ai/audio_generation", "post")["properties"]["negative_prompt"][
        "maxLength"] == limit


@pytest.mark.parametrize("field", ["webhook", "webhook_completed"])
@pytest.mark.parametrize("char", ["\x01", "\x1c", "\x7f", "\x85"])
def test_a_control_character_in_a_webhook_url_is_refused(api, field, char):
    """Finding 7: a control character in ``webhook_completed`` was accepted while the document's pattern refuses
    it. URLs with C0/C1 controls or DEL are refused (422 naming the field) on every API, and the pattern says so
    whatever regex dialect reads it."""
    url = f"https://hooks.example.com/a{char}b"
    for pattern in (_pattern(_body_schema(api.doc, "/v1/predictions", "post")["properties"][field]),
                    _pattern(_body_schema(api.doc, "/v1/ai/audio_generation", "post")["properties"]["webhook"])):
        assert not re.search(pattern, url) and re.search(pattern, "https://hooks.example.com/a?b=1")
    r = api.post("/v1/models/sepal/audiogen/predictions", json={"input": {"prompt": "rain"}, field: url})
    assert r.status_code == 422 and r.json()["invalid_fields"][0]["field"] == field, r.text
    r = api.post("/predictions", json={"input": COG_INPUT, field: url}, headers={"Prefer": "respond-async"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == field, r.text
    if field == "webhook":
        r = api.post("/v1/ai/audio_generation", json={"prompt": "rain", "webhook": url})
        assert r.status_code == 422 and "webhook" in r.json()["error_description"], r.text


def test_cog_input_is_documented_as_the_cog_models_inputs(api):
    """Found while fixing the above: Cog's ``input`` was documented as any object, while unknown inputs and a
    missing prompt are 422. Cog serves one model (``cog_model``), so its ``input`` is that model's inputs: no
    others, ``prompt`` required and non-blank, the texts' and the duration's limits."""
    settings = api.app.state.services.settings
    for method, path in (("post", "/predictions"), ("put", "/predictions/{prediction_id}")):
        body = _body_schema(api.doc, path, method)
        inputs = body["properties"]["input"]
        assert body["required"] == ["input"] and inputs["additionalProperties"] is False
        assert "prompt" in inputs["required"]
        assert inputs["properties"]["prompt"]["maxLength"] == settings.max_prompt_chars
        assert inputs["properties"]["duration"]["maximum"] == settings.max_duration
        assert not re.search(inputs["properties"]["prompt"]["pattern"], " \t\u3000")
    for bad, field in (({"prompt": "a waltz", "speed": 2}, "speed"), ({"duration": 1}, "prompt"),
                       ({"prompt": "a waltz", "duration": settings.max_duration + 1}, "duration")):
        r = api.post("/predictions", json={"input": bad}, headers={"Prefer": "respond-async"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == field, r.text
