"""Schema fuzzing: schemathesis generates requests for every route of the OpenAPI schema
(authenticated); no answer is a 5xx, every status code and answer body is the one the schema
documents, and every JSON answer is in the envelope."""

from __future__ import annotations

import os
import re
import socket

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.generation.stateful import run_state_machine_as_test
from schemathesis.specs.openapi.checks import positive_data_acceptance

from soundry.api.app import create_app
from soundry.tasks import webhook_target
from tests.conftest import PASSWORD, make_settings

NOT_JSON = ("/metrics", "/v1/files/", "/events")
# CI runs a fixed set of examples (reproducible); SOUNDRY_FUZZ_EXAMPLES=500 SOUNDRY_FUZZ_RANDOM=1 explores
EXAMPLES = int(os.environ.get("SOUNDRY_FUZZ_EXAMPLES", "60"))
RANDOM = os.environ.get("SOUNDRY_FUZZ_RANDOM") == "1"
# No shrinking in CI: a failure's example is reported as found (schemathesis prints its curl); shrinking one that
# waits on a timeout took minutes. SOUNDRY_FUZZ_SHRINK=1 shrinks.
PHASES = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if os.environ.get("SOUNDRY_FUZZ_SHRINK") == "1"
                                                           else [])


def _no_dns(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "no DNS in the tests")


@pytest.fixture
def api_schema(tmp_path, tiny_models, monkeypatch):
    # webhook URLs the schema allows name random hosts: nothing is looked up (they answer 422, not resolving)
    monkeypatch.setattr(webhook_target, "getaddrinfo", _no_dns)
    # no worker: tasks stay PENDING, so progress streams end by their (short) lifetime
    # Limits off: a limit that trips part-way makes answers depend on earlier examples, and a
    # derandomized replay would then draw differently (hypothesis' FlakyStrategyDefinition).
    app = create_app(make_settings(tmp_path, requests_per_minute=0, login_failures_per_user=0,
                                   login_attempts_per_address=0, bearer_failures_per_address=0,
                                   max_active_tasks_per_user=0, max_queued_audio_seconds_per_user=0,
                                   max_uploads_per_user=10**6, event_stream_seconds=0.2,
                                   max_wait_seconds=0.05), start_worker=False)
    svc = app.state.services
    user = svc.accounts.create_user("fuzz", PASSWORD)
    app.state.fuzz_headers = {"Authorization": f"Bearer {svc.accounts.create_api_key(user)}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.checks.update(included_check_names=["all"])  # every check schemathesis has, as `st run -c all`
    return schema


# Routes whose answer depends on what no schema can say, where one check is left out (the behaviour is right):
# - the uploads take audio: the document says so (contentMediaType audio/*, the part's encoding, the description),
#   but schemathesis makes random bytes for a binary part, which are not WAV, FLAC, Ogg or MP3 and are refused
#   (the documented 422 invalid_audio), so positive_data_acceptance would call every upload a wrong refusal;
# - the creates: a webhook's host must resolve to public addresses (no DNS here: every host is refused, 422 naming
#   `webhook`), and a model's own limits (a duration past its context for a diffusion model, steps on an
#   autoregressive one, a melody on a model without melody conditioning, an upload id that is not the caller's)
#   depend on the model chosen and the store, not on the request's shape.
NO_POSITIVE_ACCEPTANCE = {("/v1/files", "post"), ("/v1/uploads", "post"), ("/v1/ai/audio_generation", "post"),
                          ("/v1/predictions", "post"), ("/v1/models/{owner}/{name}/predictions", "post"),
                          ("/predictions", "post"), ("/predictions/{prediction_id}", "put"),
                          ("/v1/sound-generation", "post"), ("/v2beta/audio/stable-audio-2/text-to-audio", "post")}


# The routes that answer the audio itself wait for a worker, which none runs here (left out of the fuzz below).
# ElevenLabs' /v1/sound-generation waits for the audio past the client's timeout (tests/test_elevenlabs.py runs it
# with a worker). Stability's text to audio waits at most max_wait_seconds (0.05 s here), then answers the documented
# 503 wait_timeout: it is fuzzed with not_a_server_error left out (that 503 is right when no worker runs), and
# _in_envelope checks that every 5xx it gives is that one.
WAIT_FOR_AUDIO = {("/v1/sound-generation", "post")}
STABILITY = "/v2beta/audio/stable-audio-2/text-to-audio"


def _excluded(case) -> list:
    key = (case.operation.path, case.operation.method.lower())
    return [positive_data_acceptance] * (key in NO_POSITIVE_ACCEPTANCE) + [not_a_server_error] * (key[0] == STABILITY)


def _call_headers(app, case) -> dict:
    headers = {**(case.headers or {})}
    if "authorization" not in {k.lower() for k in headers}:
        headers.update(app.state.fuzz_headers)
    if (case.operation.path, case.operation.method.lower()) == ("/predictions", "post"):
        # Cog's synchronous create waits for a worker, which none runs here (503 wait_timeout after
        # max_wait_seconds); its asynchronous form is fuzzed, the synchronous one is tests/test_replicate.py's
        headers["Prefer"] = "respond-async"
    return headers


# Replicate's and Cog's APIs answer in their own shapes: problem details, and FastAPI's {"detail"} (Cog)
WIRE_APIS = re.compile(r"^/v1/(predictions|files$|files/[^/]+$|models/[^/]+/[^/]+)|^/predictions|^/health-check")


def _in_envelope(response, path: str) -> None:
    if path == STABILITY:  # Stability's shape; a 5xx only the wait without a worker (see WAIT_FOR_AUDIO)
        assert response.status_code != 503 or "max_wait_seconds" in response.text, response.text
        assert response.status_code < 400 or {"id", "name", "errors"} <= set(response.json()), response.text
        return
    body = response.json() if response.status_code >= 400 or not any(p in path for p in NOT_JSON) else None
    if WIRE_APIS.search(path) and path != "/v1/models/audio_generation" and not (body and "errors" in body):
        if response.status_code >= 400:
            assert body["detail"] and (path.startswith(("/predictions", "/health")) or body["title"]), body
        return
    if body is None:
        return
    assert set(body) >= {"data", "errors", "error_description", "status", "start_time", "end_time"}, body
    if response.status_code >= 400:
        assert body["status"] == "error" and body["errors"] and body["error_description"], body
    else:
        assert body["status"] == "success" and body["errors"] == [], body


@pytest.mark.slow
def test_fuzzed_requests_get_no_5xx_and_the_envelope(api_schema):
    """Every route, schema-valid requests (positive) and schema-violating ones (negative), with all of schemathesis'
    checks: no 5xx, every status and answer documented, a schema-valid request accepted (where a schema can say
    it: see NO_POSITIVE_ACCEPTANCE), a schema-violating one refused, unsupported methods 405 with Allow, a missing
    required header refused; every FlexStack JSON answer in the envelope."""
    app = api_schema.app
    # /v1/sound-generation answers the audio itself once a worker made it (none runs here; see WAIT_FOR_AUDIO)
    operations = [op for op in (result.ok() for result in api_schema.get_all_operations())
                  if (op.path, op.method.lower()) not in WAIT_FOR_AUDIO]
    assert len(operations) >= 29  # every route is in the schema
    failures: list[str] = []
    for operation in operations:
        for mode, examples in ((GenerationMode.POSITIVE, EXAMPLES), (GenerationMode.NEGATIVE, EXAMPLES // 3)):
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                      derandomize=not RANDOM, phases=PHASES)
            def fuzz(case):
                headers = _call_headers(app, case)
                # /readyz answers 503 by design here: no worker runs, so the default model is never loaded
                if case.formatted_path == "/readyz":
                    response = case.call(headers=headers)
                    assert response.status_code in (200, 503)
                else:
                    response = case.call_and_validate(headers=headers, excluded_checks=_excluded(case))
                _in_envelope(response, case.formatted_path)

            try:
                fuzz()
            except Unsatisfiable:  # nothing to negate: a route with no parameters and no body (GET /healthz)
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as exc:  # every route's failures at once, not the first's alone
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)


def _refs(node):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_the_document_is_complete_and_true(api_schema):
    """Every $ref resolves; the create body is described (with the settings' limits); every answer
    is documented; links lead from a created task to its result, cancel and events."""
    doc = api_schema.app.openapi()
    refs = set(_refs(doc))
    assert "#/components/schemas/CreateTask" in refs and "#/components/schemas/Configs" in refs
    for ref in refs:
        node = doc
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
            node = node[part]
    settings_ = api_schema.app.state.services.settings
    create = doc["paths"]["/v1/ai/audio_generation"]["post"]
    body = doc["components"]["schemas"]["CreateTask"]["properties"]
    assert body["prompt"]["maxLength"] == body["negative_prompt"]["maxLength"] == settings_.max_prompt_chars
    assert doc["components"]["schemas"]["Configs"]["properties"]["duration"]["maximum"] == settings_.max_duration
    links = create["responses"]["201"]["links"]
    operation_ids = {op["operationId"]: path for path, item in doc["paths"].items() for op in item.values()}
    assert {operation_ids[link["operationId"]] for link in links.values()} == {
        "/v1/ai/audio_generation/{task_id}", "/v1/ai/audio_generation/{task_id}/cancel",
        "/v1/ai/audio_generation/{task_id}/events"}
    assert "503" in doc["paths"]["/readyz"]["get"]["responses"]
    form = doc["paths"]["/v1/user/refresh_token"]["post"]["requestBody"]["content"]
    schema = next(iter(form.values()))["schema"]
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    assert schema["properties"]["refresh_token"]["minLength"] == 1


def test_method_not_allowed_names_every_method_of_the_path(api_schema):
    from fastapi.testclient import TestClient

    with TestClient(api_schema.app) as client:
        r = client.options("/v1/user/me")
        assert r.status_code == 405 and r.json()["errors"] == ["method_not_allowed"]
        assert {"GET", "POST"} <= {m.strip() for m in r.headers["Allow"].split(",")}
        r = client.post("/v1/user/refresh_token", data={"refresh_token": ""})
        assert r.status_code == 422 and "refresh_token" in r.json()["error_description"]


def test_stateful_sequences_follow_the_links(api_schema):
    """Schemathesis' stateful phase: create a task, then follow the links to its result, cancel and
    events with the id the create answered; every answer is documented and in the envelope."""
    app = api_schema.app
    # Live audio and feedback are left to the stateless phase: their answers depend on timing (a stream of a task
    # no worker runs, a rating of a task that has not ended), which makes a derandomized replay draw differently
    # (hypothesis' FlakyStrategyDefinition); ElevenLabs waits for a worker (WAIT_FOR_AUDIO). Everything else is in:
    # FlexStack, Replicate's predictions, models and files, Cog, the uploads and Stability.
    machine = api_schema.exclude(path_regex="^/v1/(ai/feedback|sound-generation)|/stream$"
                                 ).as_state_machine()
    created, followed = set(), set()

    class Stateful(machine):
        def after_call(self, response, case):
            super().after_call(response, case)
            if case.formatted_path == "/v1/ai/audio_generation" and response.status_code == 201:
                created.add(response.json()["data"]["task_id"])
            task_id = (case.path_parameters or {}).get("task_id")
            if task_id in created:
                followed.add(case.path.rsplit("}", 1)[1] or "result")

        def get_call_kwargs(self, case):
            return {"headers": _call_headers(app, case)}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            if case.formatted_path == "/readyz":  # 503 by design here (no worker), documented
                assert response.status_code in (200, 503)
            else:
                case.validate_response(response, excluded_checks=_excluded(case), transport_kwargs=kwargs,
                                       recorder=self.recorder)
            _in_envelope(response, case.formatted_path)

    run_state_machine_as_test(Stateful, settings=settings(
        max_examples=max(10, EXAMPLES), stateful_step_count=10, deadline=None, database=None,
        suppress_health_check=list(HealthCheck), derandomize=not RANDOM))
    # (10 steps: with Replicate's, Cog's and the uploads' operations in the machine, 6 no longer reached events; 60
    # walks: 30 missed the result link once in a full run, where answers that depend on timing drew another walk)
    assert created and followed >= {"result", "/cancel", "/events"}, (len(created), followed)
