"""Every bad input gets its 4xx in the envelope, names the problem, and queues nothing."""

import pytest

from tests.conftest import basic

GOOD = {"prompt": "dog barking", "configs": {"model": "audiogen", "duration": 1, "top_k": 15, "top_p": 0.9}}


def with_configs(**kw):
    return {**GOOD, "configs": {**GOOD["configs"], **kw}}


BAD = [
    ("missing prompt", {"configs": GOOD["configs"]}, 422, "prompt"),
    ("blank prompt", {**GOOD, "prompt": "   "}, 422, "prompt"),
    ("control characters", {**GOOD, "prompt": "dog\x00bark"}, 422, "prompt"),
    ("unknown model", with_configs(model="gpt-audio"), 422, "configs.model"),
    ("unknown config key", with_configs(speed=2), 422, "configs.speed"),
    ("unknown top-level key", {**GOOD, "style": "jazz"}, 422, "style"),
    ("zero duration", with_configs(duration=0), 422, "configs.duration"),
    ("negative duration", with_configs(duration=-3), 422, "configs.duration"),
    ("duration over the limit", with_configs(duration=10_000), 422, "configs.duration"),
    ("top_k negative", with_configs(top_k=-1), 422, "configs.top_k"),
    ("top_k too large", with_configs(top_k=5000), 422, "configs.top_k"),
    ("top_k float", with_configs(top_k=1.5), 422, "configs.top_k"),
    ("top_p over 1", with_configs(top_p=1.5), 422, "configs.top_p"),
    ("top_p negative", with_configs(top_p=-0.1), 422, "configs.top_p"),
    ("temperature zero", with_configs(temperature=0), 422, "configs.temperature"),
    ("bad output format", with_configs(output_format="aiff"), 422, "configs.output_format"),
    ("prompt not a string", {**GOOD, "prompt": 42}, 422, "prompt"),
    ("configs not an object", {**GOOD, "configs": "fast"}, 422, "configs"),
    ("body not an object", ["dog"], 422, "body"),
    ("absurd duration", with_configs(duration=1e308), 422, "configs.duration"),
    ("seed float", with_configs(seed=1.5), 422, "configs.seed"),
    ("seed string", with_configs(seed="42"), 422, "configs.seed"),
    ("webhook not http", {**GOOD, "webhook": "file:///etc/passwd"}, 422, "webhook"),
    ("negative prompt control characters", {**GOOD, "negative_prompt": "hum\x1bbuzz"}, 422, "negative_prompt"),
    ("negative prompt not a string", {**GOOD, "negative_prompt": ["hum"]}, 422, "negative_prompt"),
    # a text over max_prompt_chars is a field out of its range: 422 on every API (docs/refusals.md)
    ("negative prompt over the limit", {**GOOD, "negative_prompt": "a" * 500_000}, 422, "negative_prompt"),
]


def task_count(client):
    return client.app_services.store.count()


@pytest.mark.parametrize("name,body,status,field", BAD, ids=[b[0] for b in BAD])
def test_bad_body(client, user, name, body, status, field):
    before = task_count(client)
    r = client.post("/v1/ai/audio_generation", json=body, headers=user["headers"])
    assert r.status_code == status, r.text
    env = r.json()
    assert env["status"] == "error" and env["errors"] and field in env["error_description"]
    assert task_count(client) == before


def test_malformed_json(client, user):
    r = client.post("/v1/ai/audio_generation", content=b'{"prompt": "dog', headers={
        **user["headers"], "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["errors"] == ["invalid_json"]
    assert task_count(client) == 0


MALFORMED = [
    ("deeply nested arrays", b"[" * 100_000),
    ("deeply nested objects", b'{"a":' * 100_000),
    ("an integer of 5,000 digits", b'{"prompt": "dog", "configs": {"seed": ' + b"1" * 5000 + b"}}"),
    ("not UTF-8", b'{"prompt": "\xff"}'),
    ("truncated", b'{"prompt": "dog'),
    ("trailing garbage", b'{"prompt": "dog"} x'),
]


@pytest.mark.parametrize("name,body", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_every_malformed_body_is_a_400(client, user, name, body):
    r = client.post("/v1/ai/audio_generation", content=body, headers={
        **user["headers"], "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["errors"] == ["invalid_json"] and "malformed JSON" in r.json()["error_description"]
    assert task_count(client) == 0


def test_text_that_is_not_unicode_is_refused(client, user):
    for field in ("prompt", "negative_prompt"):  # JSON can escape an unpaired surrogate; storage cannot hold it
        body = b'{"prompt": "dog", "' + field.encode() + b'": "dog \\ud800 bark"}'
        r = client.post("/v1/ai/audio_generation", content=body, headers={
            **user["headers"], "Content-Type": "application/json"})
        assert r.status_code == 422 and field in r.json()["error_description"], r.text
    assert task_count(client) == 0


def test_huge_prompt_and_body(client, user):
    r = client.post("/v1/ai/audio_generation", json={**GOOD, "prompt": "a" * 5000}, headers=user["headers"])
    assert r.status_code == 422 and "prompt" in r.json()["error_description"]  # as on every API
    r = client.post("/v1/ai/audio_generation", content=b"{" + b" " * (2 << 20) + b"}",
                    headers={**user["headers"], "Content-Type": "application/json"})
    assert r.status_code == 413
    r = client.post("/v1/ai/audio_generation", content=b'{"prompt": "' + b"a" * (10 << 20) + b'"}',
                    headers={**user["headers"], "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["errors"] == ["payload_too_large"]
    assert task_count(client) == 0


def test_nan_and_infinite_durations(client, user):
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"prompt": "dog", "configs": {"duration": ' + literal + b"}}"
        r = client.post("/v1/ai/audio_generation", content=body,
                        headers={**user["headers"], "Content-Type": "application/json"})
        assert r.status_code == 422 and "configs.duration" in r.json()["error_description"], r.text
    assert task_count(client) == 0


def test_unicode_prompts_are_welcome(client, user):
    prompt = "пёс лает 🐕 — 犬の鳴き声, café"
    r = client.post("/v1/ai/audio_generation", json={**GOOD, "prompt": prompt}, headers=user["headers"])
    assert r.status_code == 201 and r.json()["data"]["prompt"] == prompt


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nonsense"}, {"Authorization": "Token abc"},
                                     {"Authorization": "Bearer sk-abc.def"}])
def test_bad_token(client, user, headers):
    r = client.post("/v1/ai/audio_generation", json=GOOD, headers=headers)
    assert r.status_code == 401 and r.json()["errors"] == ["unauthorized"]
    assert task_count(client) == 0


def test_expired_and_tampered_tokens(client, user):
    import jwt

    from soundry.signing import derive_key

    secret = derive_key(client.app_services.settings.secret, "jwt")  # tokens are signed with the JWT key
    expired = jwt.encode({"sub": "1", "typ": "access", "exp": 1}, secret, algorithm="HS256")
    r = client.get("/v1/user/me", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and "expired" in r.json()["error_description"]
    forged = jwt.encode({"sub": "1", "typ": "access", "exp": 2**40}, "not the secret", algorithm="HS256")
    assert client.get("/v1/user/me", headers={"Authorization": f"Bearer {forged}"}).status_code == 401


def test_bad_login(client, user):
    assert client.post("/v1/user/login", headers=basic("alice", "wrong password")).status_code == 401
    assert client.post("/v1/user/login", headers=basic("nobody", "x")).status_code == 401
    assert client.post("/v1/user/login").status_code == 401


def test_unknown_route_and_task(client, user):
    r = client.get("/v1/nothing/here")
    assert r.status_code == 404 and r.json()["status"] == "error"
    r = client.get("/v1/ai/audio_generation/" + "0" * 32, headers=user["headers"])
    assert r.status_code == 404 and r.json()["errors"] == ["not_found"]


def test_regressions_found_by_fuzzing(client, user):
    # a huge offset overflowed SQLite's integer (500); a non-ASCII signature crashed the comparison (500)
    r = client.get("/v1/user/history", params={"offset": 2**63}, headers=user["headers"])
    assert r.status_code == 422 and "offset" in r.json()["error_description"]
    r = client.get("/v1/files/0.wav", params={"expires": 9999999999, "sig": "é"})
    assert r.status_code == 403
